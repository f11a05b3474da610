"""Network dissection (Bau et al. 2017, NetDissect-Lite semantics): which units detect which concepts.

A concept data set is a folder ``DIR/images/NAME.png`` with binary masks ``DIR/masks/CONCEPT/NAME.png``
(same size as the image; a missing mask file means the concept is absent there). Every image counts as
annotated for every concept, so an absent concept is an empty mask (NetDissect counts the union only over
images whose category is annotated; here that is all of them).

Two passes over the data, streamed in batches so memory stays flat in the number of images:

1. per unit, the activation value at the top ``quantile`` of all positions of all images, at the layer's
   own resolution. Exact, not approximated: only the largest ``n - floor((n - 1) * (1 - quantile))``
   values per unit are kept (a running top-k), which is all ``np.quantile`` (linear) looks at;
2. per image, each unit's map goes bilinearly (half-pixel centres) to the model-input size, then onto the
   original picture with the preprocess geometry (undoing resize and crop; picture pixels the crop never
   showed are never active), and is thresholded there, in the mask's own pixel grid. Per (unit, concept)
   the intersections and unions are summed over the data set; IoU = sum of intersections / sum of unions.

A unit's label is its best concept; it is *interpretable* when that IoU is above ``iou_threshold``.
Ties: the test is ``value > threshold`` as in NetDissect, except for a unit whose threshold is its own
maximum (a saturated detector whose top quantile is one repeated value, common in ReLU plateaus and int8
models): there ``>=`` is used, else it would never fire. A constant unit never fires.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError, ParameterError
from ..files import write_atomic
from ..image_io import IMAGE_SUFFIXES, picture_size, read_image, write_png_atomic
from ..preprocess import Geometry
from .images import batches

__all__ = ["ConceptSet", "Dissection", "dissect", "load_concepts"]

TOP_IMAGES = 4  # images shown per unit
MAX_UNIT_PICTURES = 64  # PNGs written by save(): the interpretable units with the highest IoU
_TILE = 128  # display height of one image in a unit's picture
_UNIT_COLOUR = (255, 215, 0)  # outline of the unit's thresholded region
_MASK_COLOUR = (0, 200, 255)  # outline of the concept's mask


# ----------------------------------------------------------------------------------------- concept set

@dataclass(frozen=True)
class ConceptSet:
    """A validated concept folder: image paths in name order, concept names, and per image the mask file
    of each concept present there."""

    root: Path
    images: list[str]
    concepts: list[str]
    masks: list[dict[str, str]]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    """NAME -> file; two files with one NAME (a.png, a.jpg) would make the pairing ambiguous."""
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise ImageError(f"{what} has two files named {path.stem!r} ({out[path.stem].name}, {path.name}); "
                             "keep one")
        out[path.stem] = path
    return out


def load_concepts(concepts: str | os.PathLike) -> ConceptSet:
    """Read and check a concept folder before any model work: every mask pairs with an image, has its
    size and is binary. Each problem is one line naming the file."""
    root = Path(concepts)
    if not root.is_dir():
        raise ImageError(f"concept folder {str(root)!r} does not exist or is not a folder; give DIR with "
                         "DIR/images/ and DIR/masks/CONCEPT/")
    images_dir, masks_dir = root / "images", root / "masks"
    pictures = _by_stem(_image_files(images_dir), f"{images_dir}") if images_dir.is_dir() else {}
    if not pictures:
        raise ImageError(f"concept folder {str(root)!r} has no images in images/ "
                         f"({', '.join(IMAGE_SUFFIXES[:3])}, ...)")
    if not masks_dir.is_dir():
        raise ImageError(f"concept folder {str(root)!r} has no masks/ folder; put each concept's binary masks "
                         "in masks/CONCEPT/NAME.png")
    names = list(pictures)
    index = {name: i for i, name in enumerate(names)}
    per_image: list[dict[str, str]] = [{} for _ in names]
    sizes: dict[str, tuple[int, int]] = {}
    found = []
    for folder in sorted(p for p in masks_dir.iterdir() if p.is_dir()):
        files = _by_stem(_image_files(folder), f"{folder}")
        if not files:
            continue
        found.append(folder.name)
        for stem, path in files.items():
            if stem not in index:
                raise ImageError(f"mask {path} has no image named {stem!r} in images/; rename or remove it")
            if stem not in sizes:
                sizes[stem] = picture_size(pictures[stem])
            _check_mask(path, sizes[stem])
            per_image[index[stem]][folder.name] = str(path)
    if not found:
        raise ImageError(f"concept folder {str(root)!r}: masks/ holds no CONCEPT/ folder with any mask; "
                         "put binary masks in masks/CONCEPT/NAME.png")
    return ConceptSet(root, [str(pictures[n]) for n in names], found, per_image)


def _check_mask(path: Path, size: tuple[int, int]) -> None:
    mask_size = picture_size(path)
    if tuple(mask_size) != tuple(size):
        raise ImageError(f"mask {path} is {mask_size[1]} x {mask_size[0]} but its image is {size[1]} x {size[0]} "
                         "(width x height); masks must have their image's size")
    read_mask(path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as bool H x W: grey (or identical RGB channels) 0/255 or 0/1, thresholded at half.

    Anti-aliased or JPEG edges are tolerated; a picture (colour, or mostly mid-grey levels) is refused,
    because thresholding it would invent a concept region."""
    pixels = read_image(path).astype(np.int16)
    if pixels.shape[2] >= 3 and np.mean(np.abs(pixels[..., :3] - pixels[..., :1]).max(axis=2) > 32) > 0.05:
        raise ImageError(f"mask {path} is a colour picture, not a binary mask; save it as 0/255 grey")
    grey = pixels[..., 0]
    if grey.max() <= 1:
        return grey > 0
    mid = np.mean((grey > 32) & (grey < 223))
    if mid > 0.05:
        raise ImageError(f"mask {path} is not binary: {mid:.0%} of its pixels are grey levels between black and "
                         "white; save it as 0/255 (or 0/1)")
    return grey >= 128


