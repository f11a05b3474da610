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
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..baselines import make_baseline
from ..errors import ParameterError
from ..masks import reflect_linear_matrix, uniform_points
from .base import Context, Param, Result, batched, register
from .batching import chunk_rows, in_groups, row_chunks, score_spans, span_slices


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
    cells = grid[0] * grid[1]
    if quasi_random:
        points = uniform_points(rng, n, cells + 2, quasi_random=True)
        grids = (points[:, :cells] < p_keep).astype(np.float32).reshape(n, *grid)
        shifts = np.minimum(np.floor(points[:, cells:] * np.asarray(cell)), np.asarray(cell) - 1).astype(np.int64)
        return grids, shifts
    grids = (rng.random((n, *grid)) < p_keep).astype(np.float32)
    shifts = rng.integers(0, np.asarray(cell), size=(n, 2)).astype(np.int64)
    return grids, shifts


@register("rise", default_score="probability", kind="perturbation",
          summary="random grid masks, saliency = probability-weighted mean mask (Petsiuk et al. 2018)",
          params={"n_masks": Param(min=1), "grid": Param(int, min=2, lengths=(2,)),
                  "p_keep": Param(min=0, max=1, open_min=True, open_max=True)},
          evaluations=lambda p: p["n_masks"],
          memory=lambda p, shape, layout: p["n_masks"] * (math.prod(p["grid"]) if isinstance(p["grid"], (list, tuple))
                                                          else p["grid"] ** 2) * 13)
def rise(ctx: Context, *, n_masks: int = 4000, grid=7, p_keep: float = 0.5, baseline="zeros",
         quasi_random: bool = False) -> Result:
    """``n_masks``: number of masks (= model evaluations), default 4000. ``grid``: cells per side ``s``
    (int, or (rows, cols)), default 7. ``p_keep``: probability that a cell is kept, default 0.5.
    ``baseline``: what hidden pixels become, default 'zeros' in model space: the paper multiplies the
    preprocessed input by the mask (for mean/std-normalised models that is the mean colour); any spec of
    :func:`~blackbox.baselines.make_baseline` works. ``quasi_random``: draw grids and shifts from a
    scrambled Sobol sequence (fewer masks for the same map; see ``scripts/bench_methods.py``).
    Default score: probability, as in the paper."""
    plan = plan_rise(ctx.shape, n_masks, grid, p_keep)
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

    def result(self, weighted: np.ndarray, shape: tuple[int, int, int], quasi_random: bool) -> Result:
        """The saliency map from the P-weighted grid sums: ``sum_ab Ry_a W_ab Rx_b^T``, in two small
        contractions."""
        right = np.einsum("abst,bwt->asw", weighted, self.rx_table.astype(np.float64))
        saliency = np.einsum("ahs,asw->hw", self.ry_table.astype(np.float64), right) / (self.n * self.p_keep)
        heatmap = saliency.astype(np.float32)
        attributions = np.broadcast_to(heatmap, shape).copy()
        return Result(attributions=attributions, heatmap=heatmap, n_evals=self.n,
                      extras={"grid": list(self.grid), "cell": list(self.cell), "p_keep": self.p_keep,
                              "n_masks": self.n, "quasi_random": quasi_random})


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


@batched("rise")
def rise_many(contexts: Sequence[Context], *, n_masks: int = 4000, grid=7, p_keep: float = 0.5,
              baseline="zeros", quasi_random: bool = False) -> list[Result]:
    """:func:`rise` for several images: each image draws its masks from its own stream (``ctx.rng()``, as
    one call would), the rows of all images go end to end through full engine batches, and each image's
    P-weighted sums grow from its own rows only. Small masks (s x s grids) of the images are held, never
    full-size ones."""
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
