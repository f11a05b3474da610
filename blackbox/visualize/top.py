"""Top activations with DeconvNet projections (Zeiler & Fergus 2014): where one unit fires most.

For one channel of a spatial layer, every image of a collection is scored by the channel's maximum over
positions (ties: the first position in row-major order); the ``k`` best images are kept in a running
min-heap, so memory is flat in the number of images (only the k kept samples' pixels are held). For each,
the receptive field of the unit at the maximum (:mod:`.receptive`, computed from the graph) is cut out of
the original picture (the box mapped back through the preprocess geometry), and the DeconvNet projection
of that single activation is rendered on the same field: the gradient of ``A[channel, y, x]`` with every
other activation of the layer zeroed (a one-hot weight), under the DeconvNet rule (a ReLU passes the
positive part of the signal coming down, whatever its forward mask).

The projection is taken with respect to the display picture (RGB in [0, 1]: the preprocessing's gain
and channel order applied), normalised per patch symmetrically around 0 (grey 128 is zero, the largest
magnitude in the field reaches 0 or 255) and shown in colour like Zeiler & Fergus's figures.

``patches`` and ``boxes`` are exact: a 1 x 1 field gives a 1-pixel patch; :meth:`TopActivations.save`
enlarges every tile for display.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from .. import runtime
from ..errors import ParameterError
from ..files import write_atomic
from ..graph.autodiff import DECONVNET
from ..image_io import write_png_atomic
from ..inputs import Sample
from .engine import gradients_for, unit_gradients
from .images import batches, collect, source_name
from .objectives import weighted
from .receptive import ReceptiveField, receptive_field
from .space import DisplaySpace, to_uint8

__all__ = ["TopActivations", "top_activations"]

TILE = 96  # display size of one patch in the saved grid (the longer side)
_GAP = 4
_BACKGROUND = 200  # light grey: white and black patches both stand out


@dataclass
class TopActivations:
    """The ``k`` images where ``layer``/``channel`` fires most, best first.

    ``patches``: receptive-field crops of the original pictures (H x W x 3 uint8); ``projections``: the
    DeconvNet projection of the maximal activation on the same field, resized to the patch (empty list
    when ``projections=False``); ``raw_projections``: the projection [C, h, w] in model space over the field
    in model-input pixels, before normalisation; ``scores`` [k]: the maxima, descending; ``positions``:
    (y, x) at the layer's resolution; ``boxes``: (y0, x0, y1, x1) on the original pictures (float, pixel
    edges); ``model_boxes``: the same in model-input pixels (ints); ``indices``: positions in the collection."""

    layer: str
    channel: int
    scores: np.ndarray
    sources: list[str]
    indices: list[int]
    positions: list[tuple[int, int]]
    boxes: list[tuple[float, float, float, float]]
    model_boxes: list[tuple[int, int, int, int]]
    patches: list[np.ndarray]
    projections: list[np.ndarray] = field(default_factory=list)
    raw_projections: list[np.ndarray] = field(default_factory=list, repr=False)
    receptive_field: ReceptiveField | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "channel": self.channel,
                "receptive_field": self.receptive_field.to_dict() if self.receptive_field else None,
                "top": [{"rank": r, "score": float(s), "source": src, "index": int(i), "position": list(p),
                         "box": [round(float(v), 4) for v in b], "model_box": list(mb)}
                        for r, (s, src, i, p, b, mb) in enumerate(zip(self.scores, self.sources, self.indices,
                                                                      self.positions, self.boxes,
                                                                      self.model_boxes))]}

    def picture(self, tile: int = TILE) -> np.ndarray:
        """RGB uint8: a title strip, the patches in one row, their projections in the row below."""
        rows = [self.patches] + ([self.projections] if self.projections else [])
        strips = [_row([_fit(p, tile) for p in row], tile) for row in rows]
        gap = np.full((_GAP, strips[0].shape[1], 3), _BACKGROUND, np.uint8)
        body = np.concatenate([x for s in strips for x in (s, gap)][:-1], axis=0)
        title = f"{self.layer}  channel {self.channel}  top {len(self.patches)}  max {self.scores[0]:.3g}"
        return np.concatenate([_title(title, body.shape[1]), body], axis=0)

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``top_<layer>_<channel>.png`` (the grid) and ``.json`` (scores, sources, boxes)."""
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParameterError(f"cannot create {out}: {e.strerror or e}") from None
        stem = f"top_{_safe(self.layer)}_{self.channel}"
        png, js = out / f"{stem}.png", out / f"{stem}.json"
        write_png_atomic(png, self.picture())
        write_atomic(js, json.dumps(self.to_dict(), indent=1, allow_nan=False), error=ParameterError)
        return [png, js]


