"""Tiny hand-built ONNX models for tests that need a property no real model has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def conv_classifier(*, classes: int = 4, channels: int = 3, size: int = 16, layout: str = "NCHW",
                    in_type: int = TensorProto.FLOAT, batch: int | str = "N", seed: int = 0,
                    final: str | None = None, input_name: str = "pixels") -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, with optional layout/dtype/final op."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    shape = [batch, channels, size, size] if layout == "NCHW" else [batch, size, size, channels]
    current = input_name
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [current], ["as_float"], to=TensorProto.FLOAT))
        current = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [current], ["nchw"], perm=[0, 3, 1, 2]))
        current = "nchw"
    inits.append(numpy_helper.from_array(rng.normal(size=(8, channels, 3, 3)).astype(np.float32), "w"))
    inits.append(numpy_helper.from_array(rng.normal(size=(classes, 8)).astype(np.float32), "fc"))
    nodes += [helper.make_node("Conv", [current, "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("GlobalAveragePool", ["r"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    out = "logits"
    if final == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    elif final == "nan_when_dark":  # sqrt(mean pixel - 0.3): NaN scores for dark inputs only
        inits.append(numpy_helper.from_array(np.array(0.3, np.float32), "dark"))
        nodes.append(helper.make_node("ReduceMean", [current], ["brightness"], axes=[1, 2, 3], keepdims=0))
        nodes.append(helper.make_node("Sub", ["brightness", "dark"], ["shifted"]))
        nodes.append(helper.make_node("Sqrt", ["shifted"], ["root"]))
        nodes.append(helper.make_node("Unsqueeze", ["root", "one"], ["root2"]))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        nodes.append(helper.make_node("Add", ["logits", "root2"], ["nanout"]))
        out = "nanout"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, in_type, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def sine_classifier(size: int = 12) -> onnx.ModelProto:
    """Conv -> Sin -> GAP -> Gemm: Sin has no gradient rule, so only forward-only taps can read it."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Sin", ["conv"], ["wave"]),
             helper.make_node("GlobalAveragePool", ["wave"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "sine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


# ------------------------------------------------------------------ evidence on the shapes data set
# Shared by the perturbation-method tests; built on blackbox.metrics, so the tests judge maps with the
# same pointing game and deletion curve users get.

def shapes_evidence(model, method: str, *, n_images: int = 100, n_deletion: int = 40, **params) -> dict:
    """Pointing game (map maximum within 3 px of the object mask) over ``n_images`` images of
    ``make_shapes(seed=12345)``, and mean deletion AUC against random maps over the first ``n_deletion``.

    Deletion moves pixels to the image's mean colour: moving them to black leaves a black silhouette
    of the shape that the model still recognises, so on these images black deletion ranks the true
    object mask worse than a random order (measured: 0.42 vs 0.28) and cannot judge a map."""
    import blackbox
    from blackbox import metrics
    from blackbox.datasets.shapes import make_shapes

    batch = make_shapes(n_images, seed=12345)
    rng = np.random.default_rng(0)
    hits, ours, randoms = 0, [], []
    for i in range(n_images):
        exp = blackbox.explain(model, batch.images[i], method, **params)
        hits += metrics.pointing_game(exp.model_heatmap, mask=batch.masks[i], tolerance=3)
        if i < n_deletion:
            def auc(heat):
                return metrics.deletion(model, batch.images[i], heat, exp.target, step=64, baseline="mean").auc

            ours.append(auc(exp.model_heatmap))
            randoms.append(np.mean([auc(rng.random(exp.model_heatmap.shape)) for _ in range(2)]))
    return {"pointing": hits / n_images, "deletion": float(np.mean(ours)), "random": float(np.mean(randoms))}


def watermark_hits(model, method: str, *, n_images: int = 20, **params) -> float:
    """Share of watermarked triangles whose class-2 heatmap peaks on the watermark (box grown by 2 px)."""
    import blackbox
    from blackbox import metrics
    from blackbox.datasets.shapes import make_shapes

    batch = make_shapes(6 * n_images + 20, seed=777, watermark_class=2)
    chosen = np.flatnonzero(batch.watermarked)[:n_images]
    y0, y1, x0, x1 = batch.watermark_box
    grown = (max(0, y0 - 2), max(0, x0 - 2), y1 + 2, x1 + 2)  # (y0, x0, y1, x1), end-exclusive
    hits = sum(metrics.pointing_game(blackbox.explain(model, batch.images[i], method, target=2, **params).model_heatmap,
                                     box=grown, tolerance=0) for i in chosen)
    return hits / len(chosen)
