"""Reductions. ReduceMax/ReduceMin split the gradient evenly among tied extrema (torch.amax/amin)."""

from __future__ import annotations

from ..registry import rule
from ._helpers import get_attr


def reduce_axes(ctx, node) -> list[int] | None:
    """Normalised reduced axes, or None for a no-op reduction (noop_with_empty_axes)."""
    x = node.input[0]
    r = ctx.rank(x)
    axes = get_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = ctx.value(node.input[1])
        if v is None:
            raise ctx.error("reduction axes computed at run time")
        axes = [int(a) for a in v.reshape(-1)]
    if not axes:
        if get_attr(node, "noop_with_empty_axes", 0):
            return None
        return list(range(r))
    return sorted(int(a) % r for a in axes)


def _keepdims_grad(ctx, node, g, axes):
    if get_attr(node, "keepdims", 1):
        return g
    return ctx.unsqueeze(g, axes)


@rule("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx, node, grads):
    x, y = node.input[0], node.output[0]
    axes = reduce_axes(ctx, node)
    g = grads[0]
    if axes is None:
        return [g, None]
    g = _keepdims_grad(ctx, node, g, axes)
    if node.op_type == "ReduceMean":
        sx = ctx.shape(x)
        dims = [sx[a] for a in axes] if sx is not None else [None]
        if all(isinstance(d, int) for d in dims):
            count = 1
            for d in dims:
                count *= d
            scale = ctx.scalar(1.0 / max(count, 1), x)
        else:
            scale = ctx.size_ratio(y, x)
        g = ctx.emit("Mul", [g, scale])
    return [ctx.expand_over(g, x, axes), None]


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(ctx, node, grads):
    x, y = node.input[0], node.output[0]
    axes = reduce_axes(ctx, node)
    g = grads[0]
    if axes is None:
        return [g, None]
    g = _keepdims_grad(ctx, node, g, axes)
    yk = _keepdims_grad(ctx, node, y, axes)
    mask = ctx.emit("Cast", [ctx.emit("Equal", [x, yk])], to=ctx.dtype(x))
    count = ctx.reduce("ReduceSum", mask, axes, keepdims=True)
    return [ctx.emit("Mul", [mask, ctx.emit("Div", [g, count])]), None]
