"""Activation functions and (log-)softmax.

Boundary conventions follow PyTorch's backward kernels, so parity tests can be exact:

* ``Relu``: gradient 0 at x == 0 (``threshold_backward``).
* ``Clip``: gradient passes only strictly inside (min, max) — PyTorch's ``hardtanh_backward``, which is
  what ``nn.ReLU6``/``F.hardtanh`` use and what exporters turn into ``Clip``. (``torch.clamp`` passes
  the gradient at the bounds too; the two differ only for inputs exactly on a bound.)
* ``HardSigmoid``: gradient alpha strictly inside the linear region; ``HardSwish``: 0 for x < -3,
  x/3 + 1/2 for -3 <= x <= 3, 1 above (``hardswish_backward``).
* ``LeakyRelu``/``PRelu``/``Elu``: the negative branch at x == 0.

``Relu`` and rectifying ``Clip`` (lower bound 0, i.e. ReLU6) compute the forward gate and let the rule
set's rectifier (``ctx.rectifier``, see ``rectifiers.py``) decide what crosses it.
"""

from __future__ import annotations

import math

from ..registry import rule
from ._helpers import axis_attr, constant_inputs, get_attr, positive


@rule("Relu")
def relu(ctx, node, grads):
    # relu(x) > 0 exactly where x > 0. Reading the mask off the output leaves the input with one
    # consumer, so ONNX Runtime can still fuse the forward Conv(+Add)+Relu.
    y = node.output[0]
    rect = ctx.rectifier
    if rect.masks_only and ctx.zero_where_nonpositive.get(grads[0]) == y:
        # the incoming gradient already respects the mask (see the MaxPool rule)
        return [rect.backward(ctx, node, grads[0], None, None)]
    return [rect.backward(ctx, node, grads[0], positive(ctx, y), None)]


@rule("Clip")
def clip(ctx, node, grads):
    x = node.input[0]
    g = grads[0]
    if ctx.opset >= 11:
        lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
        hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    else:
        lo_a, hi_a = get_attr(node, "min"), get_attr(node, "max")
        lo = ctx.scalar(lo_a, x) if lo_a is not None else None
        hi = ctx.scalar(hi_a, x) if hi_a is not None else None
    masks = []
    if lo is not None:
        masks.append(ctx.emit("Greater", [x, lo]))
    if hi is not None:
        masks.append(ctx.emit("Less", [x, hi]))
    if not masks:
        return [g, None, None]
    mask = masks[0] if len(masks) == 1 else ctx.emit("And", masks)
    lo_v = ctx.value(lo) if lo is not None else None
    if lo_v is not None and lo_v.size == 1 and float(lo_v.reshape(-1)[0]) == 0.0:
        below = None if hi is None else (lambda: ctx.emit("LessOrEqual", [x, lo]))
        return [ctx.rectifier.backward(ctx, node, g, mask, below), None, None]
    return [ctx.emit("Where", [mask, g, ctx.scalar(0.0, x)]), None, None]


@rule("LeakyRelu")
def leaky_relu(ctx, node, grads):
    x = node.input[0]
    g = grads[0]
    alpha = get_attr(node, "alpha", 0.01)
    neg = ctx.emit("Mul", [g, ctx.scalar(alpha, x)])
    return [ctx.emit("Where", [positive(ctx, x), g, neg])]


@rule("PRelu")
def prelu(ctx, node, grads):
    x, slope = node.input[0], node.input[1]
    g = grads[0]
    constant_inputs(ctx, node, what="an input-dependent slope")
    neg = ctx.emit("Mul", [g, slope])
    return [ctx.emit("Where", [positive(ctx, x), g, neg]), None]


@rule("Elu")
def elu(ctx, node, grads):
    x, y = node.input[0], node.output[0]
    g = grads[0]
    alpha = get_attr(node, "alpha", 1.0)
    neg = ctx.emit("Mul", [g, ctx.emit("Add", [y, ctx.scalar(alpha, x)])])
    return [ctx.emit("Where", [positive(ctx, x), g, neg])]


@rule("Sigmoid")
def sigmoid(ctx, node, grads):
    y = node.output[0]
    d = ctx.emit("Mul", [y, ctx.emit("Sub", [ctx.scalar(1.0, y), y])])
    return [ctx.emit("Mul", [grads[0], d])]


@rule("Tanh")
def tanh(ctx, node, grads):
    y = node.output[0]
    d = ctx.emit("Sub", [ctx.scalar(1.0, y), ctx.emit("Mul", [y, y])])
    return [ctx.emit("Mul", [grads[0], d])]


