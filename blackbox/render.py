"""Colour maps and overlays: turn a heatmap into something a person can look at."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ParameterError

_COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
              "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT}


def _diverging_lut() -> np.ndarray:
    """Blue (negative) - white (zero) - red (positive), 256 RGB entries, for signed attributions."""
    t = np.linspace(-1.0, 1.0, 256)[:, None]
    blue, white, red = np.array([59, 76, 192.0]), np.array([247, 247, 247.0]), np.array([180, 4, 38.0])
    lut = np.where(t < 0, white + (blue - white) * (-t), white + (red - white) * t)
    return lut.astype(np.uint8)


def normalise(heatmap: np.ndarray, *, percentile: float = 99.5,
              seen: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Map to [0, 1] (non-negative maps, after subtracting their minimum) or [-1, 1] (signed maps), scaled by the ``percentile`` of
    |value| and clipped: pixel-gradient maps are spiky, and scaling by their single largest value would
    leave the rest invisible."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    values = h[seen] if seen is not None and seen.any() else h.ravel()  # statistics of what the model saw
    if not values.size:
        return np.zeros_like(h), False
    signed = bool(values.min() < -1e-12 * max(1.0, float(np.abs(values).max())))
    if not signed:  # (robust) min-max, as pytorch-grad-cam shows CAMs: RISE maps sit in [0.87, 1] x max
        low = float(np.percentile(values, 100.0 - percentile))
        h, values = h - low, values - low
    scale = float(np.percentile(np.abs(values), percentile))
    if scale <= 0:
        scale = float(np.abs(values).max())
    if scale <= 0:
        return np.zeros_like(h), signed
    return np.clip(h / scale, -1.0 if signed else 0.0, 1.0), signed


def colorize(heatmap: np.ndarray, colormap: str | None = None, seen: np.ndarray | None = None) -> np.ndarray:
    """H x W float -> H x W x 3 RGB uint8. Signed maps get a diverging map unless one is named."""
    norm, signed = normalise(heatmap, seen=seen)
    if colormap is None and signed:
        index = np.clip(np.round((norm + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return _diverging_lut()[index]
    name = (colormap or "jet").lower()
    if name not in _COLORMAPS:
        raise ParameterError(f"unknown colormap {colormap!r}: use one of {', '.join(sorted(_COLORMAPS))}")
    index = np.clip(np.round(np.abs(norm) * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(index, _COLORMAPS[name]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5, colormap: str | None = None,
            min_size: int = 256, seen: np.ndarray | None = None) -> np.ndarray:
    """Blend the coloured heatmap over an RGB picture. Pictures smaller than ``min_size`` (MNIST, CIFAR,
    64 px shapes) are enlarged by a whole factor, pixels kept sharp and the heatmap interpolated, so a
    person can see what is marked. Pixels outside ``seen`` (cropped away by the preprocessing) are left
    uncoloured and do not set the colour scale."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    factor = int(np.ceil(min_size / max(1, min(image.shape[:2]))))
    if factor > 1:
        image = cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    if heatmap.shape[:2] != image.shape[:2]:
        heatmap = cv2.resize(np.asarray(heatmap, np.float32), (image.shape[1], image.shape[0]),
                             interpolation=cv2.INTER_LINEAR)
    if seen is not None and seen.shape[:2] != image.shape[:2]:
        seen = cv2.resize(seen.astype(np.uint8), (image.shape[1], image.shape[0]),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    colours = colorize(heatmap, colormap, seen=seen).astype(np.float32)
    norm, signed = normalise(heatmap, seen=seen)
    # signed maps: opacity follows |value| so near-zero attribution leaves the picture untouched
    weight = alpha * np.sqrt(np.abs(norm)) if signed and colormap is None else np.full(norm.shape, alpha, np.float32)
    if seen is not None:
        weight = np.where(seen, weight, 0.0)
    weight = weight[..., None]
    blended = (1.0 - weight) * image[..., :3].astype(np.float32) + weight * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
