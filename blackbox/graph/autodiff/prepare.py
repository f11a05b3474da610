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
  :func:`blackbox.graph.shape_recovery.recover_shapes`: the graph's shapes are computed for a few concrete batch sizes, and a size
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
from onnx import helper, numpy_helper

from ...errors import ModelError
from ..onnx_utils import (
    MAX_IR_VERSION,
    OWN_IR_VERSION,
    all_inputs,
    default_opset,
    get_attr,
    value_types,
)
from ..shape_recovery import recover_shapes
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