def top_activations(model, images: Any, *, layer: str, channel: int, k: int = 9, batch_size: int | None = None,
                    projections: bool = True, progress: bool = False) -> TopActivations:
    """The ``k`` images of ``images`` (a folder, a list of paths or of arrays) where unit ``channel`` of
    ``layer`` reaches its highest activation, with receptive-field patches and (``projections``) their
    DeconvNet projections. Forward passes only unless ``projections``: then every op between the input
    and ``layer`` needs a gradient rule, checked before the data pass (UnsupportedOpError names the op)."""
    _check(model, layer, channel, k, batch_size)
    items = collect(images)
    if projections:
        gradients_for(model, weighted(layer), DECONVNET)  # fail before the data pass, not after it
    kept = _stream(model, items, layer, int(channel), int(k), batch_size, progress)
    rf = receptive_field(model, layer)
    return _result(model, kept, items, layer, int(channel), rf, projections)


# ------------------------------------------------------------------ checks and the data pass

def _check(model, layer: str, channel: int, k: int, batch_size: int | None) -> None:
    found = model.layer(layer)
    if not found.spatial:
        raise ParameterError(f"layer {layer!r} is not a spatial map (shape {list(found.shape)} per sample); "
                             "top activations need a map [C, H, W] or [H, W, C], or tokens [extra + H*W, C], "
                             "with H x W > 1")
    channels = found.channels
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < channels:
        raise ParameterError(f"channel {channel!r} is out of range: layer {layer!r} has channels 0..{channels - 1}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ParameterError(f"k must be a positive integer (the number of top images), got {k!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")


@dataclass(frozen=True)
class _Kept:
    score: float
    index: int
    position: tuple[int, int]
    sample: Sample


def _stream(model, items: list, layer: str, channel: int, k: int, batch_size: int | None,
            progress: bool) -> list[_Kept]:
    """One forward pass over the collection; a min-heap of the k best (worst on top: lowest score, then
    the later image, so ties keep the earlier image). Returns them best first."""
    heap: list[tuple[float, int, _Kept]] = []
    with tqdm(total=len(items), desc="top activations", unit="image", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for start, samples in batches(model, items, batch_size):
            values = model.activations(np.stack([s.x for s in samples]), [layer])[layer]
            maps = model.layer(layer).maps(values)[:, channel]
            runtime.check_finite(maps, f"images (layer {layer!r})")
            flat = maps.reshape(len(maps), -1)
            best = flat.argmax(axis=1)
            for j, sample in enumerate(samples):
                position = tuple(int(v) for v in np.unravel_index(best[j], maps.shape[1:]))
                kept = _Kept(float(flat[j, best[j]]), start + j, position, sample)
                entry = (kept.score, -kept.index, kept)
                if len(heap) < k:
                    heapq.heappush(heap, entry)
                elif entry[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, entry)
            bar.update(len(samples))
    return [e[2] for e in sorted(heap, key=lambda e: (-e[0], -e[1]))]


# ------------------------------------------------------------------ patches and projections

def _picture(model, sample: Sample) -> np.ndarray:
    """The picture a patch is cut from: the original, or the model-space input shown for display."""
    if sample.image is not None:
        rgb = sample.image
        return np.repeat(rgb, 3, axis=2) if rgb.ndim == 3 and rgb.shape[2] == 1 else rgb[..., :3]
    return to_uint8(DisplaySpace(model).to_display(sample.x[None])[0])


def _picture_box(sample: Sample, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    if sample.geometry is None:
        return tuple(float(v) for v in box)
    return tuple(float(v) for v in sample.geometry.to_image_box(box))


def _crop(picture: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """The pixels a box touches (edges rounded outward), at least one pixel."""
    h, w = picture.shape[:2]
    y0 = min(max(0, math.floor(box[0] + 1e-6)), h - 1)
    x0 = min(max(0, math.floor(box[1] + 1e-6)), w - 1)
    y1 = max(y0 + 1, min(h, math.ceil(box[2] - 1e-6)))
    x1 = max(x0 + 1, min(w, math.ceil(box[3] - 1e-6)))
    return np.ascontiguousarray(picture[y0:y1, x0:x1])


def render_projection(grad_display: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[c, h, w] projection (display space) -> size (h, w) x 3 uint8: 128 is zero, symmetric scale."""
    g = np.asarray(grad_display, np.float64)
    peak = float(np.abs(g).max()) if g.size else 0.0
    shown = 0.5 + 0.5 * g / peak if peak > 0 else np.full_like(g, 0.5)
    image = to_uint8(shown)
    h, w = size
    if image.shape[:2] != (h, w):
        larger = h * w >= image.shape[0] * image.shape[1]
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR if larger else cv2.INTER_AREA)
    return image


def _projections(model, kept: list[_Kept], layer: str, channel: int) -> np.ndarray:
    """d A[channel, y, x] / d x [k, C, H, W] under DeconvNet, one one-hot weight per kept image."""
    found = model.layer(layer)
    weights = np.zeros((len(kept), *found.map_shape), np.float32)
    for i, item in enumerate(kept):
        weights[i, channel, item.position[0], item.position[1]] = 1.0
    x = np.stack([item.sample.x for item in kept])
    return unit_gradients(model, x, layer, found.unmaps(weights), rules=DECONVNET)


def _result(model, kept: list[_Kept], items: list, layer: str, channel: int, rf: ReceptiveField,
            projections: bool) -> TopActivations:
    model_boxes = [rf.box(*item.position) for item in kept]
    boxes = [_picture_box(item.sample, b) for item, b in zip(kept, model_boxes)]
    patches = [_crop(_picture(model, item.sample), b) for item, b in zip(kept, boxes)]
    shown, raw = [], []
    if projections:
        grads = _projections(model, kept, layer, channel)
        display = DisplaySpace(model).backward(grads)
        for g, d, (y0, x0, y1, x1), patch in zip(grads, display, model_boxes, patches):
            raw.append(np.ascontiguousarray(g[:, y0:y1, x0:x1]))
            shown.append(render_projection(d[:, y0:y1, x0:x1], patch.shape[:2]))
    return TopActivations(layer=layer, channel=channel, scores=np.array([i.score for i in kept], np.float64),
                          sources=[source_name(items[i.index], i.index) for i in kept],
                          indices=[i.index for i in kept], positions=[i.position for i in kept], boxes=boxes,
                          model_boxes=model_boxes, patches=patches, projections=shown, raw_projections=raw,
                          receptive_field=rf)


# ------------------------------------------------------------------ drawing

def _safe(name: str) -> str:
    """A layer name as a file-name part ('/stem/Conv_output_0' -> 'stem_Conv_output_0')."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "layer")[-80:]


def _fit(image: np.ndarray, tile: int) -> np.ndarray:
    """Scale so the longer side is ``tile`` (nearest when enlarging: one field pixel stays a block)."""
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA)


def _row(tiles: list[np.ndarray], tile: int) -> np.ndarray:
    """Tiles centred in tile x tile cells, side by side with white gaps."""
    width = len(tiles) * tile + (len(tiles) - 1) * _GAP
    row = np.full((tile, width, 3), _BACKGROUND, np.uint8)
    for i, t in enumerate(tiles):
        h, w = t.shape[:2]
        y, x = (tile - h) // 2, i * (tile + _GAP) + (tile - w) // 2
        row[y:y + h, x:x + w] = t
    return row


def _title(text: str, width: int) -> np.ndarray:
    strip = np.full((20, width, 3), _BACKGROUND, np.uint8)
    cv2.putText(strip, text.encode("ascii", "replace").decode("ascii"), (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    return strip
