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

import numpy as np

from ..baselines import make_baseline
from ..errors import ParameterError
from ..graph.autodiff import DECONVNET, GUIDED, PLAIN, RuleSet
from .base import Context, Param, Result, register

IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
SMOOTHGRAD_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


# ------------------------------------------------------------------------------------------- helpers
def _gradients(ctx: Context, xs: np.ndarray, *, rules: RuleSet = PLAIN, desc: str = "gradients") -> np.ndarray:
    """d score[target] / d x (float32) for every input in ``xs`` [N, C, H, W], in batches."""
    engine = ctx.model.gradients
    seed = engine.one_hot(ctx.target, len(xs))
    with ctx.bar(len(xs), desc) as bar:
        out = engine.run(xs, seed, score=ctx.score, rules=rules, progress=bar.update)
    return out.grad


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
@register("saliency", default_score="logit", kind="gradient",
          summary="gradient of the class score w.r.t. the input pixels (Simonyan et al. 2014; Captum Saliency)")
def saliency(ctx: Context, *, abs: bool = True) -> Result:  # noqa: A002 - Captum's name
    """``abs``: absolute value of the gradient (default True, as Captum's Saliency); False keeps the sign.
    Heatmap: sum over channels of |gradient| (abs=True) or of the signed gradient (abs=False)."""
    use_abs = _check_bool(abs, "abs")
    grad = _gradients(ctx, ctx.x[None], desc="saliency")[0]
    attributions = np.abs(grad) if use_abs else grad
    return _result(ctx, attributions, _unsigned(grad) if use_abs else _signed(grad), 1)


@register("gradient_x_input", default_score="logit", kind="gradient",
          summary="input times gradient (Shrikumar et al. 2016; Captum InputXGradient)")
def gradient_x_input(ctx: Context) -> Result:
    """Attribution x * d score / d x, in model space (so it depends on the preprocessing's zero).
    Heatmap: signed sum over channels."""
    grad = _gradients(ctx, ctx.x[None], desc="gradient x input")[0]
    attributions = ctx.x * grad
    return _result(ctx, attributions, _signed(attributions), 1)


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
    ``sum(attributions) - (f(x) - f(baseline))`` in the explained score; a large value relative to
    ``f(x) - f(baseline)`` means too few steps. Heatmap: signed sum over channels.
    """
    alphas, weights = integration_points(n_steps, integration)
    base = make_baseline(ctx.model, ctx.sample, baseline)
    x = ctx.x
    diff = x - base
    path = (base[None] + alphas.astype(np.float32)[:, None, None, None] * diff[None]).astype(np.float32)
    grads = _gradients(ctx, path, desc="integrated gradients")
    total = np.tensordot(weights, grads.astype(np.float64), axes=(0, 0))
    attributions = (total * diff).astype(np.float32)
    ends = ctx.model.scores(np.stack([x, base]), score=ctx.score)[:, ctx.target].astype(np.float64)
    delta = float(attributions.sum(dtype=np.float64) - (ends[0] - ends[1]))
    return _result(ctx, attributions, _signed(attributions), len(alphas), convergence_delta=delta,
                   score_input=float(ends[0]), score_baseline=float(ends[1]), integration=integration)


@register("smoothgrad", default_score="logit", kind="gradient",
          summary="saliency averaged over noisy copies of the input (Smilkov et al. 2017; Captum NoiseTunnel)",
          params={"n_samples": Param(min=1), "noise": Param(min=0), "noise_level": Param(min=0),
                  "variant": Param(choices=SMOOTHGRAD_VARIANTS)},
          evaluations=lambda p: p["n_samples"],
          memory=lambda p, shape, layout: p["n_samples"] * int(np.prod(shape)) * 32)  # noise, grads, float64 copies
def smoothgrad(ctx: Context, *, n_samples: int = 50, noise: float | None = None, noise_level: float = 0.15,
               variant: str = "smoothgrad", abs: bool = True) -> Result:  # noqa: A002 - Captum's name
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
    use_abs = _check_bool(abs, "abs")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ParameterError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    if variant not in SMOOTHGRAD_VARIANTS:
        raise ParameterError(f"unknown variant {variant!r}: use one of {', '.join(SMOOTHGRAD_VARIANTS)}")
    x = ctx.x
    if noise is not None:
        std = _check_scale(noise, "noise (the standard deviation)")
    else:
        std = _check_scale(noise_level, "noise_level") * float(x.max() - x.min())
    samples = x[None] + draw_noise(ctx.rng(), int(n_samples), x.shape, std)
    grads = _gradients(ctx, samples, desc="smoothgrad").astype(np.float64)
    per_sample = np.abs(grads) if use_abs else grads
    mean = per_sample.mean(axis=0)
    if variant == "smoothgrad":
        attributions = mean
    else:
        mean_sq = (per_sample ** 2).mean(axis=0)
        attributions = mean_sq if variant == "smoothgrad_sq" else mean_sq - mean ** 2
    attributions = attributions.astype(np.float32)
    signed = variant == "smoothgrad" and not use_abs
    heatmap = _signed(attributions) if signed else _unsigned(attributions)
    return _result(ctx, attributions, heatmap, int(n_samples), noise_std=std, variant=variant)


def _modified_relu(ctx: Context, rules: RuleSet, desc: str) -> Result:
    grad = _gradients(ctx, ctx.x[None], rules=rules, desc=desc)[0]
    return _result(ctx, grad, _unsigned(grad), 1, relu_mode=rules.name)


@register("guided_backprop", default_score="logit", kind="gradient",
          summary="gradient with ReLUs passing only positive gradients where their input was positive "
                  "(Springenberg et al. 2015; Captum GuidedBackprop)")
def guided_backprop(ctx: Context) -> Result:
    """Every Relu (and ReLU6-style Clip at 0) passes relu(incoming gradient) where its forward input
    was positive. Captum hooks only ``nn.ReLU`` modules, so networks that use functional relu or ReLU6
    differ from Captum there; blackbox sees every rectifier in the graph. Attributions are signed;
    heatmap: sum over channels of |attribution|."""
    return _modified_relu(ctx, GUIDED, "guided backprop")


@register("deconvnet", default_score="logit", kind="gradient",
          summary="gradient with ReLUs rectifying the backward signal only (Zeiler & Fergus 2014; "
                  "Captum Deconvolution)")
def deconvnet(ctx: Context) -> Result:
    """Every Relu (and ReLU6-style Clip at 0) passes relu(incoming gradient), ignoring the forward
    input (Captum's Deconvolution). Attributions are signed; heatmap: sum over channels of |attribution|."""
    return _modified_relu(ctx, DECONVNET, "deconvnet")
