"""The plain overlay: colour maps and the coloured map blended over the picture (no matplotlib)."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import ParameterError

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
    low, scale, signed = _scaling(h, percentile, seen)
    if scale <= 0:
        return np.zeros_like(h), signed
    return np.clip((h - low) / scale, -1.0 if signed else 0.0, 1.0), signed


STATS_SAMPLES = 1 << 22  # maps larger than this are scaled by the statistics of an evenly strided sample


def _scaling(h: np.ndarray, percentile: float, seen: np.ndarray | None) -> tuple[float, float, bool]:
    """(offset, scale, signed) of :func:`normalise`, from what the model saw. A map of a large picture is
    sampled on a regular grid first, so the statistics cost a few MB, not copies of the whole map."""
    step = int(np.ceil(np.sqrt(h.size / STATS_SAMPLES))) if h.ndim == 2 and h.size > STATS_SAMPLES else 1
    h = h[::step, ::step]
    if seen is not None:
        seen = seen[::step, ::step]
    values = np.nan_to_num(h[seen]) if seen is not None and seen.any() else np.nan_to_num(h.ravel())
    if not values.size:
        return 0.0, 0.0, False
    signed = bool(values.min() < -1e-12 * max(1.0, float(np.abs(values).max())))
    low = 0.0
    if not signed:  # (robust) min-max, as pytorch-grad-cam shows CAMs: RISE maps sit in [0.87, 1] x max
        low = float(np.percentile(values, 100.0 - percentile))
        values = values - low
    scale = float(np.percentile(np.abs(values), percentile))
    if scale <= 0:
        scale = float(np.abs(values).max())
    return low, scale, signed


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


MAX_OVERLAY_SIDE = 2048  # enlarging small pictures stops where the long side would pass this
STRIP_PIXELS = 1 << 20  # overlays are blended in strips of about this many pixels


def enlargement(height: int, width: int, *, min_size: int = 256, max_side: int = MAX_OVERLAY_SIDE) -> int:
    """The whole factor a picture is enlarged by for display: enough to bring the short side to
    ``min_size``, but never so much that the long side passes ``max_side`` (and never below 1)."""
    want = int(np.ceil(min_size / max(1, min(height, width))))
    room = max(1, max_side // max(1, max(height, width)))
    return max(1, min(want, room))


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5, colormap: str | None = None,
            min_size: int = 256, seen: np.ndarray | None = None, max_side: int = MAX_OVERLAY_SIDE) -> np.ndarray:
    """Blend the coloured heatmap over an RGB picture. Pictures smaller than ``min_size`` (MNIST, CIFAR,
    64 px shapes) are enlarged by a whole factor, pixels kept sharp and the heatmap interpolated, so a
    person can see what is marked; the factor is capped so the long side stays within ``max_side`` (a
    1 x 5000 strip stays 1 x 5000, not 256 x 1,280,000). Pixels outside ``seen`` (cropped away by the
    preprocessing) are left uncoloured and do not set the colour scale.

    Memory: the output, the (enlarged) heatmap and seen mask when sizes differ, and float work arrays for
    one strip of rows at a time, not several float copies of the whole picture."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    factor = enlargement(image.shape[0], image.shape[1], min_size=min_size, max_side=max_side)
    if factor > 1:
        image = cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    height, width = image.shape[:2]
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape[:2] != (height, width):
        heatmap = cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    if seen is not None and seen.shape[:2] != (height, width):
        seen = cv2.resize(seen.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    name = (colormap or "jet").lower()
    if name not in _COLORMAPS:
        raise ParameterError(f"unknown colormap {colormap!r}: use one of {', '.join(sorted(_COLORMAPS))}")
    low, scale, signed = _scaling(heatmap, 99.5, seen)
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, width))
    for r in range(0, height, rows):
        part = slice(r, r + rows)
        h = np.nan_to_num(heatmap[part])
        norm = (np.clip((h - low) / scale, -1.0 if signed else 0.0, 1.0) if scale > 0
                else np.zeros_like(h)).astype(np.float32)
        if colormap is None and signed:
            index = np.clip(np.round((norm + 1.0) * 127.5), 0, 255).astype(np.uint8)
            colours = _diverging_lut()[index].astype(np.float32)
            # signed maps: opacity follows |value| so near-zero attribution leaves the picture untouched
            weight = alpha * np.sqrt(np.abs(norm))
        else:
            index = np.clip(np.round(np.abs(norm) * 255), 0, 255).astype(np.uint8)
            colours = cv2.cvtColor(cv2.applyColorMap(index, _COLORMAPS[name]), cv2.COLOR_BGR2RGB).astype(np.float32)
            weight = np.full(norm.shape, alpha, np.float32)
        if seen is not None:
            weight = np.where(seen[part], weight, 0.0)
        weight = weight[..., None]
        blended = (1.0 - weight) * image[part, :, :3].astype(np.float32) + weight * colours
        out[part] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out
