"""Figures that explain themselves: the picture the model saw, the map with a colour bar in its own units,
the overlay, and a title saying method, class and score. Several explanations make a grid (like shap's
``image_plot``): one row per image, the original then one column per explanation, one colour scale per
method. Built on matplotlib's object API with the Agg canvas (no pyplot state, no display), imported
only when a figure is asked for, so ``import blackbox`` stays fast.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ParameterError
from .display import (
    DEFAULT_CLIP,
    PIXEL_METHODS,
    Options,
    Scaled,
    blur_sigma,
    check_options,
    choose_sign,
    own_range,
    prepare,
    scale,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..explanation import Explanation

DISPLAY_SIDE = 448  # pictures are shown at most this many pixels on their long side (the PNG stays small)
PANEL_INCHES = 3.4
DPI = 110
CROP_COLOUR = "#39ff14"
MODE_TITLES = {"heat": "heat map", "blend": "overlay", "masked": "masked picture", "alpha": "alpha scaling"}
MAX_NOTES = 4  # notes printed under a figure; all of them are in the NPZ and on the command line


@dataclass
class _View:
    """One explanation prepared for display: the picture, and the map cropped to what the model saw."""

    exp: Explanation
    picture: np.ndarray  # display-sized RGB uint8, the whole picture
    seen: np.ndarray | None  # display-sized bool, None when the model saw everything
    box: tuple[int, int, int, int]  # (top, bottom, left, right) of the model's crop in display pixels
    crop: np.ndarray  # the picture inside the box
    heat: np.ndarray  # the map inside the box, display-sized
    sigma: float  # display blur in display pixels (0: none; pixel-gradient methods get one)

    @property
    def pixel(self) -> bool:
        return self.sigma > 0


def figure(explanations: Explanation | Sequence[Explanation], *, sign: str | None = None,
           clip: float = DEFAULT_CLIP, mode: str = "blend", alpha: float = 0.5,
           colormap: str | None = None) -> Figure:
    """A matplotlib Figure for one explanation (original, map with colour bar, overlay) or several
    (a grid: a row per image, the original then a column per explanation, one colour scale per method).

    ``sign``: positive, negative, absolute or all (default: all for signed maps, positive otherwise);
    ``clip``: Captum's outlier percentage (the largest values holding ``clip`` % of the |mass| saturate);
    ``mode``: heat, blend (over the gray picture, ``alpha`` opaque), masked (picture x map) or alpha
    (the map as the picture's opacity); ``colormap``: any matplotlib colour map (default: RdBu_r for
    signed maps, inferno for non-negative ones, Blues for the negative part)."""
    options = check_options(sign=sign, clip=clip, mode=mode, alpha=alpha, colormap=colormap)
    items = [explanations] if not isinstance(explanations, (list, tuple)) else list(explanations)
    if not items:
        raise ParameterError("figure needs at least one explanation")
    views = [_view(exp) for exp in items]
    if len(views) == 1:
        return _single(views[0], options)
    return _grid(views, options)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render with the Agg canvas and write the PNG atomically (temporary file, then rename)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..errors import ImageError
    from ..files import write_atomic

    canvas = FigureCanvasAgg(fig)
    return write_atomic(path, lambda stream: canvas.print_png(stream), error=ImageError)


# ------------------------------------------------------------------------------------- preparation
def _view(exp: Explanation) -> _View:
    import cv2

    picture = np.asarray(exp.image)
    if picture.ndim == 2:
        picture = picture[..., None]
    if picture.shape[2] == 1:
        picture = np.repeat(picture, 3, axis=2)
    picture = picture[..., :3]
    heat = np.nan_to_num(np.asarray(exp.heatmap, np.float32))
    seen = None if exp.seen is None or exp.seen.all() else np.asarray(exp.seen, bool)
    height, width = picture.shape[:2]
    factor = min(1.0, DISPLAY_SIDE / max(height, width))
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_AREA)
        if seen is not None:
            seen = cv2.resize(seen.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if seen is not None and seen.any():
        rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    else:
        box, seen = (0, picture.shape[0], 0, picture.shape[1]), None
    top, bottom, left, right = box
    heat = heat[top:bottom, left:right]
    sigma = 0.0
    if exp.method in PIXEL_METHODS:
        sigma = blur_sigma(max(np.asarray(exp.model_heatmap).shape[:2]), max(heat.shape))
    return _View(exp=exp, picture=picture, seen=seen, box=box, crop=picture[top:bottom, left:right], heat=heat,
                 sigma=sigma)


def _scales(views: Sequence[_View], options: Options) -> list[Scaled]:
    """Each view scaled, with one sign and one (floor, threshold) per method: maps of one method share
    units, so they share a colour scale (a signed map among them makes the method's sign all)."""
    signs: dict[str, str] = {}
    for v in views:
        s = choose_sign(v.heat, options, pixel=v.pixel)
        signs[v.exp.method] = "all" if "all" in (s, signs.get(v.exp.method)) else s
    ranges: dict[str, tuple[float, float]] = {}
    for v in views:
        sign = signs[v.exp.method]
        low, top = own_range(prepare(v.heat, sign, v.sigma).ravel(), sign, options.clip)
        old = ranges.get(v.exp.method)
        ranges[v.exp.method] = (low, top) if old is None else (min(old[0], low), max(old[1], top))
    return [scale(v.heat, options, sign=signs[v.exp.method], sigma=v.sigma, floor=ranges[v.exp.method][0],
                  limit=ranges[v.exp.method][1]) for v in views]


# ------------------------------------------------------------------------------------- drawing
def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _aspect(shape) -> str:
    """Square pixels, except for strips (a 1 x 5000 picture would be a hairline): those fill the panel."""
    height, width = shape[:2]
    return "auto" if max(height, width) > 8 * max(1, min(height, width)) else "equal"


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _draw_original(fig, ax, view: _View, *, legend: bool = True) -> None:
    """The whole picture; when the model saw a centre crop, the outside dimmed and the crop outlined
    (the legend sits where the other panels have their colour bar)."""
    from matplotlib.patches import Rectangle

    picture = view.picture
    if view.seen is not None:
        dimmed = (picture.astype(np.float32) * 0.35 + 255 * 0.15).astype(np.uint8)
        picture = np.where(view.seen[..., None], picture, dimmed)
    ax.imshow(picture, interpolation="nearest" if min(picture.shape[:2]) < 128 else "antialiased",
              aspect=_aspect(picture.shape))
    _bare(ax)
    if view.seen is not None:
        top, bottom, left, right = view.box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                               edgecolor=CROP_COLOUR, linewidth=1.6, label="what the model saw (centre crop)"))
    space = _no_colour_bar(fig, ax)
    if view.seen is not None and legend:
        space.legend(*ax.get_legend_handles_labels(), loc="center", fontsize=7, frameon=False, handlelength=1.2)


