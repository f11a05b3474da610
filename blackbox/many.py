"""``blackbox.explain_many``: explain a stream of images, batched across images, in input order.

Why a separate entry point: one image at a time leaves the model's batches mostly empty (a saliency
map is one gradient row; a Grad-CAM one tapped pass). Here B images go through the method's batched
form (``MethodSpec.many``) so they share gradient-graph and forward calls, while the next B images are
decoded and preprocessed in a small thread pool. Results equal ``blackbox.explain`` image by image
(same seed, same target rules) up to float rounding of differently sized batches.

Memory stays flat in the number of images: the input is pulled lazily, and at most the batch being
evaluated and the batch being prepared are held.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .api import build_explanation, check_request
from .errors import ImageError, ParameterError
from .explanation import Explanation
from .image_io import IMAGE_SUFFIXES
from .inputs import Sample, prepare
from .methods import Context, MethodSpec, Result
from .model import Model
from .runtime import numpy_on_one_thread

__all__ = ["ERROR_MODES", "MAX_DEFAULT_BATCH", "explain_many"]

ERROR_MODES = ("raise", "return")
MAX_DEFAULT_BATCH = 64  # images held per batch by default: decoded photos can be large
_PREFETCH_THREADS = 2

Target = int | str | None


def explain_many(model: Model, images: Any, method: str, *, targets: Target | Sequence[Target] = None,
                 score: str | None = None, seed: int | None = 0, batch_size: int | None = None,
                 progress: bool = False, prefetch: bool = True, errors: str = "raise",
                 **params: Any) -> Iterator[Explanation | Exception]:
    """Explain every image of ``images`` with ``method``; an iterator of Explanations in input order.

    ``images``: a folder (its image files, sorted by name), or a list / any iterable (a generator is
    pulled lazily) of what :func:`blackbox.explain` takes as ``x`` (paths, uint8 pictures, model-space
    arrays), or a stacked array of them. ``targets``: None (each image's top-1 class), one class index
    or label for all, or a sequence with one per image (None entries: that image's top-1).
    ``batch_size``: images evaluated together (default: from ``model.batch_size()``); methods with a
    batched form share model calls among them, others run image by image. ``prefetch``: decode and
    preprocess the next batch in 2 threads while the current one is evaluated. ``seed``, ``score`` and
    ``params`` as for ``explain``: every image gets the same seed, so each result equals ``explain`` on
    that image alone.

    Method, score, parameters, targets and batch size are checked here, before any image is read; a
    wrong one raises at once (ParameterError/TargetError). Failures of one image (an unreadable file,
    a method error) stay with that image: ``errors="raise"`` (default) yields the images before it, then
    raises its exception (the iterator ends there); ``errors="return"`` yields the exception object in
    its place and goes on, for callers that record per-item failures (the report).
    """
    spec, score = check_request(model, method, score)
    if errors not in ERROR_MODES:
        raise ParameterError(f"errors={errors!r} is not valid; use one of {', '.join(ERROR_MODES)}")
    spec.check_params(params, shape=model.description.input_sizes(), layout=model.layout)
    size = _batch_size(model, batch_size)
    items, count = _items(model, images)
    per_image = _targets(model, targets, count)
    return _stream(model, spec, score, items, per_image, size, seed=seed, params=params, progress=progress,
                   prefetch=prefetch, errors=errors, total=count)


# ------------------------------------------------------------------------------------- arguments
def _batch_size(model: Model, batch_size: int | None) -> int:
    """The user's batch size, checked, or an even number of engine batches: the gradient graph takes
    half the forward batch per call, so two calls per batch of images run full."""
    if batch_size is None:
        return int(min(MAX_DEFAULT_BATCH, max(2, 2 * (model.batch_size() // 2))))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size={batch_size!r} is not valid; batch_size must be a whole number >= 1")
    return int(batch_size)


def _one_input_rank(model: Model) -> int:
    return 2 if model.layout == "NHW" else 3


def _items(model: Model, images: Any) -> tuple[Iterator[Any], int | None]:
    """The images as a lazy iterator, and their count when known without pulling them."""
    if isinstance(images, (str, os.PathLike)):
        listed = _folder(Path(images))
        return iter(listed), len(listed)
    if isinstance(images, np.ndarray):
        single = (images.dtype == np.uint8 and images.ndim in (2, 3)) or \
            (np.issubdtype(images.dtype, np.floating) and images.ndim == _one_input_rank(model))
        listed = [images] if single else list(images)  # rows are views: no copy
        return iter(listed), len(listed)
    if not isinstance(images, Iterable):
        raise ImageError(f"images must be a folder, a list or an iterable of images, got {type(images).__name__}")
    count = len(images) if hasattr(images, "__len__") else None
    if count == 0:
        raise ImageError("images is empty; give a folder of images, a list of paths or of arrays")
    return iter(images), count


def _folder(path: Path) -> list[str]:
    """A folder's image files sorted by name (a stable order for resumable runs), or one file."""
    if path.is_dir():
        listed = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not listed:
            raise ImageError(f"the folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES[:5])}, ...)")
        return listed
    if not path.exists():
        raise ImageError(f"images: {str(path)!r} does not exist; give a folder of images or a list of files")
    return [str(path)]


def _targets(model: Model, targets: Any, count: int | None) -> Sequence[int | None] | int | None:
    """None (top-1 for all), one class index for all, or one checked index (or None) per image."""
    if targets is None:
        return None
    if isinstance(targets, (str, int, np.integer)) and not isinstance(targets, bool):
        return model.class_index(targets)
    if not isinstance(targets, Iterable):
        raise ParameterError(f"targets must be None, a class index or label, or one per image; got {targets!r}")
    listed = [None if t is None else model.class_index(t) for t in targets]
    if count is not None and len(listed) != count:
        raise ParameterError(f"targets has {len(listed)} entries for {count} images; give one per image, "
                             "a single class for all, or None for each image's top-1")
    return listed


# ------------------------------------------------------------------------------------- streaming
class _Item:
    """One image on its way through: where it was in the input, its sample (or why it has none),
    its target (None: top-1), and then its context and result."""

    __slots__ = ("context", "error", "index", "probabilities", "result", "sample", "seconds", "target",
                 "target_score")

    def __init__(self, index: int, target: int | None):
        self.index, self.target = index, target
        self.sample: Sample | None = None
        self.error: Exception | None = None
        self.context: Context | None = None
        self.result: Result | None = None
        self.seconds = 0.0
        self.target_score: float | None = None
        self.probabilities: np.ndarray | None = None


def _prepare(model: Model, item: Any) -> Sample | Exception:
    """Decode and preprocess one image; its failure is returned, to stay with that image."""
    try:
        return prepare(model, item)
    except Exception as error:  # noqa: BLE001 - any failure belongs to this image only
        return error


def _batches(items: Iterator[Any], targets: Any, size: int, count: int | None
             ) -> Iterator[list[tuple[_Item, Any]]]:
    """Groups of ``size`` (item, raw image), pulled from the input only when asked for."""
    index = 0
    while True:
        chunk = list(islice(items, size))
        if not chunk:
            if isinstance(targets, list) and count is None and index != len(targets):
                raise ParameterError(f"targets has {len(targets)} entries for {index} images; give one per image, "
                                     "a single class for all, or None for each image's top-1")
            return
        group = []
        for raw in chunk:
            if isinstance(targets, list):
                if index >= len(targets):
                    raise ParameterError(f"targets has {len(targets)} entries but there are more images; give one "
                                         "per image, a single class for all, or None for each image's top-1")
                target = targets[index]
            else:
                target = targets
            group.append((_Item(index, target), raw))
            index += 1
        yield group


def _start(model: Model, group: list[tuple[_Item, Any]] | None, pool: ThreadPoolExecutor | None
           ) -> list[tuple[_Item, Future | Any]] | None:
    """Begin preparing a group: in the pool (prefetch), or later on the caller's thread."""
    if group is None:
        return None
    if pool is None:
        return group
    return [(item, pool.submit(_prepare, model, raw)) for item, raw in group]


def _finish(model: Model, started: list[tuple[_Item, Any]], pool: ThreadPoolExecutor | None) -> list[_Item]:
    """The group's items with their samples (or errors) filled in."""
    out = []
    for item, pending in started:
        prepared = pending.result() if pool is not None else _prepare(model, pending)
        if isinstance(prepared, Exception):
            item.error = prepared
        else:
            item.sample = prepared
        out.append(item)
    return out


def _stream(model: Model, spec: MethodSpec, score: str, items: Iterator[Any], targets: Any, size: int, *,
            seed: int | None, params: dict[str, Any], progress: bool, prefetch: bool, errors: str,
            total: int | None) -> Iterator[Explanation | Exception]:
    pool = ThreadPoolExecutor(_PREFETCH_THREADS, thread_name_prefix="blackbox-prefetch") if prefetch else None
    groups = _batches(items, targets, size, total)
    bar = tqdm(total=total, desc=f"{spec.name} images", unit="image", disable=not progress, dynamic_ncols=True,
               delay=1.0)  # shown once a run passes a second
    try:
        started = _start(model, next(groups, None), pool)
        while started is not None:
            batch = _finish(model, started, pool)
            if pool is not None:  # the next batch decodes while this one runs
                started = _start(model, next(groups, None), pool)
            _evaluate(model, spec, score, batch, seed=seed, params=params)
            for item in batch:
                outcome = _outcome(spec, item, params)
                bar.update(1)
                if isinstance(outcome, Exception) and errors == "raise":
                    raise outcome
                yield outcome
            del batch
            if pool is None:  # no prefetch: pull the next images only now
                started = _start(model, next(groups, None), pool)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------- evaluation
def _guarded(items: list[_Item], batched_step, single_step) -> None:
    """Run a step for all items at once; if that fails, item by item, so only the failing ones carry
    the error (a NaN input or a method error on one image must not cost the others)."""
    live = [item for item in items if item.error is None]
    if not live:
        return
    try:
        batched_step(live)
    except Exception:  # noqa: BLE001 - retried one by one below, to find whose it is
        retry = live
    else:
        retry = []
    for item in retry:
        try:
            single_step(item)
        except Exception as error:  # noqa: BLE001
            item.error = error


def _evaluate(model: Model, spec: MethodSpec, score: str, batch: list[_Item], *, seed: int | None,
              params: dict[str, Any]) -> None:
    """Targets, scores and method results for one batch, sharing model calls where possible."""
    _guarded([i for i in batch if i.target is None], _top1_batch(model), _top1_batch(model, single=True))
    for item in batch:
        if item.error is None:
            item.context = Context(model=model, sample=item.sample, target=item.target, score=score, seed=seed,
                                   progress=False)
    _guarded(batch, _target_scores, _target_scores_single)
    if spec.many is not None:
        _guarded(batch, lambda live: _run_many(spec, live, params), lambda item: _run_one(spec, item, params))
    else:
        for item in batch:
            if item.error is None:
                try:
                    _run_one(spec, item, params)
                except Exception as error:  # noqa: BLE001
                    item.error = error


def _top1_batch(model: Model, single: bool = False):
    """The step that fills in the top-1 class (``explain``'s rule: argmax of the raw output)."""

    def step(live: list[_Item]) -> None:
        raw = model.scores(np.stack([item.sample.x for item in live]), score="raw")
        for item, row in zip(live, raw):
            item.target = int(np.argmax(row))

    return (lambda item: step([item])) if single else step


def _target_scores(live: list[_Item]) -> None:
    """The target's score and the class probabilities (for the tie and saturation notes), batched."""
    ctx = live[0].context
    xs = np.stack([item.sample.x for item in live])
    values = ctx.model.scores(xs, score=ctx.score)
    probabilities = values if ctx.score == "probability" else ctx.model.scores(xs, score="probability")
    for item, row, p in zip(live, values, probabilities):
        item.target_score, item.probabilities = float(row[item.target]), p


def _target_scores_single(item: _Item) -> None:
    item.target_score = item.context.target_score()
    item.probabilities = item.context.model.scores(item.context.x, score="probability")[0]


def _run_many(spec: MethodSpec, live: list[_Item], params: dict[str, Any]) -> None:
    start = time.perf_counter()
    with numpy_on_one_thread():
        results = spec.many([item.context for item in live], **params)
    if len(results) != len(live):
        raise RuntimeError(f"{spec.name}: the batched form returned {len(results)} results for {len(live)} images")
    share = (time.perf_counter() - start) / len(live)  # a batch's time, shared evenly
    for item, result in zip(live, results):
        item.result, item.seconds = result, share


def _run_one(spec: MethodSpec, item: _Item, params: dict[str, Any]) -> None:
    start = time.perf_counter()
    with numpy_on_one_thread():
        item.result = spec.function(item.context, **params)
    item.seconds = time.perf_counter() - start


def _outcome(spec: MethodSpec, item: _Item, params: dict[str, Any]) -> Explanation | Exception:
    """The item's Explanation, built only now (so a batch holds Results, not pictures-sized maps), or its error."""
    if item.error is not None:
        return item.error
    try:
        return build_explanation(spec, item.context, item.result, params, item.seconds,
                                 target_score=item.target_score, probabilities=item.probabilities)
    except Exception as error:  # noqa: BLE001
        return error
    finally:
        item.result = item.context = item.sample = None  # drop the arrays as soon as they are out
