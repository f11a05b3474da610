"""KernelSHAP (Lundberg & Lee 2017) over superpixels, with ``shap.KernelExplainer``'s sampling and solver.

Features are superpixels; a coalition keeps its superpixels and replaces the rest with the baseline. The
Shapley kernel gives a coalition of size s the weight (M-1) / (C(M, s) s (M-s)). As shap does, whole
subset sizes (s with its complement size M-s) are enumerated, smallest first, while the budget covers
them at their share of the kernel's weight; the rest of the budget is sampled from the remaining sizes in
complement pairs, and repeated draws add weight to the coalition instead of a new evaluation. The
weighted least squares fit enforces efficiency exactly (sum phi = f(x) - f(baseline)) by eliminating the
last feature. With the full budget (2^M - 2 coalitions) the result is the exact Shapley values.

Unlike shap's default ``l1_reg="num_features(10)"`` no LARS feature selection runs: every superpixel
gets its value (shap's ``l1_reg=False``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from math import comb
from typing import Any

import numpy as np

from ..baselines import make_baseline
from ..errors import ParameterError
from ..segmentation import superpixels
from .base import Context, Param, Result, register
from .budget import (
    BUDGETS,
    DEFAULT_TOLERANCE,
    Convergence,
    StoppingRule,
    check_budget,
    run_rounds,
)

SAMPLINGS = ("shap", "leverage")  # how coalitions are drawn: shap.KernelExplainer's, or by leverage scores


def shapley_kernel(n_features: int, size: int) -> float:
    """Weight of one coalition of ``size`` features out of ``n_features`` (0 and M are infinite)."""
    return (n_features - 1) / (comb(n_features, size) * size * (n_features - size))


def sample_coalitions(n_features: int, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions float32 [K, M] (0/1) and their kernel weights [K] (K <= n_samples), as KernelExplainer picks
    them: full enumeration of the smallest (and, paired, largest) subset sizes the budget affords at their
    share of the kernel weight, then paired random draws from the remaining sizes."""
    m = n_features
    budget = min(n_samples, 2 ** m - 2) if m <= 30 else n_samples
    n_sizes = (m - 1 + 1) // 2  # sizes 1 .. ceil((M-1)/2); larger ones are their complements
    n_paired = (m - 1) // 2  # sizes whose complement is a different size
    size_weight = np.array([(m - 1.0) / (s * (m - s)) for s in range(1, n_sizes + 1)])
    size_weight[:n_paired] *= 2
    size_weight /= size_weight.sum()
    rows: list[np.ndarray] = []
    weights: list[float] = []
    left = budget
    remaining = size_weight.copy()
    full_sizes = 0
    for size in range(1, n_sizes + 1):
        paired = size <= n_paired
        count = comb(m, size) * (2 if paired else 1)
        if left * remaining[size - 1] / count < 1.0 - 1e-8:
            break
        full_sizes += 1
        left -= count
        if remaining[size - 1] < 1.0:
            remaining /= 1.0 - remaining[size - 1]
        weight = size_weight[size - 1] / comb(m, size) / (2 if paired else 1)
        for members in itertools.combinations(range(m), size):
            row = np.zeros(m, np.float32)
            row[list(members)] = 1.0
            rows.append(row)
            weights.append(weight)
            if paired:
                rows.append(1.0 - row)
                weights.append(weight)
    n_fixed = len(rows)
    left = budget - n_fixed
    if full_sizes < n_sizes and left > 0:
        probs = size_weight.copy()
        probs[:n_paired] /= 2  # each paired draw brings two coalitions
        probs = probs[full_sizes:] / probs[full_sizes:].sum()
        drawn = rng.choice(len(probs), size=4 * left, p=probs)
        seen: dict[bytes, int] = {}
        for index in drawn:
            if left <= 0:
                break
            size = int(index) + full_sizes + 1
            row = np.zeros(m, np.float32)
            row[rng.permutation(m)[:size]] = 1.0
            key = row.tobytes()
            paired = size <= n_paired
            if key in seen:
                weights[seen[key]] += 1.0
                if paired and seen[key] + 1 < len(weights):
                    weights[seen[key] + 1] += 1.0
                continue
            seen[key] = len(rows)
            rows.append(row)
            weights.append(1.0)
            left -= 1
            if paired and left > 0:
                rows.append(1.0 - row)
                weights.append(1.0)
                left -= 1
        sampled = np.asarray(weights[n_fixed:])
        weights[n_fixed:] = list(sampled * size_weight[full_sizes:].sum() / sampled.sum())
    coalitions = np.asarray(rows, np.float32).reshape(-1, m)
    return coalitions, np.asarray(weights, np.float64)


