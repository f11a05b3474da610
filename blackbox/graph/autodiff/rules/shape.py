"""Data movement: reshapes, transposes, concatenation, slicing, padding, gathers, broadcasts."""

from __future__ import annotations

import numpy as np

from ..registry import rule
from ._helpers import axis_attr, get_attr, only_first
from .pooling import scatter_add_flat

_INT64_MAX = np.iinfo(np.int64).max


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx, node, grads):
    return only_first(node, ctx.reshape_like(grads[0], node.input[0]))


@rule("Transpose")
def transpose(ctx, node, grads):
    r = ctx.rank(node.input[0])
    perm = list(get_attr(node, "perm", list(range(r))[::-1]))
    inverse = [0] * r
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ctx.emit("Transpose", [grads[0]], perm=inverse)]


@rule("Expand")
def expand(ctx, node, grads):
    return [ctx.unbroadcast(grads[0], node.input[0], node.output[0]), None]


@rule("Tile")
def tile(ctx, node, grads):
    x = node.input[0]
    reps = ctx.value(node.input[1])
    sx = ctx.shape(x)
    if reps is None or sx is None:
        raise ctx.error("repeats computed at run time")
    dims = [d if isinstance(d, int) else -1 for d in sx]
    if dims.count(-1) > 1:
        raise ctx.error("more than one dynamic dimension")
    split = []
    for rep, d in zip(reps.reshape(-1).tolist(), dims):
        split += [int(rep), d]
    g = ctx.emit("Reshape", [grads[0], ctx.ints(split)])
    g = ctx.reduce("ReduceSum", g, list(range(0, 2 * len(dims), 2)), keepdims=False)
    return [ctx.reshape_like(g, x), None]


@rule("Concat")
def concat(ctx, node, grads):
    ins = list(node.input)
    if len(ins) == 1:
        return [grads[0]]
    axis = axis_attr(ctx, node, None)
    sizes = []
    for i in ins:
        s = ctx.shape(i)
        sizes.append(s[axis] if s is not None and isinstance(s[axis], int) else None)
    if all(s is not None for s in sizes):
        split = ctx.ints(sizes)
    else:
        split = ctx.emit("Concat", [ctx.dim_of(i, axis) for i in ins], axis=0)
    outs = ctx.emit("Split", [grads[0], split], len(ins), axis=axis)
    return [o if ctx.needs(i) else None for o, i in zip(outs, ins)]


@rule("Split")
def split(ctx, node, grads):
    parts = [gr if gr is not None else ctx.zeros_like(y) for gr, y in zip(grads, node.output)]
    return only_first(node, ctx.emit("Concat", parts, axis=axis_attr(ctx, node)))


@rule("Slice")
def slice_(ctx, node, grads):
    x = node.input[0]
    g = grads[0]
    nones = [None] * (len(node.input) - 1)
    r = ctx.rank(x)
    sx = ctx.shape(x)
    args = list(node.input[1:]) + [""] * (5 - len(node.input))
    vals = [ctx.value(a) if a else None for a in args]
    starts, ends, axes, steps = vals
    const = starts is not None and ends is not None and (axes is not None or not args[2]) and (
        steps is not None or not args[3])
    if const:
        starts = starts.reshape(-1).tolist()
        ends = ends.reshape(-1).tolist()
        axes = axes.reshape(-1).tolist() if axes is not None else list(range(len(starts)))
        steps = steps.reshape(-1).tolist() if steps is not None else [1] * len(starts)
        dims = [sx[a % r] if sx is not None else None for a in axes]
        if all(s == 1 for s in steps) and all(isinstance(d, int) for d in dims):
            pads = [0] * (2 * r)
            for st, en, ax, dim in zip(starts, ends, axes, dims):
                ax %= r
                st = min(max(st + dim if st < 0 else st, 0), dim)
                en = min(max(en + dim if en < 0 else en, 0), dim)
                length = max(0, en - st)
                pads[ax] = st
                pads[r + ax] = dim - st - length
            return [ctx.emit("Pad", [g, ctx.ints(pads)])] + nones
    # General case (steps != 1, sizes known only at run time): slice a map of flat indices the same
    # way and scatter the gradient back through it.
    size = ctx.emit("Size", [x])
    flat = ctx.emit("Range", [ctx.const(np.array(0, np.int64)), size, ctx.const(np.array(1, np.int64))])
    index = ctx.reshape_like(flat, x)
    picked = ctx.emit("Slice", [index] + [a for a in node.input[1:]])
    return [scatter_add_flat(ctx, x, picked, g)] + nones


