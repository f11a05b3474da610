"""Batched perturbation methods: several images' masks share engine batches, with the numbers of one
image at a time, full ONNX Runtime calls across images, and no full-size masks of all images held."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import blackbox
from blackbox.datasets.shapes import make_shapes
from blackbox.inputs import prepare
from blackbox.masks import block_matrix
from blackbox.methods import METHODS
from blackbox.methods.base import Context
from blackbox.methods.batching import chunk_rows, row_chunks
from blackbox.methods.occlusion import occlusion, occlusion_many
from blackbox.methods.rise import rise, rise_many
from conftest import MODELS, real

SHAPES = MODELS / "shapes.onnx"


def contexts(model, images, *, score: str, seeds=None) -> list[Context]:
    """One context per image, each with its own target (cycling through the classes) and seed."""
    out = []
    for i, image in enumerate(images):
        sample = prepare(model, image)
        seed = None if seeds is None else seeds[i]
        out.append(Context(model=model, sample=sample, target=(3 * i + 1) % model.num_classes, score=score,
                           seed=seed, progress=False))
    return out


def assert_same(batched, single, tol: float) -> None:
    assert len(batched) == len(single)
    for b, s in zip(batched, single):
        scale = max(1e-6, float(np.abs(s.heatmap).max()))
        assert b.n_evals == s.n_evals
        assert b.attributions.shape == s.attributions.shape
        assert np.abs(b.attributions - s.attributions).max() <= tol * scale
        assert np.abs(b.heatmap - s.heatmap).max() <= tol * scale
        assert b.extras == s.extras


@pytest.fixture(scope="module")
def shapes8():
    """The shapes model with batch 8, so the batch arithmetic below is fixed."""
    return blackbox.load(SHAPES, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def shape_images():
    return list(make_shapes(7, seed=21).images)


def test_hook_is_registered():
    assert METHODS["occlusion"].many is occlusion_many
    assert METHODS["rise"].many is rise_many


def test_row_chunks_are_whole_batches():
    chunks = list(row_chunks([5, 5, 5], 4))
    assert [sum(b - a for _, a, b in c) for c in chunks] == [4, 4, 4, 3]
    assert chunks[1] == [(0, 4, 5), (1, 0, 3)]
    assert chunk_rows(13) % 13 == 0 and chunk_rows(13) >= 256 and chunk_rows(1000) == 4000


def test_score_masks_many_matches_score_masks(shapes_model, shape_images):
    """Interleaved rows, per-row matrices and two targets per image: each row equals its image alone."""
    model = shapes_model
    xs = np.stack([prepare(model, im).x for im in shape_images[:3]])
    baselines = np.stack([np.full_like(xs[0], 0.1 * i) for i in range(3)])
    rng = np.random.default_rng(0)
    masks = rng.random((11, 1, 4, 4)).astype(np.float32)
    rows = np.array([2, 0, 1, 1, 2, 0, 0, 2, 1, 0, 2])
    ry = np.stack([block_matrix(4, 64, 16)] * 11)[:, None] * rng.random((11, 1, 64, 1)).astype(np.float32)
    rx = np.stack([block_matrix(4, 64, 16)] * 11)[:, None]
    targets = [[0, 3], [2, 1], [3, 3]]
    out = model.score_masks_many(xs, masks, rows=rows, baselines=baselines, targets=targets, ry=ry, rx=rx)
    assert out.shape == (11, 2)
    for image in range(3):
        mine = rows == image
        alone = model.score_masks(xs[image], masks[mine], baseline=baselines[image], targets=targets[image],
                                  ry=ry[mine], rx=rx[mine])
        assert np.allclose(out[mine], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params", [{"window": 16, "stride": 16}, {"window": 32, "stride": 32},
                                    {"window": (1, 24, 24), "stride": (1, 20, 20), "baseline": "blur"}])
def test_occlusion_many_equals_one_by_one(shapes_model, shape_images, params):
    ctxs = contexts(shapes_model, shape_images, score="logit")
    assert_same(occlusion_many(ctxs, **params), [occlusion(c, **params) for c in ctxs], 1e-5)


@pytest.mark.parametrize("params", [{"n_masks": 45, "grid": 5}, {"n_masks": 30, "grid": (4, 6), "quasi_random": True,
                                                                  "baseline": "mean"}])
def test_rise_many_equals_one_by_one(shapes_model, shape_images, params):
    ctxs = contexts(shapes_model, shape_images, score="probability", seeds=[5, 6, 7, 8, 9, 10, 11])
    assert_same(rise_many(ctxs, **params), [rise(c, **params) for c in ctxs], 1e-5)


def test_mixed_models_keep_input_order(shapes_model, shortcut_model, shape_images):
    """Contexts of two models run as two groups; results come back in the order given."""
    ctxs = contexts(shapes_model, shape_images[:2], score="logit") + \
        contexts(shortcut_model, shape_images[2:4], score="logit")
    ctxs = [ctxs[0], ctxs[2], ctxs[1], ctxs[3]]
    assert_same(occlusion_many(ctxs, window=32, stride=32), [occlusion(c, window=32, stride=32) for c in ctxs], 1e-5)


@pytest.fixture(scope="module")
def mobilenet():
    return blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), device="cpu", preprocess="imagenet")


@pytest.fixture(scope="module")
def photos():
    names = ["cat.jpg", "boat.jpg", "flamingo.jpg"]
    return [str(real("images", name)) for name in names]


def test_real_model_occlusion_and_rise(mobilenet, photos):
    """MobileNetV2-int8 on photos, a different target per photo: 17 occlusion rows per photo share
    batches; RISE keeps each photo's own random masks."""
    ctxs = contexts(mobilenet, photos, score="logit", seeds=[1, 2, 3])
    for c, target in zip(ctxs, (281, 484, 130)):
        c.target = target
    assert_same(occlusion_many(ctxs, window=56, stride=56), [occlusion(c, window=56, stride=56) for c in ctxs],
                1e-4)
    for c in ctxs:
        c.score = "probability"
    assert_same(rise_many(ctxs, n_masks=24, grid=7), [rise(c, n_masks=24, grid=7) for c in ctxs], 1e-4)


