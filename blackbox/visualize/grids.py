"""Filter grids and activation grids: a convolution's weights, or every channel of one layer for one
image, drawn as a grid of small pictures.

Weights come from the initializers of :meth:`Model.float_graph`, so an int8 model shows its dequantized
weights and a float16 model its up-cast ones: the same numbers the taps and gradients use. Everything
is enlarged with nearest-neighbour sampling, so one cell pixel is one weight (or one activation).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ParameterError
from ..image_io import write_png_atomic
from ..inputs import prepare
from ..render import _COLORMAPS

__all__ = ["Grid", "activations", "filters"]

BACKGROUND = (255, 255, 255)  # separators and empty cells
# Ops between a convolution and the tensor a user names that leave its filters the filters they are:
# activations, and the clip/scale/round steps of fake quantization in a dequantized copy.
_PASS_THROUGH = {"Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish",
                 "Tanh", "Identity", "Round", "Div", "Mul", "QuantizeLinear", "DequantizeLinear"}
_WALK_LIMIT = 16


@dataclass
class Grid:
    """A grid of units. ``tiles`` holds each unit's values before colouring ([K, h, w] grey, or
    [K, h, w, 3] RGB filters); ``image`` the composed picture; ``layer`` what it shows."""

    image: np.ndarray
    tiles: np.ndarray
    layer: str

    def save_png(self, path: str | os.PathLike) -> str:
        write_png_atomic(path, self.image)
        return os.fspath(path)


# ------------------------------------------------------------------ composing

def compose(cells: list[np.ndarray], *, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Equal-sized H x W x 3 uint8 cells -> one picture, row-major, with ``gap``-pixel separators."""
    h, w = cells[0].shape[:2]
    cols = columns or math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    canvas = np.empty((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), np.uint8)
    canvas[:] = BACKGROUND
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        canvas[y:y + h, x:x + w] = cell
    return canvas


