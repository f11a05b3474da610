"""Rewrite a fixed batch dimension (often 1) into a symbolic one so N samples run in one call.

The rewrite is only a proposal: `blackbox.model` accepts it after a probe batch gives the same outputs
as one-by-one runs, and falls back to per-sample evaluation otherwise.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_utils import initializer_names

BATCH_SYMBOL = "N"


def _set_batch_dim(value: onnx.ValueInfoProto) -> None:
    shape = value.type.tensor_type.shape
    if len(shape.dim):
        shape.dim[0].Clear()
        shape.dim[0].dim_param = BATCH_SYMBOL


def make_batch_dynamic(model: onnx.ModelProto, input_name: str, fixed_batch: int) -> onnx.ModelProto:
    """Return a copy whose input, outputs and batch-carrying Reshape constants accept any batch size.

    Reshape targets of activations whose first entry equals the fixed batch become -1 (or 0, which
    copies the incoming batch, when the target already has a -1). Inferred intermediate shapes are
    dropped because they hard-code the old batch.
    """
    out = copy.deepcopy(model)
    graph = out.graph
    for value in graph.input:
        if value.name == input_name:
            _set_batch_dim(value)
    for value in graph.output:
        if value.type.tensor_type.shape.dim and value.type.tensor_type.shape.dim[0].dim_value == fixed_batch:
            _set_batch_dim(value)
    del graph.value_info[:]

    inits = {init.name: init for init in graph.initializer}
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    weight_like = initializer_names(graph)

    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] in weight_like:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue
        shape_name = node.input[1]
        if shape_name in inits:
            target = numpy_helper.to_array(inits[shape_name]).copy()
        elif shape_name in constant_nodes:
            attr = next((a for a in constant_nodes[shape_name].attribute if a.name == "value"), None)
            if attr is None:
                continue
            target = numpy_helper.to_array(attr.t).copy()
        else:
            continue
        if target.ndim != 1 or target.size == 0 or int(target[0]) != fixed_batch:
            continue
        target[0] = 0 if (target[1:] == -1).any() else -1
        new_name = f"{shape_name}__dynamic_batch_{node.name or id(node)}"
        graph.initializer.append(numpy_helper.from_array(target.astype(np.int64), name=new_name))
        node.input[1] = new_name
    return out
