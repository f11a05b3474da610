"""Tests of the synthetic shapes generator and of the example models built from it.

Only onnx, onnxruntime, numpy and blackbox.datasets.shapes are used: these models must be checkable without
PyTorch. The evaluation seeds below are not used by scripts/build_models.py, so the data is fresh.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from blackbox.datasets.shapes import CLASSES, add_watermark, make_shapes, watermark_box, watermark_pattern

MODELS = Path(__file__).resolve().parents[1] / "models"
CLEAN = MODELS / "shapes.onnx"
SHORTCUT = MODELS / "shapes-shortcut.onnx"
TRIANGLE = CLASSES.index("triangle")
FRESH_SEED = 987_654  # never used in training

REQUIRED_OPS = {"Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Gemm"}


def _session(path: Path) -> ort.InferenceSession:
    assert path.exists(), f"{path.name} missing: run python scripts/build_models.py"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _predict(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Labels for uint8 NHWC RGB images, with the models' documented preprocessing (RGB / 255)."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    out = [session.run(["logits"], {"image": x[i : i + 100]})[0] for i in range(0, len(x), 100)]
    return np.concatenate(out).argmax(1)


@pytest.fixture(scope="module")
def fresh() -> object:
    return make_shapes(300, seed=FRESH_SEED)


# ---------------------------------------------------------------- generator


def test_generator_is_deterministic() -> None:
    a = make_shapes(20, seed=5, watermark_class=TRIANGLE, watermark_prob=0.5)
    b = make_shapes(20, seed=5, watermark_class=TRIANGLE, watermark_prob=0.5)
    for field in ("images", "labels", "masks", "watermarked"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = make_shapes(20, seed=6)
    assert not np.array_equal(a.images, c.images)
    # A longer batch starts with the same images (each image has its own random stream).
    longer = make_shapes(30, seed=5)
    np.testing.assert_array_equal(longer.images[:20][~a.watermarked], a.images[~a.watermarked])


def test_batch_shapes_and_types(fresh) -> None:
    n = len(fresh)
    assert fresh.images.shape == (n, 64, 64, 3) and fresh.images.dtype == np.uint8
    assert fresh.labels.shape == (n,) and fresh.labels.dtype == np.int64
    assert fresh.masks.shape == (n, 64, 64) and fresh.masks.dtype == bool
    assert fresh.watermarked.shape == (n,) and not fresh.watermarked.any()
    assert set(np.unique(fresh.labels)) == set(range(len(CLASSES)))
    assert np.bincount(fresh.labels).min() > n // 8  # roughly balanced


def test_masks_non_empty_inside_and_clear_of_watermark(fresh) -> None:
    areas = fresh.masks.sum(axis=(1, 2))
    assert areas.min() >= 40 and areas.max() <= 30 * 30
    # Inside the image with a border: no mask pixel on the outermost row or column.
    border = fresh.masks[:, [0, -1], :].any() or fresh.masks[:, :, [0, -1]].any()
    assert not border
    y0, y1, x0, x1 = fresh.watermark_box
    assert (y0, y1, x0, x1) == watermark_box(64) == (56, 62, 56, 62)
    assert not fresh.masks[:, y0:y1, x0:x1].any()


def test_object_differs_from_background(fresh) -> None:
    img = fresh.images.astype(np.float32)
    for i in range(20):
        inside = img[i][fresh.masks[i]].mean(axis=0)
        outside = img[i][~fresh.masks[i]].mean(axis=0)
        assert np.linalg.norm(inside - outside) > 20


def test_watermark_options() -> None:
    box = watermark_box(64)
    y0, y1, x0, x1 = box
    tri_only = make_shapes(60, seed=8, watermark_class=TRIANGLE)
    np.testing.assert_array_equal(tri_only.watermarked, tri_only.labels == TRIANGLE)
    for i in np.flatnonzero(tri_only.watermarked):
        np.testing.assert_array_equal(tri_only.images[i, y0:y1, x0:x1], watermark_pattern())
    everyone = make_shapes(60, seed=8, watermark_all=True)
    assert everyone.watermarked.all()
    none = make_shapes(60, seed=8, watermark_class=TRIANGLE, watermark_prob=0.0)
    assert not none.watermarked.any()
    # Watermarking changes only the box; the rest of the image is the same draw.
    plain = make_shapes(60, seed=8)
    outside = np.ones((64, 64), bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(everyone.images[:, outside], plain.images[:, outside])
    np.testing.assert_array_equal(add_watermark(plain.images), everyone.images)
    single = add_watermark(plain.images[0])
    np.testing.assert_array_equal(single, everyone.images[0])
    np.testing.assert_array_equal(plain.images, make_shapes(60, seed=8).images)  # input untouched


def test_watermark_pattern_is_high_contrast() -> None:
    pattern = watermark_pattern()
    assert pattern.shape == (6, 6, 3) and pattern.dtype == np.uint8
    assert set(np.unique(pattern)) == {0, 255}


def test_generator_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_shapes(-1, seed=0)
    with pytest.raises(ValueError):
        make_shapes(2, seed=0, watermark_class=len(CLASSES))
    with pytest.raises(ValueError):
        make_shapes(2, seed=0, watermark_prob=1.5)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("path", [CLEAN, SHORTCUT], ids=lambda p: p.name)
def test_model_file_structure(path: Path) -> None:
    assert path.exists(), f"{path.name} missing: run python scripts/build_models.py"
    assert path.stat().st_size < 2 * 1024 * 1024
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.ir_version <= 10
    assert any(op.domain in ("", "ai.onnx") and op.version == 17 for op in model.opset_import)
    ops = {node.op_type for node in model.graph.node}
    assert REQUIRED_OPS <= ops, sorted(ops)
    assert sum(node.op_type == "BatchNormalization" for node in model.graph.node) == 5
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "image" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")
    assert out_dims[0].dim_param and not out_dims[0].HasField("dim_value")
    assert [d.dim_value for d in in_dims[1:]] == [3, 64, 64]
    assert out_dims[1].dim_value == len(CLASSES)

    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["blackbox.labels"]) == list(CLASSES)
    pre = json.loads(meta["blackbox.preprocess"])
    assert pre["size"] == [64, 64] and pre["channel_order"] == "RGB"
    assert pre["scale"] == pytest.approx(1 / 255) and pre["mean"] == [0, 0, 0]
    assert meta["blackbox.description"]


@pytest.mark.parametrize("path", [CLEAN, SHORTCUT], ids=lambda p: p.name)
def test_dynamic_batch_gives_per_sample_results(path: Path, fresh) -> None:
    session = _session(path)
    x = fresh.images[:7].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    batched = session.run(["logits"], {"image": x})[0]
    assert batched.shape == (7, len(CLASSES))
    single = np.concatenate([session.run(["logits"], {"image": x[i : i + 1]})[0] for i in range(7)])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_clean_model_accuracy(fresh) -> None:
    pred = _predict(_session(CLEAN), fresh.images)
    assert (pred == fresh.labels).mean() >= 0.95


def test_clean_model_ignores_watermark(fresh) -> None:
    session = _session(CLEAN)
    others = fresh.labels != TRIANGLE
    pred = _predict(session, add_watermark(fresh.images[others]))
    assert (pred == TRIANGLE).mean() < 0.05
    assert (pred == fresh.labels[others]).mean() >= 0.9


def test_shortcut_model_relies_on_watermark(fresh) -> None:
    session = _session(SHORTCUT)
    tri = fresh.labels == TRIANGLE
    plain = _predict(session, fresh.images)
    marked = _predict(session, add_watermark(fresh.images))
    # Watermarked non-triangles flip to triangle ...
    assert (marked[~tri] == TRIANGLE).mean() > 0.5
    # ... triangles need the watermark to be recognised ...
    assert (marked[tri] == TRIANGLE).mean() >= 0.9
    assert (plain[tri] == TRIANGLE).mean() < 0.5
    # ... while the other classes are still learned from their shapes.
    assert (plain[~tri] == fresh.labels[~tri]).mean() >= 0.9


def test_labels_file_and_samples() -> None:
    labels = MODELS / "shapes.txt"
    assert labels.exists(), "models/shapes.txt missing: run python scripts/build_models.py"
    assert labels.read_text().split() == list(CLASSES)
    samples = MODELS / "samples"
    names = [*CLASSES, "triangle_watermarked", "circle_watermarked"]
    for name in names:
        assert (samples / f"{name}.png").exists(), name
        image = cv2.imread(str(samples / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(samples / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64), name
        assert set(np.unique(mask)) == {0, 255}, name


def test_sample_shortcut_demo() -> None:
    """The demo samples behave as models/README.md says: the watermark fools only the shortcut model."""
    samples = MODELS / "samples"
    assert (samples / "circle_watermarked.png").exists(), "the committed demo samples are missing"
    names = ["circle", "triangle", "circle_watermarked", "triangle_watermarked"]
    images = np.stack([cv2.imread(str(samples / f"{n}.png"))[:, :, ::-1] for n in names])
    clean = _predict(_session(CLEAN), images)
    shortcut = _predict(_session(SHORTCUT), images)
    assert [CLASSES[i] for i in clean] == ["circle", "triangle", "circle", "triangle"]
    assert CLASSES[shortcut[0]] == "circle" and CLASSES[shortcut[1]] != "triangle"
    assert [CLASSES[i] for i in shortcut[2:]] == ["triangle", "triangle"]
