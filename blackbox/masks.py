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
