"""Model: a thin front over a frozen :class:`~blackbox.loading.ModelDescription` and the sessions
blackbox evaluates the model in.

Loading (``blackbox.loading``) answers once, in pure steps: where the image goes in, where class scores
come out, whether samples batch, how pixels are prepared. This class only builds sessions from those
answers and talks to the model in blackbox's internal layout, float32 ``[N, C, H, W]``.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import os
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from . import runtime
from .errors import ModelError, ParameterError, TargetError
from .graph.compose import (BASELINE, MASKS, ROWS, RXT, RY, SCORES, SEGMENTS, TARGETS, X, X_IN, forward_graph,
                            perturbation_graph, perturbation_graph_many)
from .graph.layers import Layer, default_cam_layer, discover_layers, with_taps
from .graph.onnx_utils import default_opset, type_name
from .graph.precision import dequantize, is_quantized, to_float32
from .loading import LoadOptions, ModelDescription, describe, read_source
from .loading.probe import OUTPUT_KINDS  # noqa: F401 - re-exported for callers of blackbox.model
from .preprocess import Preprocess

SCORE_SPACES = ("probability", "logit", "raw")
# CPU: a batch whose activations stay near the last-level cache runs fastest (MobileNetV2-int8 is 15%
# slower per sample at batch 64 than at 8); CUDA: a memory budget, halved on allocation failure.
_CPU_BUDGET = 48 << 20
_CUDA_BUDGET = 4 << 30
_CPU_MIN_BATCH, _CPU_MAX_BATCH = 4, 64

__all__ = ["Model", "load", "SCORE_SPACES", "type_name"]


class Model:
    """A loaded classifier. Create with :func:`blackbox.load`; derive a copy with :meth:`with_graph`."""

    def __init__(self, description: ModelDescription, proto: onnx.ModelProto, graph: onnx.ModelProto,
                 device: runtime.Device, options: LoadOptions):
        self.description = description
        self.proto = proto  # the graph as given
        self.graph = graph  # the graph sessions run: proto, or its verified dynamic-batch rewrite
        self.device = device
        self.options = options
        self._forward_runners: dict[str, runtime.Runner] = {}
        self._perturb_runners: dict[tuple, runtime.Runner] = {}
        self._tap_runners: dict[tuple[str, ...], runtime.Runner] = {}
        self._float: tuple[onnx.ModelProto, tuple[str, ...]] | None = None
        self._layers: list[Layer] | None = None
        self._gradients = None
        self._sample_bytes: int | None = None

    # ------------------------------------------------------------------ the description, read-only
    path = property(lambda self: self.description.path)
    image = property(lambda self: self.description.image)
    output = property(lambda self: self.description.output)
    layout = property(lambda self: self.description.layout)
    num_classes = property(lambda self: self.description.num_classes)
    output_kind = property(lambda self: self.description.output.kind)
    output_kind_detected = property(lambda self: self.description.output_kind_detected)
    labels = property(lambda self: self.description.labels)
    preprocess = property(lambda self: self.description.preprocess)
    preprocess_source = property(lambda self: self.description.preprocess_source)
    preprocess_guessed = property(lambda self: self.description.preprocess_guessed)
    constants = property(lambda self: self.description.constants)
    fixed_batch = property(lambda self: self.description.fixed_batch)
    batch_mode = property(lambda self: self.description.batch_mode)
    batchable = property(lambda self: self.description.batchable)

    def label(self, index: int) -> str:
        return self.description.label(index)

    def class_index(self, target: int | str) -> int:
        """An int (or digit string) -> that index, checked; a string -> the label's index."""
        if isinstance(target, bool):
            raise TargetError(f"target {target!r} is not a class index or label")
        if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
            index = int(target)
            if not 0 <= index < self.num_classes:
                raise TargetError(f"target class {index} is out of range: the model has classes "
                                  f"0..{self.num_classes - 1}")
            return index
        if isinstance(target, str):
            if self.labels is None:
                raise TargetError(f"target {target!r} is a name but the model has no labels; pass --labels or an index")
            return self.labels.index_of(target)
        raise TargetError(f"target {target!r} is not a class index or label")

    def with_graph(self, proto: onnx.ModelProto) -> "Model":
        """A Model over another graph with this one's every choice (preprocess, labels, names, kind, device):
        for sanity checks that randomise weights. Labels, preprocessing and the output kind are reused as
        decided here, not detected again."""
        d = self.description
        options = dataclasses.replace(
            self.options, preprocess=d.preprocess, labels=list(d.labels.names) if d.labels else None,
            input_name=d.image.name, output_name=d.output.name, output_kind=d.output.kind, layout=d.layout,
            inputs=dict(d.constants) or None, device=_device_text(self.device))
        checked, _ = read_source(proto)
        description, graph = describe(checked, None, options, self.device)
        return Model(description, checked, graph, self.device, options)

    # ------------------------------------------------------------------ batch sizing
    def _per_sample_bytes(self) -> int:
        """Upper bound of activation memory per sample: the sum of all inferred intermediate tensors."""
        if self._sample_bytes is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.proto)
                total = 0
                for value in inferred.graph.value_info:
                    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
                    if not shape:
                        continue
                    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).itemsize
                    total += int(np.prod(shape)) * itemsize
                self._sample_bytes = max(total, 1)
            except Exception:  # noqa: BLE001
                self._sample_bytes = 64 * 4 * self.image.channels * self.image.height * self.image.width
        return self._sample_bytes

    def batch_size(self) -> int:
        if not self.batchable:
            return 1
        if self.description.requested_batch:
            return int(self.description.requested_batch)
        if self.device.kind == "cuda":
            return int(min(max(1, _CUDA_BUDGET // self._per_sample_bytes()), 1024))
        return int(min(max(_CPU_MIN_BATCH, _CPU_BUDGET // self._per_sample_bytes()), _CPU_MAX_BATCH))

    # ------------------------------------------------------------------ evaluation
    def _forward_model(self, graph: onnx.ModelProto, score: str = "raw") -> onnx.ModelProto:
        return forward_graph(graph, self.image, self.output, dict(self.constants), score=score)

    def _forward_runner(self, score: str) -> runtime.Runner:
        if score not in self._forward_runners:
            session = runtime.make_session(self._forward_model(self.graph, score), self.device)
            self._forward_runners[score] = runtime.Runner(session, self.device, self.batch_size(), SCORES)
        return self._forward_runners[score]

    def scores(self, x: np.ndarray, score: str = "probability",
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Scores [N, K] for images already in model space (internal layout [N, C, H, W])."""
        check_score(score)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        out = self._forward_runner(score).run({}, {X: x}, progress=progress)
        return runtime.check_finite(out, "inputs")

    def predict(self, images: Any, score: str = "probability") -> np.ndarray:
        """Class probabilities [N, K] for image paths, uint8 arrays, or model-space float arrays."""
        from .inputs import prepare_batch

        prepared = prepare_batch(self, images)
        return self.scores(np.stack([p.x for p in prepared]), score=score)

    def _perturb_runner(self, mode: str, score: str,
                        per_mask: tuple[bool, bool] = (False, False)) -> runtime.Runner:
        """The fused perturbation session for ``mode`` "grid", "segments", "segments_binary" (0/1 masks) or
        "grid_many" (several images);
        ``per_mask``: grid resampling matrices one per mask (rows, columns) or shared."""
        key = (mode, score, per_mask)
        if key not in self._perturb_runners:
            if mode == "grid_many":
                graph = perturbation_graph_many(self.graph, self.image, self.output, score=score,
                                                constants=dict(self.constants), per_mask=per_mask)
            else:
                graph = perturbation_graph(self.graph, self.image, self.output, mode=mode, score=score,
                                           constants=dict(self.constants), per_mask=per_mask)
            self._perturb_runners[key] = runtime.Runner(runtime.make_session(graph, self.device), self.device,
                                                        self.batch_size(), SCORES)
        return self._perturb_runners[key]

    def score_masks(self, x: np.ndarray, masks: np.ndarray, *, baseline: np.ndarray, targets: Sequence[int],
                    score: str = "probability", ry: np.ndarray | None = None, rx: np.ndarray | None = None,
                    segments: np.ndarray | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Scores [N, T] of the targets for ``baseline + (x - baseline) * upsample(mask)``, all in ONNX.

        Grid masks ``[N, 1|C, h, w]`` are upsampled as ``ry @ m @ rx.T`` (ry [H, h] / rx [W, w], or one
        pair per mask [N, 1, H, h] / [N, 1, W, w]); segment masks ``[N, M]`` with ``segments`` [H, W]
        (values 0..M-1) switch superpixels. ``x`` and ``baseline`` are [C, H, W] in model space.
        """
        check_score(score)
        fixed = {X_IN: _one(x), BASELINE: _one(baseline), TARGETS: np.asarray(list(targets), dtype=np.int64)}
        if np.any(fixed[TARGETS] < 0) or np.any(fixed[TARGETS] >= self.num_classes):
            raise TargetError(f"target classes {list(targets)} out of range 0..{self.num_classes - 1}")
        masks = np.asarray(masks, dtype=np.float32)
        channels = self.image.channels
        if segments is not None:
            # one channel of indices: Gather is a per-element copy, three times cheaper than per channel
            fixed[SEGMENTS] = np.asarray(segments, dtype=np.int64).reshape((1,) + np.shape(segments)[-2:])
            batched = {MASKS: masks}
            # on/off switches (LIME, KernelSHAP) select pixels rather than blend them: a cheaper graph
            binary = bool(np.all((masks == 0) | (masks == 1)))
            mode, per_mask = ("segments_binary" if binary else "segments"), (False, False)
        else:
            if ry is None or rx is None:
                raise ValueError("grid masks need ry and rx")
            batched = {MASKS: _mask_channels(masks, channels)}
            per_mask = _bind_matrices(fixed, batched, ry, rx)
            mode = "grid"
        out = self._perturb_runner(mode, score, per_mask).run(fixed, batched, progress=progress)
        return runtime.check_finite(out, "perturbed inputs")

    def score_masks_many(self, xs: np.ndarray, masks: np.ndarray, *, rows: np.ndarray, baselines: np.ndarray,
                         targets: Sequence[int] | Sequence[Sequence[int]], ry: np.ndarray, rx: np.ndarray,
                         score: str = "probability",
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
        """:meth:`score_masks` for grid masks of several images in one stream of full engine batches.

        ``xs`` and ``baselines`` [M, C, H, W] (model space, internal layout); ``masks`` [N, 1|C, h, w] and
        ``rows`` int [N]: mask n perturbs image ``rows[n]``; ``ry``/``rx`` shared ([H, h] / [W, w]) or per
        row ([N, 1, H, h] / [N, 1, W, w]). ``targets``: per image, [M] or [M, T]. Returns [N, T]: row n
        holds the scores of its own image's targets, equal to :meth:`score_masks` on that image alone.

        Why: one image's masks often do not fill a batch (occlusion with a large window: 16 masks), and
        different images have different targets; the graph gathers the union of the targets and each row
        keeps its image's columns here (a few floats per row).
        """
        check_score(score)
        xs, baselines = _stack(xs), _stack(baselines)
        if xs.shape != baselines.shape:
            raise ValueError(f"images {xs.shape} and baselines {baselines.shape} differ in shape")
        wanted = np.asarray(targets, dtype=np.int64)
        wanted = wanted[:, None] if wanted.ndim == 1 else wanted
        if wanted.ndim != 2 or len(wanted) != len(xs):
            raise ValueError(f"targets must be [M] or [M, T] for M={len(xs)} images, got shape {wanted.shape}")
        if np.any(wanted < 0) or np.any(wanted >= self.num_classes):
            raise TargetError(f"target classes {wanted.tolist()} out of range 0..{self.num_classes - 1}")
        rows = np.asarray(rows, dtype=np.int64)
        masks = np.asarray(masks, dtype=np.float32)
        if rows.shape != (len(masks),) or (len(rows) and (rows.min() < 0 or rows.max() >= len(xs))):
            raise ValueError(f"rows must be [N={len(masks)}] image indices in 0..{len(xs) - 1}")
        union = np.unique(wanted)
        fixed = {X_IN: xs, BASELINE: baselines, TARGETS: union}
        batched = {MASKS: _mask_channels(masks, self.image.channels), ROWS: rows}
        per_mask = _bind_matrices(fixed, batched, ry, rx)
        out = self._perturb_runner("grid_many", score, per_mask).run(fixed, batched, progress=progress)
        out = runtime.check_finite(out, "perturbed inputs")
        columns = np.searchsorted(union, wanted)[rows]  # [N, T]: each row's own targets among the union
        return np.take_along_axis(out.reshape(len(rows), len(union)), columns, axis=1)

    # ------------------------------------------------------------------ inside the network
    def float_graph(self) -> onnx.ModelProto:
        """The model in float32 everywhere (a dequantized or up-cast copy when needed): what gradients are
        taken of and taps read. :attr:`precision_notes` says which copy it is."""
        return self._float_view()[0]

    @property
    def precision_notes(self) -> list[str]:
        return list(self._float_view()[1])

    def _float_view(self) -> tuple[onnx.ModelProto, tuple[str, ...]]:
        if self._float is None:
            graph, notes = self.graph, []
            if is_quantized(graph):
                graph = dequantize(graph)
                notes.append("int8 model: gradients are those of a dequantized float copy "
                             "(straight-through rounding), not of the integer kernels")
            if self.image.elem_type == TensorProto.FLOAT16 or self.output.elem_type == TensorProto.FLOAT16 or any(
                    init.data_type == TensorProto.FLOAT16 for init in graph.graph.initializer):
                graph = to_float32(graph)
                notes.append("float16 model: differentiated in float32")
            self._float = (graph, tuple(notes))
        return self._float

    def float_specs(self):
        """(image, output) specs of :meth:`float_graph`: float16/float64 ends read as float32."""
        wide = (TensorProto.FLOAT16, TensorProto.DOUBLE)
        image = dataclasses.replace(self.image, elem_type=TensorProto.FLOAT) \
            if self.image.elem_type in wide else self.image
        output = dataclasses.replace(self.output, elem_type=TensorProto.FLOAT) \
            if self.output.elem_type in wide else self.output
        return image, output

    def layers(self) -> list[Layer]:
        """The tensors a user can look at (float32 tensors of :meth:`float_graph`), in graph order."""
        if self._layers is None:
            self._layers = discover_layers(self.float_graph())
        return list(self._layers)

    def layer(self, name: str) -> Layer:
        """The layer called ``name`` (its name in the model as given, or its tensor in the float copy)."""
        for layer in self.layers():
            if name in (layer.name, layer.tensor):
                return layer
        names = [layer.name for layer in self.layers()]
        close = difflib.get_close_matches(str(name), names, n=4, cutoff=0.5)
        hint = f"close names: {', '.join(repr(c) for c in close)}" if close else \
            f"`blackbox layers MODEL` lists the {len(names)} it has"
        raise ParameterError(f"the model has no layer named {name!r}; {hint}")

    def tensors(self, names: Sequence[str]) -> tuple[str, ...]:
        """The float-graph tensors behind layer names (what taps and gradient graphs read)."""
        return tuple(self.layer(name).tensor for name in names)

    def default_cam_layer(self) -> str:
        """The last spatial activation before global pooling (Grad-CAM's usual target layer)."""
        chosen = default_cam_layer(self.float_graph(), self.layers())
        if chosen is None:
            raise ModelError("the model has no spatial activation (4-D tensor with height x width > 1) for CAM "
                             "methods; use a pixel-attribution method instead")
        return chosen

    def activations(self, x: np.ndarray, layers: Sequence[str], *,
                    progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        """Forward-only taps: the named layers' values [N, ...] for inputs ``x`` [N, C, H, W], batched, keyed
        by the names given. No op needs a gradient rule; the values are those of :meth:`float_graph`."""
        names = tuple(dict.fromkeys(layers))
        tensors = tuple(dict.fromkeys(self.tensors(names)))
        if tensors not in self._tap_runners:
            image, output = self.float_specs()
            forward = forward_graph(self.float_graph(), image, output, dict(self.constants), score="raw")
            session = runtime.make_session(with_taps(forward, tensors), self.device)
            self._tap_runners[tensors] = runtime.Runner(session, self.device, self.batch_size(), [SCORES, *tensors])
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        outputs = dict(zip(tensors, self._tap_runners[tensors].run({}, {X: x}, progress=progress)[1:]))
        return {name: outputs[self.layer(name).tensor] for name in names}

    @property
    def gradients(self):
        """The :class:`~blackbox.differentiate.GradientEngine` (built on first use)."""
        if self._gradients is None:
            from .differentiate import GradientEngine

            self._gradients = GradientEngine(self)
        return self._gradients

    # ------------------------------------------------------------------ description
    def op_histogram(self) -> dict[str, int]:
        counts = collections.Counter(n.op_type for n in self.proto.graph.node)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.path is None:
            digest.update(self.proto.SerializeToString())
            return digest.hexdigest()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def info(self) -> dict[str, Any]:
        """A JSON-friendly description (what ``blackbox info`` prints)."""
        d = self.description
        precision = "float32"
        if self.image.elem_type == TensorProto.FLOAT16 or self.output.elem_type == TensorProto.FLOAT16:
            precision = "float16"
        if is_quantized(self.proto):
            precision = "int8 (quantized)"
        return {
            "path": str(self.path) if self.path else "<in memory>",
            "sha256": self.sha256(),
            "size_bytes": self.path.stat().st_size if self.path else self.proto.ByteSize(),
            "producer": f"{self.proto.producer_name} {self.proto.producer_version}".strip(),
            "ir_version": int(self.proto.ir_version),
            "opset": default_opset(self.proto),
            "precision": precision,
            "input": {"name": self.image.name, "dtype": type_name(self.image.elem_type),
                      "shape": list(d.input_shape), "layout": self.layout, "channels": self.image.channels,
                      "height": self.image.height, "width": self.image.width},
            "output": {"name": self.output.name, "dtype": type_name(self.output.elem_type),
                       "shape": list(d.output_shape), "kind": self.output_kind,
                       "kind_detected": self.output_kind_detected, "classes": self.num_classes},
            "batch": self.batch_mode,
            "batch_size": self.batch_size(),
            "provider": str(self.device),
            "preprocess": {"source": self.preprocess_source, "guessed": self.preprocess_guessed,
                           **self.preprocess.to_dict()},
            "labels": None if self.labels is None else {"source": self.labels.source,
                                                        "first": list(self.labels.names[:5])},
            "constant_inputs": sorted(self.constants),
            "ops": self.op_histogram(),
        }

    def __repr__(self) -> str:
        size = (self.image.channels, self.image.height, self.image.width)
        return (f"Model({str(self.path or '<in memory>')!r}, input={self.image.name}{list(size)} {self.layout}, "
                f"classes={self.num_classes}, kind={self.output_kind}, provider={self.device})")


def check_score(score: str) -> None:
    if score not in SCORE_SPACES:
        raise ParameterError(f"unknown score {score!r}: use one of {', '.join(SCORE_SPACES)}")


def _one(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array[None] if array.ndim == 3 else array


def _stack(array: np.ndarray) -> np.ndarray:
    """Images [M, C, H, W] (one [C, H, W] reads as M = 1) as contiguous float32."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array[None] if array.ndim == 3 else array


def _bind_matrices(fixed: dict, batched: dict, ry: np.ndarray, rx: np.ndarray) -> tuple[bool, bool]:
    """Put the grid resampling matrices with the fixed inputs (shared, rank 2) or the batched ones (one
    per mask, rank 4); returns which, the perturbation graph's ``per_mask``."""
    rxt = np.swapaxes(np.asarray(rx, dtype=np.float32), -1, -2)
    ry = np.asarray(ry, dtype=np.float32)
    per_mask = (ry.ndim == 4, rxt.ndim == 4)
    (batched if per_mask[0] else fixed)[RY] = ry
    (batched if per_mask[1] else fixed)[RXT] = rxt
    return per_mask


def _mask_channels(masks: np.ndarray, channels: int) -> np.ndarray:
    """Grid masks as given: one channel (shared by all, broadcast in the blend) or one per channel.

    One channel is not repeated: the upsampling MatMuls then run once per mask instead of once per
    channel, and ONNX Runtime's broadcasting Mul of [1, C, H, W] by [N, 1, H, W] is no slower than the
    same-shape one (MobileNetV2-int8 at 224, batch 32: upsampling 0.16 -> 0.03 ms per mask, blend
    0.18 -> 0.16 ms, against about 2.2 ms for the model)."""
    if masks.shape[1] not in (1, channels):
        raise ValueError(f"grid masks need 1 or {channels} channels, got {masks.shape[1]}")
    return np.ascontiguousarray(masks)


def _device_text(device: runtime.Device) -> str:
    return f"cuda:{device.index}" if device.kind == "cuda" else "cpu"


def load(path: str | os.PathLike | onnx.ModelProto, *, preprocess: Preprocess | str | dict | None = None,
         labels: str | os.PathLike | Sequence[str] | None = None, device: str = "auto",
         input_name: str | None = None, output_name: str | None = None, output_kind: str | None = None,
         layout: str | None = None, inputs: dict[str, np.ndarray] | None = None,
         batch_size: int | None = None) -> Model:
    """Load an ONNX image classifier from a file (or an in-memory ``onnx.ModelProto``).

    ``preprocess``: a :class:`Preprocess`, a preset name (``"imagenet"``, ``"caffe"``, ``"mnist"``, ...),
    or None to use what the model's metadata says (``blackbox.preprocess``), else exact resize and /255
    (``model.preprocess_guessed`` is then True). ``labels``: a labels file or list (default: model
    metadata). ``device``: auto, cpu, cuda or cuda:N. ``batch_size``: samples per call (default: from a
    memory budget).
    """
    options = LoadOptions(preprocess=preprocess, labels=labels, device=device, input_name=input_name,
                          output_name=output_name, output_kind=output_kind, layout=layout, inputs=inputs,
                          batch_size=batch_size)
    proto, file = read_source(path)
    resolved = runtime.resolve_device(device)
    description, graph = describe(proto, file, options, resolved)
    return Model(description, proto, graph, resolved, options)
