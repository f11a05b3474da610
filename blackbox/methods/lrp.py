"""Layer-wise relevance propagation (Bach et al. 2015) on the ONNX graph.

The differentiator runs with LRP rules in place of the gradient rules of linear ops
(``blackbox.graph.autodiff.rules.lrp``); relevance is ``input * modified gradient``. Relevance starts at
the target's score (default ``raw``: the logit for logit models) and is conserved layer to layer by
the epsilon rule up to what biases absorb (and what ``epsilon`` absorbs). Meant for Conv / Gemm /
ReLU / pooling / BatchNormalization / Add networks; other non-linear ops are crossed by their
gradient, without conservation. Models whose output is a softmax start from the probability and
cross the softmax by its gradient (no conservation there either): prefer a logit output.

Conservation is checked on every result: ``extras["conservation_gap"]`` is ``|sum(relevance) - score|``
relative to ``|score|``, and a gap above :data:`LRP_CONSERVATION_TOLERANCE` (10%) adds a note, so a map
that explains only part of the score says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ParameterError
from ..graph.autodiff.rules.lrp import LRP_RULES, lrp_ruleset
from .base import Context, Param, Result, batched, register

LRP_CONSERVATION_TOLERANCE = 0.10


@register("lrp", default_score="raw", kind="gradient",
          summary="layer-wise relevance propagation (epsilon or alpha-beta rule); relevance sums to the score",
          params={"rule": Param(choices=LRP_RULES), "epsilon": Param(min=0), "alpha": Param(min=0),
                  "beta": Param(min=0)})
def lrp(ctx: Context, *, rule: str = "epsilon", epsilon: float = 1e-6, alpha: float = 1.0,
        beta: float = 0.0) -> Result:
    """``rule``: ``"epsilon"`` (default; every linear op, pooling, BatchNormalization and Add
    redistribute ``R_j a_i w_ji / (z_j + epsilon sign(z_j))``) or ``"alpha_beta"`` (Conv/Gemm/MatMul
    split positive and negative contributions, ``alpha`` (default 1) times the positive share minus
    ``beta`` (default 0) times the negative share; ``alpha - beta`` must be 1; the other ops keep the
    epsilon rule). ``epsilon`` (default 1e-6, zennit's; Captum's is 1e-9) also stabilises the
    alpha-beta denominators. The attributions are pixel relevances [C, H, W]; the heatmap sums them
    over channels."""
    return lrp_many([ctx], rule=rule, epsilon=epsilon, alpha=alpha, beta=beta)[0]


@batched("lrp")
def lrp_many(contexts: Sequence[Context], *, rule: str = "epsilon", epsilon: float = 1e-6, alpha: float = 1.0,
             beta: float = 0.0) -> list[Result]:
    """LRP of several images in one pass of the LRP graph: its rules act row by row (each row's
    relevance starts at its own target), so rows of different images do not mix."""
    if rule not in LRP_RULES:
        raise ParameterError(f"unknown LRP rule {rule!r}: use one of {', '.join(LRP_RULES)}")
    for label, value in (("epsilon", epsilon), ("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value < 0:
            raise ParameterError(f"{label} must be a finite number >= 0, got {value!r}")
    if rule == "alpha_beta" and abs(alpha - beta - 1.0) > 1e-9:
        raise ParameterError(f"alpha - beta must be 1 for the alpha-beta rule to conserve relevance; "
                             f"got alpha={alpha}, beta={beta}")
    rules = lrp_ruleset(rule, epsilon=float(epsilon), alpha=float(alpha), beta=float(beta))
    engine = contexts[0].model.gradients
    targets = [ctx.target for ctx in contexts]
    seed = np.zeros((len(contexts), engine.model.num_classes), np.float32)
    seed[np.arange(len(contexts)), targets] = 1.0
    out = engine.run(np.stack([ctx.x for ctx in contexts]), seed, score=contexts[0].score, rules=rules)
    results = []
    for i, ctx in enumerate(contexts):
        relevance = out.grad[i].astype(np.float64) * ctx.x.astype(np.float64)
        total, score = float(relevance.sum()), float(out.scores[i, ctx.target])
        gap, note = conservation(total, score)
        results.append(Result(attributions=relevance.astype(np.float32),
                              heatmap=relevance.sum(axis=0).astype(np.float32), n_evals=1, pixel_attributions=True,
                              notes=list(engine.notes) + ([note] if note else []),
                              extras={"rule": rule, "relevance_sum": total, "score": score,
                                      "conservation_gap": gap}))
    return results


def conservation(total: float, score: float,
                 tolerance: float = LRP_CONSERVATION_TOLERANCE) -> tuple[float, str | None]:
    """(|total - score| relative to |score|, a note or None): how much of the explained score the pixel
    relevances account for. A zero score with a non-zero sum is an infinite gap."""
    delta = abs(total - score)
    if delta <= 1e-6 * max(abs(score), abs(total), 1.0):
        return (0.0 if score == 0 else delta / abs(score)), None
    gap = delta / abs(score) if score != 0 else float("inf")
    if gap <= tolerance:
        return gap, None
    shown = "inf" if gap == float("inf") else f"{100 * gap:.0f}%"
    return gap, (f"lrp: relevance sums to {total:.4g} but the explained score is {score:.4g} (gap {shown}): "
                 "biases, epsilon and ops without an LRP rule absorb or add relevance; compare pixels within "
                 "this map, not with the score")