# ----------------------------------------------------------------------------------------- statistics

def _rank_count(total: int, quantile: float) -> tuple[int, float, int]:
    """(k, gamma, lo) for ``np.quantile(values, 1 - quantile)`` (linear) over ``total`` values: the result
    interpolates sorted positions lo and lo + 1 with weight gamma; the top k values hold both."""
    virtual = (total - 1) * (1.0 - quantile)
    lo = math.floor(virtual)
    return total - lo, virtual - lo, lo


class _TopValues:
    """Per unit, the k largest values seen so far (enough for an exact upper quantile)."""

    def __init__(self, k: int):
        self.k = k
        self.kept: np.ndarray | None = None
        self.low: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        """``values`` [C, m]."""
        self.low = values.min(axis=1) if self.low is None else np.minimum(self.low, values.min(axis=1))
        both = values if self.kept is None else np.concatenate([self.kept, values], axis=1)
        if both.shape[1] > self.k:
            both = np.partition(both, both.shape[1] - self.k, axis=1)[:, -self.k:]
        self.kept = both

    def quantile(self, gamma: float) -> np.ndarray:
        """The same value ``np.quantile`` gives: its own interpolation on the two neighbours."""
        ordered = np.sort(self.kept, axis=1)
        pair = ordered[:, :2] if ordered.shape[1] > 1 else ordered[:, :1].repeat(2, axis=1)
        return np.quantile(pair, gamma, axis=1)


class _TopImages:
    """Per unit, the images with the largest peak activation (ties: the earlier image)."""

    def __init__(self, channels: int, k: int):
        self.values = np.full((channels, 0), -np.inf, np.float32)
        self.index = np.zeros((channels, 0), np.int64)
        self.k = k

    def add(self, peaks: np.ndarray, start: int) -> None:
        """``peaks`` [N, C]: each image's maximum per unit; the batch starts at image ``start``."""
        values = np.concatenate([self.values, peaks.T], axis=1)
        index = np.concatenate([self.index, np.broadcast_to(start + np.arange(len(peaks)), peaks.T.shape)], axis=1)
        order = np.lexsort((index, -values), axis=1)[:, :self.k]
        self.values = np.take_along_axis(values, order, axis=1)
        self.index = np.take_along_axis(index, order, axis=1)


def _linear_taps(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] bilinear resampling matrix, half-pixel centres, edges clamped (cv2 INTER_LINEAR and
    PIL's bilinear when enlarging, what NetDissect's imresize does)."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    taps = np.zeros((n_out, n_in), np.float64)
    np.add.at(taps, (np.arange(n_out), lo), 1 - frac)
    np.add.at(taps, (np.arange(n_out), hi), frac)
    return taps.astype(np.float32)


