"""Reverse-mode differentiation of an ONNX graph into a graph of standard ONNX ops.

The walk is generic; everything op-specific lives in ``rules/`` and reaches the walk through the
registry. Given a (prepared) forward graph, the score tensor and the input to differentiate with
respect to, :func:`build_gradient_model` runs five steps:

1. prepare: normalise the graph (``prepare.py``) and check the input, score and taps;
2. select: the *differentiable* tensors are the float tensors that depend on the input (or a tap) and
   that the score depends on. Dependence counts the names a node's subgraphs read from the outer scope
   (an ``If`` whose branches use ``x`` depends on ``x``), so control flow on the path is refused rather
   than cut. Integer/bool edges (shapes, indices, masks) and initializers are never differentiated;
3. seed: ``d(objective)/d(score)`` is a graph input shaped like the score with a dynamic batch, so the
   objective is ``sum(score * seed)`` and one gradient graph serves every target and batch size;
4. reverse walk: nodes in reverse topological order; each node with an incoming gradient asks its rule
   (from the :class:`~.registry.RuleSet` in effect) for the gradients of its inputs; several
   contributions to one tensor are summed;
5. outputs and finalize: score, input gradient and tap values/gradients become graph outputs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ...errors import ModelError, ParameterError
from ..onnx_utils import DEFAULT_DOMAINS, FLOAT_TYPES, all_inputs, value_types
from .context import GradContext
from .errors import CONTROL_FLOW, op_label, unsupported
from .prepare import prepare, topo_sort
from .registry import RuleSet
from .rules.rectifiers import PLAIN

SEED_NAME = "seed"
GRAD_SUFFIX = "__grad"


@dataclass(frozen=True)
class GradientModel:
    """A forward+backward graph and the names of its inputs and outputs.

    Inputs: the original model inputs (``input_names[:-1]``) and ``seed_name`` (float, shaped like the
    score, dynamic batch). Outputs, in order: ``score_name``, ``grad_name`` (d sum(score*seed) / d
    input), then for each tap its value (``tap_value_names[i]``) and gradient (``tap_grad_names[i]``).
    ``rule_set``: the name of the :class:`~.registry.RuleSet` it was built with.
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
    rule_set: str = "plain"

    @property
    def output_names(self) -> tuple[str, ...]:
        out = [self.score_name, self.grad_name]
        for v, g in zip(self.tap_value_names, self.tap_grad_names):
            out += [v, g]
        return tuple(out)


def build_gradient_model(
    model: onnx.ModelProto,
    *,
    input_name: str,
    score_name: str,
    taps: Sequence[str] = (),
    rules: RuleSet = PLAIN,
) -> GradientModel:
    """Differentiate ``sum(score * seed)`` with respect to ``input_name`` (and the taps).

    Args:
        model: forward model; ``score_name`` is a float tensor of any shape (typically [N, K]).
        input_name: the float graph input to differentiate with respect to.
        score_name: the tensor to differentiate (a graph output or any intermediate tensor).
        taps: intermediate float tensors whose value and gradient are also returned (Grad-CAM).
        rules: the :class:`~.registry.RuleSet` in effect: :data:`~.rules.rectifiers.PLAIN` (ordinary
            gradients), another rectifier (``GUIDED``, ``DECONVNET``, ``REDIRECTED``) or rule overrides
            (LRP).

    Returns:
        A :class:`GradientModel`; its model has inputs ``[*original inputs, "seed"]`` and outputs
        ``[score_name, f"{input_name}__grad", (tap, f"{tap}__grad") for each tap]``.

    Raises:
        UnsupportedOpError: a node on an input -> score path has no rule, or is control flow.
        ModelError: the input or score cannot be found or is not float.
    """
    if not isinstance(rules, RuleSet):
        raise ParameterError(f"rules must be a RuleSet (e.g. blackbox.graph.autodiff.PLAIN), not {rules!r}")
    taps = tuple(dict.fromkeys(taps))
    m = _prepare_checked(model, input_name, score_name, taps)
    nodes, needs = _select(m, input_name, score_name, taps)
    ctx = GradContext(m, needs, rules)
    acc = _Contributions(ctx)
    seed = _seed(ctx, acc, m, input_name, score_name)
    _reverse_walk(ctx, nodes, acc)
    outputs = _Outputs(ctx, acc, value_types(m), {i.name for i in m.graph.input} | _initializer_names(m))
    outputs.collect(input_name, score_name, taps)
    return _finalize(m, nodes, ctx, seed, outputs, input_name, score_name, taps, rules)


