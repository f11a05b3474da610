"""Tiny transformer classifiers for layer-layout tests (test-only): a ViT (class token, optional
distillation token, pre-norm blocks) and a Swin-style net (channel-last maps [N, H, W, C], shifted
windows via ``torch.roll``, patch merging), plus a ConvNeXt-style block whose LayerNorm runs on a
channel-last map. Random weights; each network's ``cam_module`` is the module whose output
pytorch-grad-cam's examples hook (``blocks[-1].norm1`` for ViT, ``layers[-1].blocks[-1].norm1`` for
Swin), so tests can compute the reference CAM with autograd there.
"""

from __future__ import annotations


import numpy as np
import torch
from torch_models import export_net as export

nn = torch.nn
F = torch.nn.functional

K = 10


def _jitter_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.1)
    return norm


class Attention(nn.Module):
    """Multi-head self-attention over [B, T, C] with an optional additive bias [heads, T, T] and mask."""

    def __init__(self, d: int, heads: int, tokens: int | None = None):
        super().__init__()
        self.h = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens) * 0.1) if tokens else None

    def forward(self, x, mask=None):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (d // self.h) ** -0.5
        if self.bias is not None:
            a = a + self.bias
        if mask is not None:  # [windows, T, T], windows of one image consecutive in the batch axis
            w = mask.shape[0]
            a = a.view(b // w, w, self.h, n, n) + mask[None, :, None]
            a = a.view(b, self.h, n, n)
        y = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class Mlp(nn.Sequential):
    def __init__(self, d: int):
        super().__init__(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))


# ------------------------------------------------------------------------------------------ ViT
class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1, self.attn = _jitter_norm(nn.LayerNorm(d)), Attention(d, heads)
        self.norm2, self.mlp = _jitter_norm(nn.LayerNorm(d)), Mlp(d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT/DeiT: patch conv (stride = patch), class token (and a distillation token), learned positions,
    pre-norm blocks, final norm, head on the class token (DeiT: mean of the class and distillation heads)."""

    def __init__(self, size=(32, 32), patch: int = 8, d: int = 16, heads: int = 2, depth: int = 2,
                 distilled: bool = False):
        super().__init__()
        self.extra = 2 if distilled else 1
        self.grid = (size[0] // patch, size[1] // patch)
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.tokens = nn.Parameter(torch.randn(1, self.extra, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, self.extra + self.grid[0] * self.grid[1], d) * 0.1)
        self.blocks = nn.Sequential(*[ViTBlock(d, heads) for _ in range(depth)])
        self.norm, self.head = _jitter_norm(nn.LayerNorm(d)), nn.Linear(d, K)

    @property
    def cam_module(self) -> nn.Module:
        return self.blocks[-1].norm1

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(t.shape[0], -1, -1), t], 1) + self.pos
        t = self.norm(self.blocks(t))
        return self.head(t[:, :self.extra]).mean(1)


# ------------------------------------------------------------------------------------------ Swin
def window_partition(x, ws: int):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """Swin's attention mask for a cyclic shift: -100 between tokens from different image regions."""
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    count = 0
    for ys in cuts:
        for xs in cuts:
            region[:, ys, xs, :] = count
            count += 1
    r = window_partition(region, ws)[..., 0]
    return (r[:, :, None] - r[:, None, :] != 0).float() * -100.0


class SwinBlock(nn.Module):
    """torchvision's SwinTransformerBlock layout: x is a channel-last map [B, H, W, C] throughout."""

    def __init__(self, d: int, heads: int, size: int, ws: int, shift: int):
        super().__init__()
        self.ws, self.shift, self.size = ws, shift, size
        self.norm1, self.attn = _jitter_norm(nn.LayerNorm(d)), Attention(d, heads, ws * ws)
        self.norm2, self.mlp = _jitter_norm(nn.LayerNorm(d)), Mlp(d)
        self.register_buffer("mask", shift_mask(size, size, ws, shift) if shift else None)

    def _attend(self, x):
        h, w = self.size, self.size
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(x, self.ws), self.mask), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        return y

    def forward(self, x):
        x = x + self._attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm, self.reduction = _jitter_norm(nn.LayerNorm(4 * d)), nn.Linear(4 * d, 2 * d, bias=False)

    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class TinySwin(nn.Module):
    """Swin-T's structure (torchvision's swin_t): patch 4, stages of shifted-window blocks (odd blocks
    shift by half a window unless the window covers the grid) joined by patch merging, final norm,
    permute to NCHW, global average pooling, head. Default at 32 px: an 8x8 grid with C=16 and windows
    of 4, then 4x4 with C=32 and windows of 2 (shift 1). ``TinySwin(224, 96, (2, 2, 6, 2), (3, 6, 12, 24),
    (7, 7, 7, 7))`` is Swin-T's size."""

    def __init__(self, size: int = 32, d: int = 16, depths=(2, 2), heads=(2, 2), windows=(4, 2)):
        super().__init__()
        g = size // 4
        self.patch, self.patch_norm = nn.Conv2d(3, d, 4, 4), _jitter_norm(nn.LayerNorm(d))
        stages: list[nn.Module] = []
        for i, (depth, h, ws) in enumerate(zip(depths, heads, windows)):
            if i:
                stages.append(PatchMerging(d))
                d, g = 2 * d, g // 2
            shift = ws // 2 if g > ws else 0
            stages.append(Stage([SwinBlock(d, h, g, ws, shift if j % 2 else 0) for j in range(depth)]))
        self.layers = nn.ModuleList(stages)
        self.norm, self.head = _jitter_norm(nn.LayerNorm(d)), nn.Linear(d, K)
        self.grid = (g, g)

    @property
    def cam_module(self) -> nn.Module:
        return self.layers[-1].blocks[-1].norm1

    def forward(self, x):
        t = self.patch_norm(self.patch(x).permute(0, 2, 3, 1))
        for layer in self.layers:
            t = layer(t)
        t = self.norm(t).permute(0, 3, 1, 2)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(t, 1), 1))


