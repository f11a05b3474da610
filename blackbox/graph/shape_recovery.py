"""Recover the tensor sizes that ONNX's symbolic shape inference loses.

Exporters often compute Reshape targets at run time (TorchScript's ``x.view(b, g, c // g, h, w)`` with a
dynamic batch becomes ``Shape -> Gather -> Div -> Concat -> Reshape``); ONNX's data propagation does not
divide, so every tensor after it has unknown sizes although only the batch is dynamic. Here the graph's
shapes are computed for a few concrete batch sizes and compared: what does not change is fixed, what
follows the batch stays symbolic. Pure ONNX (per-node inference and the reference evaluator on shape-sized
tensors), no ONNX Runtime; used by the differentiator's ``prepare`` and open to layer discovery.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_utils import default_opset, get_attr, subgraphs, type_dims, value_types

__all__ = ["recover_shapes"]


# Concrete values tried for each symbolic input size (the batch): a size equal in every run is fixed, one
# equal to the symbol's value in every run is that symbol, k times it is "symbol*k". Three small, distinct
# values, so a size that only looks fixed at large batches (min(N, 8)) is not mistaken for a constant.
_PROBE_SIZES = (2, 3, 7)
_VALUE_LIMIT = 64  # elements: only shape-sized tensors are evaluated while recovering sizes
# ops evaluated on known small inputs while recovering sizes (shape arithmetic and its glue)
_SHAPE_VALUE_OPS = frozenset(
    {
        "Identity", "Cast", "CastLike", "Gather", "GatherElements", "Unsqueeze", "Squeeze", "Concat",
        "Slice", "Reshape", "Flatten", "Transpose", "Expand", "Tile", "Range", "ConstantOfShape", "Where",
        "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min", "Max", "Floor", "Ceil", "Round", "Sqrt",
        "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or",
        "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Split", "NonZero", "Size", "Shape",
    }
)


def _lost(dims: list | None, symbols: set[str]) -> bool:
    return dims is not None and any(not isinstance(d, int) and d not in symbols for d in dims)


def recover_shapes(m: onnx.ModelProto) -> int:
    """Fill in the sizes that symbolic shape inference lost; returns how many tensors gained sizes.

    Every graph input's size is fixed except symbolic ones (the batch). The graph's shapes are computed
    for concrete values of those symbols (:data:`_PROBE_SIZES`), node by node with ONNX's own per-node
    inference, evaluating the small integer tensors that compute shapes on the way (``Shape``, ``Gather``,
    ``Div``, ``Concat``). A size that is the same in every run is written into the graph's value_info; one
    that follows a symbol stays symbolic (``N``, or ``N*k`` when it is k times it). Sizes still unknown
    after that (an input size given as unknown, a data-dependent size) are left as they were, and a rule
    that needs one says which.
    """
    g = m.graph
    types = value_types(m)
    inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    symbols: list[str] = []
    for vi in inputs:
        d = types.get(vi.name, (0, None))[1]
        if d is None or any(e is None for e in d):
            return 0  # an input of unknown rank or size: nothing to compute from
        symbols.extend(e for e in d if isinstance(e, str) and e not in symbols)
    known_symbols = set(symbols)
    infos = {vi.name: vi for vi in g.value_info}
    lost = [vi for vi in list(g.value_info) + list(g.output)
            if _lost(types.get(vi.name, (0, None))[1], known_symbols)]
    if not lost:
        return 0
    runs = []
    for value in _PROBE_SIZES:
        sizes = {s: value + 10 * k for k, s in enumerate(symbols)}  # distinct per symbol
        runs.append((sizes, _concrete_shapes(m, types, sizes)))
    gained = 0
    for vi in lost:
        old = types[vi.name][1]
        found = [run.get(vi.name) for _, run in runs]
        if any(f is None or len(f) != len(old) for f in found):
            continue
        new = list(old)
        for axis, d in enumerate(old):
            if isinstance(d, int) or d in known_symbols:
                continue
            new[axis] = _classify([f[axis] for f in found], [sizes for sizes, _ in runs], symbols, d)
        if new != old:
            target = infos.get(vi.name, vi)
            _write_dims(target, new)
            gained += 1
    return gained


def _classify(values: list[int], sizes: list[dict[str, int]], symbols: list[str], old):
    """A fixed int, a symbol ("N" or "N*k") or the old (unknown) entry, from one size's values per run."""
    if all(v == values[0] for v in values):
        return values[0]
    for s in symbols:
        ks = [v / run[s] for v, run in zip(values, sizes)]
        if all(k == ks[0] for k in ks) and float(ks[0]).is_integer() and ks[0] >= 1:
            k = int(ks[0])
            return s if k == 1 else f"{s}*{k}"
    return old


