"""Image priors, as (value, gradient) pairs on display-space images [n, c, h, w] in [0, 1].

* ``tv``: total variation ``sum ((dx)^2 + (dy)^2)^(beta/2) / (h w V^beta)`` (Mahendran & Vedaldi's
  TV^beta, V = B / 6.5), prefers piecewise-smooth pictures;
* ``alpha``: the alpha-norm ``sum |x - 1/2|^alpha / (h w B^alpha)`` (alpha = 6), keeps pixels in range;
* ``l2``: ``sum (x - 1/2)^2 / (h w)``, the L2 decay of Yosinski et al. / pytorch-cnn-visualizations.

B = 1/2, the largest distance from grey in display space. Each returns one value per sample; the
objective maximised is the model's objective minus the weighted penalties.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError

B = 0.5
V = B / 6.5
_EPS = 1e-8


def tv(image: np.ndarray, beta: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = image.shape
    dy = np.zeros_like(image)
    dx = np.zeros_like(image)
    dy[:, :, :-1] = image[:, :, 1:] - image[:, :, :-1]
    dx[:, :, :, :-1] = image[:, :, :, 1:] - image[:, :, :, :-1]
    sq = dy * dy + dx * dx + (_EPS if beta < 2 else 0.0)
    norm = h * w * V ** beta
    value = np.sum(sq ** (beta / 2), axis=(1, 2, 3)) / norm
    common = (beta / 2) * sq ** (beta / 2 - 1) * 2 / norm
    gy, gx = common * dy, common * dx
    grad = -gy - gx
    grad[:, :, 1:] += gy[:, :, :-1]
    grad[:, :, :, 1:] += gx[:, :, :, :-1]
    return value, grad


def alpha_norm(image: np.ndarray, alpha: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = image.shape
    d = image - 0.5
    norm = h * w * B ** alpha
    value = np.sum(np.abs(d) ** alpha, axis=(1, 2, 3)) / norm
    grad = alpha * np.abs(d) ** (alpha - 1) * np.sign(d) / norm
    return value, grad


def l2(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = image.shape
    d = image - 0.5
    return np.sum(d * d, axis=(1, 2, 3)) / (h * w), 2 * d / (h * w)


# name -> (function, the weight's keyword, extra settings)
PRIORS = {"tv": tv, "alpha": alpha_norm, "l2": l2}
# settings that are not priors: what the loop does between steps
SCHEDULE = {"blur_every", "blur_sigma", "clip_grad"}
CLASSIC = {"l2": 1e-4 * 224 * 224, "blur_every": 4, "blur_sigma": 1.0, "clip_grad": 0.1}
PRESETS = {"none": {}, "classic": CLASSIC}


def resolve(regularizers: str | dict | None) -> dict:
    """None/"none", "classic" (pytorch-cnn-visualizations' class generation: L2 decay, a Gaussian blur every
    4 steps, gradient clipping), or a dict of ``tv``, ``alpha``, ``l2`` weights (a ``(weight, power)``
    pair for tv/alpha) and ``blur_every``/``blur_sigma``/``clip_grad``."""
    if regularizers is None:
        return {}
    if isinstance(regularizers, str):
        if regularizers not in PRESETS:
            raise ParameterError(f"unknown regularizers {regularizers!r}: use one of {', '.join(PRESETS)} or a dict")
        return dict(PRESETS[regularizers])
    if not isinstance(regularizers, dict):
        raise ParameterError(f"regularizers must be a name or a dict, not {type(regularizers).__name__}")
    unknown = set(regularizers) - set(PRIORS) - SCHEDULE
    if unknown:
        raise ParameterError(f"unknown regularizer {sorted(unknown)[0]!r}: use {', '.join([*PRIORS, *sorted(SCHEDULE)])}")
    return dict(regularizers)


def penalty(image: np.ndarray, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """Summed weighted priors: (value per sample [n], gradient like ``image``)."""
    value = np.zeros(len(image))
    grad = np.zeros_like(image)
    for name, fn in PRIORS.items():
        if name not in settings:
            continue
        weight, *power = np.atleast_1d(np.asarray(settings[name], dtype=np.float64)).tolist()
        v, g = fn(image, *power)
        value += weight * v
        grad += weight * g
    return value, grad


__all__ = ["CLASSIC", "PRESETS", "alpha_norm", "l2", "penalty", "resolve", "tv"]
