"""Precision transforms that make a model differentiable in float32.

* :func:`to_float32` — a float16 (or bfloat16) model as an equivalent float32 graph: weights, constants,
  casts, inputs/outputs and value_info are converted. Gradients are then built in float32.
* :func:`dequantize` — an int8/uint8 model (QDQ format or QLinear* operators) as a float graph with the
  same structure: weights are dequantized to float initializers, integer arithmetic becomes float
  Conv/MatMul/Add/..., and every quantized activation becomes a *fake-quantized* float value:
  ``Clip`` to the quantizer's range ``[scale*(qmin - zp), scale*(qmax - zp)]``, then
  ``scale * Round(x / scale)``. The clipping matters: quantizers fold activations into it (ReLU6 is a
  zero point of 0 with scale 6/255). The ``Round`` nodes are marked (:data:`STE_MARK`) and the
  differentiator passes gradients straight through them (the straight-through estimator of
  quantization-aware training), so gradients flow while the forward scores stay those of the
  quantized model. ``rounding="drop"`` gives a plain float network instead (Clip only). The copy is
  labelled in ``metadata_props`` (``blackbox.precision``), and :data:`ORIGINAL_NAMES` maps its float
  tensors back to the quantized tensors they stand for.

Pure ONNX -> ONNX, no ONNX Runtime inside.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from .autodiff.errors import AGNOSTIC_HINT
from .onnx_utils import (DEFAULT_DOMAINS, STE_MARK, ConstantValues, FreshNames, all_inputs, default_opset,
                         get_attr, outer_references, value_types)

_HALF = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
# metadata key of a dequantized copy: JSON {float tensor: [quantized tensor, its op]} (see Layer.tensor)
ORIGINAL_NAMES = "blackbox.original_names"
DEQUANTIZED_PREFIX = "dq/"  # the names the float copy makes up
_MS = "com.microsoft"


# ---------------------------------------------------------------------------------------- to_float32
def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a float16/bfloat16 model (initializers, constants, casts, I/O, value_info)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _graph_to_float32(m.graph)
    for f in m.functions:
        for node in f.node:
            _node_to_float32(node)
    m.metadata_props.add(key="blackbox.precision", value="float16-as-float32")
    return m


def _tensor_to_float32(t: onnx.TensorProto) -> onnx.TensorProto:
    if t.data_type not in _HALF:
        return t
    arr = numpy_helper.to_array(t).astype(np.float32)
    return numpy_helper.from_array(arr, t.name)


def _type_to_float32(tp: onnx.TypeProto) -> None:
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        if tp.tensor_type.elem_type in _HALF:
            tp.tensor_type.elem_type = TensorProto.FLOAT
    elif which == "sequence_type":
        _type_to_float32(tp.sequence_type.elem_type)
    elif which == "optional_type":
        _type_to_float32(tp.optional_type.elem_type)


def _node_to_float32(node: onnx.NodeProto) -> None:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            a.t.CopyFrom(_tensor_to_float32(a.t))
        elif a.type == onnx.AttributeProto.TENSORS:
            for i, t in enumerate(a.tensors):
                a.tensors[i].CopyFrom(_tensor_to_float32(t))
        elif a.type == onnx.AttributeProto.GRAPH:
            _graph_to_float32(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sg in a.graphs:
                _graph_to_float32(sg)
        elif a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype", "output_dtype") \
                and a.i in _HALF:
            a.i = TensorProto.FLOAT


def _graph_to_float32(g: onnx.GraphProto) -> None:
    for i, t in enumerate(g.initializer):
        g.initializer[i].CopyFrom(_tensor_to_float32(t))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        _type_to_float32(vi.type)
    for node in g.node:
        _node_to_float32(node)


# ---------------------------------------------------------------------------------------- dequantize
_QRANGE = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}

# Ops that commute with an affine, increasing dequantization (x -> s*(x - zp), s > 0): they are
# re-run on the float values. Integer outputs (MaxPool indices, shapes) keep their names.
_PASS_THROUGH = frozenset(
    {
        "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
        "GatherElements", "Split", "Concat", "MaxPool", "GlobalMaxPool", "Expand", "Tile",
        "DepthToSpace", "SpaceToDepth", "Resize", "Shape", "Size", "ReduceMax", "ReduceMin",
    }
)


# (domain, op type) -> the _Dequantizer method that rewrites such a node (filled by @_handles)
_HANDLERS: dict[tuple[str, str], Callable[..., None]] = {}


def _handles(*op_types: str, domain: str = "") -> Callable:
    """Register the decorated method as the rewrite of ``op_types`` in ``domain`` ("" = default)."""

    def register(fn: Callable) -> Callable:
        for op in op_types:
            _HANDLERS[(domain, op)] = fn
        return fn

    return register


class _Dequantizer:
    """One pass over the graph in order: each node goes to its handler, which emits float nodes."""

    def __init__(self, model: onnx.ModelProto, rounding: str = "straight_through"):
        self.model = model
        self.rounding = rounding
        g = model.graph
        self.opset = default_opset(model)
        self.const = ConstantValues(g)  # const(name): an initializer's array (new ones included), else None
        # quantized activation name -> (float name, scale, zero point, quantized numpy dtype)
        self.floated: dict[str, tuple[str, float, int, np.dtype]] = {}
        # integer accumulator (ConvInteger/MatMulInteger output) -> float tensor holding its value
        self.acc_float: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.names = FreshNames(g, DEQUANTIZED_PREFIX)
        self.producers = {out: node.op_type for node in g.node for out in node.output}
        self._type_cache: dict[str, tuple[int, list | None]] | None = None

    # ------------------------------------------------------------------------------------ helpers
    def fresh(self, hint: str) -> str:
        return self.names.fresh(hint)

    def add_init(self, arr: np.ndarray, hint: str, name: str | None = None) -> str:
        name = name or self.fresh(hint)
        self.const.add(name, arr)
        self.new_inits.append(numpy_helper.from_array(arr, name))
        return name

    def emit(self, op, inputs, outputs=None, domain="", **attrs) -> str:
        outputs = outputs or [self.fresh(op)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh(op), domain=domain,
                                           **attrs))
        return outputs[0]

    def error(self, node, why: str) -> ModelError:
        return ModelError(
            f"cannot build a float copy of the quantized model at {node.op_type} node "
            f"{node.name or node.output[0]!r}: {why}; {AGNOSTIC_HINT}"
        )

    def qparams(self, node, scale: str, zp: str, qdtype: np.dtype | None = None):
        s = self.const(scale)
        if s is None:
            raise self.error(node, "scale computed at run time")
        z = self.const(zp)
        if z is None:
            z = np.zeros((), dtype=qdtype or np.uint8)
        return s, z

    def dequant_const(self, node, q: np.ndarray, s: np.ndarray, z: np.ndarray, axis: int) -> np.ndarray:
        if s.size > 1:
            shape = [1] * q.ndim
            shape[axis % q.ndim] = -1
            s = s.reshape(shape)
            z = z.reshape(shape)
        return ((q.astype(np.int64) - z.astype(np.int64)) * s.astype(np.float64)).astype(np.float32)

    def float_of(self, node, name: str, scale: str, zp: str, axis: int = 1) -> str:
        """Float tensor for a quantized input: a dequantized constant or a floated activation."""
        if name in self.floated:
            return self.floated[name][0]
        q = self.const(name)
        if q is not None:
            s, z = self.qparams(node, scale, zp, q.dtype)
            return self.add_init(self.dequant_const(node, q, s, z, axis), "w")
        raise self.error(node, f"input {name!r} is not a statically quantized tensor")

    def requantize(self, node, value: str, out: str, scale: str, zp: str,
                   qdtype: np.dtype | None = None) -> None:
        """``out`` (quantized) is represented by Clip(value) at the quantizer's range."""
        s, z = self.qparams(node, scale, zp, qdtype)
        if s.size != 1 or z.size != 1:
            raise self.error(node, "per-axis quantization of an activation")
        qd = np.dtype(qdtype) if qdtype is not None else z.dtype
        if qd not in _QRANGE:
            raise self.error(node, f"quantized type {qd}")
        lo, hi = _QRANGE[qd]
        sv, zv = float(s.reshape(-1)[0]), int(z.reshape(-1)[0])
        lo_f, hi_f = np.float32(sv * (lo - zv)), np.float32(sv * (hi - zv))
        name = self.fresh(f"{out}_float")
        clip_out = self.fresh(f"{out}_clip") if self.rounding == "straight_through" else name
        if self.opset >= 11:
            self.emit("Clip", [value, self.add_init(lo_f, "lo"), self.add_init(hi_f, "hi")],
                      [clip_out])
        else:
            self.emit("Clip", [value], [clip_out], min=float(lo_f), max=float(hi_f))
        if self.rounding == "straight_through":
            # s * round(clip(x) / s) == s * (saturate(round(x / s) + zp) - zp): the quantizer's
            # value exactly (the clip bounds are whole steps from zero). Round is marked so the
            # differentiator passes the gradient straight through it.
            scale = self.add_init(np.float32(sv), "scale")
            q = self.emit("Div", [clip_out, scale])
            r = self.fresh(f"{out}_round")
            self.nodes.append(helper.make_node("Round", [q], [r], name=self.fresh(STE_MARK),
                                               doc_string=STE_MARK))
            self.emit("Mul", [r, scale], [name])
        self.floated[out] = (name, sv, zv, qd)

    # --------------------------------------------------------------------------------------- walk
    def run(self) -> onnx.ModelProto:
        """Rewrite every node, then make the graph's outputs, initializers and opsets match."""
        g, m = self.model.graph, self.model
        for node in g.node:
            self.visit(node)
        outputs = [self._float_output(o) for o in g.output]
        del g.output[:]
        g.output.extend(outputs)
        del g.node[:]
        g.node.extend(self.nodes)
        g.initializer.extend(self.new_inits)
        del g.value_info[:]
        self._drop_unused()
        m.metadata_props.add(key="blackbox.precision", value=f"dequantized-{self.rounding.replace('_', '-')}")
        m.metadata_props.add(key=ORIGINAL_NAMES, value=json.dumps(self.original_names()))
        return m

    def original_names(self) -> dict[str, list[str]]:
        """float tensor -> [the quantized tensor it stands for, the op that made that tensor]: so a user
        can name (and read) the layers of the model they gave, not of its float copy."""
        return {float_name: [quantized, self.producers.get(quantized, "")]
                for quantized, (float_name, *_rest) in self.floated.items()}

    def _float_output(self, o: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
        """A quantized graph output becomes its float value under the same name."""
        if o.name not in self.floated:
            return o
        self.emit("Identity", [self.floated[o.name][0]], [o.name])
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
        return vi

    def _drop_unused(self) -> None:
        """Drop what nothing uses any more (quantized weights, zero points, their opset imports)."""
        m, g = self.model, self.model.graph
        used = {i for n in g.node for i in all_inputs(n)} | {o.name for o in g.output}
        keep = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep)
        inputs = [i for i in g.input if i.name in used or i.name not in self.const.tensors]
        del g.input[:]
        g.input.extend(inputs)
        domains = {n.domain for n in g.node}
        ops = [o for o in m.opset_import if o.domain in DEFAULT_DOMAINS or o.domain in domains]
        del m.opset_import[:]
        m.opset_import.extend(ops)

    def visit(self, node: onnx.NodeProto) -> None:
        """Rewrite one node through its handler (:data:`_HANDLERS`), or :meth:`other` for ops without one."""
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        handler = _HANDLERS.get((domain, node.op_type), _Dequantizer.other)
        handler(self, node, list(node.input) + [""] * 9)

    # ----------------------------------------------------------------------------------- handlers
    @_handles("QuantizeLinear")
    def quantize_linear(self, node, ins) -> None:
        x, scale, zp = ins[0], ins[1], ins[2]
        if get_attr(node, "block_size", 0):
            raise self.error(node, "blocked quantization")
        out_dtype = get_attr(node, "output_dtype", 0)
        qd = (np.dtype(helper.tensor_dtype_to_np_dtype(out_dtype)) if out_dtype else None)
        xv = self.const(x)
        if xv is None:
            self.requantize(node, x, node.output[0], scale, zp, qd)
            return
        # a weight quantized in the graph: keep it as a quantized constant
        s, z = self.qparams(node, scale, zp, qd)
        qd = qd or z.dtype
        lo, hi = _QRANGE[np.dtype(qd)]
        axis = get_attr(node, "axis", 1)
        if s.size > 1:
            shape = [1] * xv.ndim
            shape[axis % xv.ndim] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        q = np.clip(np.rint(xv / s) + z.astype(np.int64), lo, hi).astype(qd)
        self.add_init(q, "q", name=node.output[0])

    @_handles("DequantizeLinear")
    def dequantize_linear(self, node, ins) -> None:
        x, scale, zp = ins[0], ins[1], ins[2]
        if get_attr(node, "block_size", 0):
            raise self.error(node, "blocked quantization")
        if x in self.floated:
            self.emit("Identity", [self.floated[x][0]], [node.output[0]])
            return
        xv = self.const(x)
        if xv is None:
            raise self.error(node, f"input {x!r} is not a statically quantized tensor")
        s, z = self.qparams(node, scale, zp, xv.dtype)
        self.add_init(self.dequant_const(node, xv, s, z, get_attr(node, "axis", 1)), "w", name=node.output[0])

    @_handles("DynamicQuantizeLinear")
    def dynamic_quantize_linear(self, node, ins) -> None:
        raise self.error(node, "dynamic quantization is not supported")

    def float_bias(self, node, bias: str, a_scale: str, b_scale: str, hint: str) -> str:
        """An int32 bias at scale ``a_scale * b_scale`` (per-channel ``b_scale``) as a float constant."""
        b, sa, sb = self.const(bias), self.const(a_scale), self.const(b_scale)
        if b is None or sa is None or sb is None:
            raise self.error(node, "bias or scales computed at run time")
        return self.add_init((b.astype(np.float64) * sa.astype(np.float64).reshape(-1)[0]
                              * sb.astype(np.float64).reshape(-1)).astype(np.float32), hint)

    @_handles("QLinearConv")
    def qlinear_conv(self, node, ins) -> None:
        xf = self.float_of(node, ins[0], ins[1], ins[2])
        wf = self.float_of(node, ins[3], ins[4], ins[5], axis=0)
        conv_in = [xf, wf]
        if ins[8]:
            conv_in.append(self.float_bias(node, ins[8], ins[1], ins[4], "b"))
        y = self.emit("Conv", conv_in, **_attrs(node))
        self.requantize(node, y, node.output[0], ins[6], ins[7])

    @_handles("QLinearMatMul")
    def qlinear_matmul(self, node, ins) -> None:
        a = self.float_of(node, ins[0], ins[1], ins[2], axis=-1)
        b = self.float_of(node, ins[3], ins[4], ins[5], axis=-1)
        y = self.emit("MatMul", [a, b])
        self.requantize(node, y, node.output[0], ins[6], ins[7])

    @_handles("QGemm", domain=_MS)
    def qgemm(self, node, ins) -> None:
        # Y = alpha * A'B' + C, C an int32 bias at scale a_scale * b_scale; Y is quantized with
        # (y_scale, y_zero_point) when given, else float
        trans_b = int(get_attr(node, "transB", 0))
        a = self.float_of(node, ins[0], ins[1], ins[2], axis=0)
        b = self.float_of(node, ins[3], ins[4], ins[5], axis=0 if trans_b else -1)
        gemm_in = [a, b]
        if ins[6]:
            gemm_in.append(self.float_bias(node, ins[6], ins[1], ins[4], "c"))
        attrs = dict(alpha=float(get_attr(node, "alpha", 1.0)), transA=int(get_attr(node, "transA", 0)),
                     transB=trans_b)
        if ins[7]:
            y = self.emit("Gemm", gemm_in, **attrs)
            self.requantize(node, y, node.output[0], ins[7], ins[8])
        else:
            self.emit("Gemm", gemm_in, [node.output[0]], **attrs)

    @_handles("QLinearAdd", "QLinearMul", domain=_MS)
    def qlinear_binary(self, node, ins) -> None:
        a = self.float_of(node, ins[0], ins[1], ins[2])
        b = self.float_of(node, ins[3], ins[4], ins[5])
        y = self.emit(node.op_type[len("QLinear"):], [a, b])
        self.requantize(node, y, node.output[0], ins[6], ins[7])

    @_handles("QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
              domain=_MS)
    def qlinear_unary(self, node, ins) -> None:
        x = self.float_of(node, ins[0], ins[1], ins[2])
        attrs = _attrs(node)
        channels_last = attrs.pop("channels_last", 0)
        base = node.op_type[len("QLinear"):]
        if channels_last and base == "GlobalAveragePool":
            rank = self._rank(ins[0])
            y = self.emit("ReduceMean", [x], axes=list(range(1, rank - 1)), keepdims=1) \
                if self.opset < 18 else self.emit(
                    "ReduceMean", [x, self.add_init(np.arange(1, rank - 1, dtype=np.int64), "ax")],
                    keepdims=1)
        elif channels_last:
            raise self.error(node, "channels_last pooling")
        else:
            y = self.emit(base, [x], **attrs)
        self.requantize(node, y, node.output[0], ins[3], ins[4])

    @_handles("QLinearConcat", domain=_MS)
    def qlinear_concat(self, node, ins) -> None:
        parts = [self.float_of(node, node.input[i], node.input[i + 1], node.input[i + 2])
                 for i in range(2, len(node.input), 3)]
        y = self.emit("Concat", parts, axis=get_attr(node, "axis"))
        self.requantize(node, y, node.output[0], node.input[0], node.input[1])

    @_handles("Cast")
    def cast(self, node, ins) -> None:
        if node.input[0] in self.acc_float:  # the float value of an integer accumulator
            self.emit("Identity", [self.acc_float[node.input[0]]], [node.output[0]])
        else:
            self.other(node, ins)

    def other(self, node, ins) -> None:
        """Ops without a handler: kept as they are, or re-run on the float values when they touch
        quantized activations and commute with dequantization (:data:`_PASS_THROUGH`)."""
        touched = [i for i in node.input if i in self.floated]
        if any(i in self.acc_float for i in node.input):
            raise self.error(node, "integer accumulator used by something other than Cast")
        if any(i in self.floated or i in self.acc_float for i in outer_references(node)):
            raise self.error(node, "a subgraph reads a quantized tensor")
        if not touched:
            self.nodes.append(node)
            return
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in _PASS_THROUGH:
            raise self.error(node, "operator on quantized values has no float equivalent here")
        params = {self.floated[i][1:] for i in touched}
        if len(params) > 1:
            raise self.error(node, "inputs with different quantization parameters")
        qparams = params.pop()
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k, i in enumerate(new.input):
            if i in self.floated:
                new.input[k] = self.floated[i][0]
        in_types = {self._elem(i) for i in touched}
        for k, o in enumerate(new.output):
            if o and self._elem(o) in in_types | {0}:
                if node.op_type in ("Shape", "Size") or (node.op_type == "MaxPool" and k == 1):
                    continue
                name = self.fresh(f"{o}_float")
                new.output[k] = name
                self.floated[o] = (name, *qparams)
        self.nodes.append(new)

    @_handles("ConvInteger", "MatMulInteger")
    def integer_op(self, node, ins) -> None:
        """ConvInteger/MatMulInteger on a statically quantized activation and constant weights."""
        a, b, azp, bzp = ins[0], ins[1], ins[2], ins[3]
        if a not in self.floated:
            raise self.error(node, "input is not a statically quantized activation")
        fa, sa, za, _ = self.floated[a]
        azv = self.const(azp)
        if (int(azv.reshape(-1)[0]) if azv is not None else 0) != za:
            raise self.error(node, "zero point differs from the quantizer's")
        bq = self.const(b)
        if bq is None:
            raise self.error(node, "weights computed at run time")
        bz = self.const(bzp)
        bz = np.zeros((), bq.dtype) if bz is None else bz
        axis = 0 if node.op_type == "ConvInteger" else -1
        if bz.size > 1:
            shape = [1] * bq.ndim
            shape[axis % bq.ndim] = -1
            bz = bz.reshape(shape)
        wf = self.add_init((bq.astype(np.int64) - bz.astype(np.int64)).astype(np.float32), "w")
        # (a_q - za) = a_float / sa for a statically quantized activation (up to rounding)
        xa = self.emit("Div", [fa, self.add_init(np.float32(sa), "s")])
        op = "Conv" if node.op_type == "ConvInteger" else "MatMul"
        self.acc_float[node.output[0]] = self.emit(op, [xa, wf], **_attrs(node))

    def _types(self) -> dict[str, tuple[int, list | None]]:
        if self._type_cache is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
            except Exception:
                inferred = self.model
            self._type_cache = value_types(inferred)
        return self._type_cache

    def _elem(self, name: str) -> int:
        return self._types().get(name, (0, None))[0]

    def _rank(self, name: str) -> int:
        dims = self._types().get(name, (0, None))[1]
        if dims is None:
            raise ModelError(f"the rank of {name!r} is unknown")
        return len(dims)


