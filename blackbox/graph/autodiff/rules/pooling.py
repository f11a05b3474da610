"""Pooling.

* MaxPool: the gradient is ``ScatterElements(reduction="add")`` into zeros at each window's first
  maximum (ties resolved to the first index in row-major window order, as PyTorch does; ``MaxUnpool``
  would be wrong where windows overlap). The positions come from a one-hot Conv unfolding the windows
  (see ``_max_pool_by_offsets``); the forward op's own ``Indices`` output is used only when the model
  computes it anyway or the window is large, because ONNX Runtime's CPU kernel computes indices on a
  path 50x slower than the pooling.
* AveragePool: each window's gradient is scaled by 1/divisor and spread over its window with a
  ConvTranspose of a ones kernel. The divisor map is taken from ONNX Runtime itself —
  ``AveragePool(ones) / valid_count`` where ``valid_count`` counts the real (non-pad) elements of each
  window — so ``count_include_pad`` and ``ceil_mode`` windows follow whatever the runtime does.
"""

from __future__ import annotations

import itertools

import numpy as np
from onnx import TensorProto, numpy_helper

from ..registry import RULES, rule
from ._helpers import get_attr, positive
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
        indices = node.output[1]  # the model computes them anyway
    else:
        fast = _max_pool_by_offsets(ctx, node, grads[0])
        if fast is not None:
            return [fast]
        _, indices = ctx.emit("MaxPool", [x], 2, **_pool_attrs(node))
    return [scatter_add_flat(ctx, x, indices, grads[0])]


_MAX_OFFSETS = 64  # window elements; larger windows use the Indices output


def _max_pool_by_offsets(ctx, node, g):
    """MaxPool's gradient from fast stock ops, without the ``Indices`` output: ONNX Runtime's CPU kernel
    computes indices on a slow path (measured 50x the time of the pooling itself, more than the rest of
    a ResNet backward pass).

    With channels moved into the batch, a Conv with one-hot kernels unfolds each window into K =
    prod(k) channels (the other products are exact zeros, so the values stay exact). Channel j holding
    the pooled output marks a maximum; it contributes ``table_j - last`` (its flat position in the plane
    minus that of the window's last element, so <= 0), every other channel 0, and padding always 0
    (zero padding may equal a maximum of 0, but then the real element that equals it is found too).
    ``last + min_j`` is the first maximum in row-major window order (PyTorch's tie rule), and the
    gradient is scatter-added there. None when sizes are unknown, the plane is too large for exact
    float32 positions, or the window is large (the caller then uses the Indices output).
    An infinite input turns its neighbours' unfolded values into NaN: those windows then send their
    gradient to their last element instead of their maximum.

    Alternatives measured on ONNX Runtime 1.31 (3x3/2 windows over [256, 1, 112, 112], CPU ms, one
    thread unless noted) and rejected: the unfold as nine strided Slices 25 (two threads); a float64
    position-tagged key through MaxPool 21 for the pool alone; ArgMax over the unfolded axis 6 against
    ReduceMin's 1.2; a broadcasting Where instead of Cast+Mul 50; Sub+Sign+Add instead of
    Equal+Cast+Mul 15 against 8.6; flat or ScatterND scatters no faster than this one (3.5).
    """
    x, y = node.input[0], node.output[0]
    n, k, s, d, pb, _pe = spatial_attrs(ctx, node, x)
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is None or ys is None or len(xs) != n + 2 or len(ys) != n + 2:
        return None
    ins, outs = xs[2:], ys[2:]
    if not all(isinstance(v, int) and v > 0 for v in ins + outs):
        return None
    count, plane, windows = int(np.prod(k)), int(np.prod(ins)), int(np.prod(outs))
    if count > _MAX_OFFSETS or plane >= 1 << 24:
        return None
    dtype = ctx.np_dtype(x)
    # pad so that every (ceil_mode) window lies inside
    ends = [max(0, (o - 1) * st + (kk - 1) * dd + 1 - b - i) for o, st, kk, dd, b, i in zip(outs, s, k, d, pb, ins)]
    offsets = list(itertools.product(*[range(kk) for kk in k]))
    onehot = np.zeros((count, 1, *k), dtype=dtype)
    for j, at in enumerate(offsets):
        onehot[(j, 0) + at] = 1
    # flat position of window element j of every window; past-the-window where it is padding
    grids = np.meshgrid(*[np.arange(o) * st - b for o, st, b in zip(outs, s, pb)], indexing="ij")
    flat_stride = [int(np.prod(ins[i + 1:])) for i in range(n)]
    table = np.zeros((count, *outs), np.int64)
    inside = np.ones((count, *outs), bool)
    for j, at in enumerate(offsets):
        for axis, (grid, jj) in enumerate(zip(grids, at)):
            coord = grid + jj * d[axis]
            inside[j] &= (coord >= 0) & (coord < ins[axis])
            table[j] += coord * flat_stride[axis]
    last = np.where(inside, table, -1).max(axis=0)  # the window's last real element: never before a hit
    table = np.where(inside, table, last[None])

    xp = ctx.emit("Reshape", [x, ctx.ints([-1, 1] + list(ins))])
    u = ctx.emit("Conv", [xp, ctx.const(onehot, hint="window_onehot")], kernel_shape=list(k), strides=list(s),
                 dilations=list(d), pads=list(pb) + ends)
    hit = ctx.emit("Equal", [u, ctx.emit("Reshape", [y, ctx.ints([-1, 1] + list(outs))])])
    # position = last + min_j(hit_j * (table_j - last)): arithmetic, as a broadcasting Where is slow
    before = ctx.const((table - last[None])[None].astype(np.float32), hint="maxpool_before_last")
    earliest = ctx.reduce("ReduceMin", ctx.emit("Mul", [ctx.emit("Cast", [hit], to=TensorProto.FLOAT), before]), [1],
                          keepdims=True)
    position = ctx.emit("Add", [earliest, ctx.const(last[None, None].astype(np.float32), hint="maxpool_last")])
    position = ctx.emit("Cast", [position], to=TensorProto.INT64)
    # MaxPool(Relu(z)): the Relu's mask at a window's maximum is (y > 0), so it can be applied here, to
    # 1/stride^2 of the values, and the Relu rule passes the gradient through (unless the rectifier
    # looks past the mask, e.g. DeconvNet's, or a rule override replaces the Relu rule)
    relu = ctx.producers.get(x)
    premask = (relu is not None and relu.op_type == "Relu" and relu.domain in ("", "ai.onnx") and ctx.uses[x] == 1
               and ctx.rules.get("Relu") is RULES["Relu"] and ctx.rectifier.masks_only)
    if premask:
        g = ctx.emit("Where", [positive(ctx, y), g, ctx.scalar(0.0, y)])
    rows = ctx.ints([-1, windows])
    zeros = ctx.emit("ConstantOfShape", [ctx.emit("Shape", [ctx.emit("Reshape", [x, ctx.ints([-1, plane])])])],
                     value=numpy_helper.from_array(np.zeros(1, dtype=dtype), "value"))
    out = ctx.emit("ScatterElements", [zeros, ctx.emit("Reshape", [position, rows]), ctx.emit("Reshape", [g, rows])],
                   axis=1, reduction="add")
    gx = ctx.reshape_like(out, x)
    if premask:
        ctx.zero_where_nonpositive[gx] = x
    return gx


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
        scale = ctx.size_ratio(y, x)
    g = ctx.emit("Mul", [grads[0], scale])
    return [ctx.expand_over(g, x, range(2, ctx.rank(x)))]
