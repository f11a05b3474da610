"""Mask samplers and the interpolation matrices that upsample small masks inside the ONNX graph.

A separable resampling of an ``h x w`` mask to ``H x W`` is ``Ry @ m @ Rx.T``; building Ry and Rx here
keeps every method's upsampling exact and testable in NumPy.
"""

from __future__ import annotations

import numpy as np


def linear_matrix(n_in: int, n_out: int, *, scale: float | None = None, offset: float = 0.0) -> np.ndarray:
    """[n_out, n_in] matrix of 1-D linear interpolation with half-pixel centres and edge clamping.

    This is what ``cv2.resize(INTER_LINEAR)``, ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` and ONNX ``Resize(linear, half_pixel)`` do when upsampling. ``scale`` (output
    pixels per input pixel, default n_out / n_in) and ``offset`` (output pixels skipped at the start)
    describe a crop of a larger upsampled signal, which is how RISE shifts its masks.
    """
    scale = n_out / n_in if scale is None else scale
    out = np.zeros((n_out, n_in), dtype=np.float32)
    centres = (np.arange(n_out) + offset + 0.5) / scale - 0.5
    centres = np.clip(centres, 0.0, n_in - 1)
    lo = np.floor(centres).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (centres - lo).astype(np.float32)
    rows = np.arange(n_out)
    np.add.at(out, (rows, lo), 1.0 - frac)
    np.add.at(out, (rows, hi), frac)
    return out


def block_matrix(n_in: int, n_out: int, cell: int) -> np.ndarray:
    """[n_out, n_in] one-hot matrix sending output pixel p to cell p // cell (nearest, exact blocks)."""
    index = np.minimum(np.arange(n_out) // cell, n_in - 1)
    out = np.zeros((n_out, n_in), dtype=np.float32)
    out[np.arange(n_out), index] = 1.0
    return out


def upsample(masks: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """NumPy reference of what the perturbation graph does with grid masks ([..., h, w] -> [..., H, W])."""
    return ry @ masks @ np.swapaxes(rx, -1, -2)


def reflect_linear_matrix(n_in: int, n_out: int, *, scale: float | None = None, offset: float = 0.0) -> np.ndarray:
    """[n_out, n_in] linear interpolation with half-pixel centres and *mirrored* borders.

    This is ``skimage.transform.resize(order=1, mode="reflect")`` (SciPy's "mirror": ... c b | a b c |
    b a ...), which the RISE authors used to upsample their grids. It differs from :func:`linear_matrix`
    (edge clamping, as cv2) only within half an input cell of either end. ``scale`` and ``offset`` as in
    :func:`linear_matrix`.
    """
    scale = n_out / n_in if scale is None else scale
    centres = (np.arange(n_out) + offset + 0.5) / scale - 0.5
    lo = np.floor(centres).astype(np.int64)
    frac = (centres - lo).astype(np.float32)

    def mirror(index: np.ndarray) -> np.ndarray:
        if n_in == 1:
            return np.zeros_like(index)
        period = 2 * (n_in - 1)
        index = np.mod(index, period)
        return np.where(index > n_in - 1, period - index, index)

    out = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(out, (rows, mirror(lo)), 1.0 - frac)
    np.add.at(out, (rows, mirror(lo + 1)), frac)
    return out


def uniform_points(rng: np.random.Generator, n: int, d: int, *, quasi_random: bool = False) -> np.ndarray:
    """[n, d] float64 points in [0, 1): i.i.d. uniform, or a scrambled Sobol sequence (``quasi_random``).

    Sobol points fill the cube evenly (each coordinate, and low-dimensional projections, are close to
    stratified), so averages over the points converge faster than with independent draws. Scrambling
    (seeded from ``rng``) keeps each point uniformly distributed, so estimates stay unbiased.
    """
    if not quasi_random:
        return rng.random((n, d))
    import warnings

    from scipy.stats import qmc

    sobol = qmc.Sobol(d=d, scramble=True, seed=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance warning when n is not a power of two: still low-discrepancy
        return sobol.random(n)


def binary_grids(rng: np.random.Generator, n: int, shape: tuple[int, ...], p_keep: float, *,
                 quasi_random: bool = False) -> np.ndarray:
    """``n`` random 0/1 grids (float32 [n, *shape]), each cell on with probability ``p_keep``: uniform
    points thresholded at ``p_keep`` (see :func:`uniform_points`)."""
    cells = int(np.prod(shape))
    points = uniform_points(rng, n, cells, quasi_random=quasi_random)
    return (points < p_keep).astype(np.float32).reshape((n,) + tuple(shape))
