"""What feature visualisation maximises: objectives as small ONNX expressions over named tensors.

After Lucent's ``objectives``: each objective names the tensor it reads and gives one number per sample;
objectives add and scale (``channel("mixed4a", 97) + 100 * diversity("mixed4a", n)``). Here an objective
is a list of weighted terms that :func:`emit` appends to the model's forward graph as ONNX nodes, so a
single gradient graph returns the objective and its gradient with respect to the input in one pass,
with the batch still dynamic.

Every linear read-out (a class score, a channel mean, one neuron, a direction) is one ``MatMul`` of the
flattened tensor with a constant column, and the others use only ``Mul``/``Sub``/``MatMul``/
``Transpose``/``Reshape``/``Sqrt``/``Div``: ops that exist with the same signature in every opset and
have gradient rules, so an objective never depends on the model's opset. Values are *maximised*
(Lucent's objectives are losses; its ``channel`` is our ``channel`` with the sign flipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import helper

from ..errors import ParameterError
from ..graph.compose import PREFIX, SCORES, _Builder

if TYPE_CHECKING:
    from ..model import Model

OBJECTIVE = PREFIX + "objective"
WEIGHTS = PREFIX + "weights"  # the batched input of a `weighted` term: d objective / d tensor, given


@dataclass(frozen=True)
class Term:
    """One weighted part of an objective. ``kind`` says what it computes from ``layer`` (a layer name,
    or None for the class scores); ``args`` are its settings (a hashable tuple of pairs)."""

    kind: str
    layer: str | None
    args: tuple = ()
    weight: float = 1.0

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)


@dataclass(frozen=True)
class Objective:
    """A weighted sum of terms, maximised. ``score``: the score space class terms read."""

    terms: tuple[Term, ...]
    score: str = "logit"
    description: str = field(default="", compare=False)

    def __add__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms, _score(self, other), f"{self.description} + {other.description}")

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-1.0) * other

    def __mul__(self, factor: float) -> "Objective":
        terms = tuple(replace(t, weight=t.weight * float(factor)) for t in self.terms)
        return Objective(terms, self.score, f"{float(factor):g} * ({self.description})")

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return (-1.0) * self

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.layer for t in self.terms if t.layer is not None))

    @property
    def couples_batch(self) -> bool:
        """Whether samples interact (diversity): the whole batch must then run in one call."""
        return any(t.kind == "diversity" for t in self.terms)

    @property
    def needs_weights(self) -> bool:
        return any(t.kind == "weighted" for t in self.terms)


def _score(a: Objective, b: Objective) -> str:
    reads = [o.score for o in (a, b) if any(t.kind == "class" for t in o.terms)]
    if len(set(reads)) > 1:
        raise ParameterError("an objective can read class scores in one score space only")
    return reads[0] if reads else a.score


def _one(kind: str, layer: str | None, description: str, score: str = "logit", **args: Any) -> Objective:
    return Objective((Term(kind, layer, tuple(sorted(args.items()))),), score, description)


# ------------------------------------------------------------------------------------- constructors
CLASS_SCORES = ("logit", "log_odds", "probability", "raw")


def class_score(target: int, score: str = "logit") -> Objective:
    """The score of class ``target``: ``logit`` (the network's logits, read before a final Softmax or an
    int8 output quantizer), ``log_odds`` (``log(p / (1 - p))`` of those logits: the logit minus the
    log-sum-exp of the others, so the class must beat its neighbours), ``probability`` or ``raw`` (the
    score head's output)."""
    if score not in CLASS_SCORES:
        raise ParameterError(f"unknown score {score!r}: use one of {', '.join(CLASS_SCORES)}")
    return _one("class", None, f"class {target} ({score})", score, target=int(target))


def channel(layer: str, unit: int) -> Objective:
    """The mean of channel ``unit`` of ``layer`` over all positions (Lucent's ``channel``)."""
    return _one("channel", layer, f"{layer}:{unit}", unit=int(unit))


def neuron(layer: str, unit: int, y: int | None = None, x: int | None = None) -> Objective:
    """One activation: channel ``unit`` at (``y``, ``x``), the centre by default (Lucent's ``neuron``)."""
    return _one("neuron", layer, f"{layer}:{unit}@({y},{x})", unit=int(unit), y=y, x=x)


def direction(layer: str, vector: np.ndarray) -> Objective:
    """The mean over positions of the dot product of the channel vector with ``vector`` [C]."""
    vec = tuple(float(v) for v in np.asarray(vector, dtype=np.float64).ravel())
    return _one("direction", layer, f"{layer}·direction", vector=vec)


def dream(layer: str) -> Objective:
    """Mean squared activation of ``layer`` (deep dream: amplify whatever the layer already sees)."""
    return _one("dream", layer, f"dream({layer})")


def inversion(layer: str, target: np.ndarray) -> Objective:
    """``-||A - A0||^2 / ||A0||^2``: the negated relative feature distance to ``target`` (one sample's
    activations A0), Mahendran & Vedaldi's data term."""
    target = np.asarray(target, dtype=np.float32)
    return _one("inversion", layer, f"invert({layer})", target=_Array(target))


def diversity(layer: str, n: int) -> Objective:
    """Minus the summed cosine similarity of each sample's Gram matrix of ``layer`` with the other ``n - 1``
    samples', over ``n`` (summed over samples it is Lucent's ``diversity``, Lucid's with the sign flipped:
    higher is more diverse; add it to an objective)."""
    return _one("diversity", layer, f"diversity({layer})", n=int(n))


def weighted(layer: str) -> Objective:
    """``sum(A * W)`` with ``W`` a batched input shaped like ``A``: a vector-Jacobian product, e.g. one
    activation per image for DeconvNet projections."""
    return _one("weighted", layer, f"weighted({layer})")


class _Array:
    """A numpy array that can sit in a frozen, hashable term (hashed by content)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self._key = (array.shape, array.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Array) and self._key == other._key

    def __lt__(self, other: "_Array") -> bool:  # sorted() over args
        return id(self) < id(other)


# ------------------------------------------------------------------------------------------ emission
class _Emitter(_Builder):
    """The wrapper's node builder, with names of its own (``blackbox/obj_...``: never those of the forward
    graph's builder) and the two shapes every term needs."""

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}obj_{hint}_{self.count}"

    def flat(self, tensor: str) -> str:
        return self.op("Reshape", [tensor, self.constant("flat", np.array([0, -1], np.int64))], "flat")

    def dot(self, tensor: str, column: np.ndarray) -> str:
        """[N, ...] -> [N, 1]: the flattened tensor times a constant column."""
        return self.op("MatMul", [self.flat(tensor), self.constant("w", column.reshape(-1, 1).astype(np.float32))],
                       "dot")


