"""Small helpers for building and editing ONNX graphs that every transform here needs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnxruntime 1.31 accepts IR versions up to 13; the onnx package writes 14 unless told otherwise.
MAX_IR_VERSION = 10


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def initializer_names(graph: onnx.GraphProto) -> set[str]:
    return {init.name for init in graph.initializer}


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists every weight as an input too)."""
    inits = initializer_names(graph)
    return [i for i in graph.input if i.name not in inits]


def dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dimensions of a tensor value: int when fixed, the symbol name when symbolic, None when unknown."""
    shape = value.type.tensor_type.shape
    if not value.type.tensor_type.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def elem_type(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type)


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name=name)


def np_dtype(onnx_type: int) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(onnx_type)


FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def finish_model(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    """A new model around `graph` with the source model's opsets and an IR version ORT accepts."""
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="blackbox")
    # IR < 4 requires weights to be listed as inputs; we never list them, so ask for at least 7.
    out.ir_version = min(max(int(model.ir_version), 7), MAX_IR_VERSION)
    for prop in model.metadata_props:
        out.metadata_props.add(key=prop.key, value=prop.value)
    out.functions.extend(model.functions)
    return out
