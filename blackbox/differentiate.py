"""Gradients of a loaded model: the bridge between :class:`~blackbox.model.Model` and the autodiff graphs.

The model is differentiated as it would be scored: the same wrapper (layout, dtype) and score head
(probability, logit or raw) as the forward graph, then ``blackbox.graph.autodiff`` adds the backward
pass in standard ONNX ops. float16 models are differentiated in float32; int8 models through a
dequantized float copy (straight-through), and every explanation says so in its notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import runtime
from .graph.autodiff import PLAIN, SEED_NAME, RuleSet, build_gradient_model
from .graph.compose import SCORES, X, forward_graph

if TYPE_CHECKING:
    from .model import Model


@dataclass
class Gradients:
    """One backward pass over a batch: scores [N, K], d(seed . score)/dx [N, C, H, W], and per tap
    (value, gradient), both [N, ...]."""

    scores: np.ndarray
    grad: np.ndarray
    taps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class GradientEngine:
    """Builds (and caches) gradient sessions for one model."""

    def __init__(self, model: "Model"):
        self.model = model
        self._runners: dict[tuple, runtime.Runner] = {}

    @property
    def notes(self) -> list[str]:
        """What the differentiated graph is (a dequantized or float32 copy), for every explanation."""
        return self.model.precision_notes

    # ------------------------------------------------------------------ running
    def _runner(self, score: str, taps: tuple[str, ...], rules: RuleSet) -> runtime.Runner:
        key = (score, taps, rules)  # a RuleSet is hashable and equal sets build equal graphs
        if key not in self._runners:
            image, output = self.model.float_specs()
            forward = forward_graph(self.model.float_graph(), image, output, dict(self.model.constants), score=score)
            built = build_gradient_model(forward, input_name=X, score_name=SCORES, taps=taps, rules=rules)
            session = runtime.make_session(built.model, self.model.device)
            batch = max(1, self.model.batch_size() // 2) if self.model.batchable else 1
            self._runners[key] = runtime.Runner(session, self.model.device, batch, list(built.output_names))
        return self._runners[key]

    def run(self, x: np.ndarray, seed: np.ndarray, *, score: str, taps: Sequence[str] = (),
            rules: RuleSet = PLAIN, progress=None) -> Gradients:
        """Scores, input gradients and tap values/gradients for a batch ``x`` [N, C, H, W] and ``seed`` [N, K].
        ``rules``: the backward pass's rule set (plain gradients, guided backprop, LRP, ...). ``taps``:
        layer names (:meth:`Model.layers`); the result's ``taps`` are keyed by them."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        seed = np.asarray(seed, dtype=np.float32)
        if seed.ndim == 1:
            seed = np.broadcast_to(seed, (len(x), seed.shape[0]))
        taps = tuple(dict.fromkeys(taps))
        tensors = self.model.tensors(taps)  # layer names -> the float graph's tensors
        runner = self._runner(score, tensors, rules)
        outputs = runner.run({}, {X: x, SEED_NAME: np.ascontiguousarray(seed)}, progress=progress)
        scores, grad = outputs[0], outputs[1]
        runtime.check_finite(scores, "inputs")
        tapped = {name: (outputs[2 + 2 * i], outputs[3 + 2 * i]) for i, name in enumerate(taps)}
        return Gradients(scores=scores, grad=grad, taps=tapped)

    def one_hot(self, target: int, n: int = 1, scale: float = 1.0) -> np.ndarray:
        seed = np.zeros((n, self.model.num_classes), np.float32)
        seed[:, target] = scale
        return seed