def leverage_coalitions(n_features: int, n_samples: int, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions float32 [K, M] and weights [K] (K <= n_samples) by leverage-score sampling (Musco &
    Witter, "Provably accurate Shapley value estimation via leverage score sampling", ICLR 2025): sizes
    uniform over 1 .. M-1 rather than the kernel's, which piles the draws onto the smallest and largest
    coalitions, each draw weighted by the kernel over its probability; complement pairs, sizes
    stratified (:func:`stratified_pairs`), a repeated coalition adds weight instead of an evaluation.
    A budget covering every coalition enumerates them all, as :func:`sample_coalitions` does (exact)."""
    m = n_features
    if m <= 30 and n_samples >= 2 ** m - 2:
        return sample_coalitions(m, n_samples, rng)
    index: dict[bytes, int] = {}
    rows: list[np.ndarray] = []
    weights: list[float] = []
    draws = 0
    while len(rows) < n_samples and draws < 50 * n_samples:  # a small game's repeats need a bound
        drawn = stratified_pairs(rng, max(8, -(-(n_samples - len(rows)) // 2)), m, "leverage")
        draws += len(drawn)
        for row, weight in zip(drawn, draw_weights(drawn, "leverage")):
            key = np.packbits(row.astype(bool)).tobytes()
            at = index.get(key)
            if at is None:
                if len(rows) >= n_samples:
                    continue
                at = index[key] = len(rows)
                rows.append(row)
                weights.append(0.0)
            weights[at] += float(weight)
    return np.asarray(rows, np.float32).reshape(-1, m), np.asarray(weights, np.float64)


_WELL_CONDITIONED = 1e10  # condition number of the normal equations below which they are solved directly


def solve_shapley(coalitions: np.ndarray, weights: np.ndarray, values: np.ndarray, full: float,
                  null: float) -> np.ndarray:
    """Weighted least squares for phi with sum(phi) = full - null, the last feature eliminated."""
    z = np.asarray(coalitions, np.float64)
    m = z.shape[1]
    total = full - null
    if m == 1:
        return np.array([total])
    y = np.asarray(values, np.float64) - null - z[:, -1] * total
    design = z[:, :-1] - z[:, -1:]
    weighted = weights[:, None] * design
    gram = design.T @ weighted
    # a few samples may not pin every feature down (rank-deficient): LAPACK's solve then raises or, as
    # rounding has it, returns values of 1e15; the least-squares minimum-norm solution is the estimate
    if np.linalg.cond(gram) < _WELL_CONDITIONED:
        w = np.linalg.solve(gram, weighted.T @ y)
    else:
        root = np.sqrt(weights)
        w = np.linalg.lstsq(root[:, None] * design, root * y, rcond=None)[0]
    return np.append(w, total - w.sum())


def kernel_shap_values(value_fn: Callable[[np.ndarray], np.ndarray], n_features: int, *, n_samples: int = 1000,
                       rng: np.random.Generator | None = None, sampling: str = "shap"
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """Shapley value estimates [M] of a coalition game ``value_fn(z [K, M] 0/1 float32) -> [K]``, the
    coalitions drawn by ``sampling``: 'shap' (:func:`sample_coalitions`) or 'leverage'
    (:func:`leverage_coalitions`).

    All coalitions, plus the full and the empty one, go to ``value_fn`` in one call (it may batch them).
    Returns phi and facts: the two end values, the number of evaluations and whether all coalitions were
    enumerated (then phi is exact)."""
    m = int(n_features)
    if m < 1:
        raise ParameterError("kernel SHAP needs at least one feature")
    rng = rng if rng is not None else np.random.default_rng()
    if m == 1:
        coalitions, weights = np.zeros((0, 1), np.float32), np.zeros(0)
    else:
        if n_samples < m:
            raise ParameterError(f"n_samples={n_samples} is smaller than the number of features ({m}); the "
                                 f"least squares fit needs at least {m} coalitions (raise n_samples or use "
                                 "fewer superpixels)")
        draw = leverage_coalitions if sampling == "leverage" else sample_coalitions
        coalitions, weights = draw(m, n_samples, rng)
    ends = np.stack([np.ones(m, np.float32), np.zeros(m, np.float32)])
    values = np.asarray(value_fn(np.concatenate([ends, coalitions])), np.float64).reshape(-1)
    full, null = float(values[0]), float(values[1])
    phi = solve_shapley(coalitions, weights, values[2:], full, null) if m > 1 else np.array([full - null])
    exact = m == 1 or (m <= 30 and len(coalitions) == 2 ** m - 2)
    return phi, {"full_value": full, "null_value": null, "n_evals": len(values), "exact": bool(exact),
                 "n_coalitions": len(coalitions)}


@register("kernel_shap", default_score="probability", kind="perturbation",
          summary="Shapley values of superpixels by kernel-weighted regression (shap.KernelExplainer semantics)",
          params={"n_samples": Param(min=1), "budget": Param(choices=BUDGETS),
                  "tolerance": Param(min=0, max=1, open_min=True, open_max=True),
                  "sampling": Param(type=str, choices=SAMPLINGS, optional=True)},
          evaluations=lambda p: p["n_samples"] + 2)
def kernel_shap(ctx: Context, *, n_samples: int = 1000, segmentation="slic", segmentation_params=None,
                baseline="mean", budget: str = "fixed", tolerance: float = DEFAULT_TOLERANCE,
                sampling: str | None = None) -> Result:
    """``n_samples``: coalitions to evaluate, default 1000 (two more evaluations give f(x) and
    f(baseline)); capped at 2^M - 2, where the values are exact; it must be at least the number of
    superpixels M. ``segmentation``: 'slic' (default: n_segments=50, compactness=30, sigma=3, as shap's
    image notebook), 'quickshift', 'felzenszwalb', 'grid' (``segmentation_params={"cells": 8}``), an int
    label array [H, W] or a function; ``segmentation_params`` override the defaults. ``baseline``: what
    hidden superpixels become, default 'mean' (the image's mean colour, as shap's image notebook masks);
    any :func:`~blackbox.baselines.make_baseline` spec. Default score: probability (shap explains what the
    model function returns, softmax outputs in its image examples), so phi sums to
    p(x) - p(baseline).
    ``budget``: "fixed" (default) spends ``n_samples`` as above; "auto" samples in rounds and stops once
    the split-half reliability of the map reaches ``tolerance`` (default 0.95; see
    :mod:`blackbox.methods.budget`), ``n_samples`` being the maximum of coalitions evaluated. Auto
    coalitions come in complement pairs (Covert & Lee 2021: paired sampling cuts KernelSHAP's variance)
    with sizes stratified over the sampling's size distribution (systematic sampling of its CDF);
    repeated coalitions add weight instead of an evaluation, as shap does.
    ``sampling``: the coalition sizes drawn. 'shap': KernelExplainer's (the kernel's size distribution,
    whole sizes enumerated while the budget covers them); 'leverage': every size equally often, each
    draw weighted by the kernel over its probability (Musco & Witter 2025): the same Shapley values,
    with less error at small budgets. Default None: 'shap' for a fixed budget, 'leverage' for
    ``budget="auto"``."""
    auto = check_budget(budget, tolerance)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ParameterError(f"n_samples must be a positive integer, got {n_samples!r}")
    channels, height, width = ctx.shape
    segments = superpixels(ctx, segmentation, segmentation_params)
    n_features = int(segments.max()) + 1
    base = make_baseline(ctx.model, ctx.sample, baseline)
    total = min(int(n_samples), 2 ** n_features - 2) + 2 if n_features <= 30 else int(n_samples) + 2
    with ctx.bar(total, "kernel_shap") as bar:
        def value_fn(z: np.ndarray) -> np.ndarray:
            return ctx.model.score_masks(ctx.x, z, baseline=base, targets=[ctx.target], score=ctx.score,
                                         segments=segments, progress=bar.update)[:, 0]

        if auto and n_features > 1:
            if n_samples < n_features:
                raise ParameterError(f"n_samples={n_samples} is smaller than the number of features ({n_features}); "
                                     "the least squares fit needs at least that many coalitions")
            batch = ctx.model.batch_size()
            rule = StoppingRule(tolerance=float(tolerance), first=max(128, 4 * n_features, 2 * batch),
                                maximum=total, step=2 * batch if total > 8 * batch else 2)
            phi, facts, report = kernel_shap_auto(value_fn, n_features, rng=ctx.rng(), rule=rule,
                                                  painted=lambda values: values[segments],
                                                  sampling=sampling or "leverage")
        else:
            phi, facts = kernel_shap_values(value_fn, n_features, n_samples=int(n_samples), rng=ctx.rng(),
                                            sampling=sampling or "shap")
            report = None
    heatmap = phi[segments].astype(np.float32)
    attributions = np.broadcast_to(heatmap, (channels, height, width)).copy()
    extras = {"segments": segments, "n_segments": n_features, "shap_values": phi, **facts}
    result = Result(attributions=attributions, heatmap=heatmap, n_evals=int(facts["n_evals"]), extras=extras)
    if report is not None:
        result.extras.update(report.extras())
        result.notes.append(report.note("n_samples"))
    return result


def size_distribution(n_features: int, sampling: str = "shap") -> np.ndarray:
    """[M - 1]: probability of drawing each coalition size 1 .. M-1. 'shap': the Shapley kernel's (its
    weight times the number of coalitions of that size, normalised), proportional to 1 / (s (M - s));
    'leverage': uniform, the distribution of the regression's leverage scores (Musco & Witter 2025)."""
    sizes = np.arange(1, n_features)
    mass = 1.0 / (sizes * (n_features - sizes)) if sampling == "shap" else np.ones(len(sizes))
    return mass / mass.sum()