@rule("Pad")
def pad(ctx, node, grads):
    g = grads[0]
    mode = get_attr(node, "mode", "constant")
    if mode != "constant":
        raise ctx.error(f"mode={mode!r}")
    nones = [None] * (len(node.input) - 1)
    pads_name = node.input[1]
    axes_name = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    pv = ctx.value(pads_name)
    av = ctx.value(axes_name) if axes_name else None
    if pv is not None and (av is not None or not axes_name) and (pv >= 0).all():
        pv = pv.reshape(-1).tolist()
        n = len(pv) // 2
        axes = av.reshape(-1).tolist() if av is not None else list(range(n))
        begin, end = pv[:n], pv[n:]
        ends = [-e if e > 0 else _INT64_MAX for e in end]
        return [ctx.emit("Slice", [g, ctx.ints(begin), ctx.ints(ends), ctx.ints(axes)])] + nones
    # crop where the forward padded, pad where it cropped (negative pads)
    neg = ctx.emit("Neg", [pads_name])
    inputs = [g, neg] + (["", axes_name] if axes_name else [])
    return [ctx.emit("Pad", inputs)] + nones


def _normalized_indices(ctx, indices: str, x: str, axis: int) -> str:
    """Indices with negative entries wrapped (ScatterElements' handling of them varies)."""
    v = ctx.value(indices)
    if v is not None and (v >= 0).all():
        return indices
    sx = ctx.shape(x)
    dim = sx[axis] if sx is not None else None
    if v is not None and isinstance(dim, int):
        return ctx.const(np.where(v < 0, v + dim, v).astype(np.int64), hint="indices")
    idx = indices if ctx.types.get(indices, (0,))[0] == 7 else ctx.emit("Cast", [indices], to=7)
    shifted = ctx.emit("Add", [idx, ctx.dim_of(x, axis)])
    negative = ctx.emit("Less", [idx, ctx.const(np.array(0, np.int64))])
    return ctx.emit("Where", [negative, shifted, idx])


@rule("Gather")
def gather(ctx, node, grads):
    x, indices = node.input[0], node.input[1]
    r = ctx.rank(x)
    axis = axis_attr(ctx, node)
    padded = _gather_range_as_pad(ctx, x, indices, axis, grads[0])
    if padded is not None:
        return [padded, None]
    idx = _normalized_indices(ctx, indices, x, axis)
    parts = []
    if axis > 0:
        parts.append(ctx.emit("Shape", [x], start=0, end=axis))
    parts.append(ctx.ints([-1]))
    if axis < r - 1:
        parts.append(ctx.emit("Shape", [x], start=axis + 1))
    target = ctx.emit("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
    g = ctx.emit("Reshape", [grads[0], target])
    idx = ctx.emit("Reshape", [idx, ctx.ints([1] * axis + [-1] + [1] * (r - axis - 1))])
    idx = ctx.emit("Expand", [idx, ctx.emit("Shape", [g])])
    out = ctx.emit("ScatterElements", [ctx.zeros_like(x), idx, g], axis=axis, reduction="add")
    return [out, None]


def _gather_range_as_pad(ctx, x: str, indices: str, axis: int, g: str) -> str | None:
    """Constant indices picking one position or a contiguous run (a ViT's class token, x[:, 0]): the
    gradient is the incoming one zero-padded back to full length (Pad is far cheaper than scattering
    into zeros). None otherwise."""
    v = ctx.value(indices)
    sx = ctx.shape(x)
    dim = sx[axis] if sx is not None else None
    if v is None or v.ndim > 1 or v.size == 0 or not isinstance(dim, int):
        return None
    flat = np.where(v < 0, v + dim, v).reshape(-1)
    if flat.min() < 0 or flat.max() >= dim or (flat.size > 1 and not (np.diff(flat) == 1).all()):
        return None
    if v.ndim == 0:
        g = ctx.unsqueeze(g, [axis])
    r = ctx.rank(x)
    pads = [0] * (2 * r)
    pads[axis] = int(flat[0])
    pads[r + axis] = dim - int(flat[-1]) - 1
    return ctx.emit("Pad", [g, ctx.ints(pads)])


@rule("GatherElements")
def gather_elements(ctx, node, grads):
    x, indices = node.input[0], node.input[1]
    axis = axis_attr(ctx, node)
    idx = _normalized_indices(ctx, indices, x, axis)
    out = ctx.emit("ScatterElements", [ctx.zeros_like(x), idx, grads[0]], axis=axis,
                   reduction="add")
    return [out, None]
