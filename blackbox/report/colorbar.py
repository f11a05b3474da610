"""A colour bar in real units for each report map: the attribution values the overlay's colours span.

:func:`overlay_range` repeats what :func:`blackbox.render.overlay` does before it colours a map (the
picture enlarged by :func:`~blackbox.render.enlargement`, the map resized to it, then
:func:`~blackbox.render._scaling` over the pixels the model saw), so the bar's ends are exactly the values
drawn in the overlay's end colours (values beyond them are clipped to those colours). Signed maps span
``[-s, +s]`` with 0 in the middle (white on the default diverging map; the overlay's opacity follows
``|value|``, so the picture shows through near 0), non-negative maps ``[low, low + s]``.

:func:`colorbar_png` is the strip of colours itself, made by :func:`blackbox.render.colorize` from a ramp
of values, so it is the overlay's own colour map, not a copy of it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

PERCENTILE = 99.5  # the overlay's (blackbox.render.overlay scales by this percentile of |value|)
WIDTH = 256


def overlay_range(heatmap: np.ndarray, image_shape: tuple[int, ...], seen: np.ndarray | None = None,
                  colormap: str | None = None) -> dict[str, Any]:
    """``{"low", "high", "signed", "colormap"}``: the values at the overlay's two end colours."""
    from ..render import _scaling, enlargement

    height, width = int(image_shape[0]), int(image_shape[1])
    factor = enlargement(height, width)
    size = (height * factor, width * factor)
    h = np.asarray(heatmap, np.float32)
    if h.shape[:2] != size:
        h = cv2.resize(h, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if seen is not None and seen.shape[:2] != size:
        seen = cv2.resize(seen.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    low, scale, signed = _scaling(h, PERCENTILE, seen)
    lo, hi = (-scale, scale) if signed else (low, low + scale)
    return {"low": float(lo), "high": float(hi), "signed": bool(signed),
            "colormap": colormap if colormap is not None else ("diverging" if signed else "jet")}


def colorbar_rgb(colormap: str | None, signed: bool, width: int = WIDTH) -> np.ndarray:
    """RGB uint8 [1, width]: the colour of each value from the bar's low end to its high end."""
    from ..render import colorize

    ramp = np.linspace(-1.0 if signed else 0.0, 1.0, width, dtype=np.float64)
    # anchors at both ends pin colorize's robust scaling to exactly [-1, 1] (signed) or [0, 1]
    ends = np.repeat([ramp[0], ramp[-1]], width)
    values = np.concatenate([ramp, ends]).astype(np.float32)[None, :]
    name = None if colormap in (None, "diverging") else colormap
    return colorize(values, name)[:, :width]


def colorbar_png(colormap: str | None, signed: bool, width: int = WIDTH, height: int = 12) -> bytes:
    """The bar as a small PNG (``width`` x ``height``)."""
    strip = np.repeat(colorbar_rgb(colormap, signed, width), height, axis=0)
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(strip[:, :, ::-1]))
    if not ok:  # pragma: no cover
        raise ValueError("could not encode the colour bar")
    return buffer.tobytes()
