"""Engines: who turns the report's planned work into records.

The driver (:func:`blackbox.report.run.run_report`) plans the work: every image with the methods still to
do after the ``--resume`` checks, one :class:`WorkItem` per image, one :class:`Job` per (method, target)
record still to make. An engine computes each (image, method, target) record with
:func:`blackbox.report.engines.local.process` (setup, explain, metrics, the
PNG/NPZ files, then the item's JSON record, all written atomically under fixed names in ``OUT/items/``),
and reports every record as it lands; the driver alone builds results, summaries and pages from the
record files. Fixed names and atomic writes make a retried item idempotent: a record is never lost
halfway or stored twice.

``local``: this process, images batched per method with ``blackbox.explain_many`` when it exists.
``ray``: actors on a Ray cluster, each holding one loaded Model (:mod:`.ray`).

An engine is ``run(model, work, config, out, on_record) -> dict`` (facts about the run: workers,
retried items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...errors import ParameterError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One record to make: ``method`` for the target ``slot`` (:class:`blackbox.report.targets.TargetSlot`),
    written under ``items/<key>/<stem>.*``; ``digest``: its configuration hash."""

    method: str
    slot: Any
    stem: str
    digest: str
    several: bool = False  # the image has several targets (the record names its slot)


@dataclass
class WorkItem:
    """One image and the records still to make for it."""

    entry: Any  # blackbox.report.inputs.Entry
    truth: Any  # blackbox.report.run.Truth
    jobs: list[Job]


Engine = Callable[..., dict]


def get_engine(name: str) -> Engine:
    """The engine called ``name``; ParameterError for an unknown one, or for ray when it is not installed."""
    if name == "local":
        from .local import run

        return run
    if name == "ray":
        from .ray import require, run

        require()
        return run
    raise ParameterError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
