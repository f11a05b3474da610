"""Tiny hand-built ONNX models for tests that need a property no real model has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def conv_classifier(*, classes: int = 4, channels: int = 3, size: int = 16, layout: str = "NCHW",
                    in_type: int = TensorProto.FLOAT, batch: int | str = "N", seed: int = 0,
                    final: str | None = None, input_name: str = "pixels") -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, with optional layout/dtype/final op."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    shape = [batch, channels, size, size] if layout == "NCHW" else [batch, size, size, channels]
    current = input_name
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [current], ["as_float"], to=TensorProto.FLOAT))
        current = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [current], ["nchw"], perm=[0, 3, 1, 2]))
        current = "nchw"
    inits.append(numpy_helper.from_array(rng.normal(size=(8, channels, 3, 3)).astype(np.float32), "w"))
    inits.append(numpy_helper.from_array(rng.normal(size=(classes, 8)).astype(np.float32), "fc"))
    nodes += [helper.make_node("Conv", [current, "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("GlobalAveragePool", ["r"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    out = "logits"
    if final == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    elif final == "nan_when_dark":  # sqrt(mean pixel - 0.3): NaN scores for dark inputs only
        inits.append(numpy_helper.from_array(np.array(0.3, np.float32), "dark"))
        nodes.append(helper.make_node("ReduceMean", [current], ["brightness"], axes=[1, 2, 3], keepdims=0))
        nodes.append(helper.make_node("Sub", ["brightness", "dark"], ["shifted"]))
        nodes.append(helper.make_node("Sqrt", ["shifted"], ["root"]))
        nodes.append(helper.make_node("Unsqueeze", ["root", "one"], ["root2"]))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        nodes.append(helper.make_node("Add", ["logits", "root2"], ["nanout"]))
        out = "nanout"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, in_type, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