def unit_maps_on_picture(maps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Unit maps [C, h, w] at the layer's resolution -> [H0, W0, C] on the original picture: bilinear to the
    model-input size, then the preprocess geometry backwards (resize and crop undone)."""
    h, w = geometry.model_size
    up = _linear_taps(h, maps.shape[1]) @ maps.astype(np.float32) @ _linear_taps(w, maps.shape[2]).T
    return geometry.to_image(np.ascontiguousarray(up.transpose(1, 2, 0)))


def active_regions(maps: np.ndarray, geometry: Geometry, thresholds: np.ndarray,
                   inclusive: np.ndarray) -> np.ndarray:
    """Bool [H0, W0, C]: where each unit fires on the picture (see the module's tie rule)."""
    values = unit_maps_on_picture(maps, geometry)
    active = np.where(inclusive, values >= thresholds, values > thresholds)
    return active & geometry.seen()[:, :, None]


# ----------------------------------------------------------------------------------------- result

@dataclass
class Dissection:
    """What :func:`dissect` found. ``units``: one dict ``{layer, unit, concept, iou}`` per unit (its best
    concept); ``iou[layer]`` [C, n_concepts]; ``thresholds[layer]`` [C]; ``top_images[layer]`` [C, k] image
    indices into ``images`` (-1 where the data set has fewer); ``interpretable[layer]`` the units above
    ``iou_threshold``."""

    layers: list[str]
    concepts: list[str]
    units: list[dict[str, Any]]
    interpretable: dict[str, int]
    thresholds: dict[str, np.ndarray]
    iou: dict[str, np.ndarray]
    top_images: dict[str, np.ndarray]
    images: list[str]
    quantile: float
    iou_threshold: float
    masks: list[dict[str, str]] = field(default_factory=list, repr=False)
    inclusive: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    top_maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # [C, k, h, w]
    geometries: dict[int, Geometry] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """Per layer: units, interpretable units and their most frequent concepts."""
        width = max([len("layer")] + [len(layer) for layer in self.layers])
        lines = [f"{'layer':<{width}}  units  interpretable  top concepts"]
        for layer in self.layers:
            rows = [u for u in self.units if u["layer"] == layer]
            named = Counter(u["concept"] for u in rows if u["iou"] > self.iou_threshold)
            top = ", ".join(f"{c} {n}" for c, n in named.most_common(4)) or "-"
            lines.append(f"{layer:<{width}}  {len(rows):>5}  {self.interpretable[layer]:>13}  {top}")
        return "\n".join(lines)

    def table(self) -> str:
        """The units as CSV text."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["layer", "unit", "concept", "iou", "interpretable"])
        for u in self.units:
            writer.writerow([u["layer"], u["unit"], u["concept"], f"{u['iou']:.6f}",
                             int(u["iou"] > self.iou_threshold)])
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "iou_threshold": self.iou_threshold, "concepts": list(self.concepts),
                "images": list(self.images), "interpretable": dict(self.interpretable), "units": self.units,
                "layers": {layer: {"thresholds": self.thresholds[layer].tolist(),
                                   "iou": np.round(self.iou[layer], 6).tolist(),
                                   "top_images": self.top_images[layer].tolist()} for layer in self.layers}}

    def save(self, out_dir: str | os.PathLike, *, max_units: int = MAX_UNIT_PICTURES) -> list[Path]:
        """Write dissection.json, dissection.csv and units/*.png (the interpretable units with the highest
        IoU, at most ``max_units``): each unit's top images, its region outlined and the rest dimmed, with
        the outline of its concept's mask."""
        out = Path(out_dir)
        try:
            (out / "units").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParameterError(f"cannot create {out / 'units'}: {e.strerror or e}") from None
        paths = [write_atomic(out / "dissection.json", json.dumps(self.to_dict(), indent=1, allow_nan=False),
                              error=ParameterError),
                 write_atomic(out / "dissection.csv", self.table(), error=ParameterError)]
        chosen = sorted((u for u in self.units if u["iou"] > self.iou_threshold), key=lambda u: -u["iou"])
        for unit in chosen[:max(0, int(max_units))]:
            path = out / "units" / _picture_name(self.layers.index(unit["layer"]), unit["layer"], unit["unit"])
            write_png_atomic(path, self.unit_picture(unit["layer"], unit["unit"]))
            paths.append(path)
        return paths

    def unit_picture(self, layer: str, unit: int) -> np.ndarray:
        """RGB uint8: a title strip over the unit's top images side by side."""
        concept = self.concepts[int(np.argmax(self.iou[layer][unit]))]
        tiles = []
        for slot, image in enumerate(self.top_images[layer][unit]):
            if image < 0:
                continue
            region = active_regions(self.top_maps[layer][unit, slot][None], self.geometries[int(image)],
                                    self.thresholds[layer][unit:unit + 1], self.inclusive[layer][unit:unit + 1])
            mask_file = self.masks[int(image)].get(concept) if self.masks else None
            mask = read_mask(mask_file) if mask_file else None
            tiles.append(_tile(read_image(self.images[int(image)]), region[:, :, 0], mask))
        strip = np.concatenate(_gapped(tiles), axis=1) if tiles else np.zeros((_TILE, _TILE, 3), np.uint8)
        title = f"{layer}  unit {unit}  {concept}  IoU {self.iou[layer][unit].max():.3f}"
        return np.concatenate([_title(title, strip.shape[1]), strip], axis=0)


def _picture_name(position: int, layer: str, unit: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", layer).strip("_.") or "layer"
    return f"{position:02d}_{safe[-60:]}_unit{unit:04d}.png"


def _tile(image: np.ndarray, region: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The picture at display height, dimmed outside the unit's region, both outlines drawn."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    scale = _TILE / rgb.shape[0]
    size = (max(1, round(rgb.shape[1] * scale)), _TILE)
    fine = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    shown = cv2.resize(rgb, size, interpolation=fine)
    inside = cv2.resize(region.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    out = np.where(inside[:, :, None] > 0, shown, (shown * 0.3).astype(np.uint8))
    out = np.ascontiguousarray(out)
    if mask is not None:
        _outline(out, cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST), _MASK_COLOUR)
    _outline(out, inside, _UNIT_COLOUR)
    return out


def _outline(canvas: np.ndarray, binary: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, 1)


def _gapped(tiles: list[np.ndarray]) -> list[np.ndarray]:
    gap = np.full((_TILE, 4, 3), 255, np.uint8)
    out: list[np.ndarray] = []
    for tile in tiles:
        out += [tile, gap]
    return out[:-1]


def _title(text: str, width: int) -> np.ndarray:
    strip = np.full((20, width, 3), 255, np.uint8)
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    cv2.putText(strip, ascii_text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


# ----------------------------------------------------------------------------------------- dissect

def _check_layers(model, layers: str | Sequence[str]) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers or []))
    if not names:
        raise ParameterError("dissect needs at least one layer; `blackbox layers MODEL` lists them")
    for name in names:
        layer = model.layer(name)
        if not layer.spatial:
            raise ParameterError(f"layer {name!r} is not a spatial map (shape {list(layer.shape)} per sample); "
                                 "dissection needs a map [C, H, W] or [H, W, C], or tokens [extra + H*W, C], "
                                 "with H x W > 1")
    return names


def _check_numbers(quantile: float, iou_threshold: float, batch_size: int | None) -> None:
    if not 0.0 < float(quantile) < 1.0:
        raise ParameterError(f"quantile must be in (0, 1) (0.005 = the top 0.5% of activations), got {quantile}")
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ParameterError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    if batch_size is not None and int(batch_size) < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size}")


def _activations(model, samples, names: list[str]) -> dict[str, np.ndarray]:
    """The layers' values as maps [N, C, h, w] (channel-last maps and tokens read like NCHW ones)."""
    values = model.activations(np.stack([s.x for s in samples]), names)
    return {name: model.layer(name).maps(values[name]) for name in names}


def dissect(model, concepts: str | os.PathLike | ConceptSet, *, layers: str | Sequence[str],
            quantile: float = 0.005, iou_threshold: float = 0.04, batch_size: int | None = None,
            progress: bool = False, top: int = TOP_IMAGES) -> Dissection:
    """Label each unit of ``layers`` with the concept its top-``quantile`` region overlaps best (IoU summed
    over the concept folder ``concepts``); see the module docstring for the exact semantics."""
    _check_numbers(quantile, iou_threshold, batch_size)
    names = _check_layers(model, layers)
    data = concepts if isinstance(concepts, ConceptSet) else load_concepts(concepts)
    n = len(data.images)
    with tqdm(total=2 * n, desc="dissect", unit="image", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        thresholds, inclusive, tops = _pass_thresholds(model, data, names, quantile, batch_size, top, bar)
        inter, union, top_maps, geometries = _pass_iou(model, data, names, thresholds, inclusive, tops,
                                                       batch_size, bar)
    return _result(data, names, thresholds, inclusive, tops, inter, union, top_maps, geometries,
                   quantile, iou_threshold)


def _pass_thresholds(model, data: ConceptSet, names, quantile, batch_size, top, bar):
    """Pass 1: per-unit thresholds (exact quantile) and each unit's top images."""
    values: dict[str, _TopValues] = {}
    peaks: dict[str, _TopImages] = {}
    gamma: dict[str, float] = {}
    for start, samples in batches(model, data.images, batch_size):
        acts = _activations(model, samples, names)
        for name in names:
            a = np.asarray(acts[name], np.float32)
            if name not in values:
                k, gamma[name], _ = _rank_count(len(data.images) * a.shape[2] * a.shape[3], quantile)
                values[name], peaks[name] = _TopValues(k), _TopImages(a.shape[1], top)
            values[name].add(a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1))
            peaks[name].add(a.reshape(a.shape[0], a.shape[1], -1).max(axis=2), start)
        bar.update(len(samples))
    thresholds = {name: values[name].quantile(gamma[name]).astype(np.float32) for name in names}
    inclusive = {name: (thresholds[name] >= values[name].kept.max(axis=1)) & (values[name].low < thresholds[name])
                 for name in names}
    tops = {name: np.where(np.isfinite(peaks[name].values), peaks[name].index, -1) for name in names}
    return thresholds, inclusive, tops


def _concept_masks(data: ConceptSet, index: int, size: tuple[int, int]) -> np.ndarray:
    """Bool [n_concepts, H0 * W0] for one image; absent concepts are empty."""
    out = np.zeros((len(data.concepts), size[0] * size[1]), bool)
    for k, concept in enumerate(data.concepts):
        path = data.masks[index].get(concept)
        if path:
            out[k] = read_mask(path).reshape(-1)
    return out


def _pass_iou(model, data: ConceptSet, names, thresholds, inclusive, tops, batch_size, bar):
    """Pass 2: intersections and unions summed over the data set, plus the maps of each unit's top images."""
    k_concepts = len(data.concepts)
    inter = {name: np.zeros((len(thresholds[name]), k_concepts), np.float64) for name in names}
    union = {name: np.zeros_like(inter[name]) for name in names}
    top_maps: dict[str, np.ndarray] = {}
    geometries: dict[int, Geometry] = {}
    wanted = {int(i) for name in names for i in tops[name].ravel() if i >= 0}
    for start, samples in batches(model, data.images, batch_size):
        acts = _activations(model, samples, names)
        for offset, sample in enumerate(samples):
            index = start + offset
            geometry = sample.geometry
            masks = _concept_masks(data, index, geometry.original_size).astype(np.float32)
            if index in wanted:
                geometries[index] = geometry
            for name in names:
                maps = np.asarray(acts[name][offset], np.float32)
                active = active_regions(maps, geometry, thresholds[name], inclusive[name])
                flat = active.reshape(-1, active.shape[2]).astype(np.float32)
                both = flat.T @ masks.T
                inter[name] += both
                union[name] += flat.sum(axis=0)[:, None] + masks.sum(axis=1)[None, :] - both
                _keep_top_maps(top_maps, name, tops[name], index, maps)
        bar.update(len(samples))
    return inter, union, top_maps, geometries


def _keep_top_maps(top_maps: dict, name: str, tops: np.ndarray, index: int, maps: np.ndarray) -> None:
    if name not in top_maps:
        top_maps[name] = np.zeros(tops.shape + maps.shape[1:], np.float32)
    units, slots = np.nonzero(tops == index)
    top_maps[name][units, slots] = maps[units]


def _result(data, names, thresholds, inclusive, tops, inter, union, top_maps, geometries, quantile,
            iou_threshold) -> Dissection:
    units, interpretable, ious = [], {}, {}
    for name in names:
        iou = np.divide(inter[name], union[name], out=np.zeros_like(inter[name]), where=union[name] > 0)
        ious[name] = iou
        best = np.argmax(iou, axis=1)
        for c, k in enumerate(best):
            units.append({"layer": name, "unit": int(c), "concept": data.concepts[int(k)], "iou": float(iou[c, k])})
        interpretable[name] = int(np.sum(iou[np.arange(len(best)), best] > iou_threshold))
    return Dissection(names, list(data.concepts), units, interpretable, thresholds, ious, tops, list(data.images),
                      float(quantile), float(iou_threshold), data.masks, inclusive, top_maps, geometries)
