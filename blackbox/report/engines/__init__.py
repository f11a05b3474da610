"""Engines: who turns the report's planned work into records.

The driver (:func:`blackbox.report.run.run_report`) plans the work: every image with the methods still to
do after the ``--resume`` checks, one :class:`WorkItem` per image. An engine computes each
(image, method) record with :func:`blackbox.report.engines.local.process` (setup, explain, metrics, the
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


@dataclass
class WorkItem:
    """One image and the methods to run on it; ``digests``: each method's configuration hash."""

    entry: Any  # blackbox.report.inputs.Entry
    truth: Any  # blackbox.report.run.Truth
    methods: list[str]
    digests: dict[str, str]


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
