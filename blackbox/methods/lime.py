"""LIME for images (Ribeiro, Singh & Guestrin 2016) with ``lime_image.LimeImageExplainer`` semantics.

Superpixels are features. Sample 0 keeps every superpixel; the others switch each one on or off with
probability 1/2, drawn exactly as lime_image draws them (``random_state.randint(0, 2, n * M)``, after the
one ``randint(0, 1000)`` lime spends on a segmentation seed), so ``seed=s`` reproduces
``LimeImageExplainer(random_state=s)``'s samples. Hidden superpixels take the ``hide_color`` (default:
each superpixel's own mean colour). Samples are weighted by ``sqrt(exp(-d^2 / width^2))`` of their cosine
distance to sample 0, features are selected as lime does, and a weighted Ridge(alpha=1) fit gives one
coefficient per superpixel; the map paints each coefficient on its superpixel.

All samples are scored in ONNX as on/off vectors over the segment map; no perturbed picture is built in
Python.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..baselines import colour, make_baseline
from ..errors import ParameterError
from ..segmentation import segment_means, superpixels
from .base import Context, Param, Result, register
from .budget import (
    BUDGETS,
    DEFAULT_TOLERANCE,
    Convergence,
    StoppingRule,
    check_budget,
    run_rounds,
)

FEATURE_SELECTIONS = ("auto", "none", "forward_selection", "highest_weights", "lasso_path")
SAMPLINGS = ("lime", "orthogonal")


def lime_random_state(seed: int | None) -> np.random.RandomState:
    """A legacy RandomState seeded as lime seeds its own (``check_random_state(seed)``), so that the same
    ``seed`` gives the same samples. Seeds outside RandomState's range are folded into it."""
    if seed is None:
        return np.random.RandomState()
    return np.random.RandomState(int(seed) % (2 ** 32))


def lime_samples(random_state: np.random.RandomState, num_samples: int, n_features: int) -> np.ndarray:
    """int [num_samples, n_features] 0/1 rows, the first all ones, drawn in lime_image's order."""
    random_state.randint(0, high=1000)  # lime draws a segmentation seed first (unused by quickshift today)
    data = random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
    data[0, :] = 1
    return data


