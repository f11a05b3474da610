"""Run :mod:`blackbox.graph.incremental` for a model: the clean pass, the patched graph, the batches;
and :func:`window_scores`, occlusion's full-evaluation path (:mod:`blackbox.graph.window_masks`).

:func:`local_scores` scores samples that differ from one image only inside a box per sample (occlusion
windows): one clean forward pass keeps every activation, then each batch runs the rewritten graph on the
samples' input rectangles. Sessions and plans are cached per model and per box layout, so a second
image with the same windows costs only its clean pass.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import runtime
from .graph.compose import (
    BASELINE,
    SCORES,
    TARGETS,
    X_IN,
    X,
    _Builder,
    _score_head,
    forward_graph,
)
from .graph.incremental import PATCH, IncrementalPlan, clean_feeds, incremental_graph
from .graph.onnx_utils import finish_model
from .graph.window_masks import HX, HY, window_graph

MODES = ("auto", True, False)
# "auto" uses the patched graph when it is estimated to cost at most this fraction of full evaluation
AUTO_RATIO = 0.75
AUTO_MIN_SAMPLES = 16
CPU_BATCH = 32
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Patched:
    plan: IncrementalPlan | None
    session: object | None


class _ModelCache:
    """Per model: the tapped clean session (every tensor out) and the patched sessions per box layout."""

    def __init__(self):
        self.clean: dict[str, tuple[object, list[str]]] = {}
        self.patched: dict[tuple, _Patched] = {}
        self.windows: dict[str, runtime.Runner] = {}


def applicable(model) -> bool:
    """The rewrite works on NCHW float/float16 image inputs of batchable models."""
    return (model.layout == "NCHW" and model.batchable
            and model.image.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16))


def wanted(mode, model, count: int) -> bool:
    """Whether to try the incremental path for ``count`` local perturbations: ``mode`` True whenever the
    model allows it, "auto" from :data:`AUTO_MIN_SAMPLES` on (below, the clean pass and the session
    built for a new layout cost more than the few evaluations saved)."""
    if mode is False or not applicable(model):
        return False
    return mode is True or count >= AUTO_MIN_SAMPLES


def _cache(model) -> _ModelCache:
    if model not in _CACHE:
        _CACHE[model] = _ModelCache()
    return _CACHE[model]


def _clean_session(model, score: str):
    cache = _cache(model)
    if score not in cache.clean:
        forward = forward_graph(model.graph, model.image, model.output, dict(model.constants), score=score)
        names = [o for node in forward.graph.node for o in node.output if o and o != SCORES]
        present = {o.name for o in forward.graph.output}
        for name in names:
            if name not in present:
                forward.graph.output.append(helper.make_value_info(name, onnx.TypeProto()))
        cache.clean[score] = (runtime.make_session(forward, model.device), [SCORES] + names)
    return cache.clean[score]


def clean_pass(model, x: np.ndarray, score: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scores [1, K] of ``x`` [C, H, W] and every activation of the model (batch 1)."""
    session, names = _clean_session(model, score)
    outputs = session.run(names, {X: np.asarray(x, np.float32)[None]})
    return outputs[0], dict(zip(names[1:], outputs[1:]))


def _with_head(plan: IncrementalPlan, model, score: str) -> onnx.ModelProto:
    """The patched graph with the score head and the target Gather of the ordinary scoring graph."""
    b = _Builder()
    scores = _score_head(b, model.output, score)
    b.op("Gather", [scores, TARGETS], "target_scores", output=SCORES, axis=1)
    g = plan.model.graph
    graph = helper.make_graph(list(g.node) + b.nodes, "blackbox_incremental_scores",
                              list(g.input) + [helper.make_tensor_value_info(TARGETS, TensorProto.INT64, ["T"])],
                              [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["N", "T"])],
                              list(g.initializer) + b.inits)
    graph.value_info.extend(g.value_info)
    return finish_model(plan.model, graph)


