"""Step 3 of loading: questions only a run can answer — does a rewritten batch give the same numbers,
what does the score output hold (logits, probabilities, log-probabilities), is it class scores at all.

Each function takes what it needs and returns its answer; nothing is stored on an object.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import runtime
from ..errors import ModelError
from ..graph.batching import make_batch_dynamic
from ..graph.compose import SCORES, X, ImageInput, ScoreOutput, forward_graph
from ..preprocess import Preprocess

OUTPUT_KINDS = ("logits", "probabilities", "log_probabilities")


def probe_inputs(preprocess: Preprocess, n: int) -> np.ndarray:
    """n blocky random pictures through the model's own preprocessing (internal layout)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(images, 8, axis=1), 8, axis=2)
    return np.stack([preprocess(img).x for img in images]).astype(np.float32)


def _forward(graph: onnx.ModelProto, image: ImageInput, score_value: onnx.ValueInfoProto,
             constants: dict, *, with_raw: bool = False) -> onnx.ModelProto:
    out = ScoreOutput(score_value.name, score_value.type.tensor_type.elem_type, "logits")
    model = forward_graph(graph, image, out, constants, score="raw")
    if with_raw:  # the output as the model shapes it, to tell class scores from images
        model.graph.output.append(helper.make_tensor_value_info(score_value.name,
                                                                score_value.type.tensor_type.elem_type, None))
    return model


def batch_rewrite(proto: onnx.ModelProto, image: ImageInput, score_value: onnx.ValueInfoProto, constants: dict,
                  preprocess: Preprocess, fixed_batch: int, device: runtime.Device) -> tuple[onnx.ModelProto, str]:
    """(graph, how) — the graph rewritten to a symbolic batch when a probe batch equals one-by-one runs
    of the original, else the original (evaluated one sample at a time)."""
    try:
        rewritten = make_batch_dynamic(proto, image.name, fixed_batch)
        session = runtime.make_session(_forward(rewritten, image, score_value, constants), device)
        probe = probe_inputs(preprocess, 3)
        together = session.run([SCORES], {X: probe})[0]
        alone = np.concatenate([session.run([SCORES], {X: probe[i:i + 1]})[0] for i in range(3)])
        original = runtime.make_session(_forward(proto, image, score_value, constants), device)
        reference = np.concatenate([original.run([SCORES], {X: probe[i:i + 1]})[0] for i in range(3)])
        scale = float(np.max(np.abs(reference))) or 1.0
        tol = 2e-3 if image.elem_type == TensorProto.FLOAT16 else 1e-5
        if (together.shape == reference.shape and np.allclose(together, reference, rtol=tol, atol=tol * scale)
                and np.allclose(alone, reference, rtol=tol, atol=tol * scale)):
            return rewritten, f"fixed {fixed_batch}, rewritten to dynamic (verified on a probe batch)"
    except Exception:  # noqa: BLE001 - any failure means "evaluate one sample at a time"
        pass
    return proto, f"fixed {fixed_batch}, evaluated one sample at a time"


def probe_scores(graph: onnx.ModelProto, image: ImageInput, score_value: onnx.ValueInfoProto, constants: dict,
                 preprocess: Preprocess, batchable: bool, device: runtime.Device) -> np.ndarray:
    """Raw scores [n, K] of probe pictures; refuses outputs that are not one score per class."""
    session = runtime.make_session(_forward(graph, image, score_value, constants, with_raw=True), device)
    probe = probe_inputs(preprocess, 2 if batchable else 1)
    try:
        rows, raw = session.run([SCORES, score_value.name], {X: probe})
    except Exception as error:  # noqa: BLE001
        raise ModelError(f"onnxruntime cannot run the model on a {image.height}x{image.width} probe: "
                         f"{runtime.describe_error(error)}") from None
    per_sample = tuple(raw.shape[1:])
    if sum(1 for d in per_sample if d > 1) > 1:
        raise ModelError(f"output {score_value.name!r} holds {list(per_sample)} values per sample, which looks like "
                         "an image or a feature map, not one score per class; name the class-score output with "
                         "output_name= (CLI: --output)")
    rows = rows.reshape(len(probe), -1)
    if rows.shape[1] < 2:
        raise ModelError(f"output {score_value.name!r} has {rows.shape[1]} value per sample; "
                         "it does not look like class scores (name the right one with output_name=)")
    return rows


def classify_output(rows: np.ndarray) -> str:
    """logits, probabilities or log-probabilities, judged on a probe batch [N, K]."""
    tol = 2e-3
    if np.all(rows >= -1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=tol):
        return "probabilities"
    if np.all(rows <= 1e-6) and np.allclose(np.exp(rows).sum(axis=1), 1.0, atol=tol):
        return "log_probabilities"
    return "logits"
