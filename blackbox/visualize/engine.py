"""One gradient graph per objective: the model's float copy, the objective's nodes, the backward pass.

The objective (``objectives.emit``) is appended to the forward graph the explanations use (same
layout and dtype wrapper, same score head), the graph is cut to what the objective reads (a channel of
an early layer never runs the rest of the network), and ``graph.autodiff`` differentiates it with
the seed fixed to 1. Only the ops between the input and the tensors the objective reads need gradient
rules; forward-only views (``Model.activations``) need none.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import runtime
from ..graph.autodiff import PLAIN, SEED_NAME, RuleSet, build_gradient_model
from ..graph.compose import X, forward_graph
from ..graph.onnx_utils import all_inputs
from .objectives import OBJECTIVE, WEIGHTS, Objective, emit, layer_shape

if TYPE_CHECKING:
    from ..model import Model


def objective_graph(model: "Model", objective: Objective) -> onnx.ModelProto:
    """x [N, C, H, W] (internal layout, float32) -> OBJECTIVE [N, 1], pruned to what it reads."""
    image, output = model.float_specs()
    head = "logit" if objective.score == "log_odds" else objective.score  # log-odds are taken of the logits
    forward = forward_graph(model.float_graph(), image, output, dict(model.constants), score=head)
    nodes, inits = emit(objective, model)
    g = forward.graph
    g.node.extend(nodes)
    g.initializer.extend(inits)
    if objective.needs_weights:
        (layer,) = {t.layer for t in objective.terms if t.kind == "weighted"}
        g.input.append(helper.make_tensor_value_info(WEIGHTS, TensorProto.FLOAT,
                                                     ["N", *layer_shape(model, layer)]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OBJECTIVE, TensorProto.FLOAT, ["N", 1]))
    _keep_ancestors(g, OBJECTIVE)
    return forward


def _keep_ancestors(g: onnx.GraphProto, output: str) -> None:
    """Drop the nodes (and initializers) the output does not depend on."""
    producer = {o: n for n in g.node for o in n.output}
    needed, stack, keep = set(), [output], set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None:
            keep.add(id(node))
            stack.extend(all_inputs(node))
    nodes = [n for n in g.node if id(n) in keep]
    del g.node[:]
    g.node.extend(nodes)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name in needed or i.name == X]
    del g.input[:]
    g.input.extend(inputs)


@dataclass
class Step:
    """One evaluation: the objective per sample [N] and its gradient with respect to x [N, C, H, W]."""

    values: np.ndarray
    grad: np.ndarray


class ObjectiveGradients:
    """Builds (once) and runs the gradient session of an objective under a rule set."""

    def __init__(self, model: "Model", objective: Objective, rules: RuleSet = PLAIN):
        self.model = model
        self.objective = objective
        self.rules = rules
        built = build_gradient_model(objective_graph(model, objective), input_name=X, score_name=OBJECTIVE,
                                     rules=rules)
        self._outputs = [built.score_name, built.grad_name]
        self._session = runtime.make_session(built.model, model.device)

    def __call__(self, x: np.ndarray, weights: np.ndarray | None = None) -> Step:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        n = len(x)
        batched = {X: x, SEED_NAME: np.ones((n, 1), np.float32)}
        if self.objective.needs_weights:
            if weights is None or len(weights) != n:
                raise ValueError("a weighted objective needs one weight tensor per sample")
            batched[WEIGHTS] = np.ascontiguousarray(weights, dtype=np.float32)
        # samples of a coupled objective (diversity) must meet in one call
        batch = n if self.objective.couples_batch or not self.model.batchable else max(1, self.model.batch_size() // 2)
        if not self.model.batchable and n > 1 and self.objective.couples_batch:
            raise ValueError("this model runs one sample at a time; diversity needs a batchable model")
        runner = runtime.Runner(self._session, self.model.device, batch, self._outputs)
        values, grad = runner.run({}, batched)
        runtime.check_finite(values, "the objective")
        return Step(values=values[:, 0].astype(np.float64), grad=grad)


_CACHE: "weakref.WeakKeyDictionary[Model, dict]" = weakref.WeakKeyDictionary()


def gradients_for(model: "Model", objective: Objective, rules: RuleSet = PLAIN) -> ObjectiveGradients:
    """The (cached) gradient session of ``objective`` on ``model``."""
    sessions = _CACHE.setdefault(model, {})
    key = (objective, rules)
    if key not in sessions:
        sessions[key] = ObjectiveGradients(model, objective, rules)
    return sessions[key]


def unit_gradients(model: "Model", x: np.ndarray, layer: str, weights: np.ndarray, *,
                   rules: RuleSet = PLAIN) -> np.ndarray:
    """``d sum(A * weights) / dx`` [N, C, H, W] for activations ``A`` of ``layer``: with a one-hot
    ``weights`` per image, the projection of one unit's activation back to pixel space (``rules``
    :data:`~blackbox.graph.autodiff.DECONVNET` for Zeiler & Fergus's DeconvNet)."""
    from .objectives import weighted

    return gradients_for(model, weighted(layer), rules)(x, weights).grad


__all__ = ["ObjectiveGradients", "Step", "gradients_for", "objective_graph", "unit_gradients"]
