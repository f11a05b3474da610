"""Layer-wise relevance propagation (LRP) as replacement gradient rules.

Nothing here is registered in ``RULES``: :func:`lrp_ruleset` returns a :class:`~..registry.RuleSet`
with these rules as overrides for ``build_gradient_model(rules=...)``, so the same walk that computes
gradients computes relevance, in standard ONNX ops.

Why this works (the "gradient x input" form of LRP). Every tensor ``t`` carries a modified gradient
``g_t`` such that its relevance is ``R_t = t * g_t``; the method multiplies the input's ``g`` by the input
at the end. The seed (one-hot) at the score makes ``R = logit`` there. Then:

* ``Relu`` keeps its ordinary gradient rule: ``R_z = z * g * [z > 0] = relu(z) * g``, i.e. relevance
  passes through unchanged (as in Captum and zennit).
* Linear ops with an LRP rule — Conv, ConvTranspose, Gemm, MatMul, BatchNormalization, (Global)
  AveragePool, (Global)MaxPool, Add/Sum/Sub/Mean, ReduceSum/ReduceMean — get the **epsilon rule**
  ``R_i = sum_j a_i w_ji R_j / (z_j + eps sign(z_j))``. In the gradient form this is the op's own
  gradient rule applied to ``g_z * z / (z + eps sign(z))`` (sign(0) = +1, as Captum), so a bias absorbs
  its share of relevance, AveragePool and Add split relevance in proportion to their inputs, and
  MaxPool gives all of it to the window's winner (its gradient goes only there).
* The **alpha-beta rule** (Conv, Gemm, MatMul with a constant weight; Bach et al. 2015)
  ``R_i = sum_j (alpha (a_i w_ji)+ / z_j+  -  beta (a_i w_ji)- / z_j-) R_j`` with
  ``z_j+ = sum_i (a_i w_ji)+ + b_j+`` and ``z_j- = sum_i (a_i w_ji)- + b_j-`` (a bias counts as an input
  of activation 1, split by its sign). It never divides by an activation: ``g_a`` is
  ``alpha W+^T s+ - beta W-^T s-`` where ``a > 0`` and ``alpha W-^T s+ - beta W+^T s-`` where ``a < 0``,
  with ``s = R_z / z(+/-)``. Other linear ops (pooling, BatchNormalization, Add) keep the epsilon rule,
  as Captum's and zennit's composites do.

Every other op (reshapes, concat, sigmoid, ...) keeps its gradient rule: data movement passes
relevance unchanged; genuinely non-linear ops other than rectifiers make the result a
gradient x input hybrid there, without conservation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from onnx import NodeProto, helper

from ..registry import RULES, Rule, RuleSet
from ._helpers import get_attr, only_first
from .rectifiers import PLAIN

LRP_RULES = ("epsilon", "alpha_beta")

# Ops whose output relevance is redistributed with the epsilon rule (all linear in their float input).
EPSILON_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "AveragePool",
               "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "Add", "Sum", "Sub", "Mean", "ReduceSum",
               "ReduceMean")
ALPHA_BETA_OPS = ("Conv", "Gemm", "MatMul")


def _safe_div(ctx, num: str, den: str, like: str) -> str:
    """num / den, 0 where den == 0 (only possible with a zero stabiliser)."""
    zero = ctx.scalar(0.0, like)
    return ctx.emit("Where", [ctx.emit("Equal", [den, zero]), zero, ctx.emit("Div", [num, den])])


def _stabilise(ctx, z: str, eps: float, like: str) -> str:
    """z + eps * sign(z), with sign(0) = +1 (``like``: a forward tensor of z's element type)."""
    if eps == 0.0:
        return z
    pos = ctx.emit("GreaterOrEqual", [z, ctx.scalar(0.0, like)])
    step = ctx.emit("Where", [pos, ctx.scalar(eps, like), ctx.scalar(-eps, like)])
    return ctx.emit("Add", [z, step])


def epsilon_rule(base: Rule, eps: float) -> Rule:
    """Wrap the op's gradient rule: feed it ``g * z / (z + eps sign(z))`` (the epsilon-LRP step)."""

    def rule(ctx, node: NodeProto, grads):
        g = grads[0]
        if g is None:
            return base(ctx, node, grads)
        z = node.output[0]
        relevance = ctx.emit("Mul", [g, z])  # R_z = z * g_z
        s = _safe_div(ctx, relevance, _stabilise(ctx, z, eps, z), z)
        return base(ctx, node, [s, *grads[1:]])

    rule.__name__ = f"lrp_epsilon_{getattr(base, '__name__', 'rule')}"
    return rule


# ------------------------------------------------------------------------------------- alpha-beta
def _copy(node: NodeProto, inputs: list[str], **attrs) -> NodeProto:
    """The forward node with other inputs and some attributes replaced (for reusing its rules)."""
    kept = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kept.update(attrs)
    return helper.make_node(node.op_type, inputs, list(node.output), name=node.name, **kept)


class _Linear:
    """One linear op ``y = lin(a; W) + b`` with a constant weight: forward with another weight, its
    adjoint with another weight, and the bias as a constant broadcastable to ``y`` (or None)."""

    def __init__(self, ctx, node: NodeProto):
        self.ctx, self.node = ctx, node
        self.a = node.input[0]
        op = node.op_type
        w = ctx.value(node.input[1]) if len(node.input) > 1 else None
        self.ok = w is not None and not ctx.needs(node.input[1])
        self.bias = None
        if not self.ok:
            return
        if op == "Conv":
            self.weight = w
            self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            self.attrs.setdefault("kernel_shape", list(w.shape[2:]))
            if len(node.input) > 2 and node.input[2]:
                b = ctx.value(node.input[2])
                self.ok = b is not None
                if b is not None:
                    self.bias = b.reshape([1, -1] + [1] * (w.ndim - 2))
        elif op == "Gemm":
            self.weight = w * float(get_attr(node, "alpha", 1.0))  # fold alpha: signs stay right
            self.trans_a = int(get_attr(node, "transA", 0))
            self.trans_b = int(get_attr(node, "transB", 0))
            if len(node.input) > 2 and node.input[2]:
                c = ctx.value(node.input[2])
                self.ok = c is not None
                if c is not None:
                    self.bias = c * float(get_attr(node, "beta", 1.0))
        elif op == "MatMul":
            # rank-2 weight on a rank >= 2 activation: y = a @ W has a's shape but the last axis
            rank_a = ctx.rank(self.a)
            self.ok = w.ndim == 2 and rank_a >= 2
            self.weight = w
        else:
            self.ok = False

    def weight_const(self, w: np.ndarray) -> str:
        return self.ctx.const(w.astype(self.ctx.np_dtype(self.a)), hint="lrp_weight")

    def forward(self, a: str, w: str) -> str:
        ctx, op = self.ctx, self.node.op_type
        if op == "Conv":
            return ctx.emit("Conv", [a, w], **self.attrs)
        if op == "Gemm":
            return ctx.emit("Gemm", [a, w], transA=self.trans_a, transB=self.trans_b)
        return ctx.emit("MatMul", [a, w])

    def adjoint(self, g: str, w: np.ndarray) -> str:
        """W^T g for the weight ``w``, through the op's own gradient rule where one exists."""
        ctx, node, op = self.ctx, self.node, self.node.op_type
        if op == "Conv":
            name = self.weight_const(w)
            return RULES["Conv"](ctx, _copy(node, [self.a, name], kernel_shape=list(w.shape[2:])), [g])[0]
        if op == "Gemm":
            name = self.weight_const(w)
            return RULES["Gemm"](ctx, _copy(node, [self.a, name], alpha=1.0), [g])[0]
        return ctx.emit("MatMul", [g, self.weight_const(np.ascontiguousarray(w.T))])


def alpha_beta_rule(base: Rule, alpha: float, beta: float, eps: float) -> Rule:
    """Alpha-beta LRP for a linear op with a constant weight; falls back to the epsilon rule (on
    ``base``) when the weight or bias depends on the input or the op form is not handled."""
    fallback = epsilon_rule(base, eps)

    def rule(ctx, node: NodeProto, grads):
        g = grads[0]
        if g is None:
            return base(ctx, node, grads)
        lin = _Linear(ctx, node)
        if not lin.ok:
            return fallback(ctx, node, grads)
        a, z, dtype = lin.a, node.output[0], ctx.np_dtype(node.input[0])
        w_pos, w_neg = np.maximum(lin.weight, 0), np.minimum(lin.weight, 0)
        a_pos = ctx.emit("Relu", [a])
        a_neg = ctx.emit("Min", [a, ctx.scalar(0.0, a)])
        cp, cn = lin.weight_const(w_pos), lin.weight_const(w_neg)

        def part(x1: str, w1: str, x2: str, w2: str, bias: np.ndarray | None) -> str:
            out = ctx.emit("Add", [lin.forward(x1, w1), lin.forward(x2, w2)])
            if bias is not None and np.any(bias):
                out = ctx.emit("Add", [out, ctx.const(bias.astype(dtype), hint="lrp_bias")])
            return out

        relevance = ctx.emit("Mul", [g, z])  # R_z = z * g_z, z the op's real output (bias included)
        b = lin.bias
        z_pos = part(a_pos, cp, a_neg, cn, None if b is None else np.maximum(b, 0))
        s_pos = _safe_div(ctx, relevance, _stabilise(ctx, z_pos, eps, z), z)
        on_pos = lin.adjoint(s_pos, w_pos)  # contributions of positive inputs through W+
        on_neg = lin.adjoint(s_pos, w_neg)  # ... and of negative inputs through W-
        if alpha != 1.0:
            on_pos = ctx.emit("Mul", [on_pos, ctx.scalar(alpha, a)])
            on_neg = ctx.emit("Mul", [on_neg, ctx.scalar(alpha, a)])
        if beta != 0.0:
            z_neg = part(a_pos, cn, a_neg, cp, None if b is None else np.minimum(b, 0))
            s_neg = _safe_div(ctx, relevance, _stabilise(ctx, z_neg, eps, z), z)
            k = ctx.scalar(beta, a)
            on_pos = ctx.emit("Sub", [on_pos, ctx.emit("Mul", [lin.adjoint(s_neg, w_neg), k])])
            on_neg = ctx.emit("Sub", [on_neg, ctx.emit("Mul", [lin.adjoint(s_neg, w_pos), k])])
        ga = ctx.emit("Where", [ctx.emit("Greater", [a, ctx.scalar(0.0, a)]), on_pos, on_neg])
        return only_first(node, ga)

    rule.__name__ = f"lrp_alpha_beta_{getattr(base, '__name__', 'rule')}"
    return rule


def lrp_rules(rule: str = "epsilon", *, epsilon: float = 1e-6, alpha: float = 1.0,
              beta: float = 0.0) -> dict[str, Callable]:
    """Rule overrides (op type -> rule) for one LRP variant; see the module docstring."""
    if rule not in LRP_RULES:
        raise ValueError(f"unknown LRP rule {rule!r}")
    out: dict[str, Callable] = {op: epsilon_rule(RULES[op], epsilon) for op in EPSILON_OPS if op in RULES}
    if rule == "alpha_beta":
        for op in ALPHA_BETA_OPS:
            out[op] = alpha_beta_rule(RULES[op], alpha, beta, epsilon)
    return out


def lrp_ruleset(rule: str = "epsilon", *, epsilon: float = 1e-6, alpha: float = 1.0,
                beta: float = 0.0) -> RuleSet:
    """The rule set of one LRP variant: plain rectifiers, :func:`lrp_rules` as overrides. Equal
    arguments give the same rule set (so cached gradient graphs are reused)."""
    if rule != "alpha_beta":
        alpha, beta = 1.0, 0.0  # unused by the epsilon rule: one rule set per epsilon
    return _lrp_ruleset(rule, float(epsilon), float(alpha), float(beta))


@lru_cache(maxsize=64)
def _lrp_ruleset(rule: str, epsilon: float, alpha: float, beta: float) -> RuleSet:
    name = f"lrp-{rule}(epsilon={epsilon!r}" + (f", alpha={alpha!r}, beta={beta!r})" if rule == "alpha_beta" else ")")
    return PLAIN.with_overrides(name, lrp_rules(rule, epsilon=epsilon, alpha=alpha, beta=beta))


__all__ = ["ALPHA_BETA_OPS", "EPSILON_OPS", "LRP_RULES", "alpha_beta_rule", "epsilon_rule", "lrp_rules",
           "lrp_ruleset"]
