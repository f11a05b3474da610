"""Data-set findings: what the model relies on, per class, over a whole report run.

From every ``ok`` record's map in model-input space (``model_heatmap`` in its NPZ, read one at a time, so
memory grows with the number of classes, never with the number of images), per method and per class:

* **groups**: ``predicted`` -- the records whose explained class is the model's top-1 class, grouped by
  it; ``true`` -- the records with a truth target (``--targets-csv``), grouped by that class (the class
  they explain).
* **normalisation**: each map as :func:`blackbox.metrics.saliency_fraction` reads it -- NaNs to 0, shifted
  down by its minimum when it is positive everywhere (RISE), negative values dropped -- and divided by its
  sum, so every image weighs the same and a box's sum is the share of that image's saliency inside it.
  A map with nothing positive is left out (counted under ``empty``).
* **mean map** of the group, and the mean **share of saliency inside the truth** (mask, else box, in
  model-input pixels) over the images that have one.
* **shortcut detector**: the box ``(y0, x0, y1, x1)`` (half-open, model-input pixels) with the largest
  *lift* -- its share of the mean map over its share of the image area -- among square-ish boxes of
  1/8, 1/6, 1/4 and 1/3 of each side at every position (one summed-area table per map makes each box
  O(1)); ties go to the smaller box, then to raster order. The box is reported as a finding only when
  all of these hold (the thresholds are the module constants):

  1. the group has at least ``MIN_IMAGES`` (8) images;
  2. the box holds at least ``MIN_SHARE`` (10%) of the mean map and ``MIN_LIFT`` (4x) what a uniform map
     would put there;
  3. it is consistent: at least ``MIN_CONSISTENCY`` (70%) of the images put at least ``IMAGE_LIFT``
     (2x) the uniform share into it, or have their top pixel in it;
  4. the objects are elsewhere. With truth regions for at least half the images: at most
     ``MAX_ON_OBJECT`` (25%) of them have the box on the object (the truth region covers at least 25% of
     the box, or the box holds at least 25% of the region). Without truth: the box is specific to the
     class -- its share of this class's mean map is at least ``MIN_CONTRAST`` (3x) its share of the mean
     map of the other classes' images (same method and grouping, at least ``MIN_IMAGES`` of them).
     Objects that move, with a map that follows them, leave no fixed box with a high lift; a fixed spot
     that every class lights up (a centre bias, a logo on every image) is no class-specific shortcut, and
     without truth and other classes nothing can be told apart, so nothing is reported.

``summary.json`` gets ``findings`` (the reported boxes) and ``classes`` (per class, per method, per
grouping: images, mean share in truth, the mean-map PNG under ``OUT/findings/``, and the best box with
every number of the rule and why it was or was not reported).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import BlackboxError
from ..files import write_atomic

BOX_FRACTIONS = (1 / 8, 1 / 6, 1 / 4, 1 / 3)
MIN_IMAGES = 8
MIN_SHARE = 0.10
MIN_LIFT = 4.0
IMAGE_LIFT = 2.0
MIN_CONSISTENCY = 0.7
TRUTH_COVERAGE = 0.5
ON_OBJECT = 0.25
MAX_ON_OBJECT = 0.25
MIN_CONTRAST = 3.0
MAX_EMBEDDED = 48  # class mean maps embedded in the page (findings always are); the rest are linked
GROUPINGS = ("predicted", "true")

RULE = {"box_fractions": [round(f, 4) for f in BOX_FRACTIONS], "min_images": MIN_IMAGES, "min_share": MIN_SHARE,
        "min_lift": MIN_LIFT, "image_lift": IMAGE_LIFT, "min_consistency": MIN_CONSISTENCY,
        "truth_coverage": TRUTH_COVERAGE, "on_object": ON_OBJECT, "max_on_object": MAX_ON_OBJECT,
        "min_contrast": MIN_CONTRAST}


# ------------------------------------------------------------------------------------ map arithmetic

def normalise_map(heatmap: Any) -> np.ndarray | None:
    """float64 [H, W] summing to 1 (see the module doc), or None when nothing is positive."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if h.ndim != 2 or not h.size:
        return None
    positive = np.maximum(h - max(float(h.min()), 0.0), 0.0)
    total = float(positive.sum())
    return positive / total if total > 0 else None


