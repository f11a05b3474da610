"""The warnings shown under a report map: the explanation's own notes, plus what the report can tell
from the record's numbers.

A method's notes (int8 straight-through gradients, a flat map, ...) come first, as the method wrote them.
The report adds, unless a note already says the same (matched by a keyword, so a method that learns to
say it itself is not repeated):

* integrated gradients: the convergence delta (Captum's ``sum(attributions) - (f(x) - f(baseline))``)
  when it is more than :data:`IG_GAP` of the score difference: too few steps;
* LRP: the relevance sum against the explained score when they differ by more than :data:`LRP_GAP`:
  relevance was not conserved (biases, epsilon, or layers without a conserving rule absorb it);
* a tied class: another class within :data:`TIE` of the target's logit-space score (the explanation of
  one of two equal classes is arbitrary between them);
* a saturated probability (within :data:`SATURATED` of 0 or 1) explained in probability space, where
  the changes are below float precision;
* a guessed preprocessing (no metadata, no ``--preprocess``): every number rests on a guess.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

IG_GAP = 0.05
LRP_GAP = 0.05
TIE = 1e-6
SATURATED = 1e-6


def _said(notes: Sequence[str], *words: str) -> bool:
    text = " ".join(notes).lower()
    return any(w in text for w in words)


def record_notes(exp: Any, model: Any, probs: np.ndarray, logits: np.ndarray, index: int) -> list[str]:
    """Every warning for one record (see the module doc), the explanation's own first."""
    notes = [str(n) for n in exp.notes]
    extras = exp.extras or {}
    added: list[str] = []
    if "convergence_delta" in extras and not _said(notes, "convergence", "completeness"):
        delta = float(extras["convergence_delta"])
        diff = float(extras.get("score_input", 0.0)) - float(extras.get("score_baseline", 0.0))
        if abs(delta) > IG_GAP * max(abs(diff), 1e-12):
            added.append(f"integrated gradients: convergence delta {delta:.3g} against a score difference "
                         f"f(x) - f(baseline) of {diff:.3g} ({abs(delta) / max(abs(diff), 1e-12):.0%}): the "
                         "attributions do not add up; raise n_steps")
    if "relevance_sum" in extras and "score" in extras and not _said(notes, "relevance", "conserv"):
        total, score = float(extras["relevance_sum"]), float(extras["score"])
        if abs(total - score) > LRP_GAP * max(abs(score), 1e-12):
            added.append(f"LRP: relevance sums to {total:.3g} against a score of {score:.3g}: relevance is not "
                         "conserved (biases, epsilon or layers without a conserving rule absorb the rest)")
    row = np.asarray(logits, dtype=np.float64)
    if row.size > 1 and not _said(notes, "tied"):
        near = TIE * max(1.0, abs(float(row[index])))
        tied = [j for j in range(row.size) if j != index and abs(float(row[j]) - float(row[index])) <= near]
        if tied:
            names = ", ".join(f"{j} ({model.label(j)})" for j in tied[:3]) + (", ..." if len(tied) > 3 else "")
            added.append(f"class {index} is tied with class {names}: the model cannot tell them apart here, "
                         "and which one is explained is arbitrary")
    p = float(probs[index])
    if exp.score == "probability" and (p > 1 - SATURATED or p < SATURATED) and not _said(notes, "saturat"):
        added.append(f"the class probability is saturated (p = {p:.7g}): probability-space changes are below "
                     "float precision; explain the logit (--score logit)")
    if getattr(model, "preprocess_guessed", False) and not _said(notes, "preprocess"):
        added.append("the preprocessing was guessed (no metadata, no --preprocess): every number here assumes it")
    return notes + added
