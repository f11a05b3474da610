"""KernelSHAP: exact Shapley values with the full budget, shap.KernelExplainer's samples and solution,
efficiency always, and it finds the object and the shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import shap as shap  # test extra: missing means a broken install, not a skip
from games import brute_force_shapley
from helpers import shapes_evidence, watermark_hits

import blackbox
from blackbox.baselines import make_baseline
from blackbox.datasets.shapes import make_shapes
from blackbox.errors import ParameterError
from blackbox.inputs import prepare
from blackbox.methods.kernel_shap import explanation_to_shap, kernel_shap_values, sample_coalitions
from blackbox.segmentation import grid_segments


def table_game(m: int, seed: int):
    """A game with arbitrary interactions: every coalition has its own random value."""
    table = np.random.default_rng(seed).normal(size=2 ** m)
    powers = 2 ** np.arange(m)
    return lambda z: table[(np.asarray(z) > 0.5).astype(np.int64) @ powers]


def shap_kernel_explainer(value_fn, m: int, nsamples: int):
    """shap.KernelExplainer on the same game: background all-off, instance all-on, no L1 selection."""
    explainer = shap.KernelExplainer(lambda z: value_fn(z), np.zeros((1, m)))
    values = explainer.shap_values(np.ones((1, m)), nsamples=nsamples, l1_reg=False, silent=True)
    return np.ravel(values), explainer


@pytest.mark.parametrize("m", [2, 3, 8, 11])
def test_full_budget_is_exact_shapley(m):
    game = table_game(m, seed=m)
    phi, facts = kernel_shap_values(game, m, n_samples=2 ** m, rng=np.random.default_rng(0))
    assert facts["exact"] and facts["n_evals"] == 2 ** m
    assert np.abs(phi - brute_force_shapley(game, m)).max() < 1e-9
    theirs, _ = shap_kernel_explainer(game, m, 2 ** m - 2)
    assert np.abs(phi - theirs).max() < 1e-9


def test_enumerated_part_matches_kernel_explainer():
    """With a partial budget the fully enumerated subset sizes, their weights and the budget left for
    sampling are KernelExplainer's (the random part differs only in the random numbers)."""
    m, budget = 10, 300
    game = table_game(m, seed=1)
    coalitions, weights = sample_coalitions(m, budget, np.random.default_rng(0))
    _, explainer = shap_kernel_explainer(game, m, budget)
    sizes = explainer.maskMatrix.sum(axis=1)
    ours_sizes = coalitions.sum(axis=1)
    fixed = int(np.sum(np.minimum(sizes, m - sizes) <= 1))  # sizes 1 and 9 are enumerated: 20 coalitions
    assert fixed == 20 and np.all(np.minimum(ours_sizes[:fixed], m - ours_sizes[:fixed]) == 1)
    assert np.array_equal(coalitions[:fixed], explainer.maskMatrix[:fixed])
    assert np.allclose(weights[:fixed], explainer.kernelWeights[:fixed], rtol=1e-12)
    assert len(coalitions) == len(explainer.maskMatrix) == budget
    assert np.isclose(weights.sum(), explainer.kernelWeights.sum())
    assert np.all(np.minimum(ours_sizes[fixed:], m - ours_sizes[fixed:]) >= 2)


def test_efficiency_and_additive_games():
    m = 30
    rng = np.random.default_rng(5)
    w = rng.normal(size=m)
    phi, facts = kernel_shap_values(lambda z: np.asarray(z) @ w + 0.5, m, n_samples=100, rng=rng)
    assert np.abs(phi - w).max() < 1e-9  # an additive game is recovered from any identifiable sample
    game = table_game(12, seed=3)
    phi, facts = kernel_shap_values(game, 12, n_samples=200, rng=rng)
    assert abs(phi.sum() - (facts["full_value"] - facts["null_value"])) < 1e-12
    assert not facts["exact"] and facts["n_coalitions"] == 200


def test_shapes_model_exact_and_same_as_kernel_explainer(shapes_model):
    """Grid 3x3 superpixels (M=9), full budget: brute-force Shapley = ours = KernelExplainer, all fed the
    same coalition value function (the model scored through score_masks)."""
    image = make_shapes(1, seed=21).images[0]
    exp = blackbox.explain(shapes_model, image, "kernel_shap", segmentation="grid",
                           segmentation_params={"cells": 3}, n_samples=510)
    sample = prepare(shapes_model, image)
    base = make_baseline(shapes_model, sample, "mean")
    segments = grid_segments(64, 64, 3)

    def value_fn(z):
        return shapes_model.score_masks(sample.x, np.asarray(z, np.float32), baseline=base, targets=[exp.target],
                                        score="probability", segments=segments)[:, 0].astype(np.float64)

    ours = exp.extras["shap_values"]
    assert exp.extras["exact"] and exp.n_evals == 512
    assert np.abs(ours - brute_force_shapley(value_fn, 9)).max() < 1e-6
    theirs, _ = shap_kernel_explainer(value_fn, 9, 510)
    assert np.abs(ours - theirs).max() < 1e-6
    assert abs(ours.sum() - (exp.extras["full_value"] - exp.extras["null_value"])) < 1e-9
    assert np.allclose(exp.model_heatmap, ours[segments].astype(np.float32))


def test_shap_image_plot(shapes_model):
    import matplotlib

    matplotlib.use("Agg")
    image = make_shapes(1, seed=2).images[0]
    exp = blackbox.explain(shapes_model, image, "kernel_shap", n_samples=60, segmentation="grid",
                           segmentation_params={"cells": 4})
    converted = explanation_to_shap(exp)
    assert converted.values.shape == (1, 64, 64, 3, 1)
    assert np.allclose(converted.values[0, :, :, :, 0].sum(-1), exp.heatmap, atol=1e-6)
    shap.image_plot(converted, show=False)
    matplotlib.pyplot.close("all")


def test_pointing_game_and_deletion(shapes_model):
    result = shapes_evidence(shapes_model, "kernel_shap", n_samples=400)
    assert result["pointing"] >= 0.9, result
    assert result["deletion"] < result["random"], result


def test_finds_the_watermark_shortcut(shortcut_model):
    assert watermark_hits(shortcut_model, "kernel_shap", n_samples=250) >= 0.8


@pytest.mark.parametrize("params,name", [
    ({"n_samples": 20}, "n_samples"), ({"n_samples": 0}, "n_samples"), ({"segmentation": "blobs"}, "segmentation"),
    ({"segmentation": np.zeros((64, 65), np.int64)}, "segmentation"),
])
def test_bad_parameters(shapes_model, params, name):
    image = make_shapes(1, seed=1).images[0]
    with pytest.raises(ParameterError, match=name):
        blackbox.explain(shapes_model, image, "kernel_shap", **params)