def layer_shape(model: "Model", name: str) -> tuple[int, ...]:
    shape = model.layer(name).shape
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ParameterError(f"layer {name!r} has a size shape inference cannot tell ({shape}); pick another layer")
    return tuple(shape)


def _unit_column(model: "Model", term: Term) -> np.ndarray:
    """The constant column of a linear term over the flattened per-sample tensor. A spatial layer's units
    are those of its maps [C, h, w] (a channel-last map's or a token sequence's channel c is its last
    axis; a channel's mean is over the patch tokens, not the class token), written back in its layout."""
    entry = model.layer(term.layer)
    shape = layer_shape(model, term.layer)
    if not entry.spatial:
        return _map_column(term, shape)
    return entry.unmaps(_map_column(term, entry.map_shape)[None])[0]


def _map_column(term: Term, shape: tuple[int, ...]) -> np.ndarray:
    name = term.layer
    column = np.zeros(shape, np.float64)
    if term.kind == "direction":
        vector = np.asarray(term.arg("vector"))
        if len(shape) < 1 or shape[0] != len(vector):
            raise ParameterError(f"the direction has {len(vector)} values but layer {name!r} has {shape[0]} channels")
        spatial = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return np.broadcast_to(vector.reshape((-1,) + (1,) * (len(shape) - 1)), shape) / spatial
    unit = term.arg("unit")
    if not 0 <= unit < shape[0]:
        raise ParameterError(f"channel {unit} is out of range for layer {name!r}: it has {shape[0]} "
                             f"(0..{shape[0] - 1})")
    if term.kind == "channel":
        column[unit] = 1.0 / max(1, int(np.prod(shape[1:])))
        return column
    index = [unit]
    for axis, key in zip(shape[1:], ("y", "x")):
        value = term.arg(key)
        value = axis // 2 if value is None else int(value)
        if not 0 <= value < axis:
            raise ParameterError(f"neuron position {key}={value} is outside layer {name!r} ({axis} positions)")
        index.append(value)
    column[tuple(index)] = 1.0
    return column


@dataclass(frozen=True)
class _Source:
    """Where class terms read: a tensor of logits (or the score head), optionally recomputed from an int8
    model's head, and whether the term is the log-odds rather than the logit."""

    tensor: str
    head: tuple | None = None  # (features, W [D, K], b [K]): logits = features @ W + b
    log_odds: bool = False
    notes: tuple[str, ...] = ()


