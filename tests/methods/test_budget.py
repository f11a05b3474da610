"""budget="auto": the split-half stopping rule, the designs it samples with, and the methods that use it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from detectors import SIZE, concept_image, detector_model
from games import brute_force_shapley

import blackbox
from blackbox.errors import ParameterError
from blackbox.methods.budget import (
    StoppingRule,
    prophecy,
    run_rounds,
    split_half_reliability,
)
from blackbox.methods.kernel_shap import (
    kernel_shap_auto,
    size_distribution,
    stratified_pairs,
)
from blackbox.methods.lime import (
    fit_lime,
    kernel_weights,
    lime_auto_samples,
    paired_samples,
)
from blackbox.methods.rise import plan_rise, rise_auto_sums


def test_split_half_reliability_is_spearman_brown():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=20000)
    # halves = signal + independent noise of variance v: r = 1 / (1 + v), rho = 2 r / (1 + r)
    for v in (0.25, 1.0, 4.0):
        a = signal + math.sqrt(v) * rng.normal(size=signal.size)
        b = signal + math.sqrt(v) * rng.normal(size=signal.size)
        r = 1.0 / (1.0 + v)
        assert split_half_reliability(a, b) == pytest.approx(2 * r / (1 + r), abs=0.02)
    assert split_half_reliability(signal, signal) == pytest.approx(1.0)
    assert split_half_reliability(np.full(9, 0.3), np.full(9, 0.3)) == 1.0  # a model that ignores the masks
    assert split_half_reliability(np.zeros(9), signal[:9]) == 0.0
    assert split_half_reliability(signal, -signal) == 0.0


def test_prophecy_reaches_the_tolerance():
    # rho = 0.5 at n: the Spearman-Brown prophecy needs k = 0.95 * 0.5 / (0.5 * 0.05) = 19x; one round at most
    # doubles (a small sample's reliability is biased low, so a long leap overshoots: see budget.py)
    assert prophecy(100, 0.5, 0.95) == 200
    k = prophecy(1000, 0.92, 0.95) / 1000  # within one round's reach (1.65x needed)
    assert 0.95 <= k * 0.92 / (1 + (k - 1) * 0.92) < 0.96  # a little past the tolerance
    assert prophecy(1000, 0.9, 0.95) == 2000  # 2.3x wanted (with the margin): one round doubles
    assert prophecy(100, 0.949, 0.95) == 125  # never less than 1.25x


def _noisy_game(noise: float, m: int = 16):
    """An additive game plus deterministic per-coalition noise (a hash of the coalition): the noise makes
    sampled estimates vary, its size makes the game easy or hard."""
    weights = np.linspace(-1.0, 2.0, m)

    def value(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        codes = z @ (2.0 ** np.arange(m))
        jitter = np.sin(codes * 12.9898) * 43758.5453
        return z @ weights + noise * (jitter - np.floor(jitter) - 0.5)

    return value


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_easy_games_stop_earlier_than_hard_ones(method):
    rule = StoppingRule(tolerance=0.95, first=64, maximum=6000, step=4)
    used = {}
    for name, noise in (("easy", 0.5), ("hard", 8.0)):
        game = _noisy_game(noise)
        if method == "lime":
            rows, _, report = lime_auto_samples(
                game, 16, np.random.default_rng(1),
                lambda x, y: fit_lime(x, y, kernel_weights(x, 0.25), num_features=100, feature_selection="none")[
                    "coefficients"], rule)
            assert len(rows) == report.n_evals
        else:
            _, facts, report = kernel_shap_auto(game, 16, rng=np.random.default_rng(1), rule=rule)
            assert facts["n_evals"] == report.n_evals
        assert report.converged and report.reliability >= 0.95
        used[name] = report.n_evals
    assert used["easy"] < used["hard"] / 2, used


def test_rise_expectation_is_unbiased_plain_and_sobol():
    """8x8 input, 2x2 grid, p_keep 0.5: every (grid, shift) pair is equally likely, so the RISE map of a
    linear score is the mean over the 16 grids x 16 shifts, computed here exactly."""
    plan = plan_rise((1, 8, 8), 64, 2, 0.5)
    pixel_weights = np.random.default_rng(3).normal(size=(8, 8))

    def masks(g, shifts):
        return plan.ry_table[shifts[:, 0]] @ g @ np.swapaxes(plan.rx_table[shifts[:, 1]], 1, 2)

    def score(g, shifts):
        return np.einsum("nhw,hw->n", masks(g, shifts), pixel_weights) + 0.5

    grids = np.array(list(itertools.product([0.0, 1.0], repeat=4)), np.float32).reshape(16, 2, 2)
    shifts = np.array(list(itertools.product(range(4), range(4))))
    g_all = np.repeat(grids, len(shifts), axis=0)
    s_all = np.tile(shifts, (len(grids), 1))
    exact = np.einsum("n,nhw->hw", score(g_all, s_all), masks(g_all, s_all)) / (len(g_all) * 0.5)
    never = StoppingRule(tolerance=0.999999, first=64, maximum=64, step=2)
    for quasi_random in (False, True):
        maps = []
        for seed in range(300):
            sums, counts, report = rise_auto_sums(plan, score, np.random.default_rng(seed), quasi_random, never)
            assert counts == [32, 32] and report.n_evals == 64
            maps.append(plan.saliency(sums[0] + sums[1], 64))
        maps = np.stack(maps)
        error = np.abs(maps.mean(axis=0) - exact)
        standard = maps.std(axis=0) / math.sqrt(len(maps))
        assert np.all(error < 4 * standard + 1e-9), (quasi_random, (error / standard).max())


def test_stratified_pairs_follow_the_shapley_kernel():
    m = 9
    rng = np.random.default_rng(0)
    rows = np.concatenate([stratified_pairs(rng, 7, m) for _ in range(3000)])
    assert np.array_equal(rows[0::2] + rows[1::2], np.ones((len(rows) // 2, m)))  # complement pairs
    sizes = np.bincount(rows.sum(axis=1).astype(int), minlength=m + 1)[1:m] / len(rows)
    expected = size_distribution(m)
    assert np.allclose(sizes, expected, atol=0.01)
    # given its size, every coalition is equally likely: each feature is in half the rows
    assert np.allclose(rows.mean(axis=0), 0.5, atol=0.01)


def test_paired_lime_samples_are_uniform():
    rows = paired_samples(np.random.default_rng(0), 20000, 5)
    assert np.array_equal(rows[0::2] + rows[1::2], np.ones((20000, 5)))
    codes = rows[0::2] @ (2 ** np.arange(5))
    assert np.allclose(np.bincount(codes, minlength=32) / 20000, 1 / 32, atol=0.005)


def test_kernel_shap_auto_exact_on_additive_and_close_on_interacting_games():
    m = 6
    weights = np.array([0.5, -1.0, 2.0, 0.0, 1.5, -0.25])
    rule = StoppingRule(tolerance=0.99, first=32, maximum=64, step=2)
    phi, facts, _ = kernel_shap_auto(lambda z: np.asarray(z) @ weights + 0.3, m, rng=np.random.default_rng(0),
                                     rule=rule)
    assert np.allclose(phi, weights, atol=1e-9)

    def interacting(z):
        z = np.asarray(z, np.float64)
        return z @ weights + 2.0 * z[:, 0] * z[:, 1] - 1.5 * z[:, 2] * z[:, 3] * z[:, 4]

    # a regression (ratio) estimator: unbiased as the draws grow; at 30 of the 62 coalitions the mean over
    # seeds is within a few standard errors of the Shapley values
    exact = brute_force_shapley(interacting, m)
    estimates = []
    for seed in range(100):
        phi, facts, _ = kernel_shap_auto(interacting, m, rng=np.random.default_rng(seed),
                                         rule=StoppingRule(tolerance=0.999999, first=40, maximum=32, step=2))
        assert facts["n_evals"] <= 32
        estimates.append(phi)
    estimates = np.stack(estimates)
    standard = estimates.std(axis=0) / math.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(axis=0) - exact) < 4 * standard + 0.01), (estimates.mean(axis=0), exact)
    assert np.allclose(estimates.sum(axis=1), interacting(np.ones((1, m))) - interacting(np.zeros((1, m))))


def test_run_rounds_stops_at_the_maximum():
    noise = np.random.default_rng(0)
    spent = []

    def add(k):
        spent.append(k)
        return sum(spent)

    report = run_rounds(add, lambda: (noise.normal(size=50), noise.normal(size=50)),
                        StoppingRule(tolerance=0.95, first=100, maximum=1000, step=10))
    assert report.n_evals == 1000 and not report.converged
    assert all(k % 10 == 0 for k in spent) and len(report.rounds) == len(spent)
    assert "still changing" in report.note("n_masks")


@pytest.fixture(scope="module")
def detector():
    model = blackbox.load(detector_model(), device="cpu")
    image, _ = concept_image("red", box=(8, 20, 8, 20))
    return model, image


@pytest.mark.parametrize("method,count,extra", [
    ("rise", "n_masks", {"quasi_random": True, "grid": 4}),
    ("lime", "num_samples", {"segmentation": "grid", "segmentation_params": {"cells": 4}}),
    ("kernel_shap", "n_samples", {"segmentation": "grid", "segmentation_params": {"cells": 4}}),
])
def test_auto_converges_to_the_large_budget_map(detector, method, count, extra):
    model, image = detector
    big = blackbox.explain(model, image, method, target=0, seed=5, progress=False, **{count: 8000}, **extra)
    auto = blackbox.explain(model, image, method, target=0, seed=1, budget="auto", progress=False,
                            **{count: 8000}, **extra)
    again = blackbox.explain(model, image, method, target=0, seed=1, budget="auto", progress=False,
                             **{count: 8000}, **extra)
    assert auto.n_evals < 8000
    assert auto.extras["converged"] and auto.extras["reliability"] >= 0.95
    assert auto.n_evals == auto.extras["rounds"][-1][1]
    assert any(note.startswith("budget=auto: stopped after") for note in auto.notes)
    assert np.corrcoef(auto.model_heatmap.ravel(), big.model_heatmap.ravel())[0, 1] >= 0.95
    assert np.array_equal(auto.model_heatmap, again.model_heatmap) and auto.n_evals == again.n_evals
    assert auto.model_heatmap.shape == (SIZE, SIZE)


@pytest.mark.parametrize("method,params", [
    ("rise", {"budget": "sometimes"}), ("lime", {"budget": 100}), ("kernel_shap", {"tolerance": 1.0}),
    ("rise", {"budget": "auto", "tolerance": 0}),
])
def test_bad_budget_parameters(detector, method, params):
    model, image = detector
    with pytest.raises(ParameterError, match="budget|tolerance"):
        blackbox.explain(model, image, method, progress=False, **params)


def test_explain_many_auto_equals_one_by_one(detector):
    model, image = detector
    other, _ = concept_image("red", box=(2, 12, 18, 30))
    params = {"n_masks": 4000, "budget": "auto", "quasi_random": True, "grid": 4}
    many = list(blackbox.explain_many(model, [image, other], "rise", targets=0, seed=2, **params))
    for picture, batched in zip([image, other], many):
        alone = blackbox.explain(model, picture, "rise", target=0, seed=2, progress=False, **params)
        assert batched.n_evals == alone.n_evals < 4000
        assert np.allclose(batched.model_heatmap, alone.model_heatmap, atol=1e-6)