def patched(model, activations: dict[str, np.ndarray], boxes: np.ndarray, score: str, key) -> _Patched:
    """The plan and session for one box layout (``key`` names it), built once per model."""
    cache = _cache(model)
    if (key, score) not in cache.patched:
        shapes = {name: (tuple(value.shape), value.dtype) for name, value in activations.items()}
        plan = incremental_graph(model.graph, model.image.name, shapes, boxes)
        session = None if plan is None else runtime.make_session(_with_head(plan, model, score), model.device)
        cache.patched[(key, score)] = _Patched(plan, session)
    return cache.patched[(key, score)]


def prepare(model, x: np.ndarray, boxes: np.ndarray, score: str, key, *, strict: bool):
    """(clean scores [1, K], activations, the patched plan and session) for ``x`` [C, H, W], or None
    when the rewrite finds nothing to patch. An optimisation must not break an explanation: with
    ``strict`` False a failure to build or run the clean pass or the rewritten graph (an op ONNX Runtime
    refuses in the tapped or rewritten form, say) also means None, and the caller evaluates in full."""
    try:
        scores, activations = clean_pass(model, x, score)
        entry = patched(model, activations, boxes, score, key)
    except Exception:
        if strict:
            raise
        return None
    return None if entry.plan is None else (scores, activations, entry)


def patched_batch(model) -> int:
    """Samples per run: patches are small, so on CPU a batch larger than the full model's budget pays
    (SqueezeNet-fp16's budget allows 4; the patched graph ran fastest at 32 or more)."""
    if model.device.kind == "cuda":
        return model.batch_size()
    return max(model.batch_size(), CPU_BATCH)


def local_scores(model, activations: dict[str, np.ndarray], entry: _Patched, patches: Callable, *,
                 targets: Sequence[int], progress: Callable[[int], None] | None = None,
                 batch_size: int | None = None) -> np.ndarray:
    """Scores [K, T] of the K local perturbations; ``patches(start, stop)`` returns their input
    rectangles float32 [n, C, P, Q] (model space, at ``entry.plan.region``)."""
    plan, session = entry.plan, entry.session
    fixed = clean_feeds(plan, activations)
    fixed[TARGETS] = np.asarray(list(targets), np.int64)
    for name, value in model.constants.items():
        fixed[name] = np.asarray(value)
    count = len(plan.region.starts)
    size = max(1, int(batch_size or patched_batch(model)))
    out, start = [], 0
    while start < count:
        stop = min(count, start + size)
        feeds = dict(fixed)
        feeds[PATCH] = np.ascontiguousarray(patches(start, stop), dtype=np.float32)
        feeds.update(plan.batch_indices(start, stop))
        try:
            out.append(session.run([SCORES], feeds)[0])
        except Exception as error:
            if runtime.is_out_of_memory(error) and size > 1:
                size //= 2
                continue
            raise
        if progress is not None:
            progress(stop - start)
        start = stop
    return runtime.check_finite(np.concatenate(out), "perturbed inputs")


def window_scores(model, x: np.ndarray, baseline: np.ndarray, hy: np.ndarray, hx: np.ndarray, *,
                  targets: Sequence[int], score: str, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Scores [N, T] of the whole model on ``x + (baseline - x) * hy * hx`` (x, baseline [C, H, W] in
    model space; one window per row of ``hy`` [N, 1|C, H, 1] and ``hx`` [N, 1, 1, W])."""
    cache = _cache(model)
    if score not in cache.windows:
        graph = window_graph(model.graph, model.image, model.output, score=score, constants=dict(model.constants))
        cache.windows[score] = runtime.Runner(runtime.make_session(graph, model.device), model.device,
                                              model.batch_size(), SCORES)
    fixed = {X_IN: np.asarray(x, np.float32)[None], BASELINE: np.asarray(baseline, np.float32).reshape((1, *np.shape(x))),
             TARGETS: np.asarray(list(targets), np.int64)}
    out = cache.windows[score].run(fixed, {HY: np.asarray(hy, np.float32), HX: np.asarray(hx, np.float32)},
                                   progress=progress)
    return runtime.check_finite(out, "perturbed inputs")
