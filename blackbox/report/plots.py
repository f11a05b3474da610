"""Small line plots drawn with OpenCV (no matplotlib at run time): curves for the HTML report."""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

# RGB colours that stay apart for colour-blind readers (Okabe-Ito)
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, text: str, org: tuple[int, int], *, scale: float = 0.35, colour=(60, 60, 60)) -> None:
    safe = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)  # Hershey fonts draw ASCII only
    cv2.putText(img, safe, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


LEGEND_ROW = 12  # pixels per legend row
_SWATCH = 14  # legend line sample, then a gap before the name


def _text_width(text: str, scale: float = 0.35) -> int:
    return int(cv2.getTextSize(text, _FONT, scale, 1)[0][0])


def layout(names: Sequence[str], *, width: int, height: int, title: str = "", xlabel: str = "") -> dict:
    """Where a :func:`line_plot` puts things: ``axes`` (x0, y0, x1, y1), the ``legend`` box (x0, y0, x1, y1)
    below the axes and their labels (never over the curves), and each legend entry's origin
    ``entries`` [(x, baseline y)]. Entries flow left to right and wrap into rows."""
    left, right, top = 38, 8, 18 if title else 8
    x0, x1 = left, width - right
    entries: list[tuple[int, int]] = []
    x, row = x0, 0
    for name in names:
        w = _SWATCH + 4 + _text_width(name[:24]) + 10
        if x > x0 and x + w > width - 2:
            x, row = x0, row + 1
        entries.append((x, row))
        x += w
    rows = row + 1 if names else 0
    legend_h = rows * LEGEND_ROW + (4 if rows else 0)
    ticks = 16  # tick marks and their labels under the axes
    label = 11 if xlabel else 0
    y1 = height - ticks - label - legend_h - 2
    y0 = top
    if y1 - y0 < 20:  # too small to hold a legend below: the axes keep 20 px, the picture grows
        y1 = y0 + 20
    legend_top = y1 + ticks + label + 2
    placed = [(ex, legend_top + LEGEND_ROW * (r + 1) - 3) for ex, r in entries]
    legend = (x0, legend_top, x1, legend_top + legend_h) if rows else None
    return {"axes": (x0, y0, x1, y1), "legend": legend, "entries": placed, "xlabel_y": y1 + ticks + label - 2,
            "height": max(height, (legend[3] if legend else y1 + ticks + label) + 1)}


def line_plot(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, width: int = 320,
              height: int = 200, title: str = "", xlabel: str = "", ylim: tuple[float, float] | None = None,
              xlim: tuple[float, float] | None = None, xticks: Sequence[float] | None = None,
              markers: bool = False) -> np.ndarray:
    """RGB uint8 picture of one or more (name, xs, ys) lines with axes, ticks, a title and a legend below
    the axes (:func:`layout`), so it never covers a curve. Non-finite points are skipped (a line breaks
    there)."""
    place = layout([name for name, _, _ in series], width=width, height=height, title=title, xlabel=xlabel)
    height = place["height"]
    img = np.full((height, width, 3), 255, np.uint8)
    x0, y0, x1, y1 = place["axes"]
    xs_all = [float(v) for _, xs, _ in series for v in xs]
    ys_all = [float(v) for _, _, ys in series for v in ys if v is not None and math.isfinite(float(v))]
    xmin, xmax = xlim or ((min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0))
    ymin, ymax = ylim or ((min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0))
    if xmax <= xmin:
        xmax = xmin + 1.0
    if ymax <= ymin:
        ymax = ymin + 1.0

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(round(x0 + (x - xmin) / (xmax - xmin) * (x1 - x0))),
                int(round(y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))))

    for frac in (0.0, 0.5, 1.0):  # horizontal grid lines with y labels
        yv = ymin + frac * (ymax - ymin)
        _, yy = px(xmin, yv)
        cv2.line(img, (x0, yy), (x1, yy), (225, 225, 225), 1)
        _text(img, _fmt(round(yv, 3)), (2, yy + 4))
    ticks = list(xticks) if xticks is not None else [xmin, (xmin + xmax) / 2, xmax]
    for xv in ticks:
        xx, _ = px(xv, ymin)
        cv2.line(img, (xx, y1), (xx, y1 + 3), (90, 90, 90), 1)
        _text(img, _fmt(round(xv, 3)), (max(0, xx - 8), y1 + 13))
    if ymin < 0 < ymax:
        _, yz = px(xmin, 0.0)
        cv2.line(img, (x0, yz), (x1, yz), (170, 170, 170), 1)
    cv2.rectangle(img, (x0, y0), (x1, y1), (90, 90, 90), 1)
    for k, (name, xs, ys) in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        run: list[tuple[int, int]] = []
        points = []
        for x, y in zip(xs, ys):
            if y is None or not math.isfinite(float(y)):
                if len(run) > 1:
                    cv2.polylines(img, [np.array(run, np.int32)], False, colour, 2, cv2.LINE_AA)
                run = []
                continue
            p = px(float(x), float(y))
            run.append(p)
            points.append(p)
        if len(run) > 1:
            cv2.polylines(img, [np.array(run, np.int32)], False, colour, 2, cv2.LINE_AA)
        if markers or len(points) == 1:
            for p in points:
                cv2.circle(img, p, 2, colour, -1, cv2.LINE_AA)
        lx, ly = place["entries"][k]
        cv2.line(img, (lx, ly - 3), (lx + _SWATCH, ly - 3), colour, 2)
        _text(img, name[:24], (lx + _SWATCH + 4, ly))
    if title:
        _text(img, title, (x0, 12), scale=0.4, colour=(20, 20, 20))
    if xlabel:
        _text(img, xlabel, (x0 + (x1 - x0) // 2 - _text_width(xlabel) // 2, place["xlabel_y"]))
    return img
