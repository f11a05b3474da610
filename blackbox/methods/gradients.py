"""Gradient methods with Captum's semantics: saliency, gradient x input, integrated gradients,
SmoothGrad (and its squared / variance variants), guided backpropagation and DeconvNet.

All of them ask the model's gradient graph (``ctx.model.gradients``, forward + backward in stock ONNX
ops) for d score[target] / d input on one or more inputs; every sample they need (integration steps,
noisy copies) goes through it in batches.

Default score: "logit". For models that output logits that *is* the raw output Captum explains. For
models that end in a softmax, gradients of a saturated probability vanish (a 0.99 prediction has almost
no gradient left), so blackbox explains the log-probability instead; pass ``score="raw"`` (or
"probability") to explain the output as it is, exactly like Captum on that model.

Heatmaps (what ``Explanation.heatmap`` shows) reduce the [C, H, W] attributions over channels:
signed maps (gradient x input, integrated gradients, saliency with ``abs=False``, SmoothGrad with
``abs=False`` and variant "smoothgrad") are summed over channels, keeping the sign; unsigned maps
(saliency, SmoothGrad's default, its squared and variance variants) and the pattern images of guided
backpropagation and DeconvNet, whose sign is not evidence for or against the class, are the sum over
channels of ``|attribution|``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..baselines import make_baseline
from ..errors import ParameterError
from ..graph.autodiff import DECONVNET, GUIDED, PLAIN, RuleSet
from .base import Context, Param, Result, batched, register

# Integrated gradients' completeness: sum(attributions) should equal f(x) - f(baseline); a larger gap than
# this fraction of |f(x) - f(baseline)| gets a note (Captum reports the same delta, unscaled).
IG_COMPLETENESS_TOLERANCE = 0.05
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
SMOOTHGRAD_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


# ------------------------------------------------------------------------------------------- helpers
def rows_per_call(ctx: Context, rules: RuleSet = PLAIN) -> int:
    """How many rows one gradient-graph session call takes (the engine's batch, after any halving on
    allocation failure), so rows of several images are packed into full calls."""
    engine = ctx.model.gradients
    return engine._runner(ctx.score, (), rules).batch_size  # same package, read only


def stream_gradients(contexts: Sequence[Context], counts: Sequence[int], rows: Callable[[int], np.ndarray],
                     consume: Callable[[int, int, np.ndarray], None], *, rules: RuleSet = PLAIN,
                     desc: str = "gradients") -> int:
    """Input gradients of many rows of many images, packed into full gradient-graph calls.

    Image ``i`` has ``counts[i]`` rows, built by ``rows(i)`` only when its turn comes (so at most one
    image's rows plus one call's worth are held), each seeded with that image's target; ``consume(i,
    start, grads)`` receives its gradients piece by piece, in row order. Rows of different images share
    a call: the gradient graph treats every row independently. Returns the number of calls.
    """
    engine = contexts[0].model.gradients
    score = contexts[0].score
    chunk = rows_per_call(contexts[0], rules)
    pieces: list[tuple[int, int, np.ndarray]] = []  # (image, first row, rows) waiting for a call
    calls = 0

    def flush(bar) -> None:
        nonlocal calls
        xs = np.concatenate([piece for _, _, piece in pieces]) if len(pieces) > 1 else pieces[0][2]
        seed = np.zeros((len(xs), engine.model.num_classes), np.float32)
        seed[np.arange(len(xs)), np.repeat([contexts[i].target for i, _, _ in pieces],
                                           [len(p) for _, _, p in pieces])] = 1.0
        grads = engine.run(xs, seed, score=score, rules=rules, progress=bar.update).grad
        calls += 1
        offset = 0
        for i, start, piece in pieces:
            consume(i, start, grads[offset:offset + len(piece)])
            offset += len(piece)
        pieces.clear()

    with contexts[0].bar(int(sum(counts)), desc) as bar:
        filled = 0
        for i in range(len(contexts)):
            if counts[i] == 0:
                continue
            block = np.asarray(rows(i), dtype=np.float32)
            start = 0
            while start < len(block):
                take = min(chunk - filled, len(block) - start)
                pieces.append((i, start, block[start:start + take]))
                filled += take
                start += take
                if filled == chunk:
                    flush(bar)
                    filled = 0
        if pieces:
            flush(bar)
    return calls


def _first_rows(contexts: Sequence[Context], rules: RuleSet = PLAIN, desc: str = "gradients") -> list[np.ndarray]:
    """One gradient per image (of its own input, for its own target), all images in shared calls."""
    grads: list[np.ndarray] = [None] * len(contexts)  # type: ignore[list-item]

    def keep(i: int, start: int, piece: np.ndarray) -> None:
        grads[i] = piece[0]

    stream_gradients(contexts, [1] * len(contexts), lambda i: contexts[i].x[None], keep, rules=rules, desc=desc)
    return grads


def _signed(attributions: np.ndarray) -> np.ndarray:
    return attributions.sum(axis=0, dtype=np.float64).astype(np.float32)


def _unsigned(attributions: np.ndarray) -> np.ndarray:
    return np.abs(attributions).sum(axis=0, dtype=np.float64).astype(np.float32)


def _result(ctx: Context, attributions: np.ndarray, heatmap: np.ndarray, n_evals: int, **extras) -> Result:
    return Result(attributions=np.asarray(attributions, dtype=np.float32), heatmap=heatmap, n_evals=n_evals,
                  notes=list(ctx.model.gradients.notes), extras=extras)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _check_scale(value, name: str) -> float:
    """A finite number >= 0 (noise standard deviations)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise ParameterError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def integration_points(n_steps: int, integration: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of Captum's quadrature rules on [0, 1]: Gauss-Legendre nodes/weights, or a
    Riemann sum (left/right/middle: equal weights 1/n; trapezoid: n points from 0 to 1, ends halved)."""
    method = integration
    if method not in IG_METHODS:
        raise ParameterError(f"unknown integration {method!r}: use one of {', '.join(IG_METHODS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ParameterError(f"n_steps must be a whole number >= 1, got {n_steps!r}")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    if n < 2:
        raise ParameterError(f"n_steps must be >= 2 for the Riemann rule {method!r}, got {n}")
    weights = np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return np.linspace(0.0, 1.0, n), weights
    if method == "riemann_left":
        return np.linspace(0.0, 1.0 - 1.0 / n, n), weights
    if method == "riemann_right":
        return np.linspace(1.0 / n, 1.0, n), weights
    return np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n), weights


def draw_noise(rng: np.random.Generator, n_samples: int, shape: tuple[int, ...], std: float) -> np.ndarray:
    """SmoothGrad's Gaussian noise, float32 [n_samples, *shape] (one function so tests can redraw it)."""
    return rng.normal(0.0, std, size=(n_samples, *shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------- methods
# Each method's single form is its batched form on one context, so explain and explain_many share
# every line of arithmetic; the batched forms pack the rows of several images into shared calls.

@register("saliency", default_score="logit", kind="gradient",
          summary="gradient of the class score w.r.t. the input pixels (Simonyan et al. 2014; Captum Saliency)")
def saliency(ctx: Context, *, abs: bool = True) -> Result:
    """``abs``: absolute value of the gradient (default True, as Captum's Saliency); False keeps the sign.
    Heatmap: sum over channels of |gradient| (abs=True) or of the signed gradient (abs=False)."""
    return saliency_many([ctx], abs=abs)[0]


@batched("saliency")
def saliency_many(contexts: Sequence[Context], *, abs: bool = True) -> list[Result]:
    """Saliency of several images: their gradients in shared calls."""
    use_abs = _check_bool(abs, "abs")
    results = []
    for ctx, grad in zip(contexts, _first_rows(contexts, desc="saliency")):
        attributions = np.abs(grad) if use_abs else grad
        results.append(_result(ctx, attributions, _unsigned(grad) if use_abs else _signed(grad), 1))
    return results


@register("gradient_x_input", default_score="logit", kind="gradient",
          summary="input times gradient (Shrikumar et al. 2016; Captum InputXGradient)")
def gradient_x_input(ctx: Context) -> Result:
    """Attribution x * d score / d x, in model space (so it depends on the preprocessing's zero).
    Heatmap: signed sum over channels."""
    return gradient_x_input_many([ctx])[0]


@batched("gradient_x_input")
def gradient_x_input_many(contexts: Sequence[Context]) -> list[Result]:
    """Gradient x input of several images: their gradients in shared calls."""
    results = []
    for ctx, grad in zip(contexts, _first_rows(contexts, desc="gradient x input")):
        attributions = ctx.x * grad
        results.append(_result(ctx, attributions, _signed(attributions), 1))
    return results


@register("integrated_gradients", default_score="logit", kind="gradient",
          summary="path integral of gradients from a baseline (Sundararajan et al. 2017; Captum IntegratedGradients)",
          params={"n_steps": Param(min=1), "integration": Param(choices=IG_METHODS)},
          evaluations=lambda p: p["n_steps"],
          memory=lambda p, shape, layout: p["n_steps"] * int(np.prod(shape)) * 16)  # path, grads, float64 grads
def integrated_gradients(ctx: Context, *, n_steps: int = 50, integration: str = "gausslegendre",
                         baseline=0.0) -> Result:
    """``(x - baseline) * sum_i w_i grad(baseline + a_i (x - baseline))`` with Captum's quadrature.

    ``n_steps``: gradient evaluations (default 50, Captum's); ``integration``: Captum's ``method``
    (renamed: ``blackbox.explain`` takes the method name as ``method``): "gausslegendre" (default,
    Captum's) or "riemann_trapezoid" / "riemann_left" / "riemann_right" / "riemann_middle";
    ``baseline``: anything :func:`blackbox.baselines.make_baseline` accepts — a number in model space
    (default 0, Captum's), "zeros", "black", "blur", "mean", an (r, g, b) colour or an array.
    All steps go through the gradient graph in batches. ``extras["convergence_delta"]`` is Captum's
    ``sum(attributions) - (f(x) - f(baseline))`` in the explained score, ``extras["completeness_gap"]``
    the same relative to ``|f(x) - f(baseline)|``; when that exceeds :data:`IG_COMPLETENESS_TOLERANCE`
    (5%) the result carries a note: the integral is not converged (too few steps for a path whose
    gradient changes sharply, as near a LayerNorm model's zero input) or the baseline is a poor
    reference. Heatmap: signed sum over channels.
    """
    return integrated_gradients_many([ctx], n_steps=n_steps, integration=integration, baseline=baseline)[0]


@batched("integrated_gradients")
def integrated_gradients_many(contexts: Sequence[Context], *, n_steps: int = 50, integration: str = "gausslegendre",
                              baseline=0.0) -> list[Result]:
    """Integrated gradients of several images: the path steps of all images packed into full gradient
    calls (image after image, so one image's path is built at a time), weighted sums kept as they come."""
    alphas, weights = integration_points(n_steps, integration)
    steps = alphas.astype(np.float32)[:, None, None, None]
    bases = [make_baseline(ctx.model, ctx.sample, baseline) for ctx in contexts]
    diffs = [ctx.x - base for ctx, base in zip(contexts, bases)]
    totals = [np.zeros(ctx.x.shape, np.float64) for ctx in contexts]

    weights32 = weights.astype(np.float32)

    def path(i: int) -> np.ndarray:
        points = np.multiply(steps, diffs[i][None], dtype=np.float32)
        points += bases[i][None]  # base + a * (x - base), built in place: one path-sized array
        return points

    def accumulate(i: int, start: int, grads: np.ndarray) -> None:
        # each call's weighted sum in float32, as Captum sums; the running total across calls in float64
        totals[i] += np.tensordot(weights32[start:start + len(grads)], grads, axes=(0, 0))

    stream_gradients(contexts, [len(alphas)] * len(contexts), path, accumulate, desc="integrated gradients")
    model, score = contexts[0].model, contexts[0].score
    ends = model.scores(np.stack([a for ctx, base in zip(contexts, bases) for a in (ctx.x, base)]), score=score)
    results = []
    for i, ctx in enumerate(contexts):
        attributions = (totals[i] * diffs[i]).astype(np.float32)
        end_x, end_base = (float(v) for v in ends[2 * i:2 * i + 2, ctx.target].astype(np.float64))
        total = float(attributions.sum(dtype=np.float64))
        gap, note = completeness(total, end_x - end_base, n_steps=len(alphas))
        result = _result(ctx, attributions, _signed(attributions), len(alphas), convergence_delta=total - (end_x - end_base),
                         completeness_gap=gap, attribution_sum=total, score_input=end_x, score_baseline=end_base,
                         integration=integration)
        if note:
            result.notes.append(note)
        results.append(result)
    return results


def completeness(total: float, change: float, *, n_steps: int,
                 tolerance: float = IG_COMPLETENESS_TOLERANCE) -> tuple[float, str | None]:
    """(gap relative to |f(x) - f(baseline)|, a note or None) for attributions summing to ``total`` where
    the score changed by ``change``. A change too small to divide by (below 1e-6 of the sum, or both
    zero) counts as an infinite gap when the sum is not small too."""
    delta = abs(total - change)
    scale = abs(change)
    if delta <= 1e-6 * max(scale, abs(total), 1.0):
        return 0.0 if scale == 0 else delta / scale, None
    gap = delta / scale if scale > 0 else float("inf")
    if gap <= tolerance:
        return gap, None
    shown = "inf" if gap == float("inf") else f"{100 * gap:.0f}%"
    return gap, (f"integrated gradients: attributions sum to {total:.4g} but f(x)-f(baseline) = {change:.4g} "
                 f"(gap {shown}): add steps (n_steps={n_steps} now, try {4 * n_steps}) or change the baseline")


@register("smoothgrad", default_score="logit", kind="gradient",
          summary="saliency averaged over noisy copies of the input (Smilkov et al. 2017; Captum NoiseTunnel)",
          params={"n_samples": Param(min=1), "noise": Param(min=0), "noise_level": Param(min=0),
                  "variant": Param(choices=SMOOTHGRAD_VARIANTS)},
          evaluations=lambda p: p["n_samples"],
          memory=lambda p, shape, layout: p["n_samples"] * int(np.prod(shape)) * 32)  # noise, grads, float64 copies
def smoothgrad(ctx: Context, *, n_samples: int = 50, noise: float | None = None, noise_level: float = 0.15,
               variant: str = "smoothgrad", abs: bool = True) -> Result:
    """Saliency on ``n_samples`` copies of x with Gaussian noise, combined like Captum's NoiseTunnel.

    ``noise``: the noise standard deviation in model-space units (Captum's ``stdevs``); when None
    (default), ``noise_level`` times the input's range max(x) - min(x) (default 0.15, in the 10-20% the
    SmoothGrad paper recommends). ``variant``: "smoothgrad" (mean), "smoothgrad_sq" (mean of squares)
    or "vargrad" (variance) of the per-sample attributions, Captum's ``nt_type``. ``abs``: each
    sample's attribution is |gradient| (default True, because Captum's NoiseTunnel(Saliency) calls
    Saliency with its default abs=True); False averages signed gradients (the paper's SmoothGrad).
    Noise comes from the explanation's seed. Heatmap: signed sum over channels for the signed mean
    (abs=False, "smoothgrad"), else sum over channels of the (non-negative) map.
    """
    return smoothgrad_many([ctx], n_samples=n_samples, noise=noise, noise_level=noise_level, variant=variant,
                           abs=abs)[0]


@batched("smoothgrad")
def smoothgrad_many(contexts: Sequence[Context], *, n_samples: int = 50, noise: float | None = None,
                    noise_level: float = 0.15, variant: str = "smoothgrad",
                    abs: bool = True) -> list[Result]:
    """SmoothGrad of several images: each image's noise drawn from its own seed when its turn comes,
    the noisy copies of all images packed into full gradient calls, sums kept as they come."""
    use_abs = _check_bool(abs, "abs")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ParameterError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    if variant not in SMOOTHGRAD_VARIANTS:
        raise ParameterError(f"unknown variant {variant!r}: use one of {', '.join(SMOOTHGRAD_VARIANTS)}")
    n = int(n_samples)
    if noise is not None:
        scale = _check_scale(noise, "noise (the standard deviation)")
        stds = [scale] * len(contexts)
    else:
        level = _check_scale(noise_level, "noise_level")
        stds = [level * float(ctx.x.max() - ctx.x.min()) for ctx in contexts]
    sums = [np.zeros(ctx.x.shape, np.float64) for ctx in contexts]
    squares = [np.zeros(ctx.x.shape, np.float64) for ctx in contexts]

    def noisy(i: int) -> np.ndarray:
        x = contexts[i].x
        return x[None] + draw_noise(contexts[i].rng(), n, x.shape, stds[i])

    def accumulate(i: int, start: int, grads: np.ndarray) -> None:
        per_sample = grads.astype(np.float64)
        per_sample = np.abs(per_sample) if use_abs else per_sample
        sums[i] += per_sample.sum(axis=0)
        if variant != "smoothgrad":
            squares[i] += (per_sample ** 2).sum(axis=0)

    stream_gradients(contexts, [n] * len(contexts), noisy, accumulate, desc="smoothgrad")
    signed = variant == "smoothgrad" and not use_abs
    results = []
    for i, ctx in enumerate(contexts):
        mean = sums[i] / n
        if variant == "smoothgrad":
            attributions = mean
        else:
            mean_sq = squares[i] / n
            attributions = mean_sq if variant == "smoothgrad_sq" else mean_sq - mean ** 2
        attributions = attributions.astype(np.float32)
        heatmap = _signed(attributions) if signed else _unsigned(attributions)
        results.append(_result(ctx, attributions, heatmap, n, noise_std=stds[i], variant=variant))
    return results


def _modified_relu(contexts: Sequence[Context], rules: RuleSet, desc: str) -> list[Result]:
    return [_result(ctx, grad, _unsigned(grad), 1, relu_mode=rules.name)
            for ctx, grad in zip(contexts, _first_rows(contexts, rules=rules, desc=desc))]


@register("guided_backprop", default_score="logit", kind="gradient",
          summary="gradient with ReLUs passing only positive gradients where their input was positive "
                  "(Springenberg et al. 2015; Captum GuidedBackprop)")
def guided_backprop(ctx: Context) -> Result:
    """Every Relu (and ReLU6-style Clip at 0) passes relu(incoming gradient) where its forward input
    was positive. Captum hooks only ``nn.ReLU`` modules, so networks that use functional relu or ReLU6
    differ from Captum there; blackbox sees every rectifier in the graph. Attributions are signed;
    heatmap: sum over channels of |attribution|."""
    return guided_backprop_many([ctx])[0]


@batched("guided_backprop")
def guided_backprop_many(contexts: Sequence[Context]) -> list[Result]:
    """Guided backpropagation of several images in shared calls."""
    return _modified_relu(contexts, GUIDED, "guided backprop")


@register("deconvnet", default_score="logit", kind="gradient",
          summary="gradient with ReLUs rectifying the backward signal only (Zeiler & Fergus 2014; "
                  "Captum Deconvolution)")
def deconvnet(ctx: Context) -> Result:
    """Every Relu (and ReLU6-style Clip at 0) passes relu(incoming gradient), ignoring the forward
    input (Captum's Deconvolution). Attributions are signed; heatmap: sum over channels of |attribution|."""
    return deconvnet_many([ctx])[0]


@batched("deconvnet")
def deconvnet_many(contexts: Sequence[Context]) -> list[Result]:
    """DeconvNet of several images in shared calls."""
    return _modified_relu(contexts, DECONVNET, "deconvnet")