@rule("Softplus")
def softplus(ctx, node, grads):
    return [ctx.emit("Mul", [grads[0], ctx.emit("Sigmoid", [node.input[0]])])]


@rule("Softsign")
def softsign(ctx, node, grads):
    x = node.input[0]
    den = ctx.emit("Add", [ctx.scalar(1.0, x), ctx.emit("Abs", [x])])
    return [ctx.emit("Div", [grads[0], ctx.emit("Mul", [den, den])])]


@rule("HardSigmoid")
def hard_sigmoid(ctx, node, grads):
    x = node.input[0]
    alpha = get_attr(node, "alpha", 0.2)
    beta = get_attr(node, "beta", 0.5)
    t = ctx.emit("Add", [ctx.emit("Mul", [x, ctx.scalar(alpha, x)]), ctx.scalar(beta, x)])
    inside = ctx.emit("And", [ctx.emit("Greater", [t, ctx.scalar(0.0, x)]),
                              ctx.emit("Less", [t, ctx.scalar(1.0, x)])])
    ga = ctx.emit("Mul", [grads[0], ctx.scalar(alpha, x)])
    return [ctx.emit("Where", [inside, ga, ctx.scalar(0.0, x)])]


@rule("HardSwish")
def hard_swish(ctx, node, grads):
    x = node.input[0]
    mid = ctx.emit("Add", [ctx.emit("Mul", [x, ctx.scalar(1.0 / 3.0, x)]), ctx.scalar(0.5, x)])
    upper = ctx.emit("Where", [ctx.emit("LessOrEqual", [x, ctx.scalar(3.0, x)]), mid,
                               ctx.scalar(1.0, x)])
    d = ctx.emit("Where", [ctx.emit("Less", [x, ctx.scalar(-3.0, x)]), ctx.scalar(0.0, x), upper])
    return [ctx.emit("Mul", [grads[0], d])]


@rule("Gelu")
def gelu(ctx, node, grads):
    x = node.input[0]
    approx = get_attr(node, "approximate", "none")
    s = lambda v: ctx.scalar(v, x)  # noqa: E731
    if approx == "tanh":
        # y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        k = math.sqrt(2.0 / math.pi)
        x2 = ctx.emit("Mul", [x, x])
        u = ctx.emit("Mul", [ctx.emit("Mul", [x, ctx.emit("Add", [s(1.0), ctx.emit("Mul", [x2, s(0.044715)])])]), s(k)])
        t = ctx.emit("Tanh", [u])
        du = ctx.emit("Mul", [ctx.emit("Add", [s(1.0), ctx.emit("Mul", [x2, s(3 * 0.044715)])]), s(k)])
        left = ctx.emit("Mul", [ctx.emit("Add", [s(1.0), t]), s(0.5)])
        sech2 = ctx.emit("Sub", [s(1.0), ctx.emit("Mul", [t, t])])
        right = ctx.emit("Mul", [ctx.emit("Mul", [ctx.emit("Mul", [x, s(0.5)]), sech2]), du])
        d = ctx.emit("Add", [left, right])
    else:
        # Phi(x) + x phi(x)
        cdf = ctx.emit("Mul", [ctx.emit("Add", [s(1.0), ctx.emit("Erf", [ctx.emit("Mul", [x, s(1.0 / math.sqrt(2.0))])])]), s(0.5)])
        pdf = ctx.emit("Mul", [ctx.emit("Exp", [ctx.emit("Mul", [ctx.emit("Mul", [x, x]), s(-0.5)])]), s(1.0 / math.sqrt(2.0 * math.pi))])
        d = ctx.emit("Add", [cdf, ctx.emit("Mul", [x, pdf])])
    return [ctx.emit("Mul", [grads[0], d])]


def _softmax_axes(ctx, node):
    if ctx.opset >= 13:
        return [axis_attr(ctx, node, -1)]
    return list(range(axis_attr(ctx, node, 1), ctx.rank(node.input[0])))  # opset < 13: 2-D at axis


@rule("Softmax")
def softmax(ctx, node, grads):
    y = node.output[0]
    g = grads[0]
    s = ctx.reduce("ReduceSum", ctx.emit("Mul", [g, y]), _softmax_axes(ctx, node), keepdims=True)
    return [ctx.emit("Mul", [y, ctx.emit("Sub", [g, s])])]


@rule("LogSoftmax")
def log_softmax(ctx, node, grads):
    y = node.output[0]
    g = grads[0]
    s = ctx.reduce("ReduceSum", g, _softmax_axes(ctx, node), keepdims=True)
    return [ctx.emit("Sub", [g, ctx.emit("Mul", [ctx.emit("Exp", [y]), s])])]
