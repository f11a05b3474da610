"""The tensors a user can look at inside a model, and forward-only taps that return them.

Layer discovery lives here once: CAMs pick their layer from it, Score-CAM and feature visualisation
read activations through :func:`with_taps`, which only adds graph outputs — no op needs a gradient rule
to be tapped. Shapes come from ONNX shape inference with the batch fixed to 1, so they are per sample.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import onnx
from onnx import TensorProto, helper

from .onnx_utils import dims, elem_type
from .precision import DEQUANTIZED_PREFIX, ORIGINAL_NAMES

# ops after which a spatial map stops being spatial: the CAM layer is the last map that feeds one
SPATIAL_REDUCERS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Flatten", "Reshape",
                    "AveragePool", "MaxPool"}


@dataclass(frozen=True)
class Layer:
    """One tappable tensor: its name, the op that makes it, its shape per sample, where it sits.

    ``name`` is what a user calls it: the tensor's name in the model as given. ``tensor`` is the name
    of the float32 tensor that holds its value in the graph blackbox runs (a dequantized copy of an
    int8 model renames every activation; ``name`` then is the quantized tensor's and ``op_type`` the
    quantized op's)."""

    name: str
    op_type: str
    shape: tuple  # per sample (no batch axis); ints, or None where shape inference could not tell
    index: int  # position of the producing node in graph order
    tensor: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.tensor:
            object.__setattr__(self, "tensor", self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "shape": list(self.shape), "kind": self.kind,
                "index": self.index, "tensor": self.tensor}

    @property
    def kind(self) -> str:
        """"map" ([C, H, W] with H x W > 1), "tokens" ([T, C]), "vector" ([K]) or "other"."""
        known = all(isinstance(d, int) for d in self.shape)
        if len(self.shape) == 3 and known and self.shape[1] * self.shape[2] > 1:
            return "map"
        if len(self.shape) == 2 and known:
            return "tokens"
        if len(self.shape) == 1:
            return "vector"
        return "other"

    @property
    def spatial(self) -> bool:
        return self.kind == "map"


def _with_unit_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = copy.deepcopy(model)
    for value in graph.graph.input:
        shape = value.type.tensor_type.shape
        if len(shape.dim) and not shape.dim[0].HasField("dim_value"):
            shape.dim[0].Clear()
            shape.dim[0].dim_value = 1
    return graph


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Inferred shapes (batch 1, batch axis included) of the graph's float32 tensors."""
    graph = _with_unit_batch(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(graph)
    except Exception:  # noqa: BLE001 - shape inference gives up on some exports; fewer layers then
        inferred = graph
    return {value.name: dims(value) for value in list(inferred.graph.value_info) + list(inferred.graph.output)
            if elem_type(value) == TensorProto.FLOAT}


def original_names(model: onnx.ModelProto) -> dict[str, tuple[str, str]] | None:
    """float tensor -> (name, op) in the model as given, for a dequantized copy; None for other graphs."""
    for prop in model.metadata_props:
        if prop.key == ORIGINAL_NAMES:
            return {k: (v[0], v[1]) for k, v in json.loads(prop.value).items()}
    return None


def discover_layers(model: onnx.ModelProto) -> list[Layer]:
    """Every float32 tensor a node produces, in graph order, with its per-sample shape. In a
    dequantized copy, the tensors that stand for a quantized activation carry its name and op, and the
    copy's own helpers (``dq/...``: the clip, scale and rounding steps of fake quantization) are left out."""
    shapes = tensor_shapes(model)
    renamed = original_names(model)
    layers = []
    for index, node in enumerate(model.graph.node):
        for tensor in node.output:
            shape = shapes.get(tensor)
            if not tensor or not shape:
                continue
            name, op_type = tensor, node.op_type
            if renamed is not None:
                if tensor in renamed:
                    name, op_type = renamed[tensor]
                elif tensor.startswith(DEQUANTIZED_PREFIX):
                    continue
            layers.append(Layer(name, op_type, tuple(shape[1:]), index, tensor))
    return layers


def default_cam_layer(model: onnx.ModelProto, layers: Sequence[Layer]) -> str | None:
    """The last spatial map that feeds a pooling or flattening op (Grad-CAM's usual layer), else the last
    spatial map; None when there is none. Returns the layer's (readable) name."""
    spatial = {layer.tensor: layer.name for layer in layers if layer.spatial}
    chosen = None
    for node in model.graph.node:
        if node.op_type in SPATIAL_REDUCERS and node.input and node.input[0] in spatial:
            chosen = spatial[node.input[0]]
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
        if node.op_type in _WEIGHTS and node.op_type != "BatchNormalization":
            if _weight_source(node.input[_WEIGHTS[node.op_type][0]], inits, producers) is None:
                continue  # the weight itself is computed; a lone constant bias is not a layer
        tensors = tuple(dict.fromkeys(f[0] for f in found))
        seen.update(tensors)
        layers.append(WeightLayer(name=node.name or f"{node.op_type}_{i}", op_type=node.op_type, tensors=tensors,
                            quantized=any(f[1] for f in found) or node.op_type.startswith("QLinear")))
    return layers[::-1]
