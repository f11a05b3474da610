"""RISE: exact against a NumPy implementation of the paper's masks, finds the object and the shortcut.

Also holds the evidence helpers (pointing game, deletion AUC, watermark hits) that the LIME and KernelSHAP
tests import.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.transform import resize

import blackbox
from blackbox.baselines import make_baseline
from blackbox.errors import ParameterError
from blackbox.inputs import prepare
from blackbox.masks import linear_matrix, reflect_linear_matrix
from blackbox.methods.rise import cell_sizes, draw_masks
from blackbox.shapes import make_shapes

N_IMAGES = 100
N_DELETION = 40


# --------------------------------------------------------------------------- evidence helpers

def deletion_aucs(model, x: np.ndarray, baseline: np.ndarray, maps: list[np.ndarray], target: int,
                  step: int = 64) -> np.ndarray:
    """Deletion AUC per map: pixels go to the baseline in decreasing order of the map, ``step`` at a time;
    trapezoid area under the target probability over the removed fraction. All curves in one ONNX call."""
    _, height, width = x.shape
    n = height * width
    counts = list(range(0, n + 1, step)) + ([n] if n % step else [])
    keep = np.ones((len(maps), len(counts), n), np.float32)
    for j, saliency in enumerate(maps):
        order = np.argsort(-np.asarray(saliency).ravel(), kind="stable")
        for i, count in enumerate(counts):
            keep[j, i, order[:count]] = 0.0
    eye_h, eye_w = np.eye(height, dtype=np.float32), np.eye(width, dtype=np.float32)
    probs = model.score_masks(x, keep.reshape(-1, 1, height, width), baseline=baseline, targets=[target],
                              score="probability", ry=eye_h, rx=eye_w)[:, 0].reshape(len(maps), -1)
    return np.trapezoid(probs, np.asarray(counts) / n, axis=1)


def shapes_evidence(model, method: str, *, n_images: int = N_IMAGES, n_deletion: int = N_DELETION,
                    **params) -> dict:
    """Pointing game (heatmap maximum inside the object mask dilated by 3 px) over ``n_images`` images of
    ``make_shapes(seed=12345)``, and mean deletion AUC against random maps over the first ``n_deletion``.

    Deletion moves pixels to the image's mean colour: moving them to black leaves a black silhouette
    of the shape that the model still recognises, so on these images black deletion ranks the true
    object mask worse than a random order (measured: 0.42 vs 0.28) and cannot judge a map."""
    batch = make_shapes(n_images, seed=12345)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    rng = np.random.default_rng(0)
    hits, ours, randoms = 0, [], []
    for i in range(n_images):
        exp = blackbox.explain(model, batch.images[i], method, **params)
        heat = exp.model_heatmap
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        hits += bool(cv2.dilate(batch.masks[i].astype(np.uint8), kernel)[y, x])
        if i < n_deletion:
            sample = prepare(model, batch.images[i])
            aucs = deletion_aucs(model, sample.x, make_baseline(model, sample, "mean"),
                                 [heat, rng.random(heat.shape), rng.random(heat.shape)], exp.target)
            ours.append(aucs[0])
            randoms.append(aucs[1:].mean())
    return {"pointing": hits / n_images, "deletion": float(np.mean(ours)), "random": float(np.mean(randoms))}


def watermark_hits(model, method: str, *, n_images: int = 20, **params) -> float:
    """Share of watermarked triangles whose class-2 heatmap peaks on the watermark (box grown by 2 px)."""
    batch = make_shapes(6 * n_images + 20, seed=777, watermark_class=2)
    chosen = np.flatnonzero(batch.watermarked)[:n_images]
    y0, y1, x0, x1 = batch.watermark_box
    box = np.zeros(batch.images.shape[1:3], bool)
    box[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
    hits = 0
    for i in chosen:
        heat = blackbox.explain(model, batch.images[i], method, target=2, **params).model_heatmap
        hits += bool(box[np.unravel_index(np.argmax(heat), heat.shape)])
    return hits / len(chosen)


# --------------------------------------------------------------------------- RISE itself

def paper_rise(model, x: np.ndarray, target: int, *, n: int, grid: int, p_keep: float, seed: int,
               quasi_random: bool = False) -> np.ndarray:
    """RISE as the authors' notebook writes it: full masks from skimage resize (order 1, mode reflect),
    cropped at the shift, multiplied into the input, probabilities weighted and summed."""
    _, height, width = x.shape
    cell = cell_sizes(height, width, (grid, grid))
    grids, shifts = draw_masks(np.random.default_rng(seed), n, (grid, grid), p_keep, cell, quasi_random=quasi_random)
    up = ((grid + 1) * cell[0], (grid + 1) * cell[1])
    masks = np.empty((n, height, width), np.float32)
    for i in range(n):
        big = resize(grids[i], up, order=1, mode="reflect", anti_aliasing=False)
        masks[i] = big[shifts[i, 0]:shifts[i, 0] + height, shifts[i, 1]:shifts[i, 1] + width]
    probs = model.scores(x[None] * masks[:, None], score="probability")[:, target]
    return np.tensordot(probs.astype(np.float64), masks, axes=1) / (n * p_keep)


@pytest.mark.parametrize("quasi_random", [False, True])
def test_matches_paper_implementation(shapes_model, quasi_random):
    image = make_shapes(1, seed=5).images[0]
    exp = blackbox.explain(shapes_model, image, "rise", n_masks=300, grid=7, p_keep=0.5, seed=11,
                           quasi_random=quasi_random)
    x = prepare(shapes_model, image).x
    reference = paper_rise(shapes_model, x, exp.target, n=300, grid=7, p_keep=0.5, seed=11,
                           quasi_random=quasi_random)
    assert exp.n_evals == 300
    assert np.abs(exp.model_heatmap - reference).max() < 1e-5 * max(1.0, np.abs(reference).max())
    assert exp.attributions.shape == (3, 64, 64)


@pytest.mark.parametrize("n_in,n_out,shift", [(7, 80, 0), (7, 80, 9), (5, 64, 3), (8, 224, 27), (2, 33, 1)])
def test_reflect_matrix_is_skimage_resize(n_in, n_out, shift):
    """The per-shift matrices reproduce skimage's resize + crop for every grid cell (unit impulses)."""
    cell = int(np.ceil(n_out / n_in))
    up = (n_in + 1) * cell
    matrix = reflect_linear_matrix(n_in, n_out, scale=up / n_in, offset=float(shift))
    eye = np.eye(n_in, dtype=np.float32)
    reference = np.stack([resize(eye[:, j:j + 1], (up, 1), order=1, mode="reflect", anti_aliasing=False)[:, 0]
                          for j in range(n_in)], axis=1)[shift:shift + n_out]
    assert np.abs(matrix - reference).max() < 1e-6
    # away from the ends it is plain (clamped) linear interpolation
    clamped = linear_matrix(n_in, n_out, scale=up / n_in, offset=float(shift))
    centres = (np.arange(n_out) + shift + 0.5) * n_in / up - 0.5
    inner = (centres >= 0) & (centres <= n_in - 1)
    assert inner.any() and np.abs(matrix[inner] - clamped[inner]).max() < 1e-6