def _draw_map(ax, view: _View, scaled: Scaled, mode: str, alpha: float):
    """The map in ``mode`` (Captum's heat_map, blended_heat_map, masked_image, alpha_scaling); returns
    the image a colour bar describes (None for masked and alpha, which have no colour scale)."""
    crop = view.crop
    interpolation = "nearest" if min(crop.shape[:2]) < 128 else "antialiased"
    aspect = _aspect(crop.shape)
    _bare(ax)
    if mode == "heat":
        return ax.imshow(scaled.values, cmap=scaled.colormap, vmin=scaled.vmin, vmax=scaled.vmax,
                         interpolation=interpolation, aspect=aspect)
    if mode == "blend":
        ax.imshow(np.mean(crop, axis=2), cmap="gray", interpolation=interpolation, aspect=aspect)
        return ax.imshow(scaled.values, cmap=scaled.colormap, vmin=scaled.vmin, vmax=scaled.vmax, alpha=alpha,
                         interpolation=interpolation, aspect=aspect)
    if mode == "masked":
        ax.imshow(np.clip((crop * scaled.norm[..., None]).astype(int), 0, 255), interpolation=interpolation,
                  aspect=aspect)
        return None
    ax.set_facecolor("white")
    alpha_channel = np.clip((scaled.norm[..., None] * 255).astype(int), 0, 255)
    ax.imshow(np.concatenate([crop.astype(int), alpha_channel], axis=2), interpolation=interpolation, aspect=aspect)
    return None


def _colour_bar(fig, ax, image, scaled: Scaled, view: _View, *, label: bool = True) -> None:
    """A horizontal bar under ``ax`` in the map's own units, its ends the clipped range."""
    bar = fig.colorbar(image, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02, aspect=25)
    from matplotlib.ticker import FormatStrFormatter

    bar.ax.tick_params(labelsize=7)
    bar.ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # values as they are, no offset text
    if label:
        bar.set_label(_units(view, scaled), fontsize=7)


def _no_colour_bar(fig, ax) -> None:
    """The space a colour bar takes, left empty, so every panel of a row keeps the same size."""
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(), ax=ax, orientation="horizontal", fraction=0.05, pad=0.02, aspect=25)
    bar.solids.set_visible(False)
    bar.outline.set_visible(False)
    bar.ax.axis("off")
    return bar.ax


