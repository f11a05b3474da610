"""RISE: exact against a NumPy implementation of the paper's masks, finds the object and the shortcut."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize

import blackbox
from blackbox.errors import ParameterError
from blackbox.inputs import prepare
from blackbox.masks import linear_matrix, reflect_linear_matrix
from blackbox.methods.rise import cell_sizes, draw_masks
from blackbox.datasets.shapes import make_shapes
from helpers import shapes_evidence, watermark_hits



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
