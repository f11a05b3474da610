"""Per-op gradient rules, one small function per ONNX op type.

A rule has the signature ``rule(ctx, node, grads) -> list[str | None]``:

* ``ctx`` is the :class:`~blackbox.graph.autodiff.core.GradContext` (fresh names, node/initializer
  emission, inferred shapes and dtypes, constant values, opset-aware helpers);
* ``node`` is the forward ``NodeProto``;
* ``grads`` holds, for each output of the node, the name of the tensor with d(score)/d(output), or
  ``None`` when that output does not reach the score.

It returns one entry per node input: the name of a tensor holding the gradient for that input, or
``None`` (not differentiable, or not needed: ask ``ctx.needs(name)``). Rules emit only standard ONNX
ops. Register one with ``@rule("OpType")``; ``build_gradient_model(rule_overrides=...)`` swaps rules
per call without touching this registry.
"""

from __future__ import annotations

from typing import Callable

Rule = Callable[..., "list[str | None]"]

RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the gradient rule of ``op_types`` (default ONNX domain)."""

    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


# Importing the families fills RULES.
from . import activations, conv, elementwise, normalization, pooling, reduce, shape  # noqa: E402,F401

__all__ = ["RULES", "Rule", "rule"]