class _Calls:
    """Rows per ONNX Runtime call of the perturbation sessions (a spy on run_with_iobinding)."""

    def __init__(self, monkeypatch):
        self.rows: list[int] = []
        real_run = ort.InferenceSession.run_with_iobinding

        def spy(session, binding, *args, **kwargs):
            result = real_run(session, binding, *args, **kwargs)
            self.rows.append(int(binding.get_outputs()[0].shape()[0]))
            return result

        monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", spy)


def test_calls_are_full_batches_across_images(shapes8, shape_images, monkeypatch):
    """5 rows per image (4 windows + the image), 7 images, batch 8: 35 rows in 5 calls (4 full), where
    one image at a time takes 14 calls of 1 or 4 rows."""
    ctxs = contexts(shapes8, shape_images, score="logit")
    occlusion(ctxs[0], window=32, stride=32)  # sessions built outside the count
    occlusion_many(ctxs[:1], window=32, stride=32)
    calls = _Calls(monkeypatch)
    for c in ctxs:
        occlusion(c, window=32, stride=32)
    assert calls.rows == [1, 4] * 7
    calls.rows.clear()
    occlusion_many(ctxs, window=32, stride=32)
    assert calls.rows == [8, 8, 8, 8, 3]
    calls.rows.clear()
    rise_many(contexts(shapes8, shape_images, score="probability", seeds=list(range(7))), n_masks=20, grid=4)
    assert calls.rows == [8] * 17 + [4]  # 140 rows


def test_memory_holds_no_full_size_masks_of_all_images(shapes8, shape_images, monkeypatch):
    """RISE on 7 images x 300 masks: full-size masks of all images would be 7 * 300 * 64 * 64 * 4 bytes
    (34 MB). What reaches the engine per call is one chunk of small grids, and the peak of Python-side
    memory stays far below one image's full-size masks."""
    ctxs = contexts(shapes8, shape_images, score="probability", seeds=list(range(7)))
    rise_many(ctxs[:1], n_masks=8, grid=4)  # session built before measuring
    sent: list[tuple[tuple[int, ...], int]] = []
    model_type = type(shapes8)
    real_many = model_type.score_masks_many

    def spy(self, xs, masks, **kwargs):
        sent.append((np.shape(masks), np.shape(xs)[0]))
        return real_many(self, xs, masks, **kwargs)

    monkeypatch.setattr(model_type, "score_masks_many", spy)
    tracemalloc.start()
    rise_many(ctxs, n_masks=300, grid=4)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    one_image_full = 300 * 64 * 64 * 4
    assert peak < one_image_full / 2, peak
    chunk = chunk_rows(8)
    assert sum(shape[0] for shape, _ in sent) == 7 * 300
    assert all(shape[0] <= chunk and shape[1:] == (1, 4, 4) for shape, _ in sent)
    assert max(images for _, images in sent) <= 2  # a chunk of 256 rows spans at most two of these images
