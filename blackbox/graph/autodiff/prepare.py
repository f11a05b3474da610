"""Normalise a forward graph before differentiating it.

The rules in ``rules/`` can then assume one canonical form:

* local functions are inlined;
* the default-domain opset is at least :data:`MIN_OPSET` (16: ``ScatterElements(reduction="add")``,
  axes-as-input ``ReduceSum``/``Squeeze``/``Unsqueeze``, ``Clip`` bounds as inputs, opset-13
  ``Softmax``), upgraded with ONNX's version converter when lower;
* ``Constant`` nodes are initializers, and constant subgraphs that compute shapes (``Shape -> Gather ->
  Concat -> Reshape`` chains, also partially known ones such as ``Shape(x)[1:]`` when only the batch is
  dynamic) are folded into initializers;
* ``auto_pad`` on convolutions and pools is replaced by explicit ``pads`` (and ``ConvTranspose``'s
  ``output_shape`` by pads);
* training-only outputs are gone (``Dropout`` becomes ``Identity``; unused BatchNormalization running
  statistics outputs are dropped);
* nodes that do not contribute to the requested outputs are pruned, and shapes are inferred;
* sizes that symbolic inference loses (computed at run time through ``Shape -> Gather -> Div ->
  Concat -> Reshape``, as in ShuffleNet's channel shuffle with a dynamic batch) are recovered by
  :func:`recover_shapes`: the graph's shapes are computed for a few concrete batch sizes, and a size
  that is the same in every run is fixed; one that follows the batch stays symbolic.

Nothing here looks at particular models; everything is driven by op semantics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx.inliner
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

from ...errors import ModelError
from ..onnx_utils import (
    MAX_IR_VERSION,
    OWN_IR_VERSION,
    all_inputs,
    default_opset,
    get_attr,
    subgraphs,
    type_dims,
    value_types,
)
from .errors import AGNOSTIC_HINT

MIN_OPSET = 16

# Float-valued ops whose constant folding is pure data movement (or exact arithmetic on weights), so
# folding them cannot change results. Ops with integer outputs are always folded when their inputs are.
_FOLD_FLOAT_OPS = frozenset(
    {
        "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
        "Slice", "Gather", "Cast", "CastLike", "ConstantOfShape", "Expand", "Tile", "Range",
        "DequantizeLinear",
    }
)
_NO_FOLD = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)
_FOLD_LIMIT = 1 << 22  # elements; bigger float results stay for ONNX Runtime to fold at load time

_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv"})


# --------------------------------------------------------------------------------------------- utils
def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    del_attr(node, name)
    node.attribute.append(helper.make_attribute(name, value))


def del_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def topo_sort(nodes: Sequence[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    """Nodes in a topological order (stable: keeps the given order where it is already valid). Names a
    node's subgraphs read from the outer scope count as its inputs."""
    ready = set(available) | {""}
    producers = {o for n in nodes for o in n.output}
    pending = list(nodes)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(i in ready or i not in producers for i in all_inputs(n)):
                order.append(n)
                ready.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:  # a cycle: keep what is left as is
            order.extend(rest)
            break
        pending = rest
    return order


def infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                 data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; rules that need a shape say so
        return model


