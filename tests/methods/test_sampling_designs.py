"""The opt-in sampling designs: LIME's orthogonal fold-over blocks and KernelSHAP's leverage sampling.

Each must estimate the same quantity as the reference tool's own sampling (lime's surrogate on uniform
rows, the Shapley values) and do it from fewer evaluations on games whose answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from detectors import concept_image, detector_model
from games import brute_force_shapley

import blackbox
from blackbox.methods.kernel_shap import (
    draw_weights,
    kernel_shap_values,
    leverage_coalitions,
    size_distribution,
    stratified_pairs,
)
from blackbox.methods.lime import OrthogonalDesign, fit_lime, kernel_weights, lime_random_state, lime_samples


def test_orthogonal_blocks_are_balanced_uncorrelated_and_folded_over():
    m = 11  # K = 16: blocks of 32 rows
    design = OrthogonalDesign(np.random.default_rng(0), m)
    for _ in range(5):
        block = design.take(32)
        assert np.array_equal(block[0::2] + block[1::2], np.ones((16, m)))  # each row, then its complement
        assert np.array_equal(block.sum(axis=0), np.full(m, 16))  # every feature on in half the rows
        centred = 2.0 * block - 1.0
        gram = centred.T @ centred
        assert np.array_equal(gram, 32.0 * np.eye(m))  # any two features uncorrelated
        # main effects free of two-feature interactions: no column is aliased with a product of two
        products = np.stack([centred[:, i] * centred[:, j] for i, j in itertools.combinations(range(m), 2)], 1)
        assert np.abs(centred.T @ products).max() == 0


def test_orthogonal_rows_are_uniform_one_by_one():
    m = 4
    design = OrthogonalDesign(np.random.default_rng(1), m)
    rows = design.take(16 * 4000)  # K = 8: blocks of 16
    codes = rows[0::16] @ (2 ** np.arange(m))  # one row per block: independent draws
    assert np.allclose(np.bincount(codes, minlength=16) / len(codes), 1 / 16, atol=0.012)
    # the stream hands out every row once, in order, whatever the request sizes
    again = OrthogonalDesign(np.random.default_rng(1), m)
    parts = np.concatenate([again.take(k) for k in (3, 17, 1, 43)])
    assert np.array_equal(parts, rows[:64])


def _lime_coefficients(rows: np.ndarray, f) -> np.ndarray:
    values = f(rows)
    weights = kernel_weights(rows, 0.25)
    return fit_lime(rows, values, weights, num_features=100000, feature_selection="none")["coefficients"]


def test_orthogonal_lime_reaches_limes_limit_from_fewer_samples():
    """A saturating game with interactions (like a classifier's probability): at 160 samples the
    orthogonal design's surrogate is closer to lime's 60,000-sample surrogate than lime's own draws."""
    m = 24
    rng = np.random.default_rng(5)
    w = rng.normal(size=m)
    pairs = rng.integers(0, m, size=(12, 2))

    def f(rows):
        z = rows.astype(np.float64)
        inner = z @ w * 0.6 + 0.8 * (z[:, pairs[:, 0]] * z[:, pairs[:, 1]]).sum(axis=1) - 2.0
        return 1.0 / (1.0 + np.exp(-inner))

    limit = _lime_coefficients(lime_samples(lime_random_state(123), 60000, m), f)
    errors = {"lime": [], "orthogonal": []}
    for seed in range(24):
        random_rows = lime_samples(lime_random_state(seed), 160, m)
        designed = np.concatenate([np.ones((1, m), np.int64),
                                   OrthogonalDesign(np.random.default_rng(seed), m).take(159)])
        errors["lime"].append(np.linalg.norm(_lime_coefficients(random_rows, f) - limit))
        errors["orthogonal"].append(np.linalg.norm(_lime_coefficients(designed, f) - limit))
    assert np.mean(errors["orthogonal"]) < 0.75 * np.mean(errors["lime"]), errors
    # and it converges to lime's limit, not to something else
    big = np.concatenate([np.ones((1, m), np.int64), OrthogonalDesign(np.random.default_rng(9), m).take(20000)])
    assert np.linalg.norm(_lime_coefficients(big, f) - limit) < 0.1 * np.mean(errors["lime"])


def test_leverage_draws_weight_back_to_the_shapley_kernel():
    """Sizes are drawn uniformly; with each draw's weight the weighted size frequencies are the kernel's."""
    m = 10
    rng = np.random.default_rng(0)
    rows = np.concatenate([stratified_pairs(rng, 9, m, "leverage") for _ in range(2000)])
    sizes = rows.sum(axis=1).astype(int)
    counts = np.bincount(sizes, minlength=m + 1)[1:m] / len(rows)
    assert np.allclose(counts, size_distribution(m, "leverage"), atol=0.01)
    assert np.allclose(counts, 1 / (m - 1), atol=0.01)
    weights = draw_weights(rows, "leverage")
    weighted = np.bincount(sizes, weights=weights, minlength=m + 1)[1:m] / weights.sum()
    assert np.allclose(weighted, size_distribution(m, "shap"), atol=0.01)
    assert np.allclose(rows.mean(axis=0), 0.5, atol=0.01)


def test_leverage_kernel_shap_is_exact_on_additive_games_and_beats_shaps_sampling():
    m = 12
    rng = np.random.default_rng(3)
    weights = rng.normal(size=m)
    phi, facts = kernel_shap_values(lambda z: np.asarray(z) @ weights + 0.4, m, n_samples=60,
                                    rng=np.random.default_rng(0), sampling="leverage")
    assert np.allclose(phi, weights, atol=1e-9) and facts["n_evals"] == 62

    big = 30
    w = np.random.default_rng(4).normal(size=big) * 0.5
    pairs = np.random.default_rng(5).integers(0, big, size=(big // 2, 2))

    def game(z):  # saturating, with interactions: a classifier's probability over superpixels
        z = np.asarray(z, np.float64)
        inner = z @ w[:z.shape[1]] + (z[:, pairs[:, 0] % z.shape[1]] * z[:, pairs[:, 1] % z.shape[1]]).sum(axis=1)
        return 1.0 / (1.0 + np.exp(3.0 - inner))

    # 2^30 coalitions: the Shapley values from 2 x 60,000 evaluations (the two estimates agree to ~0.015)
    exact = np.mean([kernel_shap_values(game, big, n_samples=60000, rng=np.random.default_rng(90 + k),
                                        sampling=sampling)[0] for k, sampling in enumerate(("shap", "leverage"))], 0)
    errors = {"shap": [], "leverage": []}
    for seed in range(30):
        for sampling in errors:
            phi, facts = kernel_shap_values(game, big, n_samples=300, rng=np.random.default_rng(seed),
                                            sampling=sampling)
            assert facts["n_evals"] == 302
            errors[sampling].append(np.linalg.norm(phi - exact))
    assert np.mean(errors["leverage"]) < 0.95 * np.mean(errors["shap"]), errors  # measured 0.85
    # consistent: more draws land closer to the Shapley values
    phi, _ = kernel_shap_values(game, big, n_samples=6000, rng=np.random.default_rng(1), sampling="leverage")
    assert np.linalg.norm(phi - exact) < 0.4 * np.mean(errors["leverage"])
    # a budget covering every coalition enumerates them: exact
    phi, facts = kernel_shap_values(game, 6, n_samples=62, rng=np.random.default_rng(0), sampling="leverage")
    assert facts["exact"] and np.allclose(phi, brute_force_shapley(game, 6), atol=1e-9)


def test_leverage_coalitions_count_each_coalition_once():
    rows, weights = leverage_coalitions(8, 200, np.random.default_rng(0))
    assert len(rows) == 200 and len({r.tobytes() for r in rows}) == 200 and np.all(weights > 0)


@pytest.fixture(scope="module")
def detector():
    model = blackbox.load(detector_model(), device="cpu")
    image, _ = concept_image("red", box=(8, 20, 8, 20))
    return model, image


@pytest.mark.parametrize("method, count, sampling", [("lime", "num_samples", "orthogonal"),
                                                     ("kernel_shap", "n_samples", "leverage")])
def test_designs_land_on_the_default_samplings_map(detector, method, count, sampling):
    """Through the public API: the design's map at a small budget is the default sampling's 8000-sample
    map (same quantity)."""
    model, image = detector
    params = {"segmentation": "grid", "segmentation_params": {"cells": 4}, "target": 0, "progress": False}
    big = blackbox.explain(model, image, method, seed=5, **{count: 8000}, **params)
    small = blackbox.explain(model, image, method, seed=0, sampling=sampling, **{count: 200}, **params)
    assert small.n_evals == 200 + (2 if method == "kernel_shap" else 0)
    assert np.corrcoef(small.model_heatmap.ravel(), big.model_heatmap.ravel())[0, 1] >= 0.95


def test_unknown_sampling_is_one_clear_line(detector):
    model, image = detector
    with pytest.raises(blackbox.BlackboxError, match="sampling"):
        blackbox.explain(model, image, "lime", sampling="sobol", num_samples=20)
