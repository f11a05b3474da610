"""Gradients of a loaded model: the bridge between :class:`~blackbox.model.Model` and the autodiff graphs.

The model is differentiated as it would be scored: the same wrapper (layout, dtype) and score head
(probability, logit or raw) as the forward graph, then ``blackbox.graph.autodiff`` adds the backward
pass in standard ONNX ops. float16 models are differentiated in float32; int8 models through a
dequantized float copy (straight-through), and every explanation says so in its notes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from . import runtime
from .errors import ModelError
from .graph.autodiff import SEED_NAME, build_gradient_model
from .graph.compose import SCORES, X, forward_graph
from .graph.onnx_utils import dims, elem_type
from .graph.precision import dequantize, is_quantized, to_float32

if TYPE_CHECKING:
    from .model import Model

_SPATIAL_REDUCERS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Flatten", "Reshape"}


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
        self.notes: list[str] = []
        self._float: onnx.ModelProto | None = None
        self._runners: dict[tuple, runtime.Runner] = {}
        self._shapes: dict[str, list] | None = None

    # ------------------------------------------------------------------ the float graph
    def float_graph(self) -> onnx.ModelProto:
        """The model as float32 everywhere (dequantized / up-cast copies when needed)."""
        if self._float is None:
            graph = self.model.graph
            if is_quantized(graph):
                graph = dequantize(graph)
                self.notes.append("int8 model: gradients are those of a dequantized float copy "
                                  "(straight-through rounding), not of the integer kernels")
            if self.model.image.elem_type == TensorProto.FLOAT16 or any(
                    init.data_type == TensorProto.FLOAT16 for init in graph.graph.initializer) or \
                    self.model.output.elem_type == TensorProto.FLOAT16:
                graph = to_float32(graph)
                self.notes.append("float16 model: differentiated in float32")
            self._float = graph
        return self._float

    def _float_specs(self):
        image = replace(self.model.image, elem_type=TensorProto.FLOAT) \
            if self.model.image.elem_type in (TensorProto.FLOAT16, TensorProto.DOUBLE) else self.model.image
        output = replace(self.model.output, elem_type=TensorProto.FLOAT) \
            if self.model.output.elem_type in (TensorProto.FLOAT16, TensorProto.DOUBLE) else self.model.output
        return image, output

    # ------------------------------------------------------------------ layers (for CAM taps)
    def tensor_shapes(self) -> dict[str, list]:
        """Inferred shapes (batch 1) of the float graph's tensors."""
        if self._shapes is None:
            graph = copy.deepcopy(self.float_graph())
            for value in graph.graph.input:
                shape = value.type.tensor_type.shape
                if len(shape.dim) and not shape.dim[0].HasField("dim_value"):
                    shape.dim[0].Clear()
                    shape.dim[0].dim_value = 1
            try:
                inferred = onnx.shape_inference.infer_shapes(graph)
            except Exception:  # noqa: BLE001
                inferred = graph
            shapes = {}
            for value in list(inferred.graph.value_info) + list(inferred.graph.output):
                if elem_type(value) == TensorProto.FLOAT:
                    shapes[value.name] = dims(value)
            self._shapes = shapes
        return self._shapes

    def spatial_layers(self) -> list[str]:
        """Names of 4-D float activations with a spatial extent > 1, in graph order (CAM candidates)."""
        shapes = self.tensor_shapes()
        out = []
        for node in self.float_graph().graph.node:
            for name in node.output:
                shape = shapes.get(name)
                if shape and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]) \
                        and shape[2] * shape[3] > 1:
                    out.append(name)
        return out

    def default_cam_layer(self) -> str:
        """The last spatial activation before global pooling (Grad-CAM's usual target layer)."""
        spatial = set(self.spatial_layers())
        if not spatial:
            raise ModelError("the model has no spatial activation (4-D tensor with height x width > 1) for CAM "
                             "methods; use a pixel-attribution method instead")
        chosen = None
        for node in self.float_graph().graph.node:
            if node.op_type in _SPATIAL_REDUCERS or (node.op_type in ("AveragePool", "MaxPool")):
                for name in node.input[:1]:
                    if name in spatial:
                        chosen = name
        return chosen or self.spatial_layers()[-1]

    # ------------------------------------------------------------------ running
    def _runner(self, score: str, taps: tuple[str, ...], relu_mode: str,
                rule_overrides: Mapping | None, overrides_key: str) -> runtime.Runner:
        key = (score, taps, relu_mode, overrides_key)
        if key not in self._runners:
            image, output = self._float_specs()
            forward = forward_graph(self.float_graph(), image, output, self.model.constants, score=score)
            built = build_gradient_model(forward, input_name=X, score_name=SCORES, taps=taps,
                                         relu_mode=relu_mode, rule_overrides=rule_overrides)
            session = runtime.make_session(built.model, self.model.device)
            batch = max(1, self.model.batch_size() // 2) if self.model.batchable else 1
            self._runners[key] = runtime.Runner(session, self.model.device, batch, list(built.output_names))
        return self._runners[key]

    def run(self, x: np.ndarray, seed: np.ndarray, *, score: str, taps: Sequence[str] = (),
            relu_mode: str = "plain", rule_overrides: Mapping | None = None, overrides_key: str = "",
            progress=None) -> Gradients:
        """Scores, input gradients and tap values/gradients for a batch ``x`` [N, C, H, W] and ``seed`` [N, K]."""
        from .model import _check_finite

        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        seed = np.asarray(seed, dtype=np.float32)
        if seed.ndim == 1:
            seed = np.broadcast_to(seed, (len(x), seed.shape[0]))
        taps = tuple(taps)
        runner = self._runner(score, taps, relu_mode, rule_overrides, overrides_key)
        outputs = runner.run({}, {X: x, SEED_NAME: np.ascontiguousarray(seed)}, progress=progress)
        scores, grad = outputs[0], outputs[1]
        _check_finite(scores, "inputs")
        tapped = {name: (outputs[2 + 2 * i], outputs[3 + 2 * i]) for i, name in enumerate(taps)}
        return Gradients(scores=scores, grad=grad, taps=tapped)

    def one_hot(self, target: int, n: int = 1, scale: float = 1.0) -> np.ndarray:
        seed = np.zeros((n, self.model.num_classes), np.float32)
        seed[:, target] = scale
        return seed
