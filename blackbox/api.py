"""``blackbox.explain``: one call from a model and an input to an Explanation."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .errors import ParameterError
from .explanation import Explanation
from .inputs import from_internal, prepare
from .methods import METHODS, Context
from .methods.base import MethodSpec, Result
from .model import SCORE_SPACES, Model
from .runtime import numpy_on_one_thread


def resolve_target(model: Model, target: int | str | None, x: np.ndarray) -> int:
    """None -> the top-1 class; an int (or digit string) -> that index; a string -> the label's index."""
    if target is None:
        return int(np.argmax(model.scores(x, score="raw")[0]))
    return model.class_index(target)


FLAT_MAP_NOTE = "the map is "  # how the notes below begin (the CLI shows them as warnings)


def flat_map_notes(heatmap: np.ndarray) -> list[str]:
    """A note when the map says nothing: all zero or one constant value (every method, one place)."""
    values = np.asarray(heatmap, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []  # NaN maps are the numerical checks' business
    if not finite.any():
        return [("the map is all zero: the score did not respond to this method's changes (a saturated or tied "
                "class, or a dead layer); try another method, score or target")]
    if np.ptp(finite) <= 1e-12 * max(1.0, float(np.abs(finite).max())):
        return [(f"the map is constant ({float(finite[0]):.4g} everywhere): it ranks no pixel above another; try "
                "another method, score or target")]
    return []


TIE_TOLERANCE = 1e-5  # relative: another class this close to the target's probability ties with it
SATURATED = 1.0 - 1e-6  # a probability this close to 1 is 1.0 to float32 precision


def target_notes(probabilities: np.ndarray, target: int, score: str) -> list[str]:
    """Notes when the target's score cannot rank pixels well: another class ties with it (the model
    cannot tell them apart here), or its probability is 1.0 to float precision (probability-space maps
    go flat, since no change moves a saturated softmax)."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    notes = []
    mine = float(p[target])
    others = np.delete(np.arange(p.size), target)
    tied = others[np.abs(p[others] - mine) <= TIE_TOLERANCE * max(mine, 1e-30)] if mine > 0 else others[:0]
    if tied.size:
        shown = ", ".join(str(int(i)) for i in tied[:5]) + (", ..." if tied.size > 5 else "")
        notes.append(f"the target is tied with class {shown} (probability {mine:.4g} each): the model does not "
                     "separate them here, so the map may explain either; try another target or model")
    if mine >= SATURATED and score == "probability":
        notes.append(f"the target's probability is {mine:.7f}, 1.0 to float precision: a probability-space map "
                     "is flat because nothing moves a saturated softmax; explain score logit instead")
    return notes


def preprocess_notes(model: Model) -> list[str]:
    """A note when the preprocessing was guessed: the map explains that guess, which may not be how the
    model was trained."""
    if not model.preprocess_guessed:
        return []
    return [("the preprocessing was guessed (no preset given, no metadata in the model): pixels/255 and an exact "
            "resize; pass the model's preset (CLI --preset: imagenet, caffe, mnist, mnist-normalized, cifar, none, "
            "raw)")]


def score_space(model: Model, score: str) -> str:
    """The true name of a score space: the "logit" of a model that outputs probabilities or
    log-probabilities is a log-probability (log p), not a logit."""
    if score == "logit" and model.output_kind in ("probabilities", "log_probabilities"):
        return "log_probability"
    return score


def check_request(model: Model, method: str, score: str | None) -> tuple[MethodSpec, str]:
    """The method's spec and the score space to explain, refused before any work when unknown."""
    if method not in METHODS:
        raise ParameterError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    spec = METHODS[method]
    score = score or spec.default_score
    if score not in SCORE_SPACES:
        raise ParameterError(f"unknown score {score!r}: use one of {', '.join(SCORE_SPACES)}")
    return spec, score


def build_explanation(spec: MethodSpec, ctx: Context, result: Result, params: dict[str, Any], seconds: float,
                      target_score: float | None = None, probabilities: np.ndarray | None = None) -> Explanation:
    """A method's Result -> the Explanation the user sees: the map taken back onto the picture, the
    attributions in the model's layout, the parameters used and the notes. One place, so ``explain`` and
    ``explain_many`` build identical Explanations; ``target_score`` may come from a batched forward pass
    and ``probabilities`` (the sample's class probabilities, for the tie and saturation notes) may come
    from a batched forward pass (default: one pass for this sample)."""
    model, sample = ctx.model, ctx.sample
    model_heatmap = np.asarray(result.heatmap, dtype=np.float32)
    if sample.model_space:
        heatmap, picture, seen = model_heatmap, model.preprocess.display(sample.x), None
    else:
        heatmap, picture = sample.geometry.to_image(model_heatmap), sample.image  # one float32 copy
        seen = sample.geometry.seen()  # outside a centre crop: unseen
    attributions = from_internal(model, result.attributions) if result.pixel_attributions else result.attributions
    used = {**spec.parameters(), **params}
    score_value = ctx.target_score() if target_score is None else float(target_score)
    if probabilities is None:
        probabilities = model.scores(sample.x, score="probability")[0]
    notes = (list(result.notes) + flat_map_notes(model_heatmap) + target_notes(probabilities, ctx.target, ctx.score)
             + preprocess_notes(model))
    return Explanation(method=spec.name, target=ctx.target, label=model.label(ctx.target), target_score=score_value,
                       score=score_space(model, ctx.score), attributions=np.asarray(attributions), heatmap=heatmap,
                       model_heatmap=model_heatmap, image=picture, params=used, n_evals=int(result.n_evals),
                       seconds=seconds, source=sample.source, notes=list(dict.fromkeys(notes)),
                       extras=result.extras, seen=seen)


def explain(model: Model, x: Any, method: str = "occlusion", *, target: int | str | None = None,
            score: str | None = None, seed: int | None = 0, progress: bool = False, **params: Any) -> Explanation:
    """Explain the model's score for ``target`` on ``x`` with ``method``.

    ``x``: an image path, an H x W x C uint8 picture (preprocessed; the heatmap is mapped back onto it), or
    a float array shaped like one model input (used as is; the heatmap stays in model space).
    ``score``: "probability", "logit" or "raw" (default: the method's own, see ``METHODS[name]``).
    ``seed`` fixes every random choice. Method parameters go in ``params``.
    Several images: :func:`blackbox.explain_many` (batched across images, same results).
    """
    spec, score = check_request(model, method, score)
    sample = prepare(model, x)
    spec.check_params(params, shape=sample.x.shape, layout=model.layout)
    index = resolve_target(model, target, sample.x)
    ctx = Context(model=model, sample=sample, target=index, score=score, seed=seed, progress=progress)
    start = time.perf_counter()
    with numpy_on_one_thread():
        result = spec.function(ctx, **params)
    return build_explanation(spec, ctx, result, params, time.perf_counter() - start)
