"""Turn a heatmap into something a person can look at.

- :mod:`.overlay`: the plain overlay (the coloured map blended over the picture, one PNG, no matplotlib);
- :mod:`.display`: sign, outlier clipping and colour maps with Captum's ``visualize_image_attr`` semantics;
- :mod:`.figures`: matplotlib figures with the original, a colour bar in real units and a title, and grids.

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .display import DEFAULT_CLIP, MODES, SIGNS, check_options
from .overlay import (
    _COLORMAPS,
    MAX_OVERLAY_SIDE,
    STATS_SAMPLES,
    STRIP_PIXELS,
    _diverging_lut,
    _scaling,
    colorize,
    enlargement,
    normalise,
    overlay,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_CLIP",
    "MAX_OVERLAY_SIDE",
    "MODES",
    "SIGNS",
    "STATS_SAMPLES",
    "STRIP_PIXELS",
    "_COLORMAPS",
    "_diverging_lut",
    "_scaling",
    "check_options",
    "colorize",
    "enlargement",
    "figure",
    "normalise",
    "overlay",
    "save_figure",
]


def figure(explanations: Any, **options: Any) -> Figure:
    """See :func:`blackbox.render.figures.figure` (imported lazily: matplotlib loads only here)."""
    from .figures import figure as build

    return build(explanations, **options)


def save_figure(fig: Figure, path: Any):
    """See :func:`blackbox.render.figures.save_figure`."""
    from .figures import save_figure as save

    return save(fig, path)
