"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

Each mask is a random ``s x s`` binary grid (cells on with probability ``p_keep``), upsampled bilinearly
to ``(s + 1) * cell`` pixels (``cell = ceil(H / s)``) and cropped to ``H x W`` at a random shift in
``[0, cell)`` per axis. The saliency map is ``sum_i P_i M_i / (N * p_keep)`` where ``P_i`` is the target's
probability on ``baseline + (x - baseline) * M_i``.

Why matrices: upsample-then-crop is linear, so mask i is exactly ``Ry_i @ grid_i @ Rx_i.T`` with
``Ry_i = R(shift_y_i)`` from a small table (one matrix per possible shift). The ONNX graph applies those
per-mask matrices, so only ``s x s`` grids cross into ONNX Runtime, and the weighted sum is done in cell
space grouped by shift, ``sum_ab R_a (sum_{i: shift_i = (a, b)} P_i grid_i) R_b.T``: no full-size mask is
ever built, and beyond the N small grids (49 numbers each) memory does not grow with N. The upsampling mirrors borders like the authors' ``skimage`` resize
(``mode="reflect"``), so the masks are the paper's masks, not an approximation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..baselines import make_baseline
from ..errors import ParameterError
from ..masks import reflect_linear_matrix, uniform_points
from .base import Context, Param, Result, batched, register
from .batching import chunk_rows, in_groups, row_chunks, score_spans, span_slices
from .budget import (
    BUDGETS,
    DEFAULT_TOLERANCE,
    Convergence,
    StoppingRule,
    check_budget,
    run_rounds,
)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        values = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2:
        raise ParameterError(f"{name} must be an int or (rows, cols); got {value!r}")
    return values


def cell_sizes(height: int, width: int, grid: tuple[int, int]) -> tuple[int, int]:
    """Pixels per grid cell along each axis, ``ceil(size / s)`` as in the paper."""
    return int(math.ceil(height / grid[0])), int(math.ceil(width / grid[1]))


def shift_matrices(size: int, cells: int, cell: int) -> np.ndarray:
    """[cell, size, cells]: for each shift, the matrix that upsamples ``cells`` values to ``(cells + 1) *
    cell`` pixels (mirrored borders) and keeps pixels ``shift .. shift + size``."""
    scale = (cells + 1) * cell / cells
    return np.stack([reflect_linear_matrix(cells, size, scale=scale, offset=float(shift)) for shift in range(cell)])


