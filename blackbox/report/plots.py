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


def line_plot(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, width: int = 320,
              height: int = 200, title: str = "", xlabel: str = "", ylim: tuple[float, float] | None = None,
              xlim: tuple[float, float] | None = None, xticks: Sequence[float] | None = None,
              markers: bool = False) -> np.ndarray:
    """RGB uint8 picture of one or more (name, xs, ys) lines with axes, ticks, a legend and a title.
    Non-finite points are skipped (a line breaks there)."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 38, 8, 18 if title else 8, 28 if xlabel else 18
    x0, x1, y0, y1 = left, width - right, top, height - bottom
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
        ly = y0 + 11 + 11 * k
        cv2.line(img, (x1 - 100, ly - 3), (x1 - 88, ly - 3), colour, 2)
        _text(img, name[:14], (x1 - 84, ly))
    if title:
        _text(img, title, (x0, 12), scale=0.4, colour=(20, 20, 20))
    if xlabel:
        _text(img, xlabel, (x0 + (x1 - x0) // 2 - 4 * len(xlabel) // 2, height - 4))
    return img
