"""BatchNormalization (inference) and LayerNormalization (closed form)."""

from __future__ import annotations

import numpy as np

from ..registry import rule
from ._helpers import axis_attr, constant_inputs, get_attr, only_first


@rule("BatchNormalization")
def batch_norm(ctx, node, grads):
    x, scale, _bias, _mean, var = node.input[:5]
    if get_attr(node, "training_mode", 0):
        raise ctx.error("training_mode=1 (batch statistics)")
    if any(gr is not None for gr in grads[1:]):
        raise ctx.error("gradient of running statistics outputs")
    constant_inputs(ctx, node)
    eps = float(get_attr(node, "epsilon", 1e-5))
    r = ctx.rank(x)
    tail = [1] * max(r - 2, 0)
    sv, vv = ctx.value(scale), ctx.value(var)
    if sv is not None and vv is not None:
        # y = scale * (x - mean) / sqrt(var + eps) + bias: dy/dx is a per-channel constant
        k = sv.astype(np.float64) / np.sqrt(vv.astype(np.float64) + eps)
        coef = ctx.const(k.astype(ctx.np_dtype(x)).reshape([-1, *tail]), hint="bn_coef")
    else:
        den = ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.scalar(eps, var)])])
        coef = ctx.emit("Reshape", [ctx.emit("Div", [scale, den]), ctx.ints([-1, *tail])])
        if ctx.dtype(scale) != ctx.dtype(x):
            coef = ctx.emit("Cast", [coef], to=ctx.dtype(x))
    return [ctx.emit("Mul", [grads[0], coef]), None, None, None, None]


@rule("LayerNormalization")
def layer_norm(ctx, node, grads):
    x = node.input[0]
    scale = node.input[1]
    if any(gr is not None for gr in grads[1:]):
        raise ctx.error("gradient of the Mean/InvStdDev outputs")
    constant_inputs(ctx, node)
    r = ctx.rank(x)
    axis = axis_attr(ctx, node, -1)
    axes = list(range(axis, r))
    eps = float(get_attr(node, "epsilon", 1e-5))
    g = grads[0]
    mu = ctx.reduce("ReduceMean", x, axes, keepdims=True)
    xc = ctx.emit("Sub", [x, mu])
    var = ctx.reduce("ReduceMean", ctx.emit("Mul", [xc, xc]), axes, keepdims=True)
    rstd = ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.scalar(eps, x)])])])
    xhat = ctx.emit("Mul", [xc, rstd])
    gh = ctx.emit("Mul", [g, scale])
    m1 = ctx.reduce("ReduceMean", gh, axes, keepdims=True)
    m2 = ctx.reduce("ReduceMean", ctx.emit("Mul", [gh, xhat]), axes, keepdims=True)
    inner = ctx.emit("Sub", [ctx.emit("Sub", [gh, m1]), ctx.emit("Mul", [xhat, m2])])
    return only_first(node, ctx.emit("Mul", [inner, rstd]))