def draw_weights(coalitions: np.ndarray, sampling: str) -> np.ndarray:
    """[K]: the regression weight one draw of each coalition carries: the Shapley kernel over the
    probability of drawing it. 1 for 'shap' (the kernel is the sampling distribution); for 'leverage'
    (sizes uniform, members uniform given the size) proportional to 1 / (s (M - s))."""
    m = coalitions.shape[1]
    if sampling == "shap":
        return np.ones(len(coalitions))
    sizes = np.asarray(coalitions).sum(axis=1).round()
    return (m - 1.0) / (sizes * (m - sizes))


def stratified_pairs(rng: np.random.Generator, pairs: int, n_features: int, sampling: str = "shap") -> np.ndarray:
    """float32 [2 * pairs, M]: coalitions and their complements. Sizes are a systematic sample of
    :func:`size_distribution` (one uniform offset, ``pairs`` evenly spaced points of its CDF: each size
    gets its expected share to within one), members uniform given the size; so every row is a draw of
    the sampling distribution, with less spread in the sizes than independent draws."""
    cdf = np.cumsum(size_distribution(n_features, sampling))
    points = (np.arange(pairs) + rng.random()) / max(pairs, 1)
    sizes = np.minimum(np.searchsorted(cdf, points, side="right"), n_features - 2) + 1
    sizes = rng.permutation(sizes)
    ranks = np.argsort(np.argsort(rng.random((pairs, n_features)), axis=1), axis=1)
    rows = (ranks < sizes[:, None]).astype(np.float32)
    return np.stack([rows, 1.0 - rows], axis=1).reshape(2 * pairs, n_features)


