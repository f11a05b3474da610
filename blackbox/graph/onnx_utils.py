"""Small helpers for building and editing ONNX graphs that every transform here needs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnxruntime 1.31 accepts IR versions up to 13; the onnx package writes 14 unless told otherwise.
MAX_IR_VERSION = 10
# graphs blackbox builds from scratch (opset 13): IR 8 is what that opset needs and every ORT accepts
OWN_IR_VERSION = 8

DEFAULT_DOMAINS = ("", "ai.onnx")

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)

# Marks Round nodes whose gradient is the identity (the straight-through estimator of fake
# quantization): written by ``precision.dequantize``, read by the autodiff ``Round`` rule.
STE_MARK = "blackbox:straight-through"


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return 1


def initializer_names(graph: onnx.GraphProto) -> set[str]:
    return {init.name for init in graph.initializer}


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists every weight as an input too)."""
    inits = initializer_names(graph)
    return [i for i in graph.input if i.name not in inits]


def type_dims(tp: onnx.TypeProto) -> list[int | str | None] | None:
    """Dimensions of a tensor type (int fixed, str symbolic, None unknown); None when the rank is unknown."""
    if not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tp.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dimensions of a tensor value: int when fixed, the symbol name when symbolic, None when unknown
    ([] when even the rank is unknown)."""
    found = type_dims(value.type)
    return [] if found is None else found


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, list | None]]:
    """name -> (onnx elem type, dims as :func:`type_dims`) for every tensor of the main graph whose type
    is known (value_info, inputs, outputs, initializers)."""
    g = model.graph
    out: dict[str, tuple[int, list | None]] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = (int(vi.type.tensor_type.elem_type), type_dims(vi.type))
    for t in g.initializer:
        out[t.name] = (int(t.data_type), [int(d) for d in t.dims])
    return out


def get_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute ``name`` of ``node`` (strings decoded), else ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by a node's attributes (If branches, Loop/Scan bodies)."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def outer_references(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (at any depth) read from the enclosing scopes: an If whose branches use
    ``x`` depends on ``x`` although ``x`` is not among its inputs."""
    found: set[str] = set()
    for g in subgraphs(node):
        local = {i.name for i in g.input} | {t.name for t in g.initializer} | \
            {t.name for t in g.sparse_initializer}
        for n in g.node:
            found.update(i for i in n.input if i and i not in local)
            found.update(r for r in outer_references(n) if r not in local)
            local.update(n.output)
        found.update(o.name for o in g.output if o.name not in local)
    return found


def all_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs followed by the outer-scope names its subgraphs read (see :func:`outer_references`)."""
    ins = [i for i in node.input if i]
    extra = outer_references(node) if len(node.attribute) else ()
    return ins + sorted(set(extra) - set(ins))


class FreshNames:
    """Names for new tensors and nodes that collide with nothing already in a graph (``prefix`` marks
    which transform made them)."""

    def __init__(self, graph: onnx.GraphProto, prefix: str):
        self.prefix = prefix
        self.used = {n for node in graph.node for n in (*node.input, *node.output)}
        self.used.update(i.name for i in graph.input)
        self.used.update(t.name for t in graph.initializer)
        self._count = 0

    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{self.prefix}{hint}_{self._count}"
            if name not in self.used:
                self.used.add(name)
                return name

    def reserve(self, name: str) -> str:
        """``name`` if nothing uses it yet, else a fresh variant; either way it is taken from now on."""
        if name in self.used:
            return self.fresh(name)
        self.used.add(name)
        return name


class ConstantValues:
    """Initializer values by name, converted to numpy once (None for anything that is not constant)."""

    def __init__(self, graph: onnx.GraphProto):
        self.tensors = {t.name: t for t in graph.initializer}
        self._values: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name not in self._values:
            t = self.tensors.get(name)
            if t is None:
                return None
            self._values[name] = numpy_helper.to_array(t)
        return self._values[name]

    def add(self, name: str, value: np.ndarray) -> None:
        """Record the value of a new constant."""
        self._values[name] = value


def is_straight_through(node: onnx.NodeProto) -> bool:
    """Whether ``node`` carries :data:`STE_MARK` (its gradient is the identity)."""
    return STE_MARK in node.doc_string or node.name.startswith(STE_MARK)


def elem_type(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type)


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name=name)


def np_dtype(onnx_type: int) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(onnx_type)


def finish_model(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    """A new model around `graph` with the source model's opsets and an IR version ORT accepts."""
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="blackbox")
    # IR < 4 requires weights to be listed as inputs; we never list them, so ask for at least 7.
    out.ir_version = min(max(int(model.ir_version), 7), MAX_IR_VERSION)
    for prop in model.metadata_props:
        out.metadata_props.add(key=prop.key, value=prop.value)
    out.functions.extend(model.functions)
    return out


_TYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64",
               TensorProto.UINT8: "uint8", TensorProto.BFLOAT16: "bfloat16", TensorProto.INT64: "int64",
               TensorProto.INT32: "int32", TensorProto.INT8: "int8"}


def type_name(onnx_type: int) -> str:
    """numpy-style name of an ONNX element type, for messages."""
    return _TYPE_NAMES.get(onnx_type, TensorProto.DataType.Name(onnx_type).lower())