def hadamard_entries(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """bool [len(rows), len(columns)]: where Sylvester's Hadamard matrix of any power-of-two order is +1.

    Its entry (i, j) is (-1)^popcount(i & j), so only the rows and columns a block uses are computed
    (memory is the design's own size, whatever the number of superpixels)."""
    bits = np.bitwise_and(np.asarray(rows, np.int64)[:, None], np.asarray(columns, np.int64)[None, :])
    for shift in (32, 16, 8, 4, 2, 1):
        bits ^= bits >> shift
    return (bits & 1) == 0


class OrthogonalDesign:
    """0/1 rows for LIME from fold-over blocks of a two-level orthogonal array (Box & Hunter 1961).

    Why: a uniform random row is what lime draws, but independent rows leave the features' on/off
    columns correlated by chance, and that chance correlation is much of a small sample's error in the
    surrogate's coefficients. Each block takes M of the K - 1 non-constant columns of a Sylvester
    Hadamard matrix (K the smallest power of two above M), flips each column's sign and shuffles the
    rows at random, then follows every row with its complement: within a block every feature is on in
    exactly half the rows, any two features are uncorrelated, and main effects are free of two-feature
    interactions. With the random columns and signs every single row is still uniform on {0, 1}^M, so
    the surrogate's limit is lime's.
    """

    def __init__(self, rng: np.random.Generator, n_features: int):
        self.rng, self.m = rng, int(n_features)
        self.order = 2
        while self.order < self.m + 1:
            self.order *= 2
        self.rows = np.zeros(0, np.int64)  # the current block's Hadamard rows not handed out yet
        self.columns = self.flips = None
        self.pending = np.zeros((0, self.m), np.int64)  # a complement owed from the last request

    def _next_block(self) -> None:
        self.columns = self.rng.choice(np.arange(1, self.order), self.m, replace=False)
        self.flips = self.rng.random(self.m) < 0.5
        self.rows = self.rng.permutation(self.order)

    def take(self, n: int) -> np.ndarray:
        """int [n, M]: the next ``n`` rows of the stream of blocks, each row followed by its complement."""
        parts, have = [self.pending], len(self.pending)
        while have < n:
            if not len(self.rows):
                self._next_block()
            count = min(len(self.rows), -(-(n - have) // 2))
            on = hadamard_entries(self.rows[:count], self.columns) ^ self.flips
            self.rows = self.rows[count:]
            parts.append(np.stack([on, ~on], axis=1).reshape(2 * count, self.m).astype(np.int64))
            have += 2 * count
        rows = np.concatenate(parts)
        self.pending = rows[n:]
        return rows[:n]


def kernel_weights(data: np.ndarray, kernel_width: float, distance_metric: str = "cosine") -> np.ndarray:
    """LIME's exponential kernel on the distance of each row to row 0."""
    from sklearn.metrics import pairwise_distances

    distances = pairwise_distances(data, data[0].reshape(1, -1), metric=distance_metric).ravel()
    return np.sqrt(np.exp(-(distances ** 2) / kernel_width ** 2))


def _forward_selection(data: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_features: int) -> np.ndarray:
    """Greedy: add the feature whose unregularised weighted fit scores the highest R^2 (first one on ties)."""
    from sklearn.linear_model import Ridge

    chosen: list[int] = []
    for _ in range(min(num_features, data.shape[1])):
        best, best_score = 0, -np.inf
        for feature in range(data.shape[1]):
            if feature in chosen:
                continue
            columns = data[:, chosen + [feature]]
            fit = Ridge(alpha=0, fit_intercept=True).fit(columns, labels, sample_weight=weights)
            score = fit.score(columns, labels, sample_weight=weights)
            if score > best_score:
                best, best_score = feature, score
        chosen.append(best)
    return np.asarray(chosen, dtype=np.int64)


def select_features(data: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_features: int,
                    method: str) -> np.ndarray:
    """Indices of the features the final fit uses, as lime_base's ``feature_selection`` picks them."""
    from sklearn.linear_model import Ridge, lars_path

    if method == "auto":
        method = "forward_selection" if num_features <= 6 else "highest_weights"
    if method == "none":
        return np.arange(data.shape[1])
    if method == "forward_selection":
        return _forward_selection(data, labels, weights, num_features)
    if method == "highest_weights":
        coef = Ridge(alpha=0.01, fit_intercept=True).fit(data, labels, sample_weight=weights).coef_
        contribution = coef * data[0]
        order = np.argsort(-np.abs(contribution), kind="stable")
        return order[:num_features]
    # lasso_path: the sparsest-from-the-end LARS solution with at most num_features non-zeros
    centred = (data - np.average(data, axis=0, weights=weights)) * np.sqrt(weights)[:, None]
    target = (labels - np.average(labels, weights=weights)) * np.sqrt(weights)
    _, _, coefs = lars_path(centred, target, method="lasso", verbose=False)
    nonzero = np.arange(data.shape[1])
    for column in range(coefs.shape[1] - 1, 0, -1):
        nonzero = coefs[:, column].nonzero()[0]
        if len(nonzero) <= num_features:
            break
    return nonzero


def fit_lime(data: np.ndarray, labels: np.ndarray, weights: np.ndarray, *, num_features: int,
             feature_selection: str) -> dict:
    """Select features, then fit the weighted Ridge(alpha=1) surrogate; coefficients of unused features are 0."""
    from sklearn.linear_model import Ridge

    used = select_features(data, labels, weights, num_features, feature_selection)
    surrogate = Ridge(alpha=1, fit_intercept=True).fit(data[:, used], labels, sample_weight=weights)
    coefficients = np.zeros(data.shape[1], np.float64)
    coefficients[used] = surrogate.coef_
    return {"coefficients": coefficients, "used_features": np.asarray(used, dtype=np.int64),
            "intercept": float(surrogate.intercept_),
            "r2": float(surrogate.score(data[:, used], labels, sample_weight=weights)),
            "local_pred": float(surrogate.predict(data[:1, used])[0])}


def hidden_picture(ctx: Context, hide_color, segments: np.ndarray) -> np.ndarray:
    """What a hidden superpixel shows, in model space [C, H, W]. ``None``: the superpixel's mean colour.
    A number or (r, g, b): a colour in picture units 0..255, as lime's ``hide_color``. A string or array:
    any :func:`~blackbox.baselines.make_baseline` spec ('blur', 'zeros', ...)."""
    if hide_color is None:
        return segment_means(ctx.x, segments)
    if isinstance(hide_color, (int, float, np.integer, np.floating)) and not isinstance(hide_color, bool):
        if not 0 <= hide_color <= 255:
            raise ParameterError(f"hide_color {hide_color!r} is a pixel value and must be within 0..255")
        level = int(round(float(hide_color)))
        return colour(ctx.model, (level, level, level))
    if isinstance(hide_color, (tuple, list)) and len(hide_color) == 3:
        if not all(0 <= float(v) <= 255 for v in hide_color):
            raise ParameterError(f"hide_color {hide_color!r}: an (r, g, b) colour needs values within 0..255")
        return colour(ctx.model, tuple(int(round(float(v))) for v in hide_color))
    return make_baseline(ctx.model, ctx.sample, hide_color)


@register("lime", default_score="probability", kind="perturbation",
          summary="superpixels on/off at random; weighted Ridge surrogate (lime_image semantics)",
          params={"num_samples": Param(min=2), "kernel_width": Param(min=0, open_min=True),
                  "num_features": Param(min=1), "feature_selection": Param(choices=FEATURE_SELECTIONS),
                  "budget": Param(choices=BUDGETS), "tolerance": Param(min=0, max=1, open_min=True, open_max=True),
                  "sampling": Param(type=str, choices=SAMPLINGS, optional=True)},
          evaluations=lambda p: p["num_samples"])
def lime(ctx: Context, *, num_samples: int = 1000, segmentation="quickshift", segmentation_params=None,
         hide_color=None, kernel_width: float = 0.25, num_features: int = 100000, feature_selection: str = "auto",
         distance_metric: str = "cosine", budget: str = "fixed", tolerance: float = DEFAULT_TOLERANCE,
         sampling: str | None = None) -> Result:
    """Defaults are ``lime_image.explain_instance``'s. ``num_samples``: samples including the unperturbed
    first one (= model evaluations), default 1000. ``segmentation``: 'quickshift' (default, lime's
    kernel_size=4, max_dist=200, ratio=0.2), 'slic', 'felzenszwalb', 'grid', an int label array [H, W] at
    model resolution, or a function picture -> labels; ``segmentation_params`` override the algorithm's
    defaults. ``hide_color``: None (default) = each superpixel's mean colour; a pixel value or (r, g, b)
    in 0..255; or a baseline name such as 'blur'. ``kernel_width``: 0.25. ``num_features``: at most this
    many superpixels get a coefficient (default 100000: all). ``feature_selection``: 'auto' (default:
    forward selection when num_features <= 6, else highest weights), 'none', 'forward_selection',
    'highest_weights', 'lasso_path'. Default score: probability (lime explains classifier probabilities).
    ``seed`` gives the samples ``LimeImageExplainer(random_state=seed)`` would draw.
    ``budget``: "fixed" (default) draws exactly ``num_samples``; "auto" draws in rounds and stops once
    the split-half reliability of the map reaches ``tolerance`` (default 0.95; see
    :mod:`blackbox.methods.budget`), ``num_samples`` being the maximum; its samples are blackbox's own
    (not lime_image's stream), each half drawing its own.
    ``sampling``: how the perturbed samples are drawn. 'lime': lime_image's draws (fixed budget) or
    antithetic pairs (z, 1 - z) (auto); 'orthogonal': fold-over blocks of an orthogonal array
    (:class:`OrthogonalDesign`: every row still uniform, the features balanced and uncorrelated within
    a block, main effects free of two-feature interactions), a map close to lime's limit from fewer
    samples. Default None: 'lime' for a fixed budget (lime_image's exact samples), 'orthogonal' for
    ``budget="auto"``."""
    auto = check_budget(budget, tolerance)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ParameterError(f"num_samples must be an integer of at least 2 (the original plus one perturbed "
                             f"sample), got {num_samples!r}")
    if feature_selection not in FEATURE_SELECTIONS:
        raise ParameterError(f"unknown feature_selection {feature_selection!r}: use one of "
                             f"{', '.join(FEATURE_SELECTIONS)}")
    if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
        raise ParameterError(f"num_features must be a positive integer, got {num_features!r}")
    try:
        kernel_width = float(kernel_width)
    except (TypeError, ValueError):
        raise ParameterError(f"kernel_width must be a positive number, got {kernel_width!r}") from None
    if not kernel_width > 0:
        raise ParameterError(f"kernel_width must be a positive number, got {kernel_width!r}")
    channels, height, width = ctx.shape
    segments = superpixels(ctx, segmentation, segmentation_params)
    n_features = int(segments.max()) + 1
    hidden = hidden_picture(ctx, hide_color, segments)
    fit_options = {"num_features": int(num_features), "feature_selection": feature_selection}
    sampling = sampling or ("orthogonal" if auto else "lime")
    if auto:
        data, labels, report = _lime_auto(ctx, segments, hidden, n_features, int(num_samples), kernel_width,
                                          distance_metric, fit_options, float(tolerance), sampling)
    else:
        if sampling == "orthogonal":
            data = np.concatenate([np.ones((1, n_features), np.int64),
                                   OrthogonalDesign(ctx.rng(), n_features).take(int(num_samples) - 1)])
        else:
            data = lime_samples(lime_random_state(ctx.seed), int(num_samples), n_features)
        with ctx.bar(len(data), "lime") as bar:
            labels = ctx.model.score_masks(ctx.x, data.astype(np.float32), baseline=hidden, targets=[ctx.target],
                                           score=ctx.score, segments=segments, progress=bar.update)[:, 0]
    labels = labels.astype(np.float64)
    weights = _weights(data, kernel_width, distance_metric)
    fit = fit_lime(data, labels, weights, **fit_options)
    heatmap = fit["coefficients"][segments].astype(np.float32)
    attributions = np.broadcast_to(heatmap, (channels, height, width)).copy()
    extras = {"segments": segments, "n_segments": n_features, **fit}
    result = Result(attributions=attributions, heatmap=heatmap, n_evals=len(data), extras=extras)
    if auto:
        result.extras.update(report.extras())
        result.notes.append(report.note("num_samples"))
    return result


def _weights(data: np.ndarray, kernel_width: float, distance_metric: str) -> np.ndarray:
    try:
        return kernel_weights(data, kernel_width, distance_metric)
    except ValueError as error:
        raise ParameterError(f"distance_metric {distance_metric!r}: {error}") from None


def paired_samples(rng: np.random.Generator, pairs: int, n_features: int) -> np.ndarray:
    """int [2 * pairs, n_features]: uniform 0/1 rows, each followed by its complement."""
    rows = rng.integers(0, 2, size=(pairs, n_features))
    return np.stack([rows, 1 - rows], axis=1).reshape(2 * pairs, n_features)


def lime_auto_samples(score: Callable[[np.ndarray], np.ndarray], n_features: int, rng: np.random.Generator,
                      fit: Callable[[np.ndarray, np.ndarray], np.ndarray], rule: StoppingRule,
                      sampling: str = "lime") -> tuple[np.ndarray, np.ndarray, Convergence]:
    """The rounds of ``budget="auto"``: all samples (row 0 keeps every superpixel), their scores, and what
    the rounds did. ``score(rows [n, M] 0/1) -> [n]``; ``fit(rows, scores) -> map`` is one half's map.
    Each half draws whole antithetic pairs ('lime') or the rows of its own orthogonal blocks
    ('orthogonal') from its own stream and is fitted with row 0."""
    first = np.ones((1, n_features), np.int64)
    streams = rng.spawn(2)
    if sampling == "orthogonal":
        designs = [OrthogonalDesign(stream, n_features) for stream in streams]

        def draw(h: int, pairs: int) -> np.ndarray:
            return designs[h].take(2 * pairs)
    else:
        def draw(h: int, pairs: int) -> np.ndarray:
            return paired_samples(streams[h], pairs, n_features)
    data: list[list[np.ndarray]] = [[], []]
    labels: list[list[np.ndarray]] = [[], []]
    counts = [0, 0]
    original = np.asarray(score(first), np.float64)

    def add(k: int) -> int:
        pairs = min(-(-(counts[0] + counts[1] + k) // 2), (rule.maximum - 1) // 2)  # whole pairs, within the maximum
        takes = [2 * (-(-pairs // 2)) - counts[0], 2 * (pairs // 2) - counts[1]]
        drawn = [draw(h, takes[h] // 2) for h in range(2)]
        rows = np.concatenate(drawn)
        values = np.asarray(score(rows), np.float64)
        offset = 0
        for h in range(2):
            data[h].append(drawn[h])
            labels[h].append(values[offset:offset + len(drawn[h])])
            counts[h] += len(drawn[h])
            offset += len(drawn[h])
        return 1 + counts[0] + counts[1]

    def halves() -> tuple[np.ndarray, np.ndarray]:
        return tuple(fit(np.concatenate([first] + data[h]), np.concatenate([original] + labels[h]))
                     for h in range(2))

    report = run_rounds(add, halves, rule, spent=1)
    rows = np.concatenate([first] + data[0] + data[1])
    return rows, np.concatenate([original] + labels[0] + labels[1]), report


def _lime_auto(ctx: Context, segments: np.ndarray, hidden: np.ndarray, n_features: int, num_samples: int,
               kernel_width: float, distance_metric: str, fit_options: dict, tolerance: float,
               sampling: str) -> tuple[np.ndarray, np.ndarray, Convergence]:
    batch = ctx.model.batch_size()
    rule = StoppingRule(tolerance=tolerance, first=min(num_samples - 1, max(128, 4 * n_features, 2 * batch)),
                        maximum=num_samples, step=4 * -(-batch // 4) if num_samples > 8 * batch else 4)

    def fit(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        weights = _weights(rows, kernel_width, distance_metric)
        return fit_lime(rows, values, weights, **fit_options)["coefficients"][segments]

    with ctx.bar(num_samples, "lime (auto)") as bar:
        def score(rows: np.ndarray) -> np.ndarray:
            return ctx.model.score_masks(ctx.x, rows.astype(np.float32), baseline=hidden, targets=[ctx.target],
                                         score=ctx.score, segments=segments, progress=bar.update)[:, 0]

        return lime_auto_samples(score, n_features, ctx.rng(), fit, rule, sampling)
