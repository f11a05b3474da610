"""Reverse-mode differentiation of an ONNX graph into a graph of standard ONNX ops.

The walk is generic; everything op-specific lives in ``rules/``. Given a (prepared) forward graph, the
score tensor and the input to differentiate with respect to:

1. the *differentiable* tensors are the float tensors that depend on the input (or a tap) through float
   edges and that the score depends on; integer/bool edges (shapes, indices, masks) and initializers
   are never differentiated, nor is anything off the input -> score paths;
2. nodes are visited in reverse topological order from the score; each node with an incoming gradient
   asks its rule for the gradients of its inputs; several contributions to one tensor are summed;
3. the seed ``d(objective)/d(score)`` is a graph input shaped like the score with a dynamic batch, so
   the objective is ``sum(score * seed)`` and one gradient graph serves every target and batch size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import ModelError, ParameterError, UnsupportedOpError
from .prepare import FLOAT_TYPES, default_opset, prepare, topo_sort, value_types
from .rules import RULES, Rule

RELU_MODES = ("plain", "guided", "deconvnet")
SEED_NAME = "seed"
GRAD_SUFFIX = "__grad"
PREFIX = "grad/"
_AGNOSTIC = "occlusion, rise, lime, kernel_shap"


@dataclass(frozen=True)
class GradientModel:
    """A forward+backward graph and the names of its inputs and outputs.

    Inputs: the original model inputs (``input_names[:-1]``) and ``seed_name`` (float, shaped like the
    score, dynamic batch). Outputs, in order: ``score_name``, ``grad_name`` (d sum(score*seed) / d
    input), then for each tap its value (``tap_value_names[i]``) and gradient (``tap_grad_names[i]``).
    """

    model: onnx.ModelProto
    input_name: str
    input_names: tuple[str, ...]
    seed_name: str
    score_name: str
    grad_name: str
    taps: tuple[str, ...]
    tap_value_names: tuple[str, ...]
    tap_grad_names: tuple[str, ...]
    relu_mode: str = "plain"

    @property
    def output_names(self) -> tuple[str, ...]:
        out = [self.score_name, self.grad_name]
        for v, g in zip(self.tap_value_names, self.tap_grad_names):
            out += [v, g]
        return tuple(out)


def unsupported(node: onnx.NodeProto, detail: str = "") -> UnsupportedOpError:
    """The one-line error for a node the differentiator cannot handle."""
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    what = f" ({detail})" if detail else ""
    return UnsupportedOpError(
        f"no gradient rule for op {op}{what} at node {node.name or '<unnamed>'!r} "
        f"(output {node.output[0] if node.output else '?'!r}); gradient methods cannot run on this "
        f"model, use a model-agnostic method instead: {_AGNOSTIC}"
    )


class GradContext:
    """What a rule may use: names, emission, shapes/dtypes/constants of forward tensors, helpers."""

    def __init__(self, model: onnx.ModelProto, needs: set[str], relu_mode: str):
        self.opset = default_opset(model)
        self.relu_mode = relu_mode
        self.types = value_types(model)
        self._inits = {t.name: t for t in model.graph.initializer}
        self._values: dict[str, np.ndarray] = {}
        self._needs = needs
        self._used = {n for node in model.graph.node for n in (*node.input, *node.output)}
        self._used.update(i.name for i in model.graph.input)
        self._used.update(self._inits)
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        self.uses: dict[str, int] = defaultdict(int)
        for n in model.graph.node:
            for i in n.input:
                self.uses[i] += 1
        for o in model.graph.output:
            self.uses[o.name] += 1
        self.rules: Mapping[str, Rule] = RULES  # the rules in effect (overrides included)
        # gradient tensor -> forward tensor: the gradient is already zero wherever that tensor is <= 0
        # (set by a rule that can mask cheaply, read by the Relu rule to skip its own mask)
        self.zero_where_nonpositive: dict[str, str] = {}
        self._count = 0
        self._shape_cache: dict[str, str] = {}
        self._const_cache: dict[tuple, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.node: onnx.NodeProto | None = None  # the forward node whose rule is running

    # ---------------------------------------------------------------------------------- names, emit
    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{PREFIX}{hint}_{self._count}"
            if name not in self._used:
                self._used.add(name)
                return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
             **attrs) -> str | list[str]:
        """Append a node; returns its output name (one output) or names (``outputs`` > 1 or a list)."""
        if isinstance(outputs, int):
            names = [self.fresh(op_type) for _ in range(outputs)]
            single = outputs == 1
        else:
            names = list(outputs)
            single = False
        attrs = {k: v for k, v in attrs.items() if v is not None}
        where = self.node.name if self.node is not None and self.node.name else ""
        node = helper.make_node(op_type, list(inputs), names,
                                name=self.fresh(f"{where}/{op_type}" if where else op_type), **attrs)
        self.nodes.append(node)
        return names[0] if single else names

    def const(self, value, dtype=None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 64:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), hint="ints")

    def scalar(self, value: float, like: str) -> str:
        """A rank-0 constant with the element type of the forward tensor ``like``."""
        return self.const(np.asarray(value, dtype=self.np_dtype(like)), hint="scalar")

    # --------------------------------------------------------------------------------- forward info
    def needs(self, name: str) -> bool:
        """Whether the forward tensor ``name`` wants a gradient (differentiable and on a path)."""
        return bool(name) and name in self._needs

    def dtype(self, name: str) -> int:
        t = self.types.get(name)
        if t is None or not t[0]:
            raise ModelError(f"the type of tensor {name!r} could not be inferred")
        return t[0]

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(name)))

    def is_float(self, name: str) -> bool:
        t = self.types.get(name)
        return t is not None and t[0] in FLOAT_TYPES

    def shape(self, name: str) -> list | None:
        """Inferred dims (int fixed, str symbolic, None unknown) or None when the rank is unknown."""
        t = self.types.get(name)
        return None if t is None else t[1]

    def rank(self, name: str) -> int:
        s = self.shape(name)
        if s is None:
            v = self.value(name)
            if v is not None:
                return v.ndim
            raise self.error(f"rank of {name!r} unknown")
        return len(s)

    def static_shape(self, name: str) -> list[int] | None:
        s = self.shape(name)
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return list(s)

    def static_dims(self, name: str, axes: Sequence[int]) -> list[int]:
        """Fixed sizes of ``axes`` of ``name``; raises the node's UnsupportedOpError when unknown."""
        s = self.shape(name)
        out = []
        for a in axes:
            d = None if s is None or a >= len(s) or a < -len(s) else s[a]
            if not isinstance(d, int):
                raise self.error(f"needs a fixed size for axis {a} of {name!r}")
            out.append(d)
        return out

    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer (constant), else None."""
        if not name:
            return None
        if name in self._values:
            return self._values[name]
        t = self._inits.get(name)
        if t is None:
            return None
        v = numpy_helper.to_array(t)
        self._values[name] = v
        return v

    def error(self, detail: str = "") -> UnsupportedOpError:
        assert self.node is not None
        return unsupported(self.node, detail)

    # ------------------------------------------------------------------------------------- helpers
    def shape_of(self, name: str) -> str:
        """``Shape(name)`` as an int64 tensor (a constant when the shape is fixed)."""
        if name not in self._shape_cache:
            s = self.static_shape(name)
            self._shape_cache[name] = self.ints(s) if s is not None else self.emit("Shape", [name])
        return self._shape_cache[name]

    def reshape_like(self, grad: str, like: str) -> str:
        """``grad`` reshaped to the shape of ``like``; a constant target (-1 for the one dynamic dim,
        usually the batch) when possible, which saves a Shape node per reshape at run time."""
        s = self.shape(like)
        if s is not None and sum(not isinstance(d, int) for d in s) == 1 and \
                all(d > 0 for d in s if isinstance(d, int)):
            return self.emit("Reshape", [grad, self.ints([d if isinstance(d, int) else -1 for d in s])])
        return self.emit("Reshape", [grad, self.shape_of(like)])

    def expand_over(self, grad: str, like: str, axes: Sequence[int]) -> str:
        """Broadcast ``grad`` (shaped like ``like`` with size 1 on ``axes``) back to ``like``'s shape. A
        constant target (1 on the other axes) when the sizes of ``axes`` are fixed: no Shape at run time."""
        s = self.shape(like)
        if s is not None and all(isinstance(s[a], int) for a in axes):
            target = [s[a] if a in axes else 1 for a in range(len(s))]
            return self.emit("Expand", [grad, self.ints(target)])
        return self.emit("Expand", [grad, self.shape_of(like)])

    def zeros_like(self, like: str) -> str:
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(like)), "value")
        return self.emit("ConstantOfShape", [self.shape_of(like)], value=zero)

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """``op`` in (ReduceSum, ReduceMean, ReduceMax, ...) over ``axes`` in this opset's form."""
        axes = [int(a) for a in axes]
        as_input = op == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        if as_input:
            return self.emit(op, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.emit(op, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.emit("Unsqueeze", [x, self.ints(sorted(axes))])

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.emit("Squeeze", [x, self.ints(sorted(axes))])

    def unbroadcast(self, grad: str, x: str, y: str) -> str:
        """Sum ``grad`` (shaped like the broadcast result ``y``) down to the shape of input ``x``."""
        sx, sy = self.shape(x), self.shape(y)
        if sx is not None and sy is not None and len(sx) <= len(sy):
            lead = len(sy) - len(sx)
            axes = list(range(lead))
            static = True
            for i, (dx, dy) in enumerate(zip(sx, sy[lead:])):
                if (dx == dy and dx is not None) or (isinstance(dx, int) and dx != 1):
                    continue  # same size, or a fixed size other than 1 (never broadcast)
                if dx == 1:
                    if dy != 1:
                        axes.append(lead + i)
                else:
                    static = False
                    break
            if static:
                if not axes:
                    return grad
                r = self.reduce("ReduceSum", grad, axes, keepdims=True)
                return self.reshape_like(r, x)
        # Decide at run time: sum over every axis where x (left-padded with ones) has size 1.
        gshape = self.emit("Shape", [grad])
        xshape = self.emit("Shape", [x])
        rank_g = self.emit("Shape", [gshape])
        rank_x = self.emit("Shape", [xshape])
        lead = self.emit("Sub", [rank_g, rank_x])
        ones = self.emit("ConstantOfShape", [lead],
                         value=numpy_helper.from_array(np.ones(1, np.int64), "value"))
        padded = self.emit("Concat", [ones, xshape], axis=0)
        mask = self.emit("Equal", [padded, self.ints([1])])
        axes = self.emit("Reshape", [self.emit("NonZero", [mask]), self.ints([-1])])
        r = self.emit("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
        return self.emit("Reshape", [r, xshape])

    def dim_of(self, name: str, axis: int) -> str:
        """Size of ``axis`` of ``name`` as an int64 tensor of shape [1]."""
        s = self.shape(name)
        if s is not None and isinstance(s[axis], int):
            return self.ints([s[axis]])
        r = self.rank(name)
        a = axis % r
        return self.emit("Shape", [name], start=a, end=a + 1)


def _total(ctx: GradContext, contribs: dict[str, list[str]], totals: dict[str, str],
           name: str) -> str | None:
    if name in totals:
        return totals[name]
    parts = contribs.get(name)
    if not parts:
        return None
    if len(parts) == 1:
        out = parts[0]
    elif len(parts) == 2:
        out = ctx.emit("Add", parts)
    else:
        out = ctx.emit("Sum", parts)
    totals[name] = out
    return out


def build_gradient_model(
    model: onnx.ModelProto,
    *,
    input_name: str,
    score_name: str,
    taps: Sequence[str] = (),
    relu_mode: str = "plain",
    rule_overrides: Mapping[str, Rule] | None = None,
) -> GradientModel:
    """Differentiate ``sum(score * seed)`` with respect to ``input_name`` (and the taps).

    Args:
        model: forward model; ``score_name`` is a float tensor of any shape (typically [N, K]).
        input_name: the float graph input to differentiate with respect to.
        score_name: the tensor to differentiate (a graph output or any intermediate tensor).
        taps: intermediate float tensors whose value and gradient are also returned (Grad-CAM).
        relu_mode: ``"plain"``, ``"guided"`` (guided backprop: ReLU passes relu(grad) where the
            forward input was positive) or ``"deconvnet"`` (ReLU passes relu(grad) everywhere).
            Applies to ``Relu`` and to ``Clip`` with a lower bound of 0 (ReLU6).
        rule_overrides: op type -> rule, replacing the registered rule for this call only.

    Returns:
        A :class:`GradientModel`; its model has inputs ``[*original inputs, "seed"]`` and outputs
        ``[score_name, f"{input_name}__grad", (tap, f"{tap}__grad") for each tap]``.

    Raises:
        UnsupportedOpError: a node on an input -> score path has no rule.
        ModelError: the input or score cannot be found or is not float.
    """
    if relu_mode not in RELU_MODES:
        raise ParameterError(f"relu_mode must be one of {', '.join(RELU_MODES)}, not {relu_mode!r}")
    taps = tuple(dict.fromkeys(taps))
    rules = dict(RULES)
    rules.update(rule_overrides or {})

    src_inputs = [i.name for i in model.graph.input]
    if input_name not in src_inputs:
        raise ModelError(f"the model has no input named {input_name!r} (inputs: {src_inputs})")
    m = prepare(model, outputs=[score_name, *taps])
    g = m.graph
    inits = {t.name for t in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    types = value_types(m)

    def check_float(name: str, what: str) -> None:
        t = types.get(name)
        if t is None:
            raise ModelError(f"{what} {name!r} is not a tensor of the model")
        if t[0] not in FLOAT_TYPES:
            raise ModelError(f"{what} {name!r} is not a float tensor")

    check_float(input_name, "input")
    check_float(score_name, "score")
    for t in taps:
        check_float(t, "tap")

    nodes = topo_sort(list(g.node), [i.name for i in g.input] + list(inits))
    # forward: float tensors that depend on the input or a tap through float edges (a tensor of
    # unknown type counts as float, so a node nothing could infer fails loudly instead of silently
    # cutting the gradient)
    active = {input_name, *taps}
    for n in nodes:
        if any(i in active for i in n.input if i):
            active.update(o for o in n.output
                          if o and types.get(o, (0,))[0] in (*FLOAT_TYPES, 0))
    # backward: everything the score depends on
    producer = {o: n for n in nodes for o in n.output if o}
    ancestors: set[str] = set()
    stack = [score_name]
    while stack:
        t = stack.pop()
        if t in ancestors:
            continue
        ancestors.add(t)
        n = producer.get(t)
        if n is not None:
            stack.extend(i for i in n.input if i)
    needs = (active & ancestors) - inits

    ctx = GradContext(m, needs, relu_mode)
    ctx.rules = rules
    seed = SEED_NAME if SEED_NAME not in ctx._used else ctx.fresh(SEED_NAME)
    ctx._used.add(seed)
    contribs: dict[str, list[str]] = defaultdict(list)
    totals: dict[str, str] = {}
    contribs[score_name].append(seed)

    for n in reversed(nodes):
        if not any(o in needs for o in n.output if o):
            continue
        grads = [_total(ctx, contribs, totals, o) if o in needs else None for o in n.output]
        if all(gr is None for gr in grads):
            continue
        if not any(ctx.needs(i) for i in n.input):
            continue
        fn = rules.get(n.op_type) if n.domain in ("", "ai.onnx") else rules.get(
            f"{n.domain}::{n.op_type}")
        if fn is None:
            raise unsupported(n)
        ctx.node = n
        result = fn(ctx, n, grads)
        ctx.node = None
        if result is None:
            raise ModelError(f"gradient rule for {n.op_type} returned None")
        for name, gr in zip(n.input, result):
            if gr is not None and ctx.needs(name):
                contribs[name].append(gr)

    # outputs
    outputs: list[onnx.ValueInfoProto] = []
    final_nodes: list[onnx.NodeProto] = []

    def vi(name: str, like: str) -> onnx.ValueInfoProto:
        elem, dims = types[like]
        return helper.make_tensor_value_info(name, elem, dims)

    def grad_output(of: str, out_name: str) -> None:
        total = _total(ctx, contribs, totals, of)
        if total is None:
            total = ctx.zeros_like(of)
        final_nodes.append(helper.make_node("Identity", [total], [out_name],
                                            name=ctx.fresh("output")))
        outputs.append(vi(out_name, of))

    used_out = {score_name}
    outputs.append(vi(score_name, score_name))
    grad_name = input_name + GRAD_SUFFIX
    grad_output(input_name, grad_name)
    used_out.add(grad_name)
    tap_values, tap_grads = [], []
    src_names = {i.name for i in g.input} | inits
    for t in taps:
        value_name = t
        if t in src_names or t in used_out:
            value_name = t + "__value"
            final_nodes.append(helper.make_node("Identity", [t], [value_name],
                                                name=ctx.fresh("output")))
        outputs.append(vi(value_name, t))
        used_out.add(value_name)
        tg = t + GRAD_SUFFIX
        grad_output(t, tg)
        used_out.add(tg)
        tap_values.append(value_name)
        tap_grads.append(tg)

    # seed: shaped like the score with a dynamic batch
    elem, dims = types[score_name]
    dims = list(dims) if dims is not None else None
    if dims:
        in_dims = types[input_name][1]
        batch = in_dims[0] if in_dims and isinstance(in_dims[0], str) else "N"
        dims[0] = batch
    seed_vi = helper.make_tensor_value_info(seed, elem, dims)

    graph = helper.make_graph(
        list(nodes) + ctx.nodes + final_nodes,
        (g.name or "model") + "_grad",
        list(graph_inputs) + [seed_vi],
        outputs,
        initializer=list(g.initializer) + ctx.initializers,
    )
    out = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="blackbox")
    out.ir_version = m.ir_version
    return GradientModel(
        model=out,
        input_name=input_name,
        input_names=tuple(i.name for i in graph_inputs) + (seed,),
        seed_name=seed,
        score_name=score_name,
        grad_name=grad_name,
        taps=taps,
        tap_value_names=tuple(tap_values),
        tap_grad_names=tuple(tap_grads),
        relu_mode=relu_mode,
    )
