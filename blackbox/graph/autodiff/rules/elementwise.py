"""Elementwise arithmetic, identities and casts. Broadcast inputs get their gradient summed back."""

from __future__ import annotations

import math

from ...onnx_utils import is_straight_through
from ..registry import rule


def _ub(ctx, node, grad, i):
    """Gradient ``grad`` (shaped like the output) reduced to input ``i``; None if not needed."""
    x = node.input[i]
    if not ctx.needs(x) or grad is None:
        return None
    return ctx.unbroadcast(grad, x, node.output[0])


@rule("Identity", "Dropout")
def identity(ctx, node, grads):
    return [grads[0]]


@rule("Cast", "CastLike")
def cast(ctx, node, grads):
    x = node.input[0]
    if not ctx.is_float(x):
        return [None]
    if ctx.dtype(x) == ctx.dtype(node.output[0]):
        return [grads[0]]
    return [ctx.emit("Cast", [grads[0]], to=ctx.dtype(x))]


@rule("Neg")
def neg(ctx, node, grads):
    return [ctx.emit("Neg", [grads[0]])]


@rule("Add")
def add(ctx, node, grads):
    g = grads[0]
    return [_ub(ctx, node, g, 0), _ub(ctx, node, g, 1)]


@rule("Sum")
def sum_(ctx, node, grads):
    g = grads[0]
    return [_ub(ctx, node, g, i) for i in range(len(node.input))]


@rule("Mean")
def mean(ctx, node, grads):
    g = ctx.emit("Mul", [grads[0], ctx.scalar(1.0 / len(node.input), node.output[0])])
    return [_ub(ctx, node, g, i) for i in range(len(node.input))]


@rule("Sub")
def sub(ctx, node, grads):
    g = grads[0]
    gb = ctx.emit("Neg", [g]) if ctx.needs(node.input[1]) else None
    return [_ub(ctx, node, g, 0), _ub(ctx, node, gb, 1)]


@rule("Mul")
def mul(ctx, node, grads):
    a, b = node.input[0], node.input[1]
    g = grads[0]
    ga = ctx.emit("Mul", [g, b]) if ctx.needs(a) else None
    gb = ctx.emit("Mul", [g, a]) if ctx.needs(b) else None
    return [_ub(ctx, node, ga, 0), _ub(ctx, node, gb, 1)]


@rule("Div")
def div(ctx, node, grads):
    a, b = node.input[0], node.input[1]
    y = node.output[0]
    g = grads[0]
    ga = gb = None
    if ctx.needs(a):
        ga = ctx.emit("Div", [g, b])
    if ctx.needs(b):  # d(a/b)/db = -y/b
        gb = ctx.emit("Neg", [ctx.emit("Div", [ctx.emit("Mul", [g, y]), b])])
    return [_ub(ctx, node, ga, 0), _ub(ctx, node, gb, 1)]


@rule("Pow")
def pow_(ctx, node, grads):
    a, p = node.input[0], node.input[1]
    y = node.output[0]
    g = grads[0]
    ga = gp = None
    if ctx.needs(a):
        pv = ctx.value(p)
        if pv is not None:
            pv = pv.astype(ctx.np_dtype(a))
            if pv.size == 1 and float(pv.reshape(-1)[0]) == 2.0:
                d = ctx.emit("Mul", [a, ctx.scalar(2.0, a)])
            elif pv.size == 1 and float(pv.reshape(-1)[0]) == 1.0:
                d = None
            else:
                d = ctx.emit("Mul", [ctx.emit("Pow", [a, ctx.const(pv - 1)]), ctx.const(pv)])
        else:
            pf = p if ctx.dtype(p) == ctx.dtype(a) else ctx.emit("Cast", [p], to=ctx.dtype(a))
            pm1 = ctx.emit("Sub", [pf, ctx.scalar(1.0, a)])
            d = ctx.emit("Mul", [ctx.emit("Pow", [a, pm1]), pf])
        ga = g if d is None else ctx.emit("Mul", [g, d])
    if ctx.needs(p):  # d(a^p)/dp = y * log(a)
        gp = ctx.emit("Mul", [g, ctx.emit("Mul", [y, ctx.emit("Log", [a])])])
    return [_ub(ctx, node, ga, 0), _ub(ctx, node, gp, 1)]


@rule("Exp")
def exp(ctx, node, grads):
    return [ctx.emit("Mul", [grads[0], node.output[0]])]


@rule("Log")
def log(ctx, node, grads):
    return [ctx.emit("Div", [grads[0], node.input[0]])]


@rule("Sqrt")
def sqrt(ctx, node, grads):
    y = node.output[0]
    return [ctx.emit("Div", [ctx.emit("Mul", [grads[0], ctx.scalar(0.5, y)]), y])]


@rule("Reciprocal")
def reciprocal(ctx, node, grads):
    y = node.output[0]
    return [ctx.emit("Neg", [ctx.emit("Mul", [grads[0], ctx.emit("Mul", [y, y])])])]


@rule("Abs")
def abs_(ctx, node, grads):
    # sign(0) = 0, as torch.abs's backward
    return [ctx.emit("Mul", [grads[0], ctx.emit("Sign", [node.input[0]])])]


@rule("Erf")
def erf(ctx, node, grads):
    x = node.input[0]
    x2 = ctx.emit("Mul", [x, x])
    d = ctx.emit("Mul", [ctx.emit("Exp", [ctx.emit("Neg", [x2])]), ctx.scalar(2.0 / math.sqrt(math.pi), x)])
    return [ctx.emit("Mul", [grads[0], d])]


@rule("Round", "Floor", "Ceil")
def rounding(ctx, node, grads):
    """Zero almost everywhere; the identity for Round nodes marked straight-through (fake quant)."""
    if is_straight_through(node):
        return [grads[0]]
    return [None]


@rule("Where")
def where(ctx, node, grads):
    cond, a, b = node.input
    g = grads[0]
    zero = ctx.scalar(0.0, node.output[0])
    ga = ctx.emit("Where", [cond, g, zero]) if ctx.needs(a) else None
    gb = ctx.emit("Where", [cond, zero, g]) if ctx.needs(b) else None
    return [None, _ub(ctx, node, ga, 1), _ub(ctx, node, gb, 2)]


@rule("Max", "Min")
def max_min(ctx, node, grads):
    """Binary Max/Min: the gradient goes to the winning operand, split evenly on ties (torch.maximum)."""
    if len(node.input) != 2:
        raise ctx.error(f"{len(node.input)}-input {node.op_type}")
    a, b = node.input
    g = grads[0]
    y = node.output[0]
    wins = ctx.emit("Greater" if node.op_type == "Max" else "Less", [a, b])
    ties = ctx.emit("Equal", [a, b])
    one, half, zero = ctx.scalar(1.0, y), ctx.scalar(0.5, y), ctx.scalar(0.0, y)
    share_a = ctx.emit("Where", [wins, one, ctx.emit("Where", [ties, half, zero])])
    ga = ctx.emit("Mul", [g, share_a]) if ctx.needs(a) else None
    gb = ctx.emit("Mul", [g, ctx.emit("Sub", [one, share_a])]) if ctx.needs(b) else None
    return [_ub(ctx, node, ga, 0), _ub(ctx, node, gb, 1)]