# ------------------------------------------------------------------------------------------ ConvNeXt
class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, then LayerNorm and the MLP on the channel-last map, permuted back, residual."""

    def __init__(self, d: int):
        super().__init__()
        self.dw = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm, self.mlp = _jitter_norm(nn.LayerNorm(d)), Mlp(d)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.mlp(y).permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 4, 4)
        self.block = ConvNeXtBlock(d)
        self.head = nn.Linear(d, K)

    @property
    def cam_module(self) -> nn.Module:
        return self.block.norm  # a channel-last map [N, H, W, C]

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


# ------------------------------------------------------------------------------------------ export
_CACHE: dict = {}


def loaded(cls, exporter: str = "torchscript", opset: int | None = None, **kwargs):
    """(net, x [4, 3, H, W], ONNX export, blackbox Model) for ``cls(**kwargs)`` with weights from seed 0,
    exported at a batch of 2 with a dynamic batch; cached per session, so test modules share exports."""
    import blackbox

    key = (cls.__name__, exporter, opset, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        net = cls(**kwargs).eval()
        size = kwargs.get("size", 32)
        x = torch.randn(4, 3, *(size if isinstance(size, tuple) else (size, size)))
        proto = export(net, x[:2], exporter, opset=opset)
        _CACHE[key] = (net, x, proto, blackbox.load(proto, device="cpu"))
    return _CACHE[key]


def module_output(net: nn.Module, module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``module``'s output for ``x`` (a forward hook, as pytorch-grad-cam's ActivationsAndGradients)."""
    seen = {}
    handle = module.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return seen["out"].numpy()


def module_output_grad(net: nn.Module, module: nn.Module, x: torch.Tensor, target: int):
    """(value, gradient) of ``module``'s output for the target logit of ``x`` [1, 3, H, W], float64."""
    seen = {}
    handle = module.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))
    try:
        out = net(x)
        value = seen["out"]
        value.retain_grad()
        out[0, target].backward()
    finally:
        handle.remove()
    return value.detach()[0].double(), value.grad[0].double()


def tokens_to_maps(t: torch.Tensor, extra: int, grid: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's ViT ``reshape_transform`` for one sample: [extra + h*w, C] -> [C, h, w]."""
    return t[extra:].reshape(grid[0], grid[1], t.shape[-1]).permute(2, 0, 1)


def score_cam_weights(net: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int) -> np.ndarray:
    """Score-CAM's channel weights (Wang et al.), computed in torch: each map [C, h, w] upsampled
    bilinearly to the input, min-max normalised, multiplied into x; the softmax probability of ``target``."""
    up = F.interpolate(maps[None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0]
    weights = np.zeros(len(up))
    with torch.no_grad():
        for k, m in enumerate(up):
            m = (m - m.min()) / (m.max() - m.min())
            weights[k] = torch.softmax(net(x * m.float()).double(), 1)[0, target].item()
    return weights
