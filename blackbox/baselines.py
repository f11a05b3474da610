"""Reference inputs for perturbation: what a hidden region is replaced with.

All baselines are float32 [C, H, W] in model space, built from the sample once per explanation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .errors import ParameterError

if TYPE_CHECKING:
    from .inputs import Sample
    from .model import Model

NAMED = ("zeros", "mean", "blur", "black", "white", "gray")


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel (reflecting borders). Blur is linear with weights summing to 1, so
    blurring in model space equals blurring the picture and preprocessing it."""
    if sigma <= 0:
        return x.copy()
    k = int(2 * np.ceil(3 * sigma) + 1)
    return np.stack([cv2.GaussianBlur(c, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
                     for c in x]).astype(np.float32)


def colour(model: "Model", rgb: tuple[int, int, int]) -> np.ndarray:
    """A picture of one colour, preprocessed like any picture (so 'black' means black to the model)."""
    height, width = model.image.height, model.image.width
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = np.asarray(rgb, np.uint8)
    return np.asarray(model.preprocess(picture).x, np.float32).reshape(model.image.channels, height, width)


def make_baseline(model: "Model", sample: "Sample", spec: Any, *, blur_sigma: float | None = None) -> np.ndarray:
    """Baseline from a spec: a number (model-space constant, as Captum's ``baselines``), 'zeros', 'mean'
    (per-channel mean of x), 'blur' (Gaussian blur of x), 'black'/'white'/'gray', an (r, g, b) colour,
    or an array shaped like x (internal layout) or like one model input."""
    x = sample.x
    if spec is None:
        spec = 0.0
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return np.full_like(x, float(spec))
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name == "zeros":
            return np.zeros_like(x)
        if name == "mean":
            return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32).copy()
        if name == "blur":
            sigma = blur_sigma if blur_sigma is not None else max(x.shape[1:]) / 22.4
            return blur(x, sigma)
        named = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "grey": (128, 128, 128)}
        if name in named:
            return colour(model, named[name])
        try:
            return np.full_like(x, float(name))
        except ValueError:
            raise ParameterError(f"unknown baseline {spec!r}: use a number, {', '.join(NAMED)}, an (r, g, b) "
                                 "colour or an array") from None
    array = np.asarray(spec)
    if array.shape == (3,) and array.dtype != object:
        return colour(model, tuple(int(v) for v in array))
    if array.shape == x.shape:
        return array.astype(np.float32)
    from .inputs import to_internal

    try:
        return to_internal(model, array)
    except Exception:  # noqa: BLE001
        raise ParameterError(f"baseline array of shape {array.shape} does not match the input {x.shape}") from None
