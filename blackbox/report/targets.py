"""Which classes a report explains per image: ``--target`` as one class, a list of classes, or ``topK``.

``ReportConfig.target`` may be

* ``None``: the image's top-1 class (one record per method, as always);
* a class index or label (``"7"``, ``"tabby cat"``): that class for every image; a label that contains
  commas (ImageNet's ``"tench, Tinca tinca"``) is first tried whole;
* a comma-separated list of them (``"cat,dog,7"``): one record per method and class;
* ``"topK"`` (``"top3"``): the image's K most likely classes (K is capped at the number of classes).

Each target of an image is a :class:`TargetSlot` with a short file-system-safe name (``top2``, ``c7``):
an image with several targets gets one record per (method, slot) named ``METHOD__SLOT``; an image with one
keeps the plain ``METHOD`` name, so a single-target run resumes the records of a run made before several
targets existed. A truth target from ``--targets-csv`` wins: that image has one slot, its truth class.

The slot's ``token`` is what the record's configuration hash holds for its target: the text the user
gave for one class (as before), ``topK`` for a rank, None for the default top-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import BlackboxError, ParameterError

_TOP = re.compile(r"^top(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class TargetSlot:
    """One target of an image: the ``rank``-th most likely class (1-based), or the class ``index``, or the
    truth class ``truth`` (a label or index resolved per image)."""

    name: str
    token: Any
    rank: int | None = None
    index: int | None = None
    truth: str | None = None


DEFAULT = (TargetSlot(name="top1", token=None, rank=1),)


def parse_targets(model: Any, text: str | int | None) -> tuple[TargetSlot, ...]:
    """``--target`` -> the slots every image gets (unless it has a truth target). A bad class, an empty
    item or ``top0`` is the user's mistake: one-line ParameterError before any work."""
    if text is None or not str(text).strip():
        return DEFAULT
    given, text = text, str(text).strip()
    found = _TOP.match(text)
    if found:
        k = int(found.group(1))
        if k < 1:
            raise ParameterError(f"--target {text}: topK needs K >= 1")
        k = min(k, int(model.num_classes))
        if k == 1:
            return DEFAULT
        return tuple(TargetSlot(name=f"top{r}", token=f"top{r}", rank=r) for r in range(1, k + 1))
    try:  # one class, even one whose label holds commas
        index = model.class_index(text)
        # the token as given (an int from Python stays an int): the hash of a single-target run as before
        return (TargetSlot(name=f"c{index}", token=given, index=index),)
    except BlackboxError as whole:
        if "," not in text:
            raise ParameterError(f"--target: {whole}") from None
    slots: list[TargetSlot] = []
    seen: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ParameterError(f"--target {text!r} has an empty item; give classes as a,b,c")
        if _TOP.match(item):
            raise ParameterError(f"--target {text!r}: topK stands alone, not in a list")
        try:
            index = model.class_index(item)
        except BlackboxError as error:
            raise ParameterError(f"--target item {item!r}: {error}") from None
        if index not in seen:
            seen.add(index)
            slots.append(TargetSlot(name=f"c{index}", token=item, index=index))
    return tuple(slots)


def slots_for(truth_target: str | None, slots: Sequence[TargetSlot]) -> tuple[TargetSlot, ...]:
    """An image's slots: its truth class alone when it has one, else the run's."""
    if truth_target is not None:
        return (TargetSlot(name="truth", token=str(truth_target), truth=str(truth_target)),)
    return tuple(slots)


def resolve(model: Any, slot: TargetSlot, logits: np.ndarray) -> int:
    """The class index of ``slot`` for an image whose logit-space scores are ``logits`` [K]. Ranks follow
    the scores (stable: ties keep the lower index first, as ``argmax`` does)."""
    if slot.index is not None:
        return int(slot.index)
    if slot.truth is not None:
        return int(model.class_index(slot.truth))
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    rank = int(slot.rank or 1)
    if rank > len(order):
        raise ParameterError(f"target top{rank}: the model has only {len(order)} classes")
    return int(order[rank - 1])


def record_stem(method_stem: str, slot: str | None) -> str:
    """The file stem of one record: ``METHOD`` for an image with one target, ``METHOD__SLOT`` otherwise."""
    return method_stem if slot is None else f"{method_stem}__{slot}"


TRUE_SPACE = {"logits": "logit", "probabilities": "probability", "log_probabilities": "log_probability"}


def true_space(space: str | None, kind: str | None) -> str | None:
    """The score space named for what it is (as :func:`blackbox.api.score_space` names it): blackbox's
    ``logit`` space of a model that outputs (log-)probabilities is the log-probability, and ``raw`` is
    whatever the model outputs."""
    if space == "logit":
        return "logit" if kind == "logits" else "log_probability"
    if space == "raw":
        return TRUE_SPACE.get(str(kind), "raw")
    return space


def target_scores(logit_row: np.ndarray, probs: np.ndarray, index: int, kind: str | None) -> dict[str, Any]:
    """The target's probability, log-probability and, when the model outputs logits, its logit (a model
    that outputs probabilities has no logits to report)."""
    p = float(probs[index])
    if kind == "logits":
        row = np.asarray(logit_row, dtype=np.float64)
        top = float(row.max())
        log_p = float(row[index] - top - np.log(np.exp(row - top).sum()))  # log-softmax, exact for tiny p
        logit: float | None = float(row[index])
    elif kind == "log_probabilities":
        log_p, logit = float(logit_row[index]), None
    else:
        log_p, logit = (float(np.log(p)) if p > 0 else float("-inf")), None
    return {"probability": p, "log_probability": log_p if np.isfinite(log_p) else None, "logit": logit}
