"""Helpers several rule families share: attributes, axes, and the "no gradient for these inputs" checks."""

from __future__ import annotations

from ...onnx_utils import get_attr


def axis_attr(ctx, node, default: int | None = 0, of: str | None = None) -> int:
    """The node's ``axis`` attribute normalised to ``[0, rank)`` of ``of`` (default: its first input)."""
    return int(get_attr(node, "axis", default)) % ctx.rank(of or node.input[0])


def constant_inputs(ctx, node, start: int = 1, what: str = "input-dependent parameter") -> None:
    """Raise the node's UnsupportedOpError when an input from ``start`` on wants a gradient (weights,
    scales and statistics must be constants of the explained model)."""
    for name in node.input[start:]:
        if ctx.needs(name):
            raise ctx.error(f"gradient w.r.t. {what} {name!r}")


def only_first(node, grad: str | None) -> list[str | None]:
    """``[grad, None, ...]``: the gradient of the data input, none for the others."""
    return [grad] + [None] * (len(node.input) - 1)


def positive(ctx, x: str) -> str:
    """``x > 0`` (the gate of rectifier-like rules)."""
    return ctx.emit("Greater", [x, ctx.scalar(0.0, x)])


__all__ = ["axis_attr", "constant_inputs", "get_attr", "only_first", "positive"]
