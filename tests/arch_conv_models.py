"""Small PyTorch networks of two deployed convolutional families that stress the differentiator's shape
handling, and their ONNX exports (test-only; torchvision cannot be imported against the CPU wheel here).

* ``ShuffleNetLike``: ShuffleNet V2 units (split, two branches, concat, channel shuffle
  ``x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, -1, h, w)``); every size of the shuffle is
  computed at run time from ``Shape`` in the export, so shape inference loses the sizes after it.
* ``ConvNeXtLike``: ConvNeXt blocks (depthwise 7x7, channel-last LayerNorm, pointwise MLP with GELU,
  layer scale, residual) behind a patchify stem; LayerNorm makes it nearly scale-invariant near zero,
  which is what leaves integrated gradients from a zero baseline with a large completeness gap.

Both return logits only (what Captum and ``blackbox.load`` want). Random weights from a seed;
BatchNorm statistics are non-trivial.
"""

from __future__ import annotations


import numpy as np
import torch
from torch_models import bn, export_net

nn = torch.nn
F = torch.nn.functional

K = 10
EXPORTERS = ("torchscript", "dynamo")


# ------------------------------------------------------------------------------------------ ShuffleNet
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's shuffle, sizes read from the tensor at run time (what makes the export dynamic)."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """A ShuffleNet V2 unit: stride 1 splits the channels in two, stride 2 runs both branches on x."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), bn(cin),
                nn.Conv2d(cin, half, 1, bias=False), bn(half), nn.ReLU())
        else:
            self.branch1 = nn.Sequential()
        first = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(first, half, 1, bias=False), bn(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), bn(half),
            nn.Conv2d(half, half, 1, bias=False), bn(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.stage = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), ShuffleUnit(16, 32, 2),
                                   ShuffleUnit(32, 32, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), bn(48), nn.ReLU())
        self.fc = nn.Linear(48, K)

    def forward(self, x):
        x = self.conv5(self.stage(self.stem(x)))
        return self.fc(x.mean([2, 3]))


# ------------------------------------------------------------------------------------------ ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """torchvision's channel-first LayerNorm: permute to channel-last, normalise, permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channel-last from here
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.block1 = CNBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 24, 2, 2))
        self.block2 = CNBlock(24)
        self.head_norm = LayerNorm2d(24, eps=1e-6)
        self.fc = nn.Linear(24, K)

    def forward(self, x):
        x = self.block2(self.down(self.block1(self.stem(x))))
        x = self.head_norm(F.adaptive_avg_pool2d(x, 1))
        return self.fc(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------------ export
ARCHS = {"shufflenet": (ShuffleNetLike, 32), "convnext": (ConvNeXtLike, 32)}


def make_net(name: str, seed: int = 0) -> tuple[nn.Module, int]:
    """(network in eval mode with weights from ``seed``, its image side)."""
    cls, size = ARCHS[name]
    torch.manual_seed(seed)
    net = cls().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):  # away from the defaults, so no gradient is trivially zero
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            elif name == "convnext" and isinstance(module, (nn.Conv2d, nn.Linear)):
                # torchvision's ConvNeXt init: small weights, zero biases, which make the LayerNorm'ed stem
                # scale-invariant (f(a x) = f(x) for all but tiny a: the path integral's hard case)
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
    return net, size


_CACHE: dict = {}


def exported_arch(name: str, exporter: str, *, dynamic_batch: bool = True):
    """(net, x [1, 3, S, S] float32 numpy, ONNX model), cached per session: one export per variant."""
    key = (name, exporter, dynamic_batch)
    if key not in _CACHE:
        net, size = make_net(name)
        torch.manual_seed(1)
        x = torch.randn(1 if not dynamic_batch else 2, 3, size, size)
        model = export_net(net, x, exporter, dynamic_batch=dynamic_batch)
        _CACHE[key] = (net, x[:1].numpy().copy(), model)
    return _CACHE[key]


def close(actual, expected, what: str) -> None:
    """Equal to a float32 reference up to its own rounding: rtol 1e-4, atol 1e-5 of its largest value."""
    scale = float(np.abs(expected).max())
    assert scale > 0, f"{what}: the reference is all zero"
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=what)