def _class_source(model: "Model", score: str) -> _Source:
    """``logit`` means the network's own logits, read where they are still unsaturated: before a final
    Softmax (a model that outputs probabilities: its log-probability stops at 0 once p = 1, where the
    picture is still noise) and before an int8 output's fake quantization. An int8 model's logits all
    stop at one cap (the quantizer's range: 28.7 on MobileNetV2-int8), so there the class must win by
    its margin: the term is the log-odds ``log(p / (1 - p)) = l_k - logsumexp_{j != k} l_j`` of the
    unquantized logits, which keeps growing where ``log p`` stops; when the product is quantized inside
    the head too (QLinearMatMul + QLinearAdd), the logits are recomputed from the classifier's input
    with its dequantized weights. Other score spaces read the score head's output."""
    if score not in ("logit", "log_odds"):
        return _Source(SCORES)
    graph = model.float_graph()
    producer = {o: n for n in graph.graph.node for o in n.output}
    name, quantized, softmax = model.output.name, False, False
    for _ in range(8):
        name = _through(producer, name, ("Identity", "Reshape", "Flatten", "Squeeze"))
        inner = unquantized(producer, name)
        if inner is not None:
            name, quantized = inner, True
            continue
        node = producer.get(name)
        if node is not None and node.op_type == "Softmax" and _last_axis_softmax(node, model):
            name, softmax = node.input[0], True
        break
    if quantized:
        head = _quantized_head(model, name)
        return _Source(name, head, True, ("int8 model: the class term is the log-odds log(p / (1 - p)) of the "
                                          "logits before the output's quantization" +
                                          (" (recomputed from the classifier's input with its dequantized "
                                           "weights)" if head else "") + ": the int8 logits stop at the "
                                          "quantizer's range, where a picture is still noise",))
    if softmax:
        return _Source(name, log_odds=score == "log_odds",
                       notes=(f"the class term reads the logits before the model's final Softmax ({name!r})",))
    return _Source(SCORES, log_odds=score == "log_odds")


def _emit_class(e: "_Emitter", model: "Model", target: int, score: str) -> str:
    column = np.zeros(model.num_classes)
    column[target] = 1.0
    source = _class_source(model, score)
    logits = source.tensor
    if source.head is not None:
        features, weights, bias = source.head
        logits = e.op("Add", [e.op("MatMul", [e.flat(features), e.constant("head", weights.astype(np.float32))],
                                   "head"), e.constant("bias", bias.astype(np.float32))], "logits")
    if not source.log_odds:
        return e.dot(logits, column)
    flat = e.flat(logits)
    log_p = e.dot(e.op("LogSoftmax", [flat], "logp", axis=1), column)
    rest = e.dot(e.op("Softmax", [flat], "p", axis=1), 1.0 - column)
    tiny = e.constant("tiny", np.array(1e-30, np.float32))
    return e.op("Sub", [log_p, e.op("Log", [e.op("Add", [rest, tiny], "rest")], "log_rest")], "log_odds")


def class_note(model: "Model", objective: Objective) -> list[str]:
    """What a class term really reads, when that is not the plain logit (for ``Visualization.notes``)."""
    if not any(t.kind == "class" for t in objective.terms):
        return []
    return list(_class_source(model, objective.score).notes)


