"""The gradient-rule registry and the rule sets that swap rules per call.

A rule has the signature ``rule(ctx, node, grads) -> list[str | None]`` (see ``rules/__init__.py``).
``@rule("OpType")`` registers one in :data:`RULES`, the plain gradient rules. A :class:`RuleSet` is what a
caller asks for instead of hard-coding methods in the graph layer: it names a :class:`Rectifier` (how
gradients cross ReLU-like gates) and a tuple of ``(op type, rule)`` overrides on top of :data:`RULES`.
Both are frozen and hashable, so a rule set also keys caches of built gradient graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Rule = Callable[..., "list[str | None]"]

RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the gradient rule of ``op_types`` (``"domain::Op"`` for a
    non-default domain)."""

    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


# backward(ctx, node, g, on, below) -> name of the gradient w.r.t. the gate's input.
#   g:     the incoming gradient;
#   on:    bool tensor, where the forward gate passes; None when g is already zero wherever it is off
#          (only asked of rectifiers with ``masks_only``);
#   below: None, or a zero-argument callable emitting the bool tensor of off units that are below the
#          gate's lower bound (None: every off unit is below, as for Relu).
RectifierBackward = Callable[[Any, Any, str, "str | None", "Callable[[], str] | None"], str]


@dataclass(frozen=True)
class Rectifier:
    """How the gradient crosses a rectifier (``Relu``, ``Clip`` with a lower bound of 0).

    ``masks_only``: the result is zero wherever the gate is off and depends on ``g`` only where it is on,
    so a rule downstream in the forward graph (MaxPool after Relu) may apply the gate's mask early and
    call ``backward`` with ``on=None``.
    """

    name: str
    backward: RectifierBackward
    masks_only: bool


@dataclass(frozen=True)
class RuleSet:
    """The rules of one kind of backward pass: a rectifier and per-op rule overrides.

    Equal rule sets build equal graphs, so a rule set keys caches; build overrides once (module level
    or a cached factory) so that repeated requests compare equal.
    """

    name: str
    rectifier: Rectifier
    overrides: tuple[tuple[str, Rule], ...] = ()

    def rules(self) -> dict[str, Rule]:
        """op type -> rule in effect: :data:`RULES` with the overrides applied."""
        out = dict(RULES)
        out.update(self.overrides)
        return out

    def with_overrides(self, name: str, overrides: Mapping[str, Rule]) -> RuleSet:
        """This rule set with more (or replaced) op rules, under a new name."""
        merged = {**dict(self.overrides), **overrides}
        return RuleSet(name, self.rectifier, tuple(sorted(merged.items(), key=lambda kv: kv[0])))

    def __repr__(self) -> str:
        ops = ",".join(op for op, _ in self.overrides)
        return f"RuleSet({self.name!r}, rectifier={self.rectifier.name!r}, overrides=[{ops}])"


__all__ = ["RULES", "Rectifier", "RectifierBackward", "Rule", "RuleSet", "rule"]