# ------------------------------------------------------------------------------- 1. prepare, check
def _prepare_checked(model: onnx.ModelProto, input_name: str, score_name: str,
                     taps: tuple[str, ...]) -> onnx.ModelProto:
    """The normalised graph, once the input, score and taps are known to be float tensors of it."""
    src_inputs = [i.name for i in model.graph.input]
    if input_name not in src_inputs:
        raise ModelError(f"the model has no input named {input_name!r} (inputs: {src_inputs})")
    m = prepare(model, outputs=[score_name, *taps])
    types = value_types(m)
    for name, what in [(input_name, "input"), (score_name, "score"), *((t, "tap") for t in taps)]:
        t = types.get(name)
        if t is None:
            raise ModelError(f"{what} {name!r} is not a tensor of the model")
        if t[0] not in FLOAT_TYPES:
            raise ModelError(f"{what} {name!r} is not a float tensor")
    return m


def _initializer_names(m: onnx.ModelProto) -> set[str]:
    return {t.name for t in m.graph.initializer}


# ------------------------------------------------------------------------------------- 2. select
def _select(m: onnx.ModelProto, input_name: str, score_name: str,
            taps: tuple[str, ...]) -> tuple[list[onnx.NodeProto], set[str]]:
    """(nodes in topological order, the tensors that want a gradient: float, input -> score)."""
    g = m.graph
    inits = _initializer_names(m)
    types = value_types(m)
    nodes = topo_sort(list(g.node), [i.name for i in g.input] + list(inits))
    # forward: float tensors that depend on the input or a tap (a tensor of unknown type counts as
    # float, so a node nothing could infer fails loudly instead of silently cutting the gradient)
    active = {input_name, *taps}
    for n in nodes:
        if any(i in active for i in all_inputs(n)):
            active.update(o for o in n.output if o and types.get(o, (0,))[0] in (*FLOAT_TYPES, 0))
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
            stack.extend(all_inputs(n))
    return nodes, (active & ancestors) - inits


# --------------------------------------------------------------------------------------- 3. seed
class _Contributions:
    """Gradient contributions per forward tensor, summed (once) when first read."""

    def __init__(self, ctx: GradContext):
        self.ctx = ctx
        self.parts: dict[str, list[str]] = defaultdict(list)
        self.totals: dict[str, str] = {}

    def add(self, name: str, grad: str) -> None:
        self.parts[name].append(grad)

    def total(self, name: str) -> str | None:
        if name not in self.totals:
            parts = self.parts.get(name)
            if not parts:
                return None
            self.totals[name] = parts[0] if len(parts) == 1 else self.ctx.emit(
                "Add" if len(parts) == 2 else "Sum", parts)
        return self.totals[name]


def _seed(ctx: GradContext, acc: _Contributions, m: onnx.ModelProto, input_name: str,
          score_name: str) -> onnx.ValueInfoProto:
    """The seed input (shaped like the score, batch dynamic), recorded as the score's gradient."""
    types = value_types(m)
    seed = ctx.reserve(SEED_NAME)
    acc.add(score_name, seed)
    elem, dims = types[score_name]
    dims = list(dims) if dims is not None else None
    if dims:
        in_dims = types[input_name][1]
        dims[0] = in_dims[0] if in_dims and isinstance(in_dims[0], str) else "N"
    return helper.make_tensor_value_info(seed, elem, dims)


