"""``budget="auto"``: evaluate in rounds and stop when the map has stopped changing.

A sampled explanation (RISE, LIME, KernelSHAP) is an estimate whose noise shrinks as evaluations grow.
The rule here measures that noise from the samples themselves, by *split-half reliability*: the samples
go alternately to two independent halves, each half gives its own map, and the Pearson correlation r of
the two maps is corrected by the Spearman-Brown formula to the reliability of the map from both halves,
``rho = 2 r / (1 + r)`` (Spearman 1910, Brown 1910; see e.g. Lord & Novick, *Statistical Theories of
Mental Test Scores*, 1968, ch. 4). In classical test theory the correlation of that map with the map of
unlimited evaluations is ``sqrt(rho)``: a tolerance of 0.95 expects about 0.975.

Rounds are sized by the Spearman-Brown prophecy: n samples of reliability rho become k n of reliability
``k rho / (1 + (k - 1) rho)``, so the next total is the n that reaches the tolerance (a little more,
never less than 1.25x nor more than 2x the current one), rounded up to whole engine batches. The user's
count (``n_masks``, ``num_samples``, ``n_samples``) is the maximum. Why at most 2x: a regression's
(LIME, KernelSHAP) reliability from a few samples per feature is biased low, so a long leap from it
overshoots; rounds cost a surrogate fit each, next to nothing. With a 4x cap LIME on tabby_cat.jpg took
609 evaluations to reliability 0.987 (160 had 0.849); with 2x, 321 to 0.981 (MobileNetV2-int8, and
over lime and kernel_shap on two photos 5772 evaluations instead of 7248, every map still r >= 0.96
with a 16,000-evaluation one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUDGETS = ("fixed", "auto")
DEFAULT_TOLERANCE = 0.95
_GROWTH = (1.25, 2.0)  # bounds of one round's growth of the total
_MARGIN = 1.1  # aim a little past the prophecy: the estimate of rho is itself noisy


def split_half_reliability(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman-Brown corrected correlation of two half-estimates of a map. Two constant maps that agree
    (the model ignores every perturbation) are perfectly reliable; a constant against a varying one, 0."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    da, db = a - a.mean(), b - b.mean()
    sa, sb = math.sqrt(float(da @ da)), math.sqrt(float(db @ db))
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-30)
    if sa <= 1e-9 * scale * math.sqrt(a.size) or sb <= 1e-9 * scale * math.sqrt(b.size):
        return 1.0 if np.allclose(a, b, rtol=1e-6, atol=1e-9 * scale) else 0.0
    r = float(da @ db) / (sa * sb)
    return max(0.0, 2.0 * r / (1.0 + r)) if r > -1.0 else 0.0


def prophecy(n: int, reliability: float, tolerance: float) -> int:
    """Samples the Spearman-Brown prophecy expects to reach ``tolerance`` from ``n`` at ``reliability``,
    bounded to one round's growth."""
    low, high = _GROWTH
    if reliability <= 0.0:
        return math.ceil(n * high)
    k = tolerance * (1.0 - reliability) / (reliability * (1.0 - tolerance)) * _MARGIN
    return math.ceil(n * min(high, max(low, k)))


@dataclass(frozen=True)
class StoppingRule:
    """``first``: samples of the first round; ``maximum``: model evaluations allowed; ``step``: totals
    are rounded up to multiples of it (whole engine batches, whole pairs)."""

    tolerance: float = DEFAULT_TOLERANCE
    first: int = 256
    maximum: int = 4000
    step: int = 1

    def rounded(self, n: int) -> int:
        step = max(1, int(self.step))
        return int(math.ceil(n / step) * step)


@dataclass
class Convergence:
    """What the rounds did: the evaluations spent, each round's (samples, evaluations, reliability) and
    whether the tolerance was reached before the maximum."""

    tolerance: float
    maximum: int
    rounds: list[tuple[int, int, float]] = field(default_factory=list)
    converged: bool = False

    @property
    def n_evals(self) -> int:
        return self.rounds[-1][1] if self.rounds else 0

    @property
    def reliability(self) -> float:
        return self.rounds[-1][2] if self.rounds else 0.0

    def extras(self) -> dict[str, Any]:
        return {"budget": "auto", "tolerance": self.tolerance, "converged": self.converged,
                "reliability": self.reliability, "rounds": [list(r) for r in self.rounds]}

    def note(self, count_name: str) -> str:
        if self.converged:
            return (f"budget=auto: stopped after {self.n_evals} evaluations (split-half reliability "
                    f"{self.reliability:.3f} >= {self.tolerance:g})")
        return (f"budget=auto: the map was still changing at the maximum {count_name}={self.maximum} "
                f"(split-half reliability {self.reliability:.3f} < {self.tolerance:g}); raise {count_name} "
                "for a stable map")


def run_rounds(add: Callable[[int], int], halves: Callable[[], tuple[np.ndarray, np.ndarray]],
               rule: StoppingRule, *, max_samples: int | None = None, spent: int = 0) -> Convergence:
    """Grow the samples in rounds until the two half-maps agree to ``rule.tolerance``.

    ``add(k)``: draw and evaluate ``k`` more samples, alternately into the two halves, and return the
    model evaluations spent so far (a method that merges repeated samples spends fewer than it draws).
    ``halves()``: the two current half-maps. ``max_samples``: a bound on draws (default: the rule's
    maximum), for methods whose draws can outnumber their evaluations. ``spent``: evaluations made before
    the rounds (the unperturbed input, the two ends of a game), counted in the maximum."""
    report = Convergence(rule.tolerance, rule.maximum)
    limit = rule.maximum if max_samples is None else max_samples
    drawn = 0
    target = max(2, min(limit, rule.rounded(rule.first), rule.maximum - spent))
    evals = 0
    while True:
        evals = add(target - drawn)
        drawn = target
        reliability = split_half_reliability(*halves())
        report.rounds.append((drawn, int(evals), reliability))
        if reliability >= rule.tolerance:
            report.converged = True
            return report
        if evals >= rule.maximum or drawn >= limit:
            return report
        wanted = rule.rounded(prophecy(drawn, reliability, rule.tolerance))
        # never past the maximum of evaluations (approximately, for merged draws) nor of draws
        target = min(limit, wanted, drawn + max(2, rule.maximum - evals) if evals < rule.maximum else drawn)
        if target <= drawn:
            return report


def check_budget(budget: Any, tolerance: Any) -> bool:
    """True for ``budget="auto"``; ParameterError for anything but "fixed"/"auto" or a tolerance outside
    (0, 1)."""
    from ..errors import ParameterError

    if budget not in BUDGETS:
        raise ParameterError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) or \
            not 0.0 < float(tolerance) < 1.0:
        raise ParameterError(f"tolerance must be a number between 0 and 1 (exclusive), got {tolerance!r}")
    return budget == "auto"
