"""What the explorer computes, each a plain function of the loaded model run on the worker thread: top
classes, an explanation rendered as an overlay, a layer's activation grid, a unit's top images and its
activation-maximisation picture. Each returns a :class:`Rendered` (PNG bytes and a JSON summary) or JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ImageError, ParameterError

__all__ = [
    "AM_STEPS",
    "TOP_K",
    "Rendered",
    "activation_grid",
    "explanation",
    "layer_list",
    "png_bytes",
    "top_classes",
    "unit_maximization",
    "unit_top_images",
]

AM_STEPS = 64  # activation maximisation steps in the explorer: a recognisable picture in seconds (the library's default is 256)
TOP_K = 6  # top-activating images shown per unit
MAX_AM_STEPS = 1024


@dataclass
class Rendered:
    """A picture to show and what it shows."""

    png: bytes
    summary: dict[str, Any] = field(default_factory=dict)


def png_bytes(rgb: np.ndarray) -> bytes:
    """RGB (or gray) uint8 -> PNG bytes in memory."""
    image = np.asarray(rgb)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, 2::-1])
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ImageError(f"could not encode a {image.shape} picture as PNG")
    return buffer.tobytes()


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def top_classes(model, path: Path, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` most probable classes: index, label, probability."""
    probabilities = model.predict(str(path), score="probability")[0]
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "label": model.label(int(i)), "probability": _finite(probabilities[i])} for i in order]


def explanation(model, path: Path, method: str, target: int, score: str | None, params: dict[str, Any],
                seed: int = 0) -> Rendered:
    """One explanation, drawn with the library's overlay (the crop the model did not see left uncoloured)."""
    from ..api import explain
    from ..render import overlay

    result = explain(model, str(path), method, target=target, score=score, seed=seed, progress=True, **params)
    picture = overlay(result.image, result.heatmap, seen=result.seen)
    heat = np.asarray(result.heatmap, np.float64)
    finite = heat[np.isfinite(heat)]
    summary = {"method": result.method, "target": int(result.target), "label": result.label,
               "score": result.score, "target_score": _finite(result.target_score),
               "seconds": round(float(result.seconds), 3), "n_evals": int(result.n_evals),
               "notes": [str(n) for n in result.notes],
               "map_min": _finite(finite.min()) if finite.size else None,
               "map_max": _finite(finite.max()) if finite.size else None,
               "width": int(picture.shape[1]), "height": int(picture.shape[0])}
    return Rendered(png_bytes(picture), summary)


def layer_list(model) -> list[dict[str, Any]]:
    """Every layer a user can look at, in graph order; ``channels`` only for spatial maps."""
    out = []
    for layer in model.layers():
        shape = [None if d is None else int(d) for d in layer.shape] if layer.shape is not None else None
        out.append({"name": layer.name, "op_type": layer.op_type, "shape": shape, "spatial": bool(layer.spatial),
                    "channels": layer.channels, "layout": layer.layout})
    return out


def activation_grid(model, path: Path, layer: str) -> Rendered:
    """Every channel of ``layer`` for this picture, one tile each (unit 0 first, row-major), with the grid's
    geometry so a click on the picture can name its unit."""
    from ..visualize.grids import activations

    entry = model.layer(layer)
    if not entry.spatial:
        raise ParameterError(f"layer {layer!r} has shape {list(entry.shape)}, not a spatial map [C, H, W]; "
                             "pick a layer marked spatial")
    channels = int(entry.channels)
    min_cell = 48 if channels <= 256 else 24
    gap = 2
    grid = activations(model, str(path), layer=entry.name, show_input=False, min_cell=min_cell, max_cell=96, gap=gap)
    units = int(grid.tiles.shape[0])
    columns = math.ceil(math.sqrt(units))
    rows = math.ceil(units / columns)
    height, width = grid.image.shape[:2]
    cell = [(height - gap) // rows - gap, (width - gap) // columns - gap]
    strongest = np.argsort(-grid.tiles.reshape(units, -1).max(axis=1), kind="stable")[:8]
    return Rendered(png_bytes(grid.image), {
        "layer": entry.name, "units": units, "columns": columns, "rows": rows, "cell": cell, "gap": gap,
        "width": int(width), "height": int(height), "strongest": [int(u) for u in strongest]})


def _check_unit(model, layer: str, channel: Any) -> tuple[str, int]:
    entry = model.layer(layer)
    if not entry.spatial:
        raise ParameterError(f"layer {layer!r} is not a spatial map; unit views need [C, H, W] layers")
    channels = int(entry.channels)
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < channels:
        raise ParameterError(f"unit {channel!r} is out of range: layer {entry.name!r} has units 0..{channels - 1}")
    return entry.name, channel


def unit_top_images(model, folder: Path | None, files: list[str], layer: str, channel: int, k: int = TOP_K) -> Rendered:
    """The ``k`` pictures of the ``--images`` folder where the unit fires most (receptive-field patches and
    their DeconvNet projections, drawn by :meth:`TopActivations.picture`)."""
    from ..visualize.top import top_activations

    if folder is None or not files:
        raise ParameterError("no --images folder with pictures: start 'blackbox serve MODEL --images DIR' to see "
                             "a unit's top images")
    name, channel = _check_unit(model, layer, channel)
    top = top_activations(model, [str(folder / f) for f in files], layer=name, channel=channel,
                          k=min(k, len(files)), progress=True)
    summary = top.to_dict()
    for item in summary["top"]:
        item["source"] = Path(item["source"]).relative_to(folder).as_posix() \
            if Path(item["source"]).is_relative_to(folder) else Path(item["source"]).name
    return Rendered(png_bytes(top.picture()), summary)


def unit_maximization(model, layer: str, channel: int, steps: int = AM_STEPS, seed: int = 0) -> Rendered:
    """The picture that most excites the unit (channel objective), with ``steps`` optimisation steps."""
    from ..visualize.maximize import activation_maximization

    name, channel = _check_unit(model, layer, channel)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_AM_STEPS:
        raise ParameterError(f"steps must be a whole number from 1 to {MAX_AM_STEPS}, got {steps!r}")
    result = activation_maximization(model, layer=name, channel=channel, steps=steps, seed=seed, progress=True)
    summary = {"layer": name, "channel": channel, "steps": steps, "objective": _finite(result.objective),
               "notes": [str(n) for n in result.notes]}
    return Rendered(png_bytes(result.image), summary)