def _write_dims(vi: onnx.ValueInfoProto, dims: list) -> None:
    shape = vi.type.tensor_type.shape
    for dim, value in zip(shape.dim, dims):
        if isinstance(value, int):
            dim.Clear()
            dim.dim_value = value
        elif isinstance(value, str):
            dim.Clear()
            dim.dim_param = value


def _concrete_shapes(m: onnx.ModelProto, types: dict, sizes: dict[str, int]) -> dict[str, list[int]]:
    """name -> concrete dims of every tensor whose shape follows from the inputs at these symbol values."""
    from onnx.reference import ReferenceEvaluator

    g = m.graph
    opset = default_opset(m)
    shapes: dict[str, list[int]] = {}
    values: dict[str, np.ndarray] = {}
    elems: dict[str, int] = {name: t[0] for name, t in types.items()}
    for vi in g.input:
        d = types.get(vi.name, (0, None))[1]
        if d is not None:
            shapes[vi.name] = [sizes.get(e, e) if isinstance(e, str) else e for e in d]
    for t in g.initializer:
        shapes[t.name] = [int(x) for x in t.dims]
        elems[t.name] = int(t.data_type)
        if math.prod(t.dims) <= _VALUE_LIMIT and not t.data_location:
            values[t.name] = numpy_helper.to_array(t)

    def type_of(name: str) -> onnx.TypeProto:
        dims = shapes.get(name)
        if dims is None:
            dims = types.get(name, (0, None))[1]
        return helper.make_tensor_type_proto(elems.get(name, 0) or TensorProto.FLOAT, dims)

    for node in g.node:
        ins = [i for i in node.input if i]
        out_dims: dict[str, list | None] = {}
        if node.domain in ("", "ai.onnx") and not subgraphs(node):
            try:
                schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
                data = {i: numpy_helper.from_array(values[i], i) for i in ins if i in values}
                inferred = onnx.shape_inference.infer_node_outputs(
                    schema, node, {i: type_of(i) for i in ins}, data, opset_imports=list(m.opset_import))
                for o, tp in inferred.items():
                    if tp.HasField("tensor_type"):
                        elems.setdefault(o, tp.tensor_type.elem_type)
                        out_dims[o] = type_dims(tp)
            except Exception:  # noqa: BLE001, S110 - best effort: the node's symbolic types stay
                pass
        for o in node.output:
            if not o:
                continue
            d = out_dims.get(o)
            if d is None or not all(isinstance(e, int) for e in d):
                fallback = types.get(o, (0, None))[1]  # fixed symbolically: the same at any batch
                d = fallback if fallback is not None and all(isinstance(e, int) for e in fallback) else d
            if d is not None and all(isinstance(e, int) for e in d):
                shapes[o] = list(d)
        _evaluate_shape_value(node, ins, shapes, values, opset, ReferenceEvaluator)
    return shapes


def _evaluate_shape_value(node, ins, shapes, values, opset, evaluator) -> None:
    """Record the value of a small tensor that computes a shape, when its inputs are known."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _SHAPE_VALUE_OPS or not node.output[0]:
        return
    if node.op_type == "Shape":
        d = shapes.get(node.input[0])
        if d is not None:
            start, end = get_attr(node, "start", 0), get_attr(node, "end", None)
            values[node.output[0]] = np.array(d[start:end] if end is not None else d[start:], np.int64)
        return
    if node.op_type == "Size":
        d = shapes.get(node.input[0])
        if d is not None:
            values[node.output[0]] = np.array(math.prod(d), np.int64)
        return
    if not all(i in values for i in ins):
        return
    outs = [o for o in node.output if o]
    if not all(o in shapes and math.prod(shapes[o]) <= _VALUE_LIMIT for o in outs):
        return  # unknown or large results are not shape computations
    try:
        res = evaluator(node, opsets={"": opset}).run(None, {i: values[i] for i in ins})
    except Exception:  # noqa: BLE001 - not evaluable: its value stays unknown
        return
    for o, r in zip(node.output, res):
        if o:
            values[o] = np.asarray(r)