def integral(m: np.ndarray) -> np.ndarray:
    """Summed-area table, zero-padded: ``S[y, x]`` = sum of ``m[:y, :x]``."""
    s = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.float64)
    np.cumsum(np.cumsum(m, axis=0, dtype=np.float64), axis=1, out=s[1:, 1:])
    return s


def box_sums(sat: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Sums of every bh x bw box, [H - bh + 1, W - bw + 1], indexed by the top-left corner."""
    return sat[bh:, bw:] - sat[:-bh, bw:] - sat[bh:, :-bw] + sat[:-bh, :-bw]


def box_share(sat: np.ndarray, box: Sequence[int]) -> float:
    y0, x0, y1, x1 = (int(v) for v in box)
    return float(sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0])


def box_sizes(shape: tuple[int, int], fractions: Sequence[float] = BOX_FRACTIONS) -> list[tuple[int, int]]:
    h, w = shape
    sizes = [(min(h, max(1, round(f * h))), min(w, max(1, round(f * w)))) for f in fractions]
    return list(dict.fromkeys(sizes))


def search_box(mean_map: np.ndarray, fractions: Sequence[float] = BOX_FRACTIONS) -> dict[str, Any]:
    """The box with the largest lift (share / area fraction) over :func:`box_sizes`; ties: smaller box,
    then raster order. ``mean_map`` need not sum to 1 (the share is of its total)."""
    m = np.asarray(mean_map, dtype=np.float64)
    total = float(m.sum())
    sat = integral(m)
    h, w = m.shape
    best: dict[str, Any] | None = None
    for bh, bw in box_sizes((h, w), fractions):
        sums = box_sums(sat, bh, bw)
        area = bh * bw / float(h * w)
        k = int(np.argmax(sums))
        y0, x0 = divmod(k, sums.shape[1])
        share = float(sums[y0, x0]) / total if total > 0 else 0.0
        lift = share / area
        if best is None or lift > best["lift"] * (1 + 1e-9):
            best = {"box": [int(y0), int(x0), int(y0 + bh), int(x0 + bw)], "share": share, "area": area,
                    "lift": lift}
    assert best is not None
    return best


def _box_region(shape: tuple[int, int], box: Sequence[int]) -> np.ndarray:
    region = np.zeros(shape, bool)
    y0, x0, y1, x1 = (int(v) for v in box)
    region[y0:y1, x0:x1] = True
    return region


def on_object(region: np.ndarray, box: Sequence[int]) -> bool:
    """The box is on the object when the truth region covers at least ``ON_OBJECT`` of the box, or the box
    holds at least ``ON_OBJECT`` of the region."""
    y0, x0, y1, x1 = (int(v) for v in box)
    inter = float(region[y0:y1, x0:x1].sum())
    box_area = float((y1 - y0) * (x1 - x0))
    size = float(region.sum())
    return bool(size > 0 and (inter >= ON_OBJECT * box_area or inter >= ON_OBJECT * size))


def agrees(p: np.ndarray, box: Sequence[int], area: float) -> bool:
    """One image's normalised map backs the box: ``IMAGE_LIFT`` x the uniform share in it, or its top pixel."""
    y0, x0, y1, x1 = (int(v) for v in box)
    if float(p[y0:y1, x0:x1].sum()) >= IMAGE_LIFT * area:
        return True
    ty, tx = divmod(int(np.argmax(p)), p.shape[1])
    return bool(y0 <= ty < y1 and x0 <= tx < x1)


def judge(candidate: dict[str, Any], *, images: int, consistency: float, truth_images: int,
          on_object_fraction: float | None, contrast: float | None, other_images: int) -> tuple[bool, str, str]:
    """(reported, the evidence used: 'truth' or 'contrast', why) -- the significance rule of the module doc."""
    share, lift = candidate["share"], candidate["lift"]
    if images < MIN_IMAGES:
        return False, "", f"{images} images (the rule needs {MIN_IMAGES})"
    if share < MIN_SHARE or lift < MIN_LIFT:
        return False, "", (f"the box holds {share:.1%} of the mean saliency, {lift:.1f}x a uniform map (the rule "
                           f"needs {MIN_SHARE:.0%} and {MIN_LIFT:g}x)")
    if consistency < MIN_CONSISTENCY:
        return False, "", f"only {consistency:.0%} of the images back the box (the rule needs {MIN_CONSISTENCY:.0%})"
    if truth_images >= TRUTH_COVERAGE * images and on_object_fraction is not None:
        if on_object_fraction > MAX_ON_OBJECT:
            return False, "truth", (f"the box is on the object in {on_object_fraction:.0%} of the images with "
                                    f"truth (the rule allows {MAX_ON_OBJECT:.0%})")
        return True, "truth", (f"a fixed box off the object in {1 - on_object_fraction:.0%} of the images with "
                               "truth")
    if other_images < MIN_IMAGES or contrast is None:
        return False, "contrast", (f"no truth regions, and {other_images} images of other classes to compare "
                                   f"with (the rule needs {MIN_IMAGES})")
    if contrast < MIN_CONTRAST:
        return False, "contrast", (f"the other classes put {1 / contrast:.0%} as much saliency there: not specific "
                                   f"to the class (the rule needs {MIN_CONTRAST:g}x)")
    return True, "contrast", f"the other classes put {contrast:.1f}x less saliency in the box"


# ------------------------------------------------------------------------------------ reading records

def _load_map(out: Path, record: dict[str, Any]) -> np.ndarray | None:
    rel = (record.get("files") or {}).get("npz")
    if not rel:
        return None
    try:
        with np.load(out / str(rel), allow_pickle=False) as data:
            return np.asarray(data["model_heatmap"])
    except (OSError, ValueError, KeyError, EOFError):
        return None
    except Exception:  # noqa: BLE001 - a damaged file (zipfile.BadZipFile, ...): left out, counted
        return None


def _geometry(card: dict[str, Any] | None, height: int, width: int) -> Any:
    from ..preprocess import Preprocess

    settings = {k: v for k, v in ((card or {}).get("preprocess") or {}).items() if k not in ("source", "guessed")}
    return Preprocess.from_dict(settings).geometry(height, width)


def truth_region(record: dict[str, Any], shape: tuple[int, int], card: dict[str, Any] | None) -> np.ndarray | None:
    """bool [H, W] in model-input pixels: the truth mask (mapped with the model's preprocessing), else the
    truth box (``box_model``); None when there is none or it cannot be read."""
    from ..image_io import read_image
    from ..metrics import region_mask

    truth = record.get("truth") or {}
    if truth.get("mask"):
        try:
            picture = read_image(truth["mask"])
            inside = (picture.max(axis=2) > 127).astype(np.float64)
            if inside.shape == tuple(shape):
                mapped = inside
            else:
                mapped = _geometry(card, *inside.shape).to_model(inside)
            if mapped.shape == tuple(shape):
                return np.asarray(mapped >= 0.5)
        except (BlackboxError, OSError, ValueError, TypeError):
            pass
    if truth.get("box_model"):
        try:
            return region_mask(shape, box=truth["box_model"])
        except (BlackboxError, ValueError, TypeError):
            return None
    return None


def _groups_of(record: dict[str, Any]) -> list[tuple[str, int]]:
    target = record.get("target")
    if not isinstance(target, int):
        return []
    keys = []
    top = record.get("top") or []
    if top and top[0].get("index") == target:
        keys.append(("predicted", target))
    if (record.get("truth") or {}).get("target") is not None:
        keys.append(("true", target))
    return keys


class _Group:
    def __init__(self, label: str | None) -> None:
        self.label = label
        self.sum: np.ndarray | None = None
        self.rows: list[int] = []
        self.truth_shares: list[float] = []

    def add(self, p: np.ndarray, row: int) -> None:
        if self.sum is None:
            self.sum = np.zeros(p.shape, np.float64)
        self.sum += p
        self.rows.append(row)


# ------------------------------------------------------------------------------------ the analysis

def compute_findings(out: str | os.PathLike, records: Sequence[dict[str, Any]], card: dict[str, Any] | None = None,
                     *, write_maps: bool = True, progress: bool | None = False) -> dict[str, Any]:
    """Findings and per-class statistics from a run's records (see the module doc). Writes the mean-map
    PNGs under ``OUT/findings/`` when ``write_maps``; ``progress``: a bar over the records (None: only on a
    terminal). Returns ``{"rule", "findings", "classes", "empty",
    "unreadable"}`` (JSON-ready)."""
    out = Path(out)
    groups: dict[tuple[str, str, int], _Group] = {}
    totals: dict[tuple[str, str], list[Any]] = {}  # (method, by) -> [sum map, images]
    shapes: dict[str, tuple[int, int]] = {}
    empty = unreadable = 0
    from tqdm.auto import tqdm

    for row, record in enumerate(tqdm(records, unit="map", desc="findings", dynamic_ncols=True, leave=False,
                                      disable=None if progress is None else not progress)):
        if record.get("status") != "ok":
            continue
        keys = _groups_of(record)
        if not keys:
            continue
        raw = _load_map(out, record)
        if raw is None or raw.ndim != 2:
            unreadable += 1
            continue
        method = str(record.get("method"))
        if shapes.setdefault(method, raw.shape) != raw.shape:
            unreadable += 1  # one method, maps of two sizes: not one model input
            continue
        p = normalise_map(raw)
        if p is None:
            empty += 1
            continue
        region = truth_region(record, raw.shape, card)
        for by, cls in keys:
            group = groups.setdefault((method, by, cls), _Group(record.get("label")))
            group.add(p, row)
            if region is not None:
                group.truth_shares.append(float(p[region].sum()))
            total = totals.setdefault((method, by), [np.zeros(p.shape, np.float64), 0])
            total[0] += p
            total[1] += 1
    findings: list[dict[str, Any]] = []
    classes: dict[str, dict[str, Any]] = {}
    for (method, by, cls), group in sorted(groups.items(), key=lambda kv: (kv[0][1] != "predicted", kv[0][2], kv[0][0])):
        n = len(group.rows)
        mean = group.sum / n
        candidate = search_box(mean)
        box, area = candidate["box"], candidate["area"]
        total_sum, total_n = totals[(method, by)]
        other_n = total_n - n
        contrast = None
        if other_n > 0:
            other_share = box_share(integral((total_sum - group.sum) / other_n), box)
            contrast = candidate["share"] / other_share if other_share > 0 else float("inf")
        consistency, on_fraction, truth_n = 0.0, None, 0
        if n >= MIN_IMAGES and candidate["share"] >= MIN_SHARE and candidate["lift"] >= MIN_LIFT:
            # the second pass, only for a candidate: every image's own map against the box
            backing = on = 0
            for row in group.rows:
                raw = _load_map(out, records[row])
                p = normalise_map(raw) if raw is not None else None
                if p is None:
                    continue
                backing += agrees(p, box, area)
                region = truth_region(records[row], p.shape, card)
                if region is not None:
                    truth_n += 1
                    on += on_object(region, box)
            consistency = backing / n
            on_fraction = on / truth_n if truth_n else None
        reported, evidence, why = judge(candidate, images=n, consistency=consistency, truth_images=truth_n,
                                        on_object_fraction=on_fraction, contrast=contrast, other_images=other_n)
        rel = f"findings/{_safe(method)}/{by}-{cls}.png"
        if write_maps:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out / rel, map_png(mean, box if reported else None), error=BlackboxError)
        label = group.label if group.label is not None else str(cls)
        entry = {"images": n, "share_truth": float(np.mean(group.truth_shares)) if group.truth_shares else None,
                 "truth_images": len(group.truth_shares), "map": rel,
                 "box": {**candidate, "consistency": consistency, "on_object": on_fraction,
                         "contrast": contrast if contrast is None or np.isfinite(contrast) else None,
                         "other_images": other_n, "evidence": evidence or None, "finding": reported, "why": why}}
        classes.setdefault(str(cls), {"label": label}).setdefault(method, {})[by] = entry
        if reported:
            findings.append({"class": cls, "label": label, "method": method, "by": by, "box": box,
                             "share": candidate["share"], "lift": candidate["lift"], "images": n,
                             "consistency": consistency, "evidence": evidence, "on_object": on_fraction,
                             "contrast": entry["box"]["contrast"], "map": rel, "why": why})
    return {"rule": RULE, "findings": findings, "classes": classes, "empty": empty, "unreadable": unreadable}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "method"