# ------------------------------------------------------------------------------- 4. reverse walk
def _reverse_walk(ctx: GradContext, nodes: Sequence[onnx.NodeProto], acc: _Contributions) -> None:
    """Visit nodes from the score back to the input, asking each node's rule for input gradients.
    Every node on the path has its rule looked up first, in forward order, so a model is refused at
    its first node without one (not at a later rule that trips over what that node left unknown)."""
    on_path = [n for n in nodes if any(ctx.needs(o) for o in n.output)
               and any(ctx.needs(i) for i in all_inputs(n))]
    rules = [_rule_for(ctx, n) for n in on_path]
    for n, fn in zip(reversed(on_path), reversed(rules)):
        grads = [acc.total(o) if ctx.needs(o) else None for o in n.output]
        if all(gr is None for gr in grads):
            continue
        ctx.node = n
        result = fn(ctx, n, grads)
        ctx.node = None
        if result is None:
            raise ModelError(f"gradient rule for {n.op_type} returned None")
        for name, gr in zip(n.input, result):
            if gr is not None and ctx.needs(name):
                acc.add(name, gr)


def _rule_for(ctx: GradContext, node: onnx.NodeProto):
    """The node's rule; refuses nodes without one and dependence through subgraphs (which no rule
    sees: a rule returns gradients for the explicit inputs only)."""
    if node.op_type in CONTROL_FLOW and node.domain in DEFAULT_DOMAINS:
        raise unsupported(node)
    fn = ctx.rules.get(op_label(node))
    if fn is None:
        raise unsupported(node)
    hidden = [i for i in all_inputs(node)[len([i for i in node.input if i]):] if ctx.needs(i)]
    if hidden:
        raise unsupported(node, f"its subgraph reads {hidden[0]!r}")
    return fn


# ------------------------------------------------------------------------------------ 5. outputs
@dataclass
class _Outputs:
    """The output value infos and the Identity nodes that name them."""

    ctx: GradContext
    acc: _Contributions
    types: dict
    sources: set[str]  # graph inputs and initializers: cannot be graph outputs under their own name
    infos: list[onnx.ValueInfoProto] = field(default_factory=list)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    tap_values: list[str] = field(default_factory=list)
    tap_grads: list[str] = field(default_factory=list)

    def _info(self, name: str, like: str) -> None:
        elem, dims = self.types[like]
        self.infos.append(helper.make_tensor_value_info(name, elem, dims))
        self.taken.add(name)

    def _identity(self, src: str, name: str) -> None:
        self.nodes.append(helper.make_node("Identity", [src], [name], name=self.ctx.fresh("output")))

    def gradient(self, of: str) -> str:
        """Output ``of + GRAD_SUFFIX``: the summed gradient of ``of`` (zeros when nothing reached it)."""
        total = self.acc.total(of)
        name = of + GRAD_SUFFIX
        self._identity(total if total is not None else self.ctx.zeros_like(of), name)
        self._info(name, of)
        return name

    def value(self, of: str) -> str:
        """Output the forward value ``of`` (renamed when its own name cannot be an output)."""
        name = of
        if of in self.sources or of in self.taken:
            name = of + "__value"
            self._identity(of, name)
        self._info(name, of)
        return name

    def collect(self, input_name: str, score_name: str, taps: tuple[str, ...]) -> None:
        self._info(score_name, score_name)
        self.gradient(input_name)
        for t in taps:
            self.tap_values.append(self.value(t))
            self.tap_grads.append(self.gradient(t))


def _finalize(m: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], ctx: GradContext,
              seed: onnx.ValueInfoProto, outputs: _Outputs, input_name: str, score_name: str,
              taps: tuple[str, ...], rules: RuleSet) -> GradientModel:
    """The forward nodes, the backward nodes and the output nodes as one model."""
    g = m.graph
    inits = _initializer_names(m)
    graph_inputs = [i for i in g.input if i.name not in inits]
    graph = helper.make_graph(
        list(nodes) + ctx.nodes + outputs.nodes,
        (g.name or "model") + "_grad",
        graph_inputs + [seed],
        outputs.infos,
        initializer=list(g.initializer) + ctx.initializers,
    )
    out = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="blackbox")
    out.ir_version = m.ir_version
    return GradientModel(
        model=out,
        input_name=input_name,
        input_names=tuple(i.name for i in graph_inputs) + (seed.name,),
        seed_name=seed.name,
        score_name=score_name,
        grad_name=input_name + GRAD_SUFFIX,
        taps=taps,
        tap_value_names=tuple(outputs.tap_values),
        tap_grad_names=tuple(outputs.tap_grads),
        rule_set=rules.name,
    )


__all__ = ["GRAD_SUFFIX", "SEED_NAME", "GradientModel", "build_gradient_model"]