def kernel_shap_auto(value_fn: Callable[[np.ndarray], np.ndarray], n_features: int, *, rng: np.random.Generator,
                     rule: StoppingRule, painted: Callable[[np.ndarray], np.ndarray] | None = None,
                     sampling: str = "leverage") -> tuple[np.ndarray, dict[str, Any], Convergence]:
    """Shapley value estimates of a coalition game by ``budget="auto"`` rounds (``rule.maximum`` counts
    evaluations, the two ends included). Each half draws stratified complement pairs from its own stream;
    a coalition's weight is how often its half drew it times :func:`draw_weights` (``sampling`` picks the
    size distribution, :func:`size_distribution`), and each distinct coalition is evaluated once.
    ``painted(phi)`` is the map the halves are compared on (default: phi itself)."""
    m = int(n_features)
    painted = painted or (lambda values: values)
    streams = rng.spawn(2)
    ends = value_fn(np.stack([np.ones(m, np.float32), np.zeros(m, np.float32)]))
    full, null = float(ends[0]), float(ends[1])
    rows: dict[bytes, int] = {}  # coalition -> its index in the evaluated lists
    coalitions: list[np.ndarray] = []
    values: list[float] = []
    counts: list[dict[int, int]] = [{}, {}]
    drawn = [0, 0]

    def add(k: int) -> int:
        pairs = -(-(drawn[0] + drawn[1] + k) // 2)
        takes = [-(-pairs // 2) - drawn[0] // 2, pairs // 2 - drawn[1] // 2]
        fresh: list[np.ndarray] = []
        for h in range(2):
            for row in stratified_pairs(streams[h], takes[h], m, sampling):
                key = np.packbits(row.astype(bool)).tobytes()
                index = rows.get(key)
                if index is None:
                    index = rows[key] = len(coalitions) + len(fresh)
                    fresh.append(row)
                counts[h][index] = counts[h].get(index, 0) + 1
            drawn[h] += 2 * takes[h]
        if fresh:
            coalitions.extend(fresh)
            values.extend(np.asarray(value_fn(np.stack(fresh)), np.float64).reshape(-1).tolist())
        return len(coalitions) + 2

    def solve(tallies: dict[int, int]) -> np.ndarray:
        index = np.fromiter(tallies.keys(), np.int64, len(tallies))
        z = np.stack([coalitions[i] for i in index])
        weights = np.fromiter(tallies.values(), np.float64, len(tallies)) * draw_weights(z, sampling)
        return solve_shapley(z, weights, np.asarray(values)[index], full, null)

    def halves() -> tuple[np.ndarray, np.ndarray]:
        return painted(solve(counts[0])), painted(solve(counts[1]))

    limit = 20 * rule.maximum  # draws: repeats of small games cost nothing, but need a bound
    report = run_rounds(add, halves, rule, max_samples=limit, spent=2)
    merged = dict(counts[0])
    for index, count in counts[1].items():
        merged[index] = merged.get(index, 0) + count
    phi = solve(merged)
    exact = m <= 30 and len(coalitions) == 2 ** m - 2
    facts = {"full_value": full, "null_value": null, "n_evals": len(coalitions) + 2, "exact": False,
             "complete": bool(exact), "n_coalitions": len(coalitions)}
    return phi, facts, report


def explanation_to_shap(explanation) -> Any:
    """A ``shap.Explanation`` of one image for ``shap.image_plot``: values [1, H, W, C, 1] (the heatmap
    spread evenly over the channels, so image_plot's channel sum shows the map), data the picture in
    0..1, the target's label as output name. Works for any blackbox explanation; shap is imported here
    only (it is a test extra)."""
    import shap

    picture = np.asarray(explanation.image, np.float64) / 255.0
    if picture.ndim == 2:
        picture = picture[:, :, None]
    heatmap = np.asarray(explanation.heatmap, np.float64)
    channels = picture.shape[2]
    values = np.repeat(heatmap[:, :, None], channels, axis=2) / channels
    return shap.Explanation(values=values[None, :, :, :, None], data=picture[None],
                            output_names=[explanation.label],
                            base_values=np.array([[explanation.extras.get("null_value", 0.0)]]))