# ------------------------------------------------------------------------------------------- prepare
def prepare(model: onnx.ModelProto, *, outputs: Sequence[str]) -> onnx.ModelProto:
    """A normalised copy of ``model`` that computes (at least) the tensors named in ``outputs``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if len(m.functions):
        m = onnx.inliner.inline_local_functions(m)
    if default_opset(m) < MIN_OPSET:
        try:
            m = onnx.version_converter.convert_version(m, MIN_OPSET)
        except Exception as exc:  # noqa: BLE001 - any converter failure is one message
            raise ModelError(
                f"cannot upgrade the model from opset {default_opset(model)} to {MIN_OPSET} for the "
                f"gradient graph ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                f"{AGNOSTIC_HINT}"
            ) from None
    needed_ir = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    # at least what the opsets need (and IR 8); never lowered, never raised past what ORT reads
    m.ir_version = max(int(m.ir_version), min(max(OWN_IR_VERSION, needed_ir), MAX_IR_VERSION))

    g = m.graph
    # Weights listed as graph inputs (IR < 4, or overridable defaults) are constants here.
    init_names = {t.name for t in g.initializer}
    real_inputs = [i for i in g.input if i.name not in init_names]
    del g.input[:]
    g.input.extend(real_inputs)
    _constants_to_initializers(m)
    _strip_training_outputs(m, outputs)
    sorted_nodes = topo_sort(
        list(g.node), [i.name for i in g.input] + [t.name for t in g.initializer]
    )
    del g.node[:]
    g.node.extend(sorted_nodes)
    del g.value_info[:]
    m = infer(m)
    _fold_constants(m)
    _prune(m, outputs)
    _set_outputs(m, outputs)
    del m.graph.value_info[:]
    m = infer(m)
    recover_shapes(m)
    _explicit_pads(m)
    return m


def _constants_to_initializers(m: onnx.ModelProto) -> None:
    g = m.graph
    keep = []
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            a = node.attribute[0]
            arr = None
            if a.name == "value":
                t = onnx.TensorProto()
                t.CopyFrom(a.t)
                t.name = node.output[0]
                g.initializer.append(t)
                continue
            if a.name == "value_float":
                arr = np.array(a.f, np.float32)
            elif a.name == "value_floats":
                arr = np.array(list(a.floats), np.float32)
            elif a.name == "value_int":
                arr = np.array(a.i, np.int64)
            elif a.name == "value_ints":
                arr = np.array(list(a.ints), np.int64)
            if arr is not None:
                g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
                continue
        keep.append(node)
    del g.node[:]
    g.node.extend(keep)


def _strip_training_outputs(m: onnx.ModelProto, outputs: Sequence[str]) -> None:
    g = m.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output} | set(outputs)
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Dropout" and not any(o in used for o in node.output[1:] if o):
            data = node.input[0]
            out = node.output[0]
            del node.input[:], node.output[:], node.attribute[:]
            node.op_type = "Identity"
            node.input.append(data)
            node.output.append(out)
        elif node.op_type == "BatchNormalization" and len(node.output) > 1:
            outs = list(node.output)
            while len(outs) > 1 and (not outs[-1] or outs[-1] not in used):
                outs.pop()
            del node.output[:]
            node.output.extend(outs)


# ------------------------------------------------------------------------------------ constant folding
def _fold_constants(m: onnx.ModelProto) -> None:
    from onnx.reference import ReferenceEvaluator

    g = m.graph
    opset = default_opset(m)
    types = value_types(m)
    inits = {t.name: t for t in g.initializer}
    values: dict[str, np.ndarray] = {}
    graph_outputs = {o.name for o in g.output}

    def val(name: str):
        if name in values:
            return values[name]
        if name in inits:
            values[name] = numpy_helper.to_array(inits[name])
            return values[name]
        return None

    # name -> (entries, numpy dtype, is_scalar); an entry is an int or None (unknown at build time)
    partial: dict[str, tuple[list, np.dtype, bool]] = {}

    def part(name: str):
        if name in partial:
            return partial[name]
        v = val(name)
        if v is not None and v.ndim <= 1 and np.issubdtype(v.dtype, np.integer) and v.size <= 64:
            return [int(e) for e in v.reshape(-1)], v.dtype, v.ndim == 0
        return None

    def add_value(name: str, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        if name in types and types[name][0]:
            want = helper.tensor_dtype_to_np_dtype(types[name][0])
            if arr.dtype != want:
                arr = arr.astype(want)
        values[name] = arr
        t = numpy_helper.from_array(arr, name)
        inits[name] = t
        g.initializer.append(t)

    new_nodes = []
    for node in g.node:
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type in _NO_FOLD
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute)
            or any(o in graph_outputs for o in node.output)
        ):
            new_nodes.append(node)
            continue
        ins = [i for i in node.input if i]
        if ins and all(val(i) is not None for i in ins):
            try:
                ev = ReferenceEvaluator(node, opsets={"": opset})
                feeds = {i: val(i) for i in ins}
                res = ev.run(None, feeds)
            except Exception:  # noqa: BLE001 - not foldable: the node stays
                res = None
            if res is not None and len(res) == len(node.output):
                res = [np.asarray(r) for r in res]
                ok = all(
                    not np.issubdtype(r.dtype, np.floating)
                    or (node.op_type in _FOLD_FLOAT_OPS and r.size <= _FOLD_LIMIT)
                    for r in res
                )
                if ok:
                    for o, r in zip(node.output, res):
                        if o:
                            add_value(o, r)
                    continue
        p = _propagate_partial(node, part, types)
        if p is not None:
            entries, dtype, scalar = p
            if all(e is not None for e in entries):
                arr = np.array(entries, dtype=dtype)
                add_value(node.output[0], arr.reshape(()) if scalar else arr)
                continue
            partial[node.output[0]] = p
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)


def _propagate_partial(node, part, types):
    """Known entries of small 1-D integer results (shape vectors) when only some are known."""
    op = node.op_type
    if op == "Shape":
        t = types.get(node.input[0])
        if t is None or t[1] is None:
            return None
        dims = [d if isinstance(d, int) else None for d in t[1]]
        start = get_attr(node, "start", 0)
        end = get_attr(node, "end", None)
        dims = dims[start:end] if end is not None else dims[start:]
        return dims, np.dtype(np.int64), False
    if op == "Size":
        t = types.get(node.input[0])
        if t is None or t[1] is None or not all(isinstance(d, int) for d in t[1]):
            return None
        return [int(math.prod(t[1]))], np.dtype(np.int64), True
    if op in ("Identity", "Cast"):
        p = part(node.input[0])
        if p is None:
            return None
        dtype = p[1]
        if op == "Cast":
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(get_attr(node, "to")))
            if not np.issubdtype(dtype, np.integer):
                return None
        return p[0], dtype, p[2]
    if op == "Gather":
        p = part(node.input[0])
        idx = part(node.input[1])
        if p is None or idx is None or p[2] or get_attr(node, "axis", 0) != 0:
            return None
        n = len(p[0])
        try:
            entries = [p[0][i if i >= 0 else i + n] for i in idx[0]]
        except IndexError:
            return None
        return entries, p[1], idx[2]
    if op == "Unsqueeze":
        p = part(node.input[0])
        if p is None or not p[2]:
            return None
        return p[0], p[1], False
    if op == "Squeeze":
        p = part(node.input[0])
        if p is None or p[2] or len(p[0]) != 1:
            return None
        return p[0], p[1], True
    if op == "Concat":
        parts = [part(i) for i in node.input]
        if any(p is None or p[2] for p in parts):
            return None
        return [e for p in parts for e in p[0]], parts[0][1], False
    if op == "Slice":
        p = part(node.input[0])
        if p is None or p[2]:
            return None
        args = [part(i) if i else None for i in node.input[1:]]
        if args[0] is None or args[1] is None:
            return None
        if len(args) > 2 and node.input[3] and (args[2] is None or args[2][0] not in ([0], [-1])):
            return None
        step = 1
        if len(args) > 3 and node.input[4]:
            if args[3] is None:
                return None
            step = args[3][0][0]
        return p[0][slice(args[0][0][0], args[1][0][0], step)], p[1], False
    return None


def _prune(m: onnx.ModelProto, outputs: Sequence[str]) -> None:
    g = m.graph
    needed = set(outputs)
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(all_inputs(node))  # with the names used inside subgraphs
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


def _set_outputs(m: onnx.ModelProto, outputs: Sequence[str]) -> None:
    g = m.graph
    types = value_types(m)
    existing = {o.name: o for o in g.output}
    new = []
    for name in dict.fromkeys(outputs):
        if name in existing:
            new.append(existing[name])
        elif name in types:
            elem, dims = types[name]
            new.append(helper.make_tensor_value_info(name, elem, dims))
        else:
            new.append(helper.make_empty_tensor_value_info(name))
    del g.output[:]
    g.output.extend(new)


# ------------------------------------------------------------------------------------- explicit pads
def _explicit_pads(m: onnx.ModelProto) -> None:
    types = value_types(m)
    inits = {t.name: t for t in m.graph.initializer}

    def kernel_of(node, w_index):
        k = get_attr(node, "kernel_shape")
        if k is not None:
            return list(k)
        w = node.input[w_index] if len(node.input) > w_index else ""
        if w in types and types[w][1] is not None and all(isinstance(d, int) for d in types[w][1]):
            return list(types[w][1][2:])
        if w in inits:
            return list(inits[w].dims[2:])
        return None

    for node in m.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        op = node.op_type
        auto = get_attr(node, "auto_pad", "NOTSET")
        if op in _CONV_OPS or op in _POOL_OPS:
            if auto == "NOTSET":
                continue
            k = kernel_of(node, 3 if op == "QLinearConv" else 1)
            x = types.get(node.input[0])
            if k is None:
                continue
            n = len(k)
            if auto == "VALID":
                pads = [0] * (2 * n)
            else:
                if x is None or x[1] is None or not all(isinstance(d, int) for d in x[1][-n:]):
                    continue  # unknown spatial size: leave it, rules that need pads will say so
                ins = x[1][-n:]
                s = list(get_attr(node, "strides", [1] * n))
                d = list(get_attr(node, "dilations", [1] * n))
                begin, end = [], []
                for i in range(n):
                    out = -(-ins[i] // s[i])
                    total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - ins[i])
                    small = total // 2
                    if auto == "SAME_UPPER":
                        begin.append(small)
                        end.append(total - small)
                    else:
                        begin.append(total - small)
                        end.append(small)
                pads = begin + end
            del_attr(node, "auto_pad")
            set_attr(node, "pads", pads)
        elif op == "ConvTranspose":
            out_shape = get_attr(node, "output_shape")
            if out_shape is None and auto not in ("SAME_UPPER", "SAME_LOWER", "VALID"):
                continue
            k = kernel_of(node, 1)
            x = types.get(node.input[0])
            if k is None:
                continue
            n = len(k)
            if out_shape is None and auto == "VALID":
                del_attr(node, "auto_pad")
                set_attr(node, "pads", [0] * (2 * n))
                continue
            if x is None or x[1] is None or not all(isinstance(d, int) for d in x[1][-n:]):
                continue
            ins = x[1][-n:]
            s = list(get_attr(node, "strides", [1] * n))
            d = list(get_attr(node, "dilations", [1] * n))
            op_pad = list(get_attr(node, "output_padding", [0] * n))
            target = list(out_shape)[-n:] if out_shape is not None else [i * st for i, st in zip(ins, s)]
            begin, end = [], []
            for i in range(n):
                total = s[i] * (ins[i] - 1) + op_pad[i] + (k[i] - 1) * d[i] + 1 - target[i]
                if total < 0:
                    break
                if auto == "SAME_UPPER":
                    begin.append(total // 2)
                    end.append(total - total // 2)
                else:
                    begin.append(total - total // 2)
                    end.append(total // 2)
            else:
                del_attr(node, "auto_pad")
                del_attr(node, "output_shape")
                set_attr(node, "pads", begin + end)


# ------------------------------------------------------------------------------------ shape recovery
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
