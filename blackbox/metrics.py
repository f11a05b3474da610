"""How good is an explanation? Causal curves, localisation and sanity checks, all through the Model.

- :func:`deletion` / :func:`insertion` (Petsiuk et al. 2018, RISE): remove pixels in order of saliency
  (or insert them into a blurred copy) and integrate the class probability. The whole curve is one
  ``model.score_masks`` call: the ranking becomes a segment map (group = rank // step) and each curve
  point a row of an upper/lower-triangular keep matrix, so ONNX Runtime blends and scores every step in
  batches and Python never builds an image per step.
- :func:`pointing_game` (Zhang et al. 2016) and :func:`saliency_fraction` (the energy-based pointing
  game of Score-CAM): does the map point at the known object?
- :func:`sanity_check` (Adebayo et al. 2018): randomise the weights layer by layer, top-down, re-explain,
  and measure how much the map changes (Spearman rank correlation, SSIM). A map that does not change
  does not depend on what the model learned.
- :func:`infidelity` and :func:`max_sensitivity` with Captum's definitions (``captum.metrics``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ParameterError
from .graph.layers import WeightLayer, weight_layers

if TYPE_CHECKING:
    from .explanation import Explanation
    from .inputs import Sample
    from .model import Model

__all__ = ["Curve", "WeightLayer", "Step", "deletion", "insertion", "causal_curve", "rank_segments", "rise_blur",
           "region_mask", "pointing_game", "saliency_fraction", "weight_layers", "sanity_check", "infidelity",
           "max_sensitivity", "RISE_STEPS"]

RISE_STEPS = 224
"""Default number of curve steps: the RISE code scores 224 x 224 images 224 pixels at a time (224 steps);
``step=None`` keeps that number of steps at any resolution (step = round(H * W / 224) pixels)."""


# ----------------------------------------------------------------------------------------- inputs

def _sample(model: "Model", x: Any) -> "Sample":
    from .inputs import prepare

    return prepare(model, x)


def _model_map(model: "Model", sample: "Sample", heatmap: Any) -> np.ndarray:
    """An Explanation (its model-resolution map), a map at model resolution, or a map on the original
    picture (mapped onto the model input with the preprocessing geometry) -> float64 [H, W]."""
    if hasattr(heatmap, "model_heatmap"):
        heatmap = heatmap.model_heatmap
    h = np.asarray(heatmap, dtype=np.float64)
    size = (model.image.height, model.image.width)
    if h.ndim == 3 and h.shape[0] in (1, model.image.channels) and h.shape[1:] == size:
        h = h.sum(axis=0)
    if h.shape == size:
        return np.nan_to_num(h)
    if sample.geometry is not None and h.shape[:2] == tuple(sample.geometry.original_size):
        return np.nan_to_num(sample.geometry.to_model(h if h.ndim == 2 else h.sum(axis=2)))
    raise ParameterError(f"heatmap of shape {h.shape} matches neither the model input {size} nor the picture")


def _target(model: "Model", sample: "Sample", target: Any) -> int:
    from .api import resolve_target

    return resolve_target(model, target, sample.x)


# ------------------------------------------------------------------------------- deletion / insertion

@dataclass
class Curve:
    """A deletion or insertion curve: ``scores[k]`` after ``fractions[k]`` of the pixels were removed
    (deletion) or inserted (insertion); ``auc`` by the trapezoid rule over [0, 1]."""

    kind: str
    target: int
    step: int
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    score: str = "probability"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": int(self.target), "step": int(self.step), "score": self.score,
                "auc": float(self.auc), "fractions": [float(v) for v in self.fractions],
                "scores": [float(v) for v in self.scores]}


def rank_segments(heatmap: np.ndarray, step: int) -> tuple[np.ndarray, int]:
    """Pixel ranking as a segment map: group ``rank // step`` per pixel (group 0 = the most salient
    ``step`` pixels). Ties are broken in raster order (row by row, the earlier pixel first), so the same
    map always gives the same curve. Returns (segments int64 [H, W], number of groups)."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    flat = h.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    groups = int(math.ceil(flat.size / step))
    return (rank // step).reshape(h.shape), groups


def rise_blur(x: np.ndarray, *, klen: int = 11, sigma: float = 5.0) -> np.ndarray:
    """The RISE code's insertion substrate: an 11 x 11 kernel made by Gaussian-smoothing a delta
    (sigma 5, scipy's reflecting border, so it sums to 1), applied per channel with zero padding (the
    torch conv2d of ``evaluation.py``), in model space."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    kernel = gaussian_filter(delta, sigma).astype(np.float32)
    return np.stack([cv2.filter2D(np.asarray(c, np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
                     for c in x]).astype(np.float32)


def _default_step(height: int, width: int) -> int:
    return max(1, int(round(height * width / RISE_STEPS)))


def causal_curve(model: "Model", x: Any, heatmap: Any, target: Any = None, *, kind: str = "deletion",
                 step: int | None = None, substrate: Any = "zeros", score: str = "probability") -> Curve:
    """Deletion or insertion curve in one batched ``score_masks`` call (see :func:`deletion`)."""
    from .baselines import make_baseline

    if kind not in ("deletion", "insertion"):
        raise ParameterError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    sample = _sample(model, x)
    index = _target(model, sample, target)
    saliency = _model_map(model, sample, heatmap)
    _, height, width = sample.x.shape
    n_pixels = height * width
    step = _default_step(height, width) if step is None else step
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 1 <= step <= n_pixels:
        raise ParameterError(f"step must be a whole number of pixels between 1 and {n_pixels}, got {step!r}")
    step = int(step)
    if isinstance(substrate, str) and substrate.strip().lower() == "blur":
        other = rise_blur(sample.x)
    else:
        other = make_baseline(model, sample, substrate)
    segments, groups = rank_segments(saliency, step)
    k = np.arange(groups + 1)[:, None]
    g = np.arange(groups)[None, :]
    # deletion: after k steps the first k groups show the baseline; insertion: they show the image
    keep = (g >= k) if kind == "deletion" else (g < k)
    scores = model.score_masks(sample.x, keep.astype(np.float32), baseline=other, targets=[index], score=score,
                               segments=segments)[:, 0].astype(np.float64)
    fractions = np.minimum(np.arange(groups + 1) * step, n_pixels) / n_pixels
    auc = float(np.sum((scores[1:] + scores[:-1]) * np.diff(fractions)) / 2.0)
    return Curve(kind=kind, target=index, step=step, fractions=fractions, scores=scores, auc=auc, score=score)


def deletion(model: "Model", x: Any, heatmap: Any, target: Any = None, *, step: int | None = None,
             baseline: Any = "zeros", score: str = "probability") -> Curve:
    """Deletion curve (RISE paper): remove the most salient pixels first, ``step`` at a time, to
    ``baseline`` (default 'zeros' in model space, as the RISE code: for mean/std-normalised models that
    is the mean colour; any :func:`~blackbox.baselines.make_baseline` spec or 'blur' works), and
    integrate the ``score`` (default the class probability) over the removed fraction. Lower is better.

    ``x``: image path, uint8 picture or model-space tensor; ``heatmap``: an Explanation or a map at model
    or picture resolution; ``target``: class (None = top-1). ``step`` default round(H * W / 224): the
    RISE code's 224 steps (224 px each on 224 x 224) at any resolution.
    """
    return causal_curve(model, x, heatmap, target, kind="deletion", step=step, substrate=baseline, score=score)


def insertion(model: "Model", x: Any, heatmap: Any, target: Any = None, *, step: int | None = None,
              start: Any = "blur", score: str = "probability") -> Curve:
    """Insertion curve (RISE paper): start from ``start`` (default 'blur': the RISE code's 11 x 11,
    sigma 5 blur of the input, see :func:`rise_blur`) and put the most salient pixels back first.
    Higher is better. Other arguments as :func:`deletion`."""
    return causal_curve(model, x, heatmap, target, kind="insertion", step=step, substrate=start, score=score)


# ------------------------------------------------------------------------------------ localisation

def region_mask(shape: tuple[int, int], *, mask: Any = None, box: Sequence[float] | None = None) -> np.ndarray:
    """bool [H, W] of a truth region: a mask (non-zero = inside; must have the map's shape) or a box
    ``(y0, x0, y1, x1)`` in pixel-edge coordinates, half-open (a pixel is inside when its centre is)."""
    if (mask is None) == (box is None):
        raise ParameterError("give exactly one of mask= or box=")
    if mask is not None:
        region = np.asarray(mask)
        if region.ndim == 3:
            region = region.any(axis=2) if region.shape[2] in (1, 3, 4) else region.any(axis=0)
        if region.shape != tuple(shape):
            raise ParameterError(f"truth mask of shape {region.shape} does not match the map {tuple(shape)}")
        return region.astype(bool)
    try:
        y0, x0, y1, x1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ParameterError(f"box must be (y0, x0, y1, x1), got {box!r}") from None
    rows = np.arange(shape[0]) + 0.5
    cols = np.arange(shape[1]) + 0.5
    return ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]


def pointing_game(heatmap: Any, *, mask: Any = None, box: Sequence[float] | None = None,
                  tolerance: float = 15.0) -> bool:
    """Pointing game (Zhang et al. 2016): a hit when the map's maximum lies within ``tolerance`` pixels
    (Euclidean, default 15 as in the original protocol) of the truth region. The maximum is the first in
    raster order when several pixels tie. An empty region is a miss."""
    h = np.nan_to_num(np.asarray(heatmap.model_heatmap if hasattr(heatmap, "model_heatmap") else heatmap,
                                 dtype=np.float64))
    if h.ndim != 2:
        raise ParameterError(f"heatmap must be H x W, got shape {h.shape}")
    if tolerance < 0:
        raise ParameterError(f"tolerance must be >= 0, got {tolerance}")
    region = region_mask(h.shape, mask=mask, box=box)
    if not region.any():
        return False
    py, px = np.unravel_index(int(np.argmax(h)), h.shape)
    ys, xs = np.nonzero(region)
    return bool(np.min((ys - py) ** 2 + (xs - px) ** 2) <= tolerance ** 2 + 1e-9)


def saliency_fraction(heatmap: Any, *, mask: Any = None, box: Sequence[float] | None = None) -> float:
    """Share of the positive saliency inside the region (Score-CAM's energy-based pointing game): 1 means
    all evidence is in the region; a map unrelated to it scores about the region's area fraction.
    A map that is positive everywhere (RISE: a probability-weighted mean mask) is first shifted so its
    minimum is 0, since a constant offset is no evidence anywhere. NaN when nothing is left."""
    h = np.nan_to_num(np.asarray(heatmap.model_heatmap if hasattr(heatmap, "model_heatmap") else heatmap,
                                 dtype=np.float64))
    region = region_mask(h.shape, mask=mask, box=box)
    positive = np.maximum(h - max(float(h.min()), 0.0), 0.0)
    total = float(positive.sum())
    return float(positive[region].sum() / total) if total > 0 else float("nan")


# ---------------------------------------------------------------------------------- sanity checks



def _randomise(tensor: onnx.TensorProto, rng: np.random.Generator) -> onnx.TensorProto:
    """Same shape and dtype. Floats: Gaussian, mean 0, the tensor's std (its RMS when constant, e.g. a
    fresh BatchNorm scale of ones; left alone when all zero). Integers (quantized weights, int32 biases):
    uniform integers over the tensor's own [min, max], so scale and zero point stay meaningful."""
    values = numpy_helper.to_array(tensor)
    if np.issubdtype(values.dtype, np.floating):
        data = values.astype(np.float64)
        std = float(data.std()) or float(np.sqrt(np.mean(data ** 2)))
        new = rng.normal(0.0, std, size=values.shape) if std > 0 else data
    elif np.issubdtype(values.dtype, np.integer) and values.size:
        low, high = int(values.min()), int(values.max())
        new = rng.integers(low, high + 1, size=values.shape) if high > low else values
    else:
        return tensor
    out = numpy_helper.from_array(np.asarray(new).astype(values.dtype), tensor.name)
    return out


@dataclass
class Step:
    """One sanity-check step: the map after randomising ``layers`` (cumulative in cascading mode),
    compared with the original map. ``spearman_abs`` ranks |map|, ``spearman`` the signed map; ``ssim``
    compares |map| min-max normalised to [0, 1] (as Adebayo et al.). NaN when a map is constant."""

    index: int
    layer: str
    op_type: str
    layers: list[str]
    spearman_abs: float
    spearman: float
    ssim: float
    heatmap: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items() if k != "heatmap"}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = a.reshape(-1), b.reshape(-1)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _unit(h: np.ndarray) -> np.ndarray:
    low, high = float(h.min()), float(h.max())
    return (h - low) / (high - low) if high > low else np.zeros_like(h)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    a, b = _unit(np.abs(a)), _unit(np.abs(b))
    window = min(7, min(a.shape) - (1 - min(a.shape) % 2))
    if window < 3:
        return float("nan")
    return float(structural_similarity(a, b, data_range=1.0, win_size=window))


def compare_maps(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Spearman of |maps| and of the signed maps, SSIM of the normalised |maps|."""
    a, b = np.asarray(original, np.float64), np.asarray(other, np.float64)
    return {"spearman_abs": _spearman(np.abs(a), np.abs(b)), "spearman": _spearman(a, b), "ssim": _ssim(a, b)}


def sanity_check(model: "Model", x: Any, method: str, *, target: Any = None, mode: str = "cascading",
                 layers: int | Sequence[str] | None = None, seed: int = 0, score: str | None = None,
                 keep_maps: bool = False, **params: Any) -> list[Step]:
    """Model parameter randomisation test (Adebayo et al. 2018).

    Layers from :func:`weight_layers` (output first). ``mode="cascading"`` randomises them top-down,
    cumulatively; ``"independent"`` one at a time on the trained model. ``layers``: None (all), an int
    (the top n) or layer names. Each step builds an in-memory Model with the original's preprocessing and
    input/output choices, re-explains with the same method, params, target and ``seed`` (which also seeds
    the randomisation), and compares the map with the original (:class:`Step`). ``keep_maps`` keeps each
    step's model-resolution map in ``Step.heatmap``.
    """
    from .api import explain

    if mode not in ("cascading", "independent"):
        raise ParameterError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    available = weight_layers(model.proto)
    if layers is None:
        chosen = available
    elif isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        if layers < 1:
            raise ParameterError(f"layers must be at least 1, got {layers}")
        chosen = available[: int(layers)]
    else:
        names = list(layers)
        unknown = sorted(set(names) - {layer.name for layer in available})
        if unknown:
            raise ParameterError(f"no weight-bearing layer named {', '.join(unknown)}")
        chosen = [layer for layer in available if layer.name in names]
    if not chosen:
        raise ParameterError("the model has no weight-bearing layer (Conv, Gemm, MatMul, BatchNormalization) to "
                             "randomise")
    sample = _sample(model, x)
    index = _target(model, sample, target)
    source = x  # explain() accepts the same inputs as prepare()
    reference = explain(model, source, method, target=index, score=score, seed=seed, **params).model_heatmap
    rng = np.random.default_rng(seed)
    trained = {t.name: t for t in model.proto.graph.initializer}
    current = onnx.ModelProto()
    current.CopyFrom(model.proto)
    steps: list[Step] = []
    done: list[str] = []
    for i, layer in enumerate(chosen):
        if mode == "independent":
            current = onnx.ModelProto()
            current.CopyFrom(model.proto)
            done = []
        positions = {t.name: k for k, t in enumerate(current.graph.initializer)}
        for name in layer.tensors:
            current.graph.initializer[positions[name]].CopyFrom(_randomise(trained[name], rng))
        done.append(layer.name)
        copy = onnx.ModelProto()
        copy.CopyFrom(current)
        randomised = model.with_graph(copy)
        heat = explain(randomised, source, method, target=index, score=score, seed=seed, **params).model_heatmap
        steps.append(Step(index=i, layer=layer.name, op_type=layer.op_type, layers=list(done),
                          heatmap=np.asarray(heat) if keep_maps else None, **compare_maps(reference, heat)))
    return steps


def _external(model: "Model", x: np.ndarray) -> np.ndarray:
    from .inputs import from_internal

    return from_internal(model, np.asarray(x, np.float32))


# ------------------------------------------------------------------------- infidelity / sensitivity

def _internal_like(model: "Model", sample: "Sample", array: Any, what: str) -> np.ndarray:
    from .inputs import to_internal

    a = np.asarray(array, dtype=np.float32)
    if a.shape == sample.x.shape:
        return a
    try:
        return to_internal(model, a)
    except Exception:  # noqa: BLE001
        raise ParameterError(f"{what} of shape {a.shape} is not shaped like one model input") from None


def _perturbation_batch(model: "Model", sample: "Sample", perturbations: Any, n: int, rng: np.random.Generator,
                        draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]) -> np.ndarray:
    """[n, C, H, W] perturbations: drawn by ``draw``, returned by a callable ``(x, n, rng)``, or given
    as an array [n, ...] (internal layout or the model's)."""
    shape = (n,) + sample.x.shape
    if perturbations is None:
        out = draw(rng, shape)
    elif callable(perturbations):
        out = perturbations(sample.x, n, rng)
    else:
        out = perturbations
    out = np.asarray(out, dtype=np.float32)
    if out.shape != shape:
        out = np.stack([_internal_like(model, sample, p, "a perturbation") for p in out])
    if out.shape != shape:
        raise ParameterError(f"perturbations must be shaped [{n}, ...one input], got {out.shape}")
    return out


def infidelity(model: "Model", x: Any, attributions: Any, target: Any = None, *, perturbations: Any = None,
               n_perturb_samples: int = 10, noise_std: float = 0.003, normalize: bool = False, score: str = "raw",
               seed: int = 0) -> float:
    """Explanation infidelity (Yeh et al. 2019) exactly as ``captum.metrics.infidelity``:
    mean over perturbations I of (I . attributions - (f(x) - f(x - I)))^2; with ``normalize`` the
    attributions are first scaled by beta = E[I.a (f(x) - f(x - I))] / E[(I.a)^2].

    Perturbations: Gaussian noise of std ``noise_std`` in model space (default 0.003, as Captum's
    example), seeded; or ``perturbations``: an array [n, ...] or a callable ``(x, n, rng) -> array``.
    ``attributions`` shaped like one model input (``Explanation.attributions``) or internal [C, H, W].
    ``score``: "raw" (default: the model output, what Captum's forward function returns), "logit" or
    "probability". f(x) and all f(x - I) are one ``model.scores`` batch.
    """
    sample = _sample(model, x)
    index = _target(model, sample, target)
    attr = _internal_like(model, sample, attributions.attributions if hasattr(attributions, "attributions")
                          else attributions, "attributions").astype(np.float64)
    n = int(n_perturb_samples)
    if n < 1:
        raise ParameterError(f"n_perturb_samples must be at least 1, got {n_perturb_samples}")
    noise = _perturbation_batch(model, sample, perturbations, n, np.random.default_rng(seed),
                                lambda rng, shape: rng.normal(0.0, noise_std, size=shape))
    batch = np.concatenate([sample.x[None], sample.x[None] - noise]).astype(np.float32)
    values = model.scores(batch, score=score)[:, index].astype(np.float64)
    diffs = values[0] - values[1:]
    dots = np.einsum("nchw,chw->n", noise.astype(np.float64), attr)
    if normalize:
        s_aa, s_ad, s_dd = float(np.sum(dots * dots)), float(np.sum(dots * diffs)), float(np.sum(diffs * diffs))
        beta = s_ad / s_aa if s_aa != 0 else s_ad
        return float((beta * beta * s_aa - 2.0 * beta * s_ad + s_dd) / n)
    return float(np.sum((dots - diffs) ** 2) / n)


def _norm(v: np.ndarray, ord_: Any) -> float:
    v = v.reshape(-1)
    if ord_ in ("fro", 2, None):
        return float(np.sqrt(np.sum(v * v)))
    if ord_ in ("inf", np.inf, float("inf")):
        return float(np.max(np.abs(v)))
    return float(np.linalg.norm(v, ord=ord_))


def _attribution_array(model: "Model", exp: "Explanation") -> np.ndarray:
    """What sensitivity compares: the attributions when pixel-shaped, else the model-resolution map."""
    a = np.asarray(exp.attributions, dtype=np.float64)
    if a.size == model.image.channels * model.image.height * model.image.width:
        return a
    return np.asarray(exp.model_heatmap, dtype=np.float64)


def max_sensitivity(model: "Model", x: Any, method: str, *, target: Any = None, perturb_radius: float = 0.02,
                    n_perturb_samples: int = 10, norm_ord: Any = "fro", perturbations: Any = None,
                    score: str | None = None, seed: int = 0, **params: Any) -> float:
    """Max-sensitivity (Yeh et al. 2019) as ``captum.metrics.sensitivity_max``: the largest
    ||expl(x + d) - expl(x)|| / ||expl(x)|| over ``n_perturb_samples`` perturbations d drawn uniformly
    from the L-inf ball of ``perturb_radius`` (model space, seeded) or given as ``perturbations``
    (array [n, ...] or callable ``(x, n, rng)``). ``norm_ord`` 'fro' (L2 of the flattened map), 'inf'
    or any numpy order. A zero ||expl(x)|| counts as 1 (as Captum). Every explanation uses ``method``,
    ``params``, the same target and ``seed``."""
    from .api import explain

    sample = _sample(model, x)
    index = _target(model, sample, target)
    n = int(n_perturb_samples)
    if n < 1:
        raise ParameterError(f"n_perturb_samples must be at least 1, got {n_perturb_samples}")
    noise = _perturbation_batch(model, sample, perturbations, n, np.random.default_rng(seed),
                                lambda rng, shape: rng.uniform(-perturb_radius, perturb_radius, size=shape))

    def attributions(x_internal: np.ndarray) -> np.ndarray:
        exp = explain(model, _external(model, x_internal), method, target=index, score=score, seed=seed, **params)
        return _attribution_array(model, exp)

    base = attributions(sample.x)
    denominator = _norm(base, norm_ord) or 1.0
    return float(max(_norm(attributions((sample.x + d).astype(np.float32)) - base, norm_ord) / denominator
                     for d in noise))