def map_png(mean: np.ndarray, box: Sequence[int] | None = None, *, min_side: int = 160) -> bytes:
    """The mean map as an inferno PNG (enlarged with nearest pixels to at least ``min_side``), the box drawn."""
    from ..render import colorize

    rgb = colorize(mean, "inferno")
    h, w = mean.shape
    k = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    k = min(k, max(1, 1024 // max(h, w)))
    big = np.ascontiguousarray(np.repeat(np.repeat(rgb, k, axis=0), k, axis=1))
    if box is not None:
        y0, x0, y1, x1 = (int(v) * k for v in box)
        cv2.rectangle(big, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (0, 255, 255), max(1, k // 2))
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise BlackboxError("could not encode a findings map as PNG")
    return buffer.tobytes()


# ------------------------------------------------------------------------------------ the page

def _img(out: Path, rel: str, alt: str, embed: bool) -> str:
    e = html.escape
    if embed:
        try:
            data = base64.b64encode((out / rel).read_bytes()).decode("ascii")
            return f'<img src="data:image/png;base64,{data}" alt="{e(alt)}" width="160">'
        except OSError:
            pass
    return f'<a href="{e(rel)}">{e(alt)} (mean map)</a>'


def _pct(value: Any) -> str:
    return "" if value is None else f"{float(value):.1%}"


def render_section(out: str | os.PathLike, found: dict[str, Any] | None, *, error: str | None = None) -> str:
    """The page's "What the model relies on" section (every text escaped)."""
    e = html.escape
    out = Path(out)
    parts = ['<section id="findings"><h2>What the model relies on</h2>',
             ('<p class="hint">Per class and method: the mean of the images\' normalised maps (model-input '
              'pixels), the mean share of saliency inside the truth region, and the shortcut detector: a fixed '
              'box that holds a large, consistent share of a class\'s saliency while the objects are elsewhere '
              '(rule and thresholds in <code>summary.json</code> under <code>rule</code>).</p>')]
    if error is not None:
        parts.append(f'<p class="bad">The findings could not be computed: {e(error)}</p></section>')
        return "".join(parts)
    found = found or {}
    findings = found.get("findings") or []
    if findings:
        parts.append(f"<h3>Findings ({len(findings)})</h3><table><thead><tr><th>mean map, box drawn</th><th>class</th>"
                     "<th>method</th><th>box y0,x0,y1,x1</th><th>share</th><th>images</th><th>consistency</th>"
                     "<th>evidence</th></tr></thead><tbody>")
        for f in findings:
            parts.append(f"<tr><td>{_img(out, f['map'], str(f['label']), True)}</td><td>{e(str(f['label']))} "
                         f"({e(str(f['class']))}, {e(str(f['by']))})</td><td>{e(str(f['method']))}</td>"
                         f"<td>{e(','.join(str(v) for v in f['box']))}</td><td class=num>{_pct(f['share'])}</td>"
                         f"<td class=num>{int(f['images'])}</td><td class=num>{_pct(f['consistency'])}</td>"
                         f"<td>{e(str(f['why']))}</td></tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No shortcut found: no fixed box passes the rule for any class.</p>")
    rows = []
    for cls, info in (found.get("classes") or {}).items():
        for method, by_group in info.items():
            if method == "label":
                continue
            for by, entry in by_group.items():
                rows.append((entry["images"], cls, str(info.get("label")), method, by, entry))
    rows.sort(key=lambda r: -r[0])
    if rows:
        parts.append('<h3>Mean maps per class</h3><table class="sortable"><thead><tr><th>mean map</th><th>class</th>'
                     '<th>method</th><th>grouping</th><th data-type="num">images</th><th data-type="num">share in '
                     'truth</th><th>best box</th><th data-type="num">its share</th><th>verdict</th></tr></thead><tbody>')
        for i, (n, cls, label, method, by, entry) in enumerate(rows):
            box = entry["box"]
            parts.append(f"<tr><td>{_img(out, entry['map'], label, i < MAX_EMBEDDED)}</td><td>{e(label)} ({e(cls)})</td>"
                         f"<td>{e(method)}</td><td>{e(by)}</td><td class=num>{int(n)}</td>"
                         f"<td class=num>{_pct(entry['share_truth'])}</td>"
                         f"<td>{e(','.join(str(v) for v in box['box']))}</td><td class=num>{_pct(box['share'])}</td>"
                         f"<td>{'finding: ' if box['finding'] else ''}{e(str(box['why']))}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")
    return "".join(parts)
