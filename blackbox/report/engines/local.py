"""The local engine: records computed in this process.

:func:`process` is the per-item work every engine runs (a Ray actor runs it on its share): for a chunk of
images, prepare each image once (decode, preprocess, the class probabilities), then per method explain
the chunk's (image, target) pairs (with ``blackbox.explain_many``, batched across images, when it exists; else one by
one), score each map and write its files and its record. Every item is computed on its own with the same
seed, so the numbers do not depend on the chunking, the engine or the order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import Job, WorkItem

# images prepared and explained together: the batch explain_many fills across images, and what a chunk
# holds in memory (prepared samples only; maps are scored and written one by one as they stream out)
CHUNK = 32


def run(model: Any, work: Sequence[WorkItem], config: Any, out: Path,
        on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every record of ``work``, computed here; returns facts about the run."""
    for start in range(0, len(work), CHUNK):
        process(model, work[start:start + CHUNK], config, out, on_record)
    return {"workers": 1, "batched": _explain_many() is not None}


def _explain_many() -> Callable[..., Iterator[Any]] | None:
    import blackbox

    return getattr(blackbox, "explain_many", None)


def _setup(model: Any, item: WorkItem) -> tuple[Any, tuple[np.ndarray, np.ndarray] | None, str | None]:
    """(sample, (probabilities, logit-space scores), None), or (None, None, why the image cannot be
    explained)."""
    from ..run import _error_text

    if item.entry.error is not None:
        return None, None, item.entry.error
    try:
        from ...inputs import prepare

        sample = prepare(model, item.entry.path)
        probs = model.scores(sample.x, score="probability")[0].astype(np.float64)
        logits = model.scores(sample.x, score="logit")[0].astype(np.float64)
        return sample, (probs, logits), None
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        return None, None, _error_text(error)


def _one_by_one(model: Any, paths: Sequence[str], targets: Sequence[int], method: str, config: Any) -> Iterator[Any]:
    from ...api import explain

    for path, target in zip(paths, targets):
        try:
            yield explain(model, path, method, target=target, score=config.score, seed=config.seed,
                          **config.params.get(method, {}))
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - the item's failure, recorded by the caller
            yield error


def explanations(model: Any, paths: Sequence[str], targets: Sequence[int], method: str, config: Any) -> Iterator[Any]:
    """One Explanation (or the exception that stopped it) per path, in order: batched across images with
    ``blackbox.explain_many`` when it exists and there are several, else one by one. Should the batched
    call fail as a whole, the images it did not yield are done one by one (each failure its own)."""
    many = _explain_many()
    if many is None or len(paths) < 2:
        yield from _one_by_one(model, paths, targets, method, config)
        return
    done = 0
    try:
        for result in many(model, list(paths), method, targets=list(targets), score=config.score, seed=config.seed,
                           errors="return", **config.params.get(method, {})):
            yield result
            done += 1
            if done == len(paths):
                break
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - fall back to one by one for what is left
        pass
    if done < len(paths):
        yield from _one_by_one(model, paths[done:], targets[done:], method, config)


def process(model: Any, items: Iterable[WorkItem], config: Any, out: Path,
            on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Compute, write (files, then the JSON record, each atomically under its fixed name in
    ``out/items/<key>/``) and return the records of ``items``; a failing image, method or target is a
    failed record and the rest goes on."""
    from ..run import _dumps, _error_text, _explain_item, _record_path, write_text_atomic
    from ..targets import resolve

    items = list(items)
    out = Path(out)
    records: list[dict[str, Any]] = []

    def finish(item: WorkItem, job: Job, record: dict[str, Any]) -> None:
        base = {"image": item.entry.path, "key": item.entry.key, "method": job.method,
                "slot": job.slot.name if job.several else None, "stem": job.stem, "config_hash": job.digest}
        record = {**base, **record}
        write_text_atomic(_record_path(out, item.entry, job.stem), _dumps(record))
        records.append(record)
        if on_record is not None:
            on_record(record)

    setups = {}
    classes: dict[tuple[str, str], int] = {}  # an image's target is the same for every method: resolved once
    for item in items:
        (out / "items" / item.entry.key).mkdir(parents=True, exist_ok=True)
        setups[item.entry.key] = _setup(model, item)
    for method in config.methods:
        ready: list[tuple[WorkItem, Job, int]] = []
        for item in items:
            for job in (j for j in item.jobs if j.method == method):
                sample, scores, error = setups[item.entry.key]
                if error is None:
                    try:
                        where = (item.entry.key, job.slot.name)
                        if where not in classes:
                            classes[where] = resolve(model, job.slot, scores[1])
                        ready.append((item, job, classes[where]))
                        continue
                    except KeyboardInterrupt:
                        raise
                    except Exception as failure:  # noqa: BLE001
                        error = _error_text(failure)
                finish(item, job, {"status": "failed", "error": error})
        results = explanations(model, [i.entry.path for i, _, _ in ready], [t for _, _, t in ready], method, config)
        for (item, job, index), exp in zip(ready, results):
            sample, scores, _ = setups[item.entry.key]
            if isinstance(exp, BaseException):
                record = {"status": "failed", "error": _error_text(exp)}
            else:
                try:
                    record = _explain_item(model, item.entry, method, config, item.truth, sample, scores,
                                           out / "items" / item.entry.key, exp=exp, index=index, stem=job.stem)
                except KeyboardInterrupt:
                    raise
                except Exception as error:  # noqa: BLE001
                    record = {"status": "failed", "error": _error_text(error)}
            finish(item, job, record)
    return records
