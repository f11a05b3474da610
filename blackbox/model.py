"""Model: an ONNX classifier, validated and understood, with the sessions blackbox evaluates it in.

Loading answers, once: where the image goes in (name, layout, dtype, size), where class scores come out
(name, kind, class count), whether samples can be batched, and which provider runs. Everything after
that talks to the model in blackbox's internal layout: float32 ``[N, C, H, W]``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from . import runtime
from .errors import ModelError, NumericalError, ParameterError, TargetError
from .graph.batching import make_batch_dynamic
from .graph.compose import BASELINE, MASKS, RXT, RY, SCORES, SEGMENTS, TARGETS, X, X_IN, ImageInput, ScoreOutput, forward_graph, perturbation_graph
from .graph.onnx_utils import FLOAT_TYPES, default_opset, dims, elem_type, real_inputs
from .labels import Labels, labels_from_metadata, read_labels
from .preprocess import Preprocess

SCORE_SPACES = ("probability", "logit", "raw")
OUTPUT_KINDS = ("logits", "probabilities", "log_probabilities")
_IMAGE_TYPES = FLOAT_TYPES + (TensorProto.UINT8,)
_TYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64",
               TensorProto.UINT8: "uint8", TensorProto.BFLOAT16: "bfloat16", TensorProto.INT64: "int64",
               TensorProto.INT32: "int32", TensorProto.INT8: "int8"}
# CPU: a batch whose activations stay near the last-level cache runs fastest (MobileNetV2-int8 is 15%
# slower per sample at batch 64 than at 8); CUDA: a memory budget, halved on allocation failure.
_CPU_BUDGET = 48 << 20
_CUDA_BUDGET = 4 << 30
_CPU_MIN_BATCH, _CPU_MAX_BATCH = 4, 64


def type_name(onnx_type: int) -> str:
    return _TYPE_NAMES.get(onnx_type, TensorProto.DataType.Name(onnx_type).lower())


# --------------------------------------------------------------------------- reading and validation

def _read_onnx(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read model file {path}: {error.strerror}") from None
    if not data:
        raise ModelError(f"model file is empty: {path}")
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ModelError(f"not an ONNX model (it does not parse; truncated or another format?): {path}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"not an ONNX model (no graph inside; truncated or another format?): {path}")
    _load_external_data(model, path.parent)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "invalid model"
        raise ModelError(f"{path} fails the ONNX checker: {first}") from None
    except ValueError as error:  # e.g. > 2 GB protos
        raise ModelError(f"{path} cannot be checked: {error}") from None
    return model


def _load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Load external tensors, refusing any location outside the model's folder (path traversal)."""
    base = folder.resolve()
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or (base != target and base not in target.parents):
            raise ModelError(f"refusing external data {location!r} of tensor {tensor.name!r}: it points outside "
                             f"the model's folder {base}")
        if not target.is_file():
            raise ModelError(f"external data file {location!r} of tensor {tensor.name!r} not found next to the model")
    if external:
        try:
            load_external_data_for_model(model, str(base))
        except Exception as error:  # noqa: BLE001
            raise ModelError(f"cannot load external data: {error}") from None


def _find_image_input(model: onnx.ModelProto, input_name: str | None) -> onnx.ValueInfoProto:
    inputs = real_inputs(model.graph)
    if input_name is not None:
        for value in inputs:
            if value.name == input_name:
                return value
        raise ModelError(f"the model has no input named {input_name!r}; its inputs are "
                         f"{', '.join(repr(v.name) for v in inputs)}")
    candidates = [v for v in inputs if elem_type(v) in _IMAGE_TYPES and len(dims(v)) in (3, 4)]
    if not candidates:
        described = ", ".join(f"{v.name} {type_name(elem_type(v))}{dims(v)}" for v in inputs)
        raise ModelError(f"no image input found (need a float or uint8 tensor of rank 3 or 4); inputs: {described}")
    if len(candidates) > 1:
        names = ", ".join(repr(v.name) for v in candidates)
        raise ModelError(f"several inputs could be the image ({names}); name one with input_name= (CLI: --input)")
    return candidates[0]