def _attrs(node: onnx.NodeProto) -> dict:
    """All attributes of ``node`` (to copy them onto its float replacement)."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the model contains quantization operators (QDQ or QLinear*/…Integer)."""
    quant = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
             "QLinearMatMul", "ConvInteger", "MatMulInteger"}
    return any(n.op_type in quant or n.op_type.startswith("QLinear") for n in model.graph.node)


def dequantize(model: onnx.ModelProto, *, rounding: str = "straight_through") -> onnx.ModelProto:
    """A float copy of an int8/uint8 model: weights dequantized, activations straight-through.

    Supports QuantizeLinear/DequantizeLinear (QDQ), QLinearConv, QLinearMatMul, the com.microsoft
    QGemm/QLinearAdd/QLinearMul/QLinearGlobalAveragePool/QLinearAveragePool/QLinearSigmoid/
    QLinearLeakyRelu/QLinearConcat, and ConvInteger/MatMulInteger fed by a static QuantizeLinear
    (their int32 result must go through a Cast). Ops that commute with dequantization (reshapes,
    slicing, max pooling, ...) are re-run on the float values. Raises ``ModelError`` naming the node
    for anything else, e.g. dynamic quantization.

    ``rounding``:
        ``"straight_through"`` (default) keeps the quantizer's rounding in the forward pass
        (``Clip -> Div -> Round -> Mul``, fake quantization) so scores match the quantized model up
        to an occasional one-step rounding difference, and marks each ``Round`` so the
        differentiator passes gradients straight through it (the straight-through estimator).
        ``"drop"`` leaves only the ``Clip``: a plain float network (drifts further from the
        quantized scores; on MobileNetV2-int8 enough to flip some top-1 classes).
    """
    if rounding not in ("straight_through", "drop"):
        raise ValueError(f"rounding must be 'straight_through' or 'drop', not {rounding!r}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if len(m.functions):
        m = onnx.inliner.inline_local_functions(m)
    return _Dequantizer(m, rounding).run()


__all__ = ["DEQUANTIZED_PREFIX", "ORIGINAL_NAMES", "STE_MARK", "dequantize", "is_quantized", "to_float32"]
