"""Occlusion equals a brute-force NumPy occlusion, and exposes the shortcut model's watermark."""

from __future__ import annotations

import math

import numpy as np
import pytest

import blackbox
from blackbox.errors import ParameterError
from blackbox.datasets.shapes import make_shapes, watermark_box


def brute_force_occlusion(model, x, target, window, stride, baseline, score):
    """Captum's definition, written out with full-size images and one forward pass per window."""
    c, h, w = x.shape
    wc, wh, ww = window
    sc, sh, sw = stride
    counts = [math.ceil((d - k) / s) + 1 for d, k, s in zip((c, h, w), window, stride)]
    full = model.scores(x[None], score=score)[0, target]
    total = np.zeros_like(x, dtype=np.float64)
    cover = np.zeros_like(x, dtype=np.float64)
    for i in range(counts[0]):
        for j in range(counts[1]):
            for k in range(counts[2]):
                m = np.zeros_like(x)
                m[i * sc: i * sc + wc, j * sh: j * sh + wh, k * sw: k * sw + ww] = 1
                occluded = x * (1 - m) + baseline * m
                diff = full - model.scores(occluded[None], score=score)[0, target]
                total += diff * m
                cover += m
    return total / cover


@pytest.mark.parametrize("window,stride,baseline", [((3, 8, 8), (3, 4, 4), 0.0), ((3, 10, 10), (3, 7, 7), 0.5),
                                                    ((1, 16, 16), (1, 12, 12), 0.0)])
def test_equals_brute_force(shapes_model, window, stride, baseline):
    image = make_shapes(1, seed=3).images[0]
    x = image.transpose(2, 0, 1).astype(np.float32) / 255.0  # the model's preprocessing: RGB / 255
    exp = blackbox.explain(shapes_model, x, "occlusion", window=window, stride=stride, baseline=baseline,
                           score="raw")
    want = brute_force_occlusion(shapes_model, x, exp.target, window, stride, baseline, "raw")
    np.testing.assert_allclose(exp.attributions, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert exp.n_evals == 1 + np.prod([math.ceil((d - k) / s) + 1 for d, k, s in zip(x.shape, window, stride)])


def test_defaults_suit_a_user_who_gives_none(shapes_model):
    exp = blackbox.explain(shapes_model, make_shapes(1, seed=4).images[0], "occlusion")
    assert exp.extras["window"] == [3, 8, 8] and exp.extras["stride"] == [3, 4, 4]
    assert exp.heatmap.shape == (64, 64) and exp.params["baseline"] == "mean"


def test_points_at_the_object(shapes_model):
    batch = make_shapes(40, seed=12345)
    hits = 0
    for image, mask in zip(batch.images, batch.masks):
        exp = blackbox.explain(shapes_model, image, "occlusion")
        y, x = np.unravel_index(np.argmax(exp.heatmap), exp.heatmap.shape)
        hits += bool(mask[max(0, y - 2): y + 3, max(0, x - 2): x + 3].any())
    assert hits >= 36, f"occlusion maximum on the object for only {hits}/40 images"


def test_reveals_the_shortcut_watermark(shortcut_model):
    batch = make_shapes(60, seed=777, watermark_class=2)
    y0, y1, x0, x1 = watermark_box()
    on_mark = total = 0
    for image, label in zip(batch.images, batch.labels):
        if label != 2:
            continue
        exp = blackbox.explain(shortcut_model, image, "occlusion", target=2)
        y, x = np.unravel_index(np.argmax(exp.heatmap), exp.heatmap.shape)
        on_mark += (y0 - 2 <= y < y1 + 2) and (x0 - 2 <= x < x1 + 2)
        total += 1
    assert total >= 5 and on_mark == total, f"watermark found in {on_mark}/{total} triangle images"


@pytest.mark.parametrize("params,word", [({"window": 65}, "window"), ({"window": 8, "stride": 9}, "stride"),
                                         ({"window": (3, 8, 8, 8)}, "window"), ({"stride": 0}, "stride"),
                                         ({"baseline": "sparkly"}, "baseline")])
def test_bad_parameters(shapes_model, params, word):
    image = make_shapes(1, seed=5).images[0]
    with pytest.raises(ParameterError, match=word):
        blackbox.explain(shapes_model, image, "occlusion", **params)
