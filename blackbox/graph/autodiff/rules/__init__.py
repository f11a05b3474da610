"""Per-op gradient rules, one small function per ONNX op type.

A rule has the signature ``rule(ctx, node, grads) -> list[str | None]``:

* ``ctx`` is the :class:`~blackbox.graph.autodiff.context.GradContext` (fresh names, node/initializer
  emission, inferred shapes and dtypes, constant values, opset-aware helpers, the rule set in effect);
* ``node`` is the forward ``NodeProto``;
* ``grads`` holds, for each output of the node, the name of the tensor with d(score)/d(output), or
  ``None`` when that output does not reach the score.

It returns one entry per node input: the name of a tensor holding the gradient for that input, or
``None`` (not differentiable, or not needed: ask ``ctx.needs(name)``). Rules emit only standard ONNX
ops. Register one with ``@rule("OpType")`` (``..registry``); a :class:`~..registry.RuleSet` swaps rules
per call without touching the registry. Rule modules import the registry, the context's helpers and
``_helpers``, never the walk (``core.py``).
"""

from __future__ import annotations

from ..registry import RULES, Rule, rule

# Importing the families fills RULES.
from . import activations, conv, elementwise, normalization, pooling, reduce, shape  # noqa: F401

__all__ = ["RULES", "Rule", "rule"]