def _layout_of(shape: list, override: str | None) -> str:
    if override:
        layout = override.upper()
        if layout not in ("NCHW", "NHWC", "NHW"):
            raise ParameterError(f"unknown layout {override!r}: use NCHW, NHWC or NHW")
        return layout
    if len(shape) == 3:
        return "NHW"
    channel_like = (1, 3, 4)
    first, last = shape[1] in channel_like, shape[3] in channel_like
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    raise ModelError(f"cannot tell whether input shape {shape} is NCHW or NHWC; pass layout= (CLI: --layout)")


def _image_spec(value: onnx.ValueInfoProto, layout: str, preprocess: Preprocess | None) -> ImageInput:
    shape = dims(value)
    if layout == "NHW":
        channels, height, width = 1, shape[1], shape[2]
    elif layout == "NCHW":
        channels, height, width = shape[1], shape[2], shape[3]
    else:
        height, width, channels = shape[1], shape[2], shape[3]
    if not isinstance(height, int) or not isinstance(width, int):
        if preprocess is None or preprocess.size is None:
            raise ModelError(f"input {value.name!r} has no fixed height/width {shape}; give a Preprocess with a size")
        height, width = preprocess.size
    if not isinstance(channels, int):
        raise ModelError(f"input {value.name!r} has no fixed channel count {shape}; pass layout= and fix the model")
    if channels not in (1, 3, 4):
        raise ModelError(f"input {value.name!r} has {channels} channels; blackbox explains 1-, 3- or 4-channel images")
    return ImageInput(value.name, elem_type(value), layout, channels, height, width)