def _units(view: _View, scaled: Scaled) -> str:
    parts = [f"attribution to the {view.exp.score}" + (" score" if view.exp.score == "raw" else ""),
             f"sign {scaled.sign}"]
    if view.sigma:
        parts.append(f"blurred σ={view.sigma:.1f} px")
    return parts[0] + "\n" + ", ".join(parts[1:])  # two short lines: side-by-side bars never run together


def _score_text(exp: Explanation) -> str:
    label = exp.label if str(exp.label) != str(exp.target) else ""
    cls = f"{label} ({exp.target})" if label else f"class {exp.target}"
    return f"{cls} · {exp.score} {exp.target_score:.4g}"


def _notes(fig, notes: Sequence[str], width: int) -> None:
    """The explanation's notes, small, under the panels: a figure must not look more certain than it is."""
    unique = list(dict.fromkeys(notes))
    if not unique:
        return
    shown = [textwrap.shorten("note: " + n, width=width * 2, placeholder=" ...") for n in unique[:MAX_NOTES]]
    if len(unique) > MAX_NOTES:
        shown.append(f"(+{len(unique) - MAX_NOTES} more notes in the NPZ summary)")
    text = "\n".join(textwrap.fill(s, width=width) for s in shown)
    fig.supxlabel(text, fontsize=7, color="#7a3b00", ha="left", x=0.01)


def _single(view: _View, options: Options) -> Figure:
    scaled = _scales([view], options)[0]
    panels = 2 if options.mode == "heat" else 3
    aspect = view.crop.shape[0] / max(1, view.crop.shape[1])
    fig = _new_figure(PANEL_INCHES * panels, PANEL_INCHES * min(1.6, max(0.6, aspect)) + 1.2)
    axes = fig.subplots(1, panels)
    _draw_original(fig, axes[0], view)
    axes[0].set_title("original" + (" (outside the crop dimmed)" if view.seen is not None else ""), fontsize=9)
    heat = _draw_map(axes[1], view, scaled, "heat", options.alpha)
    axes[1].set_title("attribution map", fontsize=9)
    _colour_bar(fig, axes[1], heat, scaled, view)
    if panels == 3:
        _draw_map(axes[2], view, scaled, options.mode, options.alpha)
        _no_colour_bar(fig, axes[2])
        axes[2].set_title(MODE_TITLES[options.mode] + (f" (alpha {options.alpha:g})" if options.mode == "blend"
                                                       else ""), fontsize=9)
    exp = view.exp
    fig.suptitle(f"{exp.method} · {_score_text(exp)}", fontsize=11)
    _notes(fig, exp.notes, width=int(PANEL_INCHES * panels * 16))
    return fig


def _grid(views: Sequence[_View], options: Options) -> Figure:
    scales = _scales(views, options)
    rows: dict[Any, list[int]] = {}
    for i, v in enumerate(views):  # one row per picture, in first-seen order
        rows.setdefault((v.exp.source, id(v.exp.image) if v.exp.source == "array" else None), []).append(i)
    columns = 1 + max(len(r) for r in rows.values())
    fig = _new_figure(PANEL_INCHES * 0.8 * columns, (PANEL_INCHES * 0.8 + 0.9) * len(rows) + 0.9)
    axes = np.asarray(fig.subplots(len(rows), columns, squeeze=False))
    notes: dict[str, list[str]] = {}
    for r, members in enumerate(rows.values()):
        first = views[members[0]]
        _draw_original(fig, axes[r, 0], first, legend=r == len(rows) - 1)
        name = Path(first.exp.source).name if first.exp.source != "array" else "picture"
        axes[r, 0].set_title(f"{name}\noriginal", fontsize=8)
        for c, i in enumerate(members, start=1):
            view, scaled = views[i], scales[i]
            image = _draw_map(axes[r, c], view, scaled, options.mode, options.alpha)
            axes[r, c].set_title(f"{view.exp.method}\n{_score_text(view.exp)}", fontsize=8)
            if image is not None:
                _colour_bar(fig, axes[r, c], image, scaled, view, label=r == len(rows) - 1)
            else:
                _no_colour_bar(fig, axes[r, c])
            for note in dict.fromkeys(view.exp.notes):
                notes.setdefault(note, []).append(f"{view.exp.method}, {view.exp.label}")
        for c in range(len(members) + 1, columns):
            axes[r, c].set_visible(False)
    methods = list(dict.fromkeys(v.exp.method for v in views))
    fig.suptitle(f"{', '.join(methods)}: {MODE_TITLES[options.mode]}, one colour scale per method", fontsize=10)
    lines = [note if len(who) == len(views) else f"{'; '.join(who)}: {note}" for note, who in notes.items()]
    _notes(fig, lines, width=int(PANEL_INCHES * 0.8 * columns * 16))
    return fig
