"""Small PyTorch networks of the common image-classifier families, and their ONNX exports (test-only).

Shared by the differentiator's parity tests and the gradient-method tests. Every network has random
weights and non-trivial BatchNorm statistics and returns ``(logits, feat)``: ``feat`` is an intermediate
activation for tap (Grad-CAM) checks. ``LogitsOnly`` wraps a network for tools that want one output
(Captum, ``blackbox.load``).
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

nn = torch.nn
F = torch.nn.functional

K = 10

# ------------------------------------------------------------------------------------------ models
def bn(c):
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.weight.uniform_(0.5, 1.5)
        b.bias.normal_(0, 0.1)
        b.running_mean.normal_(0, 0.2)
        b.running_var.uniform_(0.5, 1.5)
    return b


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn(cout), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), bn(cout), nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

    def forward(self, x):
        y = self.b2(self.c2(self.r1(self.b1(self.c1(x)))))
        return self.r2(y + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.l1, self.l2 = Block(8, 8, 1), Block(8, 16, 2)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        feat = self.l2(self.l1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1)), feat


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                nn.ReLU(), nn.MaxPool2d(2, 2))
        self.f2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True))
        self.head = nn.Sequential(nn.Linear(16 * 5 * 5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, K))

    def forward(self, x):
        feat = self.f2(self.f1(x))
        return self.head(feat.view(feat.size(0), -1)), feat


class InvertedResidual(nn.Module):
    def __init__(self, c, expand, stride):
        super().__init__()
        h = c * expand
        self.stride = stride
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), bn(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), bn(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), bn(c))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.stride == 1 else y


class MobileNetV2Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 4, 1), InvertedResidual(8, 3, 2))
        self.last = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), bn(24), nn.ReLU6())
        self.fc = nn.Linear(24, K)

    def forward(self, x):
        feat = self.last(self.blocks(self.stem(x)))
        return self.fc(feat.mean((2, 3))), feat


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileNetV3Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn(8), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), bn(8), nn.Hardswish())
        self.se = SqueezeExcite(8)
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), bn(16), nn.Hardswish())
        self.fc = nn.Sequential(nn.Linear(16, 24), nn.Hardswish(), nn.Linear(24, K))

    def forward(self, x):
        y = self.se(self.dw(self.stem(x)))
        y = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        feat = self.pw(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1)), feat


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.f = nn.Sequential(bn(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class DenseNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.trans = nn.Sequential(bn(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.norm = bn(16)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        feat = self.block2(self.trans(self.block1(self.stem(x))))
        y = F.relu(self.norm(feat))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)), feat


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (d // self.h) ** -0.5
        y = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class TBlock(nn.Module):
    def __init__(self, d, heads, approximate):
        super().__init__()
        self.n1, self.att, self.n2 = nn.LayerNorm(d), Attention(d, heads), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate=approximate), nn.Linear(2 * d, d))
        with torch.no_grad():
            for n in (self.n1, self.n2):
                n.weight.uniform_(0.5, 1.5)
                n.bias.normal_(0, 0.1)

    def forward(self, x):
        x = x + self.att(self.n1(x))
        return x + self.mlp(self.n2(x))


class ViTLike(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.1)
        self.blocks = nn.Sequential(TBlock(d, 2, "none"), TBlock(d, 2, "tanh"))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, K)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        feat = self.blocks(t)
        return self.head(self.norm(feat)[:, 0]), feat


MODELS = {
    "resnet": (ResNetLike, 32),
    "vgg": (VGGLike, 20),
    "mobilenetv2": (MobileNetV2Like, 24),
    "mobilenetv3": (MobileNetV3Like, 24),
    "densenet": (DenseNetLike, 24),
    "vit": (ViTLike, 16),
}


# ------------------------------------------------------------------------------------------ export
def export(net, x, exporter: str) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            f = io.BytesIO()
            torch.onnx.export(net, (x,), f, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["logits", "feat"],
                              dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}, "feat": {0: "N"}})
            return onnx.load_from_string(f.getvalue())
        prog = torch.onnx.export(net, (x,), dynamo=True, opset_version=18, input_names=["x"],
                                 output_names=["logits", "feat"], verbose=False,
                                 dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=64)}})
        return prog.model_proto


class LogitsOnly(nn.Module):
    """The network with its logits as the only output."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


def export_net(net: nn.Module, x: torch.Tensor, exporter: str, *, dynamic_batch: bool = True,
               opset: int | None = None) -> onnx.ModelProto:
    """ONNX of a logits-only ``net`` (input "input", output "logits"): TorchScript (opset 17 unless
    ``opset``; before 17 it spells LayerNorm out in ReduceMean/Sub/Pow/Sqrt/Div) or dynamo (opset 18).
    ``dynamic_batch``: the batch is symbolic ("N"); else fixed at ``len(x)`` (what many published models
    ship, and what blackbox's loader rewrites to a symbolic batch). The input is not called "x":
    blackbox's wrapper graphs name their own image input "x"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = net.eval()
        if exporter == "torchscript":
            f = io.BytesIO()
            axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None
            torch.onnx.export(net, (x,), f, dynamo=False, opset_version=opset or 17, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes)
            return onnx.load_from_string(f.getvalue())
        shapes = {"x": {0: torch.export.Dim("N", min=1, max=64)}} if dynamic_batch else None
        prog = torch.onnx.export(net, (x,), dynamo=True, opset_version=18, input_names=["input"],
                                 output_names=["logits"], verbose=False, dynamic_shapes=shapes)
        return prog.model_proto


def export_logits(net: nn.Module, x: torch.Tensor, exporter: str) -> onnx.ModelProto:
    """Export ``LogitsOnly(net)`` (input "input", output "logits", dynamic batch) with one of the exporters."""
    return export_net(LogitsOnly(net), x, exporter)


_CACHE: dict = {}


def exported(name: str, exporter: str):
    """(net, x, ONNX model with outputs "logits" and "feat") for ``MODELS[name]``: weights from seed 0,
    x a fixed batch of 3. Cached per session, so every test module shares one export per model."""
    key = (name, exporter)
    if key not in _CACHE:
        cls, size = MODELS[name]
        torch.manual_seed(0)
        net = cls().eval()
        x = torch.randn(3, 3, size, size)
        model = export(net, x, exporter)  # onnxscript is in the test extra: an export failure must fail
        _CACHE[key] = (net, x, model)
    return _CACHE[key]


def for_blackbox(model: onnx.ModelProto, name: str = "input") -> onnx.ModelProto:
    """A copy of an exported model whose input "x" is renamed: blackbox's wrapper graphs call their
    own image input "x" (load it with ``output_name="logits"``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name == "x":
            value.name = name
    for node in out.graph.node:
        for i, used in enumerate(node.input):
            if used == "x":
                node.input[i] = name
    return out