def _quantized_head(model: "Model", logits: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(features, W [D, K], b [K]) when an int8 model's logits are ``features @ W + b`` with the product
    fake-quantized in between (QLinearMatMul + QLinearAdd), else None."""
    from onnx import numpy_helper

    graph = model.float_graph().graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: t for t in graph.initializer}
    add = producer.get(logits)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    bias_name = next((i for i in add.input if i in consts), None)
    other = next((i for i in add.input if i not in consts), None)
    inner = unquantized(producer, other) if other else None
    matmul = producer.get(inner) if inner else None
    if bias_name is None or matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in consts:
        return None
    weights = numpy_helper.to_array(consts[matmul.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(consts[bias_name]).astype(np.float64).reshape(-1)
    if weights.ndim != 2 or weights.shape[1] != model.num_classes or bias.size != model.num_classes:
        return None
    return matmul.input[0], weights, bias


def _through(producer: dict, name: str, ops: tuple[str, ...]) -> str:
    node = producer.get(name)
    while node is not None and node.op_type in ops:
        name = node.input[0]
        node = producer.get(name)
    return name


def _last_axis_softmax(node, model: "Model") -> bool:
    """A Softmax over the class axis (axis 1 or -1 of the output; 4-D caffe outputs [N, K, 1, 1] too)."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis in (1, -1)


def unquantized(producer: dict, name: str) -> str | None:
    """The value a dequantized copy's fake quantization (Clip -> Div -> Round -> Mul) of ``name`` starts
    from; None when ``name`` is not fake-quantized."""
    node = producer.get(name)
    for op in ("Mul", "Round", "Div", "Clip"):
        if node is None or node.op_type != op:
            return None
        if op == "Clip":
            return node.input[0]
        node = producer.get(node.input[0])
    return None


def _emit_term(e: _Emitter, model: "Model", term: Term, num_classes: int, score: str) -> str:
    """Nodes computing one term, [N, 1]; returns its tensor."""
    if term.kind == "class":
        return _emit_class(e, model, term.arg("target"), score)
    tensor = model.layer(term.layer).tensor
    if term.kind in ("channel", "neuron", "direction"):
        return e.dot(tensor, _unit_column(model, term))
    size = int(np.prod(layer_shape(model, term.layer)))
    if term.kind == "dream":
        return e.dot(e.op("Mul", [tensor, tensor], "sq"), np.full(size, 1.0 / size))
    if term.kind == "inversion":
        target = term.arg("target").array.astype(np.float32)
        if target.shape != layer_shape(model, term.layer):
            raise ParameterError(f"inversion target of shape {target.shape} does not match layer {term.layer!r}")
        diff = e.op("Sub", [tensor, e.constant("target", target[None])], "diff")
        norm = float(np.sum(target.astype(np.float64) ** 2)) or 1.0
        return e.dot(e.op("Mul", [diff, diff], "sq"), np.full(size, -1.0 / norm))
    if term.kind == "weighted":
        return e.dot(e.op("Mul", [tensor, WEIGHTS], "weighted"), np.ones(size))
    if term.kind == "diversity":
        return _emit_diversity(e, model, term, tensor)
    raise ParameterError(f"unknown objective term {term.kind!r}")


def _emit_diversity(e: _Emitter, model: "Model", term: Term, tensor: str) -> str:
    shape = layer_shape(model, term.layer)
    n = term.arg("n")
    entry = model.layer(term.layer)
    channels = entry.channels if entry.spatial else shape[0]
    if entry.spatial and entry.layout != "nchw":  # channel-last maps and tokens: channels on the last axis
        positions = e.op("Reshape", [tensor, e.constant("shape", np.array([0, -1, channels], np.int64))], "cols")
        rows = e.op("Transpose", [positions], "rows", perm=[0, 2, 1])
    else:
        rows = e.op("Reshape", [tensor, e.constant("shape", np.array([0, channels, -1], np.int64))], "rows")
    gram = e.op("MatMul", [rows, e.op("Transpose", [rows], "rowsT", perm=[0, 2, 1])], "gram")
    flat = e.flat(gram)
    norm = e.op("Sqrt", [e.dot(e.op("Mul", [flat, flat], "sq"), np.ones(channels * channels))], "norm")
    eps = e.constant("eps", np.array(1e-12, np.float32))
    unit = e.op("Div", [flat, e.op("Add", [norm, eps], "norm_eps")], "unit")
    similarity = e.op("MatMul", [unit, e.op("Transpose", [unit], "unitT", perm=[1, 0])], "similarity")
    total = e.op("MatMul", [similarity, e.constant("ones", np.ones((n, 1), np.float32))], "total")
    others = e.op("Sub", [total, e.constant("self", np.array(1.0, np.float32))], "others")
    return e.op("Mul", [others, e.constant("scale", np.array(-1.0 / max(1, n), np.float32))], "diverse")


def emit(objective: Objective, model: "Model") -> tuple[list, list]:
    """(nodes, initializers) that compute ``OBJECTIVE`` [N, 1] from the forward graph's tensors."""
    if not objective.terms:
        raise ParameterError("the objective is empty")
    e = _Emitter()
    parts = []
    for term in objective.terms:
        value = _emit_term(e, model, term, model.num_classes, objective.score)
        if term.weight != 1.0:
            value = e.op("Mul", [value, e.constant("weight", np.array(term.weight, np.float32))], "weighted")
        parts.append(value)
    total = parts[0]
    for part in parts[1:]:
        total = e.op("Add", [total, part], "sum")
    e.nodes.append(helper.make_node("Identity", [total], [OBJECTIVE], name=e.name("out")))
    return e.nodes, e.inits


__all__ = ["OBJECTIVE", "WEIGHTS", "Objective", "Term", "channel", "class_note", "class_score", "direction", "diversity", "dream",
           "emit", "inversion", "layer_shape", "neuron", "weighted"]