def draw_masks(rng: np.random.Generator, n: int, grid: tuple[int, int], p_keep: float, cell: tuple[int, int], *,
               quasi_random: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The random choices of RISE: grids float32 [n, sy, sx] (0/1) and shifts int64 [n, 2] (rows, cols).

    Plain draws are the paper's: ``rand(N, s, s) < p_keep``, then a uniform integer shift per axis.
    ``quasi_random`` takes both from one scrambled Sobol sequence (cells + 2 dimensions).
    """
    if quasi_random:
        return masks_from_points(uniform_points(rng, n, grid[0] * grid[1] + 2, quasi_random=True), grid, p_keep, cell)
    grids = (rng.random((n, *grid)) < p_keep).astype(np.float32)
    shifts = rng.integers(0, np.asarray(cell), size=(n, 2)).astype(np.int64)
    return grids, shifts


def masks_from_points(points: np.ndarray, grid: tuple[int, int], p_keep: float,
                      cell: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grids and shifts from points of the unit cube [n, cells + 2]: a cell is on where its coordinate is
    below ``p_keep``; the last two coordinates pick the shift."""
    n, cells = len(points), grid[0] * grid[1]
    grids = (points[:, :cells] < p_keep).astype(np.float32).reshape(n, *grid)
    shifts = np.minimum(np.floor(points[:, cells:] * np.asarray(cell)), np.asarray(cell) - 1).astype(np.int64)
    return grids, shifts


class MaskStream:
    """An endless supply of RISE masks from one random stream: i.i.d. uniform points, or one scrambled
    Sobol sequence continued from call to call (``quasi_random``), so the masks of all rounds together
    are one low-discrepancy set."""

    def __init__(self, plan: RisePlan, rng: np.random.Generator, quasi_random: bool):
        self.plan, self.rng = plan, rng
        self.dims = plan.grid[0] * plan.grid[1] + 2
        self.sobol = None
        if quasi_random:
            from scipy.stats import qmc

            self.sobol = qmc.Sobol(d=self.dims, scramble=True, seed=rng)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.sobol is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a round need not be a power of two
                points = self.sobol.random(n)
        else:
            points = self.rng.random((n, self.dims))
        return masks_from_points(points, self.plan.grid, self.plan.p_keep, self.plan.cell)


@register("rise", default_score="probability", kind="perturbation",
          summary="random grid masks, saliency = probability-weighted mean mask (Petsiuk et al. 2018)",
          params={"n_masks": Param(min=1), "grid": Param(int, min=2, lengths=(2,)),
                  "p_keep": Param(min=0, max=1, open_min=True, open_max=True), "budget": Param(choices=BUDGETS),
                  "tolerance": Param(min=0, max=1, open_min=True, open_max=True)},
          evaluations=lambda p: p["n_masks"],
          memory=lambda p, shape, layout: p["n_masks"] * (math.prod(p["grid"]) if isinstance(p["grid"], (list, tuple))
                                                          else p["grid"] ** 2) * 13)
def rise(ctx: Context, *, n_masks: int = 4000, grid=7, p_keep: float = 0.5, baseline="zeros",
         quasi_random: bool = False, budget: str = "fixed", tolerance: float = DEFAULT_TOLERANCE) -> Result:
    """``n_masks``: number of masks (= model evaluations), default 4000. ``grid``: cells per side ``s``
    (int, or (rows, cols)), default 7. ``p_keep``: probability that a cell is kept, default 0.5.
    ``baseline``: what hidden pixels become, default 'zeros' in model space: the paper multiplies the
    preprocessed input by the mask (for mean/std-normalised models that is the mean colour); any spec of
    :func:`~blackbox.baselines.make_baseline` works. ``quasi_random``: draw grids and shifts from a
    scrambled Sobol sequence (fewer masks for the same map; see ``scripts/bench_methods.py``).
    ``budget``: "fixed" (default) evaluates exactly ``n_masks`` masks; "auto" evaluates in rounds and
    stops once the split-half reliability of the map reaches ``tolerance`` (default 0.95), with
    ``n_masks`` as the maximum (:mod:`blackbox.methods.budget`). Its two halves draw from two independent
    streams (two independently scrambled Sobol sequences with ``quasi_random``: randomised QMC
    replicates, Owen 1997), the map is their mean, and the evaluations used are ``n_evals``.
    Default score: probability, as in the paper."""
    auto = check_budget(budget, tolerance)
    plan = plan_rise(ctx.shape, n_masks, grid, p_keep)
    if auto:
        return _rise_auto(ctx, plan, baseline, bool(quasi_random), float(tolerance))
    grids, shifts = plan.draw(ctx.rng(), quasi_random)
    base = make_baseline(ctx.model, ctx.sample, baseline)
    # P-weighted grids summed per shift pair: [cell_y, cell_x, sy, sx], independent of n
    weighted = plan.zero_sums()
    n = plan.n
    chunk = max(256, 4 * ctx.model.batch_size())
    with ctx.bar(n, "rise") as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            g = grids[start:stop]
            a, b = shifts[start:stop, 0], shifts[start:stop, 1]
            probs = ctx.model.score_masks(ctx.x, g[:, None], baseline=base, targets=[ctx.target], score=ctx.score,
                                          ry=plan.ry_table[a][:, None], rx=plan.rx_table[b][:, None],
                                          progress=bar.update)[:, 0]
            np.add.at(weighted, (a, b), probs.astype(np.float64)[:, None, None] * g)
    return plan.result(weighted, ctx.shape, bool(quasi_random))


@dataclass(frozen=True)
class RisePlan:
    """Checked RISE settings for one input shape and the per-shift upsampling tables every image shares."""

    n: int
    grid: tuple[int, int]
    p_keep: float
    cell: tuple[int, int]
    ry_table: np.ndarray  # [cell_y, H, sy]
    rx_table: np.ndarray  # [cell_x, W, sx]

    def draw(self, rng: np.random.Generator, quasi_random) -> tuple[np.ndarray, np.ndarray]:
        """This image's grids and shifts, from its own random stream."""
        return draw_masks(rng, self.n, self.grid, self.p_keep, self.cell, quasi_random=bool(quasi_random))

    def zero_sums(self) -> np.ndarray:
        return np.zeros((self.cell[0], self.cell[1], *self.grid), np.float64)

    def saliency(self, weighted: np.ndarray, n: int) -> np.ndarray:
        """The saliency map [H, W] float64 of ``n`` masks from their P-weighted grid sums:
        ``sum_ab Ry_a W_ab Rx_b^T / (n p_keep)``, in two small contractions."""
        right = np.einsum("abst,bwt->asw", weighted, self.rx_table.astype(np.float64))
        return np.einsum("ahs,asw->hw", self.ry_table.astype(np.float64), right) / (n * self.p_keep)

    def result(self, weighted: np.ndarray, shape: tuple[int, int, int], quasi_random: bool,
               n: int | None = None) -> Result:
        """The Result of ``n`` masks (default: the plan's count) from their P-weighted grid sums."""
        n = self.n if n is None else int(n)
        heatmap = self.saliency(weighted, n).astype(np.float32)
        attributions = np.broadcast_to(heatmap, shape).copy()
        return Result(attributions=attributions, heatmap=heatmap, n_evals=n,
                      extras={"grid": list(self.grid), "cell": list(self.cell), "p_keep": self.p_keep,
                              "n_masks": n, "quasi_random": quasi_random})


def plan_rise(shape: tuple[int, int, int], n_masks, grid, p_keep) -> RisePlan:
    """Check the parameters against the input shape (ParameterError naming the bad one) and build the
    shift tables."""
    _, height, width = shape
    if isinstance(n_masks, bool) or not isinstance(n_masks, (int, np.integer)) or n_masks < 1:
        raise ParameterError(f"n_masks must be a positive integer, got {n_masks!r}")
    sy, sx = _pair(grid, "grid")
    if min(sy, sx) < 2:
        raise ParameterError(f"grid must be at least 2 cells per side, got {grid!r}")
    if sy > height or sx > width:
        raise ParameterError(f"grid {grid!r} has more cells than the {height}x{width} input has pixels")
    try:
        p_keep = float(p_keep)
    except (TypeError, ValueError):
        raise ParameterError(f"p_keep must be a number between 0 and 1 (exclusive), got {p_keep!r}") from None
    if not 0.0 < p_keep < 1.0:
        raise ParameterError(f"p_keep must be between 0 and 1 (exclusive), got {p_keep}")
    cell = cell_sizes(height, width, (sy, sx))
    return RisePlan(int(n_masks), (sy, sx), p_keep, cell, shift_matrices(height, sy, cell[0]),
                    shift_matrices(width, sx, cell[1]))


def rise_auto_sums(plan: RisePlan, score: Callable[[np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator,
                   quasi_random: bool, rule: StoppingRule) -> tuple[list[np.ndarray], list[int], Convergence]:
    """The rounds of ``budget="auto"``: P-weighted grid sums and mask counts of the two halves, and what
    the rounds did. ``score(grids [n, sy, sx], shifts [n, 2]) -> P [n]`` evaluates masks."""
    streams = [MaskStream(plan, half_rng, quasi_random) for half_rng in rng.spawn(2)]
    sums = [plan.zero_sums(), plan.zero_sums()]
    counts = [0, 0]

    def add(k: int) -> int:
        total = counts[0] + counts[1] + k
        takes = [(total + 1) // 2 - counts[0], total // 2 - counts[1]]
        drawn = [streams[h].take(takes[h]) for h in range(2)]
        g = np.concatenate([d[0] for d in drawn])
        shifts = np.concatenate([d[1] for d in drawn])
        probs = np.asarray(score(g, shifts), np.float64)
        offset = 0
        for h in range(2):
            where = slice(offset, offset + takes[h])
            np.add.at(sums[h], (shifts[where, 0], shifts[where, 1]), probs[where, None, None] * g[where])
            counts[h] += takes[h]
            offset += takes[h]
        return counts[0] + counts[1]

    def halves() -> tuple[np.ndarray, np.ndarray]:
        return plan.saliency(sums[0], counts[0]), plan.saliency(sums[1], counts[1])

    return sums, counts, run_rounds(add, halves, rule)


def _rise_auto(ctx: Context, plan: RisePlan, baseline, quasi_random: bool, tolerance: float) -> Result:
    base = make_baseline(ctx.model, ctx.sample, baseline)
    batch = ctx.model.batch_size()
    rule = StoppingRule(tolerance=tolerance, first=min(plan.n, max(256, 2 * batch)), maximum=plan.n,
                        step=2 * batch if plan.n >= 4 * batch else 2)
    with ctx.bar(plan.n, "rise (auto)") as bar:
        def score(g: np.ndarray, shifts: np.ndarray) -> np.ndarray:
            return ctx.model.score_masks(ctx.x, g[:, None], baseline=base, targets=[ctx.target], score=ctx.score,
                                         ry=plan.ry_table[shifts[:, 0]][:, None],
                                         rx=plan.rx_table[shifts[:, 1]][:, None], progress=bar.update)[:, 0]

        sums, counts, report = rise_auto_sums(plan, score, ctx.rng(), quasi_random, rule)
    result = plan.result(sums[0] + sums[1], ctx.shape, quasi_random, n=counts[0] + counts[1])
    result.extras.update(report.extras())
    result.notes.append(report.note("n_masks"))
    return result


@batched("rise")
def rise_many(contexts: Sequence[Context], *, n_masks: int = 4000, grid=7, p_keep: float = 0.5,
              baseline="zeros", quasi_random: bool = False, budget: str = "fixed",
              tolerance: float = DEFAULT_TOLERANCE) -> list[Result]:
    """:func:`rise` for several images: each image draws its masks from its own stream (``ctx.rng()``, as
    one call would), the rows of all images go end to end through full engine batches, and each image's
    P-weighted sums grow from its own rows only. Small masks (s x s grids) of the images are held, never
    full-size ones. ``budget="auto"`` stops per image, so each image runs on its own."""
    if check_budget(budget, tolerance):
        return [rise(ctx, n_masks=n_masks, grid=grid, p_keep=p_keep, baseline=baseline, quasi_random=quasi_random,
                     budget=budget, tolerance=tolerance) for ctx in contexts]
    return in_groups(contexts, lambda group: _rise_group(group, n_masks, grid, p_keep, baseline, quasi_random))


def _rise_group(contexts: list[Context], n_masks, grid, p_keep, baseline, quasi_random) -> list[Result]:
    first = contexts[0]
    plan = plan_rise(first.shape, n_masks, grid, p_keep)
    draws = [plan.draw(ctx.rng(), quasi_random) for ctx in contexts]
    baselines = [make_baseline(ctx.model, ctx.sample, baseline) for ctx in contexts]
    weighted = [plan.zero_sums() for _ in contexts]
    with first.bar(plan.n * len(contexts), "rise") as bar:
        for spans in row_chunks([plan.n] * len(contexts), chunk_rows(first.model.batch_size())):
            g = np.concatenate([draws[image][0][start:stop] for image, start, stop in spans])
            shifts = np.concatenate([draws[image][1][start:stop] for image, start, stop in spans])
            a, b = shifts[:, 0], shifts[:, 1]
            probs = score_spans(contexts, baselines, spans, g[:, None], ry=plan.ry_table[a][:, None],
                                rx=plan.rx_table[b][:, None], progress=bar.update)
            for image, _, _, where in span_slices(spans):
                np.add.at(weighted[image], (a[where], b[where]), probs[where].astype(np.float64)[:, None, None] * g[where])
    return [plan.result(w, first.shape, bool(quasi_random)) for w in weighted]