def test_rectangular_grid_and_seed(shapes_model):
    image = make_shapes(1, seed=8).images[0]
    a = blackbox.explain(shapes_model, image, "rise", n_masks=64, grid=(4, 9), seed=3)
    b = blackbox.explain(shapes_model, image, "rise", n_masks=64, grid=(4, 9), seed=3)
    c = blackbox.explain(shapes_model, image, "rise", n_masks=64, grid=(4, 9), seed=4)
    assert np.array_equal(a.model_heatmap, b.model_heatmap)
    assert not np.array_equal(a.model_heatmap, c.model_heatmap)
    assert a.extras["cell"] == [16, 8]


def test_pointing_game_and_deletion(shapes_model):
    result = shapes_evidence(shapes_model, "rise", n_masks=600)
    assert result["pointing"] >= 0.9, result
    assert result["deletion"] < result["random"], result


def test_finds_the_watermark_shortcut(shortcut_model):
    assert watermark_hits(shortcut_model, "rise", n_masks=400) >= 0.8


@pytest.mark.parametrize("params,name", [({"grid": 1}, "grid"), ({"p_keep": 0.0}, "p_keep"), ({"p_keep": 1.0}, "p_keep"),
                                         ({"p_keep": 1.5}, "p_keep"), ({"n_masks": 0}, "n_masks"),
                                         ({"grid": (3, 1)}, "grid"), ({"grid": "big"}, "grid")])
def test_bad_parameters(shapes_model, params, name):
    image = make_shapes(1, seed=1).images[0]
    with pytest.raises(ParameterError, match=name):
        blackbox.explain(shapes_model, image, "rise", **params)