def enlarge(cell: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement: each value becomes a factor x factor block."""
    return np.repeat(np.repeat(cell, factor, axis=0), factor, axis=1)


def _factor(side: int, min_cell: int) -> int:
    return max(1, math.ceil(min_cell / max(1, side)))


# ------------------------------------------------------------------ finding the convolution

def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _constant(name: str, graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of an initializer or Constant node (a QDQ weight through DequantizeLinear too), else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
    if node.op_type == "DequantizeLinear":
        parts = [_constant(n, graph, producers) if n else None for n in node.input]
        if parts[0] is None or parts[1] is None:
            return None
        q, scale = parts[0].astype(np.float32), parts[1].astype(np.float32)
        zero = parts[2].astype(np.float32) if len(parts) > 2 and parts[2] is not None else np.float32(0)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        return (q - zero) * scale
    return None


def _first_conv(graph: onnx.GraphProto) -> onnx.NodeProto:
    for node in graph.node:
        if node.op_type == "Conv":
            return node
    raise ParameterError("the model has no convolution (Conv node): there are no filters to draw")


def _walk_to_conv(tensor: str, graph: onnx.GraphProto, what: str) -> onnx.NodeProto:
    """The Conv whose output reaches ``tensor`` through activations and fake-quantization steps only."""
    producers = _producers(graph)
    current = tensor
    for _ in range(_WALK_LIMIT):
        node = producers.get(current)
        if node is None:
            break
        if node.op_type == "Conv":
            return node
        consts = [n for n in node.input[1:] if n]
        if node.op_type not in _PASS_THROUGH or any(_constant(n, graph, producers) is None for n in consts):
            raise ParameterError(f"layer {what!r} is made by {node.op_type}, not by a convolution; filters() draws "
                                 "a Conv's weights: name a convolution's output or its node")
        current = node.input[0]
    raise ParameterError(f"layer {what!r} is not produced by a convolution; filters() draws a Conv's weights")


def _conv_node(model, layer: str | None) -> onnx.NodeProto:
    """The Conv to draw: the first in graph order, a Conv node named ``layer``, or the one making it."""
    graph = model.float_graph().graph
    if layer is None:
        return _first_conv(graph)
    for node in graph.node:
        if node.name and node.name == layer:
            if node.op_type != "Conv":
                raise ParameterError(f"node {layer!r} is a {node.op_type}, not a convolution")
            return node
    for node in model.proto.graph.node:  # a node of the model as given: use the tensor it makes
        if node.name and node.name == layer and node.output:
            layer = node.output[0]
            break
    return _walk_to_conv(model.layer(layer).tensor, graph, layer)


def conv_weights(model, layer: str | None = None) -> tuple[str, np.ndarray]:
    """(readable name of the conv's output, float32 weights [F, C, kh, kw]) of the chosen Conv."""
    graph = model.float_graph().graph
    node = _conv_node(model, layer)
    weights = _constant(node.input[1], graph, _producers(graph)) if len(node.input) > 1 else None
    if weights is None or weights.ndim != 4:
        raise ParameterError(f"the convolution {node.name or node.output[0]!r} has no 4-D weight initializer "
                             "(its weights are computed in the graph); filters() cannot draw them")
    named = layer is not None and any(layer in (x.name, x.tensor) for x in model.layers())
    return layer if named else _readable(model, node.output[0]), weights.astype(np.float32)


def _readable(model, tensor: str) -> str:
    """The layer name a user sees for a conv output: in a dequantized copy the conv's own output is a
    helper tensor, and the layer is the fake-quantized value a few pass-through steps later."""
    names = {layer.tensor: layer.name for layer in model.layers()}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.float_graph().graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    current = tensor
    for _ in range(_WALK_LIMIT):
        if current in names:
            return names[current]
        after = consumers.get(current, [])
        if len(after) != 1 or after[0].op_type not in _PASS_THROUGH:
            break
        current = after[0].output[0]
    return tensor


# ------------------------------------------------------------------ filters

def filter_tiles(model, weights: np.ndarray, colour: bool | None = None) -> np.ndarray:
    """[F, kh, kw, 3] RGB tiles (3 input channels, shown in RGB whatever the model's channel order) or
    [F, kh, kw] grey tiles (the mean over input channels: what the filter does to a grey-level input)."""
    rgb = weights.shape[1] == 3 if colour is None else bool(colour)
    if rgb and weights.shape[1] != 3:
        raise ParameterError(f"colour filters need 3 input channels; these have {weights.shape[1]}")
    if not rgb:
        return weights.mean(axis=1)
    if getattr(model.preprocess, "channel_order", "RGB") == "BGR":
        weights = weights[:, ::-1]
    return np.ascontiguousarray(weights.transpose(0, 2, 3, 1))


def _symmetric(tile: np.ndarray, scale: float) -> np.ndarray:
    """0 -> mid grey, +-scale -> white/black (per channel for RGB tiles)."""
    if scale <= 0:
        scale = 1.0
    u8 = np.clip(np.rint(127.5 + 127.5 * tile / scale), 0, 255).astype(np.uint8)
    return u8 if u8.ndim == 3 else np.repeat(u8[:, :, None], 3, axis=2)


def filters(model, layer: str | None = None, *, per_filter: bool = False, colour: bool | None = None,
            min_cell: int = 32, gap: int = 2) -> Grid:
    """A convolution's filters as a grid (first Conv in graph order by default; ``layer`` names its
    output layer or the Conv node). Each weight is a ``min_cell // k``-pixel block, 0 is mid grey; one
    symmetric scale for the whole grid (``per_filter=True``: each filter its own), so filters compare."""
    name, weights = conv_weights(model, layer)
    tiles = filter_tiles(model, weights, colour)
    axes = tuple(range(1, tiles.ndim))
    scales = np.abs(tiles).max(axis=axes) if per_filter else np.full(len(tiles), np.abs(tiles).max())
    factor = _factor(max(tiles.shape[1:3]), min_cell)
    cells = [enlarge(_symmetric(t, float(s)), factor) for t, s in zip(tiles, scales)]
    return Grid(image=compose(cells, gap=gap), tiles=tiles.astype(np.float32), layer=name)


# ------------------------------------------------------------------ activations

def _spatial_hint(model) -> str:
    spatial = [layer.name for layer in model.layers() if layer.spatial]
    if not spatial:
        return "the model has no spatial layers"
    picks = list(dict.fromkeys(spatial[:2] + [model.default_cam_layer()]))
    return "spatial layers include " + ", ".join(repr(p) for p in picks) + " (`blackbox layers MODEL` lists all)"


def _spatial_layer(model, name: str):
    layer = model.layer(name)
    if not layer.spatial:
        raise ParameterError(f"layer {name!r} has shape {list(layer.shape)} ({layer.kind}), not a spatial map "
                             f"([C, H, W], [H, W, C] or tokens [extra + H*W, C]); {_spatial_hint(model)}")
    return layer


def colour_map(tile: np.ndarray, low: float, high: float, colormap: str) -> np.ndarray:
    """Float map -> RGB uint8 through a sequential OpenCV colour map, low..high spread over it."""
    span = high - low
    norm = (tile - low) / span if span > 0 else np.zeros_like(tile)
    index = np.clip(np.rint(norm * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(index, _COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def _fit(cell: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB cell to (h, w): nearest when enlarging (one block per value), area when shrinking."""
    h, w = size
    if cell.shape[:2] == (h, w):
        return cell
    shrink = h < cell.shape[0] or w < cell.shape[1]
    return cv2.resize(cell, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)


def _cell_size(h: int, w: int, min_cell: int, max_cell: int) -> tuple[int, int]:
    """Integer enlargement up to ``min_cell`` on the long side, or a shrink down to ``max_cell``."""
    side = max(h, w)
    if side > max_cell:
        return max(1, round(h * max_cell / side)), max(1, round(w * max_cell / side))
    factor = max(1, min(_factor(side, min_cell), max_cell // side))
    return h * factor, w * factor


def activations(model, image, *, layer: str, shared_scale: bool = False, colormap: str = "viridis",
                show_input: bool = True, min_cell: int = 48, max_cell: int = 256, gap: int = 2) -> Grid:
    """Every channel of a spatial ``layer`` (an NCHW or channel-last map, or a transformer's patch tokens on
    their grid) for one image (path, uint8 picture or model-space array) as a tile; each channel min-max scaled (``shared_scale``: one range for all, so strengths compare), coloured
    with a sequential map; the picture the model saw comes first when ``show_input``."""
    if colormap not in _COLORMAPS:
        raise ParameterError(f"unknown colormap {colormap!r}: use one of {', '.join(sorted(_COLORMAPS))}")
    chosen = _spatial_layer(model, layer)
    sample = prepare(model, image)
    values = model.activations(sample.x[None], [chosen.name])[chosen.name]
    maps = chosen.maps(values)[0].astype(np.float32)  # channel c of any layout is one tile
    size = _cell_size(maps.shape[1], maps.shape[2], min_cell, max_cell)
    cells = []
    for tile in maps:
        low, high = (float(maps.min()), float(maps.max())) if shared_scale else (float(tile.min()), float(tile.max()))
        cells.append(_fit(colour_map(tile, low, high, colormap), size))
    if show_input:
        cells.insert(0, _fit(model.preprocess.display(sample.x), size))
    return Grid(image=compose(cells, gap=gap), tiles=maps, layer=chosen.name)