def _score_candidates(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [o for o in model.graph.output if elem_type(o) in FLOAT_TYPES]


def _classify_output(rows: np.ndarray) -> str:
    """logits, probabilities or log-probabilities, judged on a probe batch [N, K]."""
    tol = 2e-3
    if np.all(rows >= -1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=tol):
        return "probabilities"
    if np.all(rows <= 1e-6) and np.allclose(np.exp(rows).sum(axis=1), 1.0, atol=tol):
        return "log_probabilities"
    return "logits"


def _check_finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        rows = int(np.sum(~np.all(np.isfinite(values.reshape(len(values), -1)), axis=1)))
        raise NumericalError(f"the model returned NaN or infinite scores for {rows} of {len(values)} {what}; "
                             "check the preprocessing (--preset) and the model")
    return values


# --------------------------------------------------------------------------- the model

class Model:
    """A loaded classifier. Create with :func:`blackbox.load`."""

    def __init__(self, path: str | os.PathLike | onnx.ModelProto, *, preprocess: Preprocess | str | dict | None = None,
                 labels: str | os.PathLike | Sequence[str] | None = None, device: str = "auto",
                 input_name: str | None = None, output_name: str | None = None, output_kind: str | None = None,
                 layout: str | None = None, inputs: dict[str, np.ndarray] | None = None,
                 batch_size: int | None = None):
        if isinstance(path, onnx.ModelProto):  # an in-memory graph, e.g. a randomised copy for sanity checks
            self.path, self.proto = None, path
            try:
                onnx.checker.check_model(path)
            except onnx.checker.ValidationError as error:
                raise ModelError(f"the model fails the ONNX checker: {str(error).strip().splitlines()[0]}") from None
        else:
            self.path = Path(path)
            self.proto = _read_onnx(self.path)
        image_value = _find_image_input(self.proto, input_name)
        self.constants = self._constant_inputs(image_value.name, inputs or {})
        shape = dims(image_value)
        self.layout = _layout_of(shape, layout)
        given = self._coerce_preprocess(preprocess)
        self.preprocess_source = self._preprocess_source(preprocess)
        if given is None and _json_metadata(self.proto, "blackbox.preprocess"):
            given = Preprocess.from_dict(_json_metadata(self.proto, "blackbox.preprocess"))
            self.preprocess_source = "model metadata"
        self.image = _image_spec(image_value, self.layout, given)
        self.preprocess = (given or Preprocess.preset("none")).resolve(
            height=self.image.height, width=self.image.width, channels=self.image.channels, layout="NCHW")
        self.device = runtime.resolve_device(device)
        batch_dim = shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        score_value = self._find_output(output_name)
        self._score_value = score_value
        self.batch_mode = "dynamic"
        self.graph = self.proto
        if self.fixed_batch is not None:
            self._make_batchable()
        self._requested_batch = batch_size
        probe = self._probe_rows(score_value)
        self.num_classes = probe.shape[1]
        if self.num_classes < 2:
            raise ModelError(f"output {score_value.name!r} has {self.num_classes} value per sample; "
                             "it does not look like class scores (name the right one with output_name=)")
        detected = _classify_output(probe)
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise ParameterError(f"unknown output kind {output_kind!r}: use one of {', '.join(OUTPUT_KINDS)}")
        self.output_kind = output_kind or detected
        self.output_kind_detected = detected
        self.output = ScoreOutput(score_value.name, elem_type(score_value), self.output_kind)
        self.labels = self._labels(labels)
        self._forward_runners: dict[str, runtime.Runner] = {}
        self._perturb_runners: dict[tuple[str, str], runtime.Runner] = {}

    # ------------------------------------------------------------------ loading steps
    def _constant_inputs(self, image_name: str, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = {}
        for value in real_inputs(self.proto.graph):
            if value.name == image_name:
                continue
            if value.name not in given:
                raise ModelError(f"the model has another input {value.name!r} {dims(value)}; "
                                 "give its value with inputs={...}")
            values[value.name] = np.asarray(given[value.name], dtype=onnx.helper.tensor_dtype_to_np_dtype(
                elem_type(value)))
        unknown = set(given) - set(values)
        if unknown:
            raise ParameterError(f"inputs= names {sorted(unknown)} which the model does not have")
        return values

    @staticmethod
    def _coerce_preprocess(preprocess) -> Preprocess | None:
        if isinstance(preprocess, Preprocess):
            return preprocess
        if isinstance(preprocess, str):
            return Preprocess.preset(preprocess)
        if isinstance(preprocess, dict):
            return Preprocess.from_dict(preprocess)
        if preprocess is None:
            return None
        raise ParameterError("preprocess must be a Preprocess, a preset name or a dict")

    def _metadata(self, key: str) -> str | None:
        return next((p.value for p in self.proto.metadata_props if p.key == key), None)

    def _preprocess_source(self, preprocess) -> str:
        if preprocess is not None:
            return preprocess if isinstance(preprocess, str) else "user"
        return "none (no preset given: exact resize, pixels / 255)"

    def _find_output(self, output_name: str | None) -> onnx.ValueInfoProto:
        outputs = list(self.proto.graph.output)
        if output_name is not None:
            for value in outputs:
                if value.name == output_name:
                    if elem_type(value) not in FLOAT_TYPES:
                        raise ModelError(f"output {output_name!r} is {type_name(elem_type(value))}, not float scores")
                    return value
            raise ModelError(f"the model has no output named {output_name!r}; its outputs are "
                             f"{', '.join(repr(o.name) for o in outputs)}")
        candidates = _score_candidates(self.proto)
        if not candidates:
            described = ", ".join(f"{o.name} {type_name(elem_type(o))}" for o in outputs)
            raise ModelError(f"no float output that could hold class scores; outputs: {described}")

        def per_sample_size(value):
            rest = dims(value)[1:]
            return int(np.prod(rest)) if rest and all(isinstance(d, int) for d in rest) else None

        shaped = [o for o in candidates if (per_sample_size(o) or 2) > 1 and len(dims(o)) >= 2]
        return (shaped or candidates)[0]

    def _forward_model(self, graph: onnx.ModelProto, score: str = "raw") -> onnx.ModelProto:
        out = ScoreOutput(self._score_value.name, elem_type(self._score_value), getattr(self, "output_kind", "logits"))
        return forward_graph(graph, self.image, out, self.constants, score=score)

    def _probe_inputs(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        images = np.repeat(np.repeat(images, 8, axis=1), 8, axis=2)
        return np.stack([self.preprocess(img).x for img in images]).astype(np.float32)

    def _make_batchable(self) -> None:
        """Rewrite the fixed batch to a symbolic one; keep it only if a probe batch equals per-sample runs."""
        try:
            rewritten = make_batch_dynamic(self.proto, self.image.name, self.fixed_batch)
            session = runtime.make_session(self._forward_model(rewritten), self.device)
            probe = self._probe_inputs(3)
            together = session.run([SCORES], {X: probe})[0]
            alone = np.concatenate([session.run([SCORES], {X: probe[i:i + 1]})[0] for i in range(3)])
            original = runtime.make_session(self._forward_model(self.proto), self.device)
            reference = np.concatenate([original.run([SCORES], {X: probe[i:i + 1]})[0] for i in range(3)])
            scale = float(np.max(np.abs(reference))) or 1.0
            tol = 2e-3 if self.image.elem_type == TensorProto.FLOAT16 else 1e-5
            if (together.shape == reference.shape and np.allclose(together, reference, rtol=tol, atol=tol * scale)
                    and np.allclose(alone, reference, rtol=tol, atol=tol * scale)):
                self.graph = rewritten
                self.batch_mode = f"fixed {self.fixed_batch}, rewritten to dynamic (verified on a probe batch)"
                return
        except Exception:  # noqa: BLE001 - any failure means "evaluate one sample at a time"
            pass
        self.batch_mode = f"fixed {self.fixed_batch}, evaluated one sample at a time"

    @property
    def batchable(self) -> bool:
        return self.fixed_batch is None or self.graph is not self.proto

    def _probe_rows(self, score_value) -> np.ndarray:
        self._score_value = score_value
        session = runtime.make_session(self._forward_model(self.graph), self.device)
        probe = self._probe_inputs(2 if self.batchable else 1)
        try:
            rows = session.run([SCORES], {X: probe})[0]
        except Exception as error:  # noqa: BLE001
            first = str(error).strip().splitlines()[0][:300]
            raise ModelError(f"onnxruntime cannot run the model on a {self.image.height}x{self.image.width} "
                             f"probe: {first}") from None
        return rows.reshape(len(probe), -1)

    def _labels(self, labels) -> Labels | None:
        found = read_labels(labels) if labels is not None else labels_from_metadata(self.proto)
        if found is not None and len(found) != self.num_classes:
            raise ParameterError(f"labels from {found.source} name {len(found)} classes but the model has "
                                 f"{self.num_classes}")
        return found

    # ------------------------------------------------------------------ batch sizing
    def _per_sample_bytes(self) -> int:
        """Upper bound of activation memory per sample: the sum of all inferred intermediate tensors."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto)
            total = 0
            for value in inferred.graph.value_info:
                shape = dims(value)
                if not shape:
                    continue
                known = [d if isinstance(d, int) else 1 for d in shape]
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type(value))).itemsize
                total += int(np.prod(known)) * itemsize
            return max(total, 1)
        except Exception:  # noqa: BLE001
            return 64 * 4 * self.image.channels * self.image.height * self.image.width

    def batch_size(self) -> int:
        if not self.batchable:
            return 1
        if self._requested_batch:
            return int(self._requested_batch)
        if self.device.kind == "cuda":
            return int(min(max(1, _CUDA_BUDGET // self._per_sample_bytes()), 1024))
        return int(min(max(_CPU_MIN_BATCH, _CPU_BUDGET // self._per_sample_bytes()), _CPU_MAX_BATCH))

    # ------------------------------------------------------------------ evaluation
    def _forward_runner(self, score: str) -> runtime.Runner:
        if score not in self._forward_runners:
            session = runtime.make_session(self._forward_model(self.graph, score), self.device)
            self._forward_runners[score] = runtime.Runner(session, self.device, self.batch_size(), SCORES)
        return self._forward_runners[score]

    def scores(self, x: np.ndarray, score: str = "probability",
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Scores [N, K] for images already in model space (internal layout [N, C, H, W])."""
        _check_score(score)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        out = self._forward_runner(score).run({}, {X: x}, progress=progress)
        return _check_finite(out, "inputs")

    def predict(self, images: Any, score: str = "probability") -> np.ndarray:
        """Class probabilities [N, K] for image paths, uint8 arrays, or model-space float arrays."""
        from .inputs import prepare_batch

        prepared = prepare_batch(self, images)
        return self.scores(np.stack([p.x for p in prepared]), score=score)

    def _perturb_runner(self, mode: str, score: str) -> runtime.Runner:
        key = (mode, score)
        if key not in self._perturb_runners:
            graph = perturbation_graph(self.graph, self.image, self.output, mode=mode, score=score,
                                       constants=self.constants)
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
        _check_score(score)
        fixed = {X_IN: _one(x), BASELINE: _one(baseline), TARGETS: np.asarray(list(targets), dtype=np.int64)}
        if np.any(fixed[TARGETS] < 0) or np.any(fixed[TARGETS] >= self.num_classes):
            raise TargetError(f"target classes {list(targets)} out of range 0..{self.num_classes - 1}")
        masks = np.asarray(masks, dtype=np.float32)
        channels = self.image.channels
        if segments is not None:
            # one channel of indices: Gather is a per-element copy, three times cheaper than per channel
            fixed[SEGMENTS] = np.asarray(segments, dtype=np.int64).reshape((1,) + np.shape(segments)[-2:])
            batched = {MASKS: masks}
            mode = "segments"
        else:
            if ry is None or rx is None:
                raise ValueError("grid masks need ry and rx")
            rxt = np.swapaxes(np.asarray(rx, dtype=np.float32), -1, -2)
            ry = np.asarray(ry, dtype=np.float32)
            if masks.shape[1] != channels:  # one mask for all channels: repeat it (small) for a cheap blend
                masks = np.ascontiguousarray(np.broadcast_to(masks, (masks.shape[0], channels) + masks.shape[2:]))
            batched = {MASKS: masks}
            (batched if ry.ndim == 4 else fixed)[RY] = ry
            (batched if rxt.ndim == 4 else fixed)[RXT] = rxt
            mode = "grid"
        out = self._perturb_runner(mode, score).run(fixed, batched, progress=progress)
        return _check_finite(out, "perturbed inputs")

    @property
    def gradients(self):
        """The :class:`~blackbox.differentiate.GradientEngine` (built on first use)."""
        if getattr(self, "_gradients", None) is None:
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
        in_value = next(v for v in self.proto.graph.input if v.name == self.image.name)
        precision = "float32"
        if self.image.elem_type == TensorProto.FLOAT16 or elem_type(self._score_value) == TensorProto.FLOAT16:
            precision = "float16"
        if any(n.op_type.startswith("QLinear") or n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for n in self.proto.graph.node):
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
                      "shape": dims(in_value), "layout": self.layout, "channels": self.image.channels,
                      "height": self.image.height, "width": self.image.width},
            "output": {"name": self.output.name, "dtype": type_name(self.output.elem_type),
                       "shape": dims(self._score_value), "kind": self.output_kind,
                       "kind_detected": self.output_kind_detected, "classes": self.num_classes},
            "batch": self.batch_mode,
            "batch_size": self.batch_size(),
            "provider": str(self.device),
            "preprocess": {"source": self.preprocess_source, **self.preprocess.to_dict()},
            "labels": None if self.labels is None else {"source": self.labels.source,
                                                        "first": list(self.labels.names[:5])},
            "constant_inputs": sorted(self.constants),
            "ops": self.op_histogram(),
        }

    def label(self, index: int) -> str:
        return self.labels.names[index] if self.labels is not None else f"class {index}"

    def __repr__(self) -> str:
        size = (self.image.channels, self.image.height, self.image.width)
        return (f"Model({str(self.path or '<in memory>')!r}, input={self.image.name}{list(size)} {self.layout}, "
                f"classes={self.num_classes}, kind={self.output_kind}, provider={self.device})")


def _check_score(score: str) -> None:
    if score not in SCORE_SPACES:
        raise ParameterError(f"unknown score {score!r}: use one of {', '.join(SCORE_SPACES)}")


def _one(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array[None] if array.ndim == 3 else array


def load(path: str | os.PathLike | onnx.ModelProto, *, preprocess: Preprocess | str | dict | None = None,
         labels: str | os.PathLike | Sequence[str] | None = None, device: str = "auto",
         input_name: str | None = None, output_name: str | None = None, output_kind: str | None = None,
         layout: str | None = None, inputs: dict[str, np.ndarray] | None = None,
         batch_size: int | None = None) -> Model:
    """Load an ONNX image classifier from a file (or an in-memory ``onnx.ModelProto``).

    ``preprocess``: a :class:`Preprocess`, a preset name (``"imagenet"``, ``"caffe"``, ``"mnist"``, ...),
    or None to use what the model's metadata says (``blackbox.preprocess``), else exact resize and /255.
    ``labels``: a labels file or list (default: model metadata). ``device``: auto, cpu, cuda or cuda:N.
    """
    return Model(path, preprocess=preprocess, labels=labels, device=device, input_name=input_name,
                 output_name=output_name, output_kind=output_kind, layout=layout, inputs=inputs,
                 batch_size=batch_size)


def _json_metadata(model: onnx.ModelProto, key: str) -> dict | None:
    for prop in model.metadata_props:
        if prop.key == key:
            try:
                value = json.loads(prop.value)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None
