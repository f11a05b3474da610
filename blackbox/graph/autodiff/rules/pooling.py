"""Pooling.

* MaxPool: the forward op is re-run with its ``Indices`` output (flat indices into the whole input, ties
  resolved to the first index, as PyTorch does) and the gradient is ``ScatterElements(reduction="add")``
  into zeros. ``MaxUnpool`` would be wrong where windows overlap.
* AveragePool: each window's gradient is scaled by 1/divisor and spread over its window with a
  ConvTranspose of a ones kernel. The divisor map is taken from ONNX Runtime itself —
  ``AveragePool(ones) / valid_count`` where ``valid_count`` counts the real (non-pad) elements of each
  window — so ``count_include_pad`` and ``ceil_mode`` windows follow whatever the runtime does.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from . import rule
from ..prepare import get_attr
from .conv import spatial_attrs, transpose_pads


def scatter_add_flat(ctx, x: str, indices: str, grad: str) -> str:
    """Zeros shaped like ``x`` with ``grad`` added at flat ``indices`` (same shape as ``grad``)."""
    size = ctx.emit("Reshape", [ctx.emit("Size", [x]), ctx.ints([1])])
    zero = numpy_helper.from_array(np.zeros(1, dtype=ctx.np_dtype(x)), "value")
    zeros = ctx.emit("ConstantOfShape", [size], value=zero)
    flat_i = ctx.emit("Reshape", [indices, ctx.ints([-1])])
    flat_g = ctx.emit("Reshape", [grad, ctx.ints([-1])])
    out = ctx.emit("ScatterElements", [zeros, flat_i, flat_g], axis=0, reduction="add")
    return ctx.reshape_like(out, x)


def _pool_attrs(node, keep=("kernel_shape", "strides", "pads", "dilations", "ceil_mode")):
    return {k: get_attr(node, k) for k in keep if get_attr(node, k) is not None}


@rule("MaxPool")
def max_pool(ctx, node, grads):
    x = node.input[0]
    if len(node.output) > 1 and node.output[1] and get_attr(node, "storage_order", 0) == 0:
        indices = node.output[1]
    else:
        _, indices = ctx.emit("MaxPool", [x], 2, **_pool_attrs(node))
    return [scatter_add_flat(ctx, x, indices, grads[0])]


@rule("GlobalMaxPool")
def global_max_pool(ctx, node, grads):
    x = node.input[0]
    n = ctx.rank(x) - 2
    sx = ctx.shape(x)
    spatial = sx[2:] if sx is not None else None
    if spatial is not None and all(isinstance(v, int) for v in spatial):
        # MaxPool over the whole plane gives first-index tie breaking, like PyTorch.
        _, indices = ctx.emit("MaxPool", [x], 2, kernel_shape=spatial)
        return [scatter_add_flat(ctx, x, indices, grads[0])]
    # Unknown spatial size: the gradient is split evenly among tied maxima (torch.amax's rule).
    axes = list(range(2, 2 + n))
    mask = ctx.emit("Cast", [ctx.emit("Equal", [x, node.output[0]])], to=ctx.dtype(x))
    count = ctx.reduce("ReduceSum", mask, axes, keepdims=True)
    return [ctx.emit("Mul", [mask, ctx.emit("Div", [grads[0], count])])]


@rule("AveragePool")
def average_pool(ctx, node, grads):
    x, y = node.input[0], node.output[0]
    n, k, s, d, pb, pe = spatial_attrs(ctx, node, x)
    ins = ctx.static_dims(x, range(2, 2 + n))
    outs = ctx.static_dims(y, range(2, 2 + n))
    dtype = ctx.np_dtype(x)
    # valid (non-padding) elements per window, separable over axes
    valid = np.ones([1, 1], dtype=np.float64)
    for i in range(n):
        starts = np.arange(outs[i]) * s[i] - pb[i]
        pos = starts[:, None] + np.arange(k[i])[None, :] * d[i]
        cnt = ((pos >= 0) & (pos < ins[i])).sum(axis=1).astype(np.float64)
        valid = valid[..., None] * cnt
    valid = np.maximum(valid, 1.0).astype(dtype)
    ones = ctx.const(np.ones([1, 1, *ins], dtype=dtype), hint="ones")
    attrs = _pool_attrs(node, ("kernel_shape", "strides", "pads", "dilations", "ceil_mode",
                               "count_include_pad"))
    frac = ctx.emit("AveragePool", [ones], **attrs)  # valid / divisor per window, from the runtime
    scale = ctx.emit("Div", [frac, ctx.const(valid, hint="valid_count")])
    g = ctx.emit("Mul", [grads[0], scale])
    g = ctx.emit("Reshape", [g, ctx.ints([-1, 1] + [0] * n)])  # channels into the batch
    pads, extra = transpose_pads(ins, outs, k, s, d, pb, pe)
    kernel = ctx.const(np.ones([1, 1, *k], dtype=dtype), hint="ones_kernel")
    gx = ctx.emit("ConvTranspose", [g, kernel], kernel_shape=k, strides=s, dilations=d, pads=pads,
                  output_padding=extra)
    return [ctx.reshape_like(gx, x)]


@rule("GlobalAveragePool")
def global_average_pool(ctx, node, grads):
    x, y = node.input[0], node.output[0]
    sx = ctx.shape(x)
    if sx is not None and all(isinstance(v, int) for v in sx[2:]):
        scale = ctx.scalar(1.0 / float(np.prod(sx[2:])), x)
    else:  # size(y) / size(x) = 1 / (H * W)
        scale = ctx.emit("Div", [ctx.emit("Cast", [ctx.emit("Size", [y])], to=ctx.dtype(x)),
                                 ctx.emit("Cast", [ctx.emit("Size", [x])], to=ctx.dtype(x))])
    g = ctx.emit("Mul", [grads[0], scale])
    return [ctx.emit("Expand", [g, ctx.shape_of(x)])]
