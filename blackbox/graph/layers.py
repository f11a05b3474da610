"""The tensors a user can look at inside a model, and forward-only taps that return them.

Layer discovery lives here once: CAMs pick their layer from it, Score-CAM and feature visualisation
read activations through :func:`with_taps`, which only adds graph outputs — no op needs a gradient rule
to be tapped. Shapes come from ONNX shape inference with the batch fixed to 1, so they are per sample
(sizes it loses: from one forward run at batch 1); layouts (NCHW, NHWC, tokens) from :mod:`.layout`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .layout import (
    LAYOUTS,
    NCHW,
    TOKENS,
    Reading,
    Tag,
    follow_layouts,
    image_tag,
    public_tag,
    readings,
)
from .onnx_utils import dims, elem_type, real_inputs
from .precision import DEQUANTIZED_PREFIX, ORIGINAL_NAMES

# ops after which a spatial map stops being spatial: the CAM layer is the last map that feeds one
SPATIAL_REDUCERS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Flatten", "Reshape",
                    "AveragePool", "MaxPool"}
# a transformer's class-token read-out (x[:, 0]) or token pooling also ends the token sequence
TOKEN_REDUCERS = SPATIAL_REDUCERS | {"Gather", "Slice"}


@dataclass(frozen=True)
class Layer:
    """One tappable tensor: its name, the op that makes it, its shape per sample, where it sits, and
    how its values lie over the image (``layout``).

    ``name`` is what a user calls it: the tensor's name in the model as given. ``tensor`` is the name
    of the float32 tensor that holds its value in the graph blackbox runs (a dequantized copy of an
    int8 model renames every activation; ``name`` then is the quantized tensor's and ``op_type`` the
    quantized op's). ``layout``: "nchw" ([C, h, w]), "nhwc" ([h, w, C], channel-last), "tokens"
    ([extra + h*w, C]: ``extra`` class/distillation tokens, then the patches of the ``grid`` (h, w) row by
    row), "vector" or "other" (attention weights, window batches, anything whose positions are not the
    image's)."""

    name: str
    op_type: str
    shape: tuple  # per sample (no batch axis); ints, or None where shape inference could not tell
    index: int  # position of the producing node in graph order
    tensor: str = field(default="", compare=False)
    layout: str = field(default="other", compare=False)
    grid: tuple | None = field(default=None, compare=False)  # (h, w) of a map's or the patch tokens' positions
    extra: int = field(default=0, compare=False)  # leading non-patch tokens

    def __post_init__(self) -> None:
        if not self.tensor:
            object.__setattr__(self, "tensor", self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "shape": list(self.shape), "kind": self.kind,
                "layout": self.layout, "grid": list(self.grid) if self.grid else None, "extra": self.extra,
                "index": self.index, "tensor": self.tensor}

    @property
    def kind(self) -> str:
        """"map" (an NCHW or NHWC map with h x w > 1), "tokens" ([T, C]), "vector" ([K]) or "other"."""
        if self.spatial:
            return "tokens" if self.layout == TOKENS else "map"
        known = all(isinstance(d, int) for d in self.shape)
        if len(self.shape) == 2 and known:
            return "tokens"
        if len(self.shape) == 1:
            return "vector"
        return "other"

    @property
    def spatial(self) -> bool:
        """Whether the values read as maps over the image (see :meth:`reading`)."""
        return self.layout in LAYOUTS and self.grid is not None and self.grid[0] * self.grid[1] > 1

    @property
    def channels(self) -> int | None:
        """The size of the channel axis (C) of a spatial layer."""
        return self.reading().channels(self.shape) if self.spatial else None

    @property
    def map_shape(self) -> tuple[int, int, int] | None:
        """(C, h, w): the layer read as maps (what unit views index), None when it is not spatial."""
        return (self.channels, *self.grid) if self.spatial else None

    def maps(self, values: np.ndarray) -> np.ndarray:
        """Batched values [N, *shape] of a spatial layer as maps [N, C, h, w] (see :meth:`reading`)."""
        return self.reading().maps(values)

    def unmaps(self, maps: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`maps` (tokens: zeros at the extra tokens), for seeds given per map unit."""
        return self.reading().unmaps(maps, self.shape)

    def reading(self, layout: str = "auto", *, image: tuple[int, int] | None = None,
                grid: tuple[int, int] | None = None) -> Reading | None:
        """How the values read as maps [C, h, w]: ``layout`` "auto" (the layer's own), "nchw", "nhwc" or
        "tokens" (``grid``: the model's patch grid, ``image``: the input's (H, W), for a tensor whose
        layout the data flow did not give). None when the shape cannot be read that way."""
        options = self.readings(image=image, grid=grid)
        if layout == "auto":
            return options.get(self.layout) if self.spatial else None
        return options.get(layout)

    def readings(self, *, image: tuple[int, int] | None = None,
                 grid: tuple[int, int] | None = None) -> dict[str, Reading]:
        own = Tag(self.layout, tuple(self.grid), self.extra) if self.spatial else None
        return readings(self.shape, own, image=image, grid=grid)


def _with_unit_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = copy.deepcopy(model)
    for value in graph.graph.input:
        shape = value.type.tensor_type.shape
        if len(shape.dim) and not shape.dim[0].HasField("dim_value"):
            shape.dim[0].Clear()
            shape.dim[0].dim_value = 1
    return graph


def _known(shape: Sequence) -> bool:
    return bool(shape) and all(isinstance(d, int) for d in shape)


def tensor_shapes(model: onnx.ModelProto, *, probe: bool = True) -> dict[str, list]:
    """Shapes (batch 1, batch axis included) of the graph's float32 tensors and real inputs.

    Sizes that shape inference loses (computed at run time through Shape/Gather/Concat, as exporters
    write reshapes under a dynamic batch: Swin's windows, ViT's heads) come from one forward run at
    batch 1 that returns just those tensors (``probe``); they are left unknown when that run fails."""
    graph = _with_unit_batch(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(graph)
    except Exception:  # noqa: BLE001 - shape inference gives up on some exports; fewer layers then
        inferred = graph
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    shapes = {value.name: dims(value) for value in values if elem_type(value) == TensorProto.FLOAT}
    shapes.update({value.name: dims(value) for value in real_inputs(graph.graph)})
    produced = {out for node in graph.graph.node for out in node.output}
    floats = {v.name for v in values if elem_type(v) == TensorProto.FLOAT}
    lost = [name for name in produced if name in floats and not _known(shapes.get(name, []))]
    if probe and lost:
        shapes.update(probe_shapes(graph, lost))
    return shapes


def probe_shapes(graph: onnx.ModelProto, names: Sequence[str]) -> dict[str, list]:
    """The real shapes of ``names`` in one ONNX Runtime run of ``graph`` (inputs of fixed size: zeros);
    {} when an input has no fixed size or the run fails. Forward only: no op needs a gradient rule."""
    import onnxruntime as ort

    feeds = {}
    for value in real_inputs(graph.graph):
        shape = dims(value)
        kind = value.type.tensor_type.elem_type
        if not _known(shape) or kind not in _NUMPY:
            return {}
        feeds[value.name] = np.zeros(shape, _NUMPY[kind])
    tapped = with_taps(graph, names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(tapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = session.run(list(names), feeds)
    except Exception:  # noqa: BLE001 - a model that will not run on zeros keeps its unknown sizes
        return {}
    return {name: [int(d) for d in value.shape] for name, value in zip(names, outputs)
            if isinstance(value, np.ndarray)}


_NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8,
          TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64, TensorProto.INT64: np.int64,
          TensorProto.INT32: np.int32, TensorProto.BOOL: np.bool_}


def original_names(model: onnx.ModelProto) -> dict[str, tuple[str, str]] | None:
    """float tensor -> (name, op) in the model as given, for a dequantized copy; None for other graphs."""
    for prop in model.metadata_props:
        if prop.key == ORIGINAL_NAMES:
            return {k: (v[0], v[1]) for k, v in json.loads(prop.value).items()}
    return None


def _shape_only_tags(shapes: dict[str, list]) -> dict[str, Tag]:
    """Every [N, C, h, w] tensor read as NCHW: for graphs whose image input the data flow cannot place."""
    return {name: Tag(NCHW, (shape[2], shape[3])) for name, shape in shapes.items()
            if len(shape) == 4 and _known(shape)}


def discover_layers(model: onnx.ModelProto) -> list[Layer]:
    """Every float32 tensor a node produces, in graph order, with its per-sample shape and layout. In a
    dequantized copy, the tensors that stand for a quantized activation carry its name and op, and the
    copy's own helpers (``dq/...``: the clip, scale and rounding steps of fake quantization) are left out."""
    shapes = tensor_shapes(model)
    tags = follow_layouts(model, shapes)
    produced = [out for node in model.graph.node for out in node.output]
    if not any(public_tag(tags.get(name)) for name in produced):
        tags = _shape_only_tags(shapes)
    renamed = original_names(model)
    inputs = {value.name for value in model.graph.input}
    layers = []
    for index, node in enumerate(model.graph.node):
        for tensor in node.output:
            shape = shapes.get(tensor)
            if not tensor or not shape or tensor in inputs:
                continue
            name, op_type = tensor, node.op_type
            if renamed is not None:
                if tensor in renamed:
                    name, op_type = renamed[tensor]
                elif tensor.startswith(DEQUANTIZED_PREFIX):
                    continue
            tag = public_tag(tags.get(tensor))
            layout = tag.layout if tag else ("vector" if len(shape) == 2 else "other")
            layers.append(Layer(name, op_type, tuple(shape[1:]), index, tensor, layout,
                                tag.grid if tag else None, tag.extra if tag else 0))
    return layers


def image_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(H, W) of the image input, from its declared shape (NCHW, NHWC or [N, H, W])."""
    for value in real_inputs(model.graph):
        tag = image_tag(dims(value))
        if tag is not None:
            return tag.grid
    return None


def patch_grid(layers: Sequence[Layer]) -> tuple[int, int] | None:
    """The patch grid of the model's token layers (the first one's), None for a model without tokens."""
    return next((layer.grid for layer in layers if layer.spatial and layer.layout == TOKENS), None)


def _ancestors(graph: onnx.GraphProto, start: str) -> set[str]:
    producers = {out: node for node in graph.node for out in node.output}
    seen, todo = set(), [start]
    while todo:
        node = producers.get(todo.pop())
        if node is None:
            continue
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


_ATTENTION_PASS = {"Cast", "Identity", "Dropout", "Where", "Mul", "Reshape"}  # masks, casts between


def _attention_softmax(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The last Softmax whose output a MatMul reads (attention weights times values, a few casts or masks
    in between), if any; a classifier's output Softmax is read by nothing of the kind."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def weighs_values(tensor: str, steps: int = 3) -> bool:
        for node in consumers.get(tensor, []):
            if node.op_type in ("MatMul", "Einsum"):
                return True
            if steps and node.op_type in _ATTENTION_PASS and any(weighs_values(o, steps - 1) for o in node.output):
                return True
        return False

    found = [node for node in graph.node if node.op_type == "Softmax" and weighs_values(node.output[0])]
    return found[-1] if found else None


def _norm_outputs(graph: onnx.GraphProto) -> set[str]:
    """Outputs of layer normalisations: LayerNormalization ops, and the ones exporters before opset 17
    spell out (x - mean) / Sqrt(var + eps), then times the weight and plus the bias."""
    constants = {init.name for init in graph.initializer} | \
        {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = {node.output[0] for node in graph.node if node.op_type == "LayerNormalization"}
    for node in graph.node:
        root = producers.get(node.input[1]) if node.op_type == "Div" and len(node.input) > 1 else None
        if root is None or root.op_type != "Sqrt":
            continue
        tensor = node.output[0]
        for op in ("Mul", "Add"):  # the affine part, when the export keeps it
            after = consumers.get(tensor, [])
            if len(after) != 1 or after[0].op_type != op or not any(i in constants for i in after[0].input):
                break
            tensor = after[0].output[0]
        found.add(tensor)
    return found


def default_cam_layer(model: onnx.ModelProto, layers: Sequence[Layer]) -> str | None:
    """Grad-CAM's usual layer, by architecture; None when the model has no spatial layer. Returns the
    layer's (readable) name.

    Transformers (an attention softmax after a LayerNorm on tokens or a channel-last map): the output of
    the last block's first LayerNorm, the one that feeds the last attention — pytorch-grad-cam's choice
    for ViT (``blocks[-1].norm1``) and Swin (``layers[-1].blocks[-1].norm1``): later tensors mix the class
    token with the patches in one step and carry little gradient at the patch positions. CNNs: the last
    spatial map that feeds a pooling or flattening op, else the last spatial map."""
    spatial = {layer.tensor: layer for layer in layers if layer.spatial}
    attention = _attention_softmax(model.graph)
    if attention is not None:
        before = _ancestors(model.graph, attention.output[0])
        normalised = _norm_outputs(model.graph)
        norms = [layer for layer in spatial.values() if layer.tensor in before and layer.layout != NCHW
                 and layer.tensor in normalised]
        if norms:
            return max(norms, key=lambda layer: layer.index).name
    chosen = None
    for node in model.graph.node:
        layer = spatial.get(node.input[0]) if node.input else None
        if layer is None:
            continue
        if node.op_type in SPATIAL_REDUCERS or (layer.layout != NCHW and node.op_type in TOKEN_REDUCERS):
            chosen = layer.name
    if chosen is None:
        ordered = [layer.name for layer in layers if layer.spatial]
        chosen = ordered[-1] if ordered else None
    return chosen


def with_taps(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the named intermediate tensors (forward only)."""
    produced = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    missing = [name for name in names if name not in produced]
    if missing:
        raise KeyError(missing[0])
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    present = {o.name for o in tapped.graph.output}
    for name in names:
        if name not in present:
            tapped.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    return tapped


# ------------------------------------------------------------------ weight-bearing layers

_WEIGHTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2),
            "QLinearConv": (3, 8)}


@dataclass(frozen=True)
class WeightLayer:
    """A weight-bearing node and the initializers that hold its parameters."""

    name: str
    op_type: str
    tensors: tuple[str, ...]
    quantized: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tensors": list(self.tensors)}


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _weight_source(name: str, inits: dict[str, onnx.TensorProto],
                   producers: dict[str, onnx.NodeProto]) -> tuple[str, bool] | None:
    """The initializer behind a weight input: itself, or the quantized tensor a DequantizeLinear (QDQ
    models) reads. Returns (initializer name, quantized) or None (computed, not a parameter)."""
    if name in inits:
        return name, inits[name].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input and node.input[0] in inits:
        return node.input[0], True
    return None


def weight_layers(proto: onnx.ModelProto) -> list[WeightLayer]:
    """Weight-bearing layers, ordered from the output to the input (reverse topological order): Conv,
    ConvTranspose, Gemm and MatMul with a constant operand, BatchNormalization (scale, bias), and the
    int8 weights of QLinearConv / QLinearMatMul and of QDQ (DequantizeLinear -> Conv/Gemm/MatMul) graphs.
    Biases are randomised with their layer."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = _producers(graph)
    layers: list[WeightLayer] = []
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if node.op_type in _WEIGHTS:
            slots = [s for s in _WEIGHTS[node.op_type] if s < len(node.input) and node.input[s]]
        elif node.op_type == "MatMul":
            slots = [0, 1]
        elif node.op_type == "QLinearMatMul":
            slots = [0, 3]
        else:
            continue
        found = [_weight_source(node.input[s], inits, producers) for s in slots]
        found = [f for f in found if f is not None and f[0] not in seen]
        if not found or (node.op_type in ("MatMul", "QLinearMatMul") and len(found) == 2):
            continue  # no parameter (or two constants: nothing learned that depends on the input)
        if node.op_type in _WEIGHTS and node.op_type != "BatchNormalization" and \
                _weight_source(node.input[_WEIGHTS[node.op_type][0]], inits, producers) is None:
            continue  # the weight itself is computed; a lone constant bias is not a layer
        tensors = tuple(dict.fromkeys(f[0] for f in found))
        seen.update(tensors)
        layers.append(WeightLayer(name=node.name or f"{node.op_type}_{i}", op_type=node.op_type, tensors=tensors,
                            quantized=any(f[1] for f in found) or node.op_type.startswith("QLinear")))
    return layers[::-1]
