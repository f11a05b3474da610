"""Robustness transforms: a random pad, jitter, scale and rotation per step, and the resize to the model.

Lucid/Lucent optimise through ``standard_transforms`` (pad 12 with grey, jitter 8, scale 0.9-1.1,
rotate -10..10 degrees, jitter 4) so that the image, not one exact alignment of it, excites the unit:
without them the optimum is adversarial high-frequency noise. All of those maps are affine, so one
step's transform here is a single bilinear resampling from the parametrised image (h x w) to the
model input (H x W): a sparse matrix ``M`` with four weights per output pixel. Forward is ``M @ image``
(plus the grey fill where the sample falls outside), backward is ``M.T @ grad``: exact, and cheap
next to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ..errors import ParameterError

FILL = 0.5  # Lucid pads with grey


@dataclass(frozen=True)
class TransformSpec:
    """Ranges of the random transform. ``scales``/``angles`` are the discrete choices Lucent draws from."""

    pad: int = 0
    jitter: int = 0
    scales: tuple[float, ...] = (1.0,)
    angles: tuple[float, ...] = (0.0,)

    @property
    def identity(self) -> bool:
        return self.pad == 0 and self.jitter == 0 and self.scales == (1.0,) and self.angles == (0.0,)


STANDARD = TransformSpec(pad=12, jitter=8, scales=tuple(1 + (i - 5) / 50.0 for i in range(11)),
                         angles=tuple(float(a) for a in list(range(-10, 11)) + 5 * [0]))
NONE = TransformSpec()
PRESETS = {"standard": STANDARD, "none": NONE}


def resolve(transforms: str | dict | TransformSpec) -> TransformSpec:
    """"standard" (Lucent's), "none", or a dict of ``pad``, ``jitter``, ``scale`` (lo, hi) and ``rotate``
    (degrees, symmetric)."""
    if isinstance(transforms, TransformSpec):
        return transforms
    if isinstance(transforms, str):
        if transforms not in PRESETS:
            raise ParameterError(f"unknown transforms {transforms!r}: use one of {', '.join(PRESETS)} or a dict")
        return PRESETS[transforms]
    if isinstance(transforms, dict):
        unknown = set(transforms) - {"pad", "jitter", "scale", "rotate"}
        if unknown:
            raise ParameterError(f"unknown transform setting {sorted(unknown)[0]!r}: use pad, jitter, scale, rotate")
        try:
            lo, hi = transforms.get("scale", (1.0, 1.0))
            rotate = float(transforms.get("rotate", 0.0))
            pad, jitter = int(transforms.get("pad", 0)), int(transforms.get("jitter", 0))
        except (TypeError, ValueError):
            raise ParameterError(f"bad transforms {transforms!r}: pad/jitter integers, scale (lo, hi), rotate "
                                 "degrees") from None
        if pad < 0 or jitter < 0 or not 0 < lo <= hi or rotate < 0:
            raise ParameterError(f"bad transforms {transforms!r}: need pad, jitter, rotate >= 0 and 0 < lo <= hi")
        scales = tuple(np.linspace(lo, hi, 11)) if hi > lo else (float(lo),)
        angles = tuple(np.linspace(-rotate, rotate, 21)) if rotate else (0.0,)
        return TransformSpec(pad, jitter, scales, angles)
    raise ParameterError(f"transforms must be a name or a dict, not {type(transforms).__name__}")


class Warp:
    """One sampled transform: a [H*W, h*w] bilinear matrix and the fill weight of each output pixel."""

    def __init__(self, matrix: sparse.csr_matrix, fill: np.ndarray, in_size: tuple[int, int],
                 out_size: tuple[int, int]):
        self.matrix = matrix
        self.in_size = in_size
        self.matrix_t = matrix.T.tocsr()
        self.fill = fill
        self.out_size = out_size

    def forward(self, image: np.ndarray) -> np.ndarray:
        """[c, h, w] -> [c, H, W]."""
        c = image.shape[0]
        flat = image.reshape(c, -1).T
        out = self.matrix @ flat + FILL * self.fill[:, None]
        return out.T.reshape((c,) + self.out_size)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """[c, H, W] -> [c, h, w] (the fill is a constant: no gradient)."""
        c = grad.shape[0]
        flat = grad.reshape(c, -1).T
        return (self.matrix_t @ flat).T.reshape((c,) + self.in_size)


def sample(spec: TransformSpec, in_size: tuple[int, int], out_size: tuple[int, int],
           rng: np.random.Generator, *, window: tuple[float, float, float, float] | None = None) -> Warp:
    """A random transform of ``spec`` from an image of ``in_size`` to ``out_size``.

    The padded image is scaled and rotated about its centre, shifted by the jitter, and the whole of it
    is resampled onto the output grid (the final resize). ``window`` (top, left, height, width in
    image pixels) resamples only that part instead (deep dream's tiles)."""
    h, w = in_size
    H, W = out_size
    top, left, wh, ww = window if window is not None else (-spec.pad, -spec.pad, h + 2 * spec.pad, w + 2 * spec.pad)
    scale = float(rng.choice(spec.scales)) if len(spec.scales) > 1 else spec.scales[0]
    angle = np.deg2rad(float(rng.choice(spec.angles)) if len(spec.angles) > 1 else spec.angles[0])
    dy, dx = (rng.integers(-spec.jitter, spec.jitter + 1, size=2) if spec.jitter else (0, 0))
    # output pixel centres -> window coordinates (centred), then undo rotation and scale
    v, u = np.meshgrid((np.arange(H) + 0.5) * wh / H - wh / 2, (np.arange(W) + 0.5) * ww / W - ww / 2, indexing="ij")
    cos, sin = np.cos(angle), np.sin(angle)
    sy = (cos * v - sin * u) / scale + top + wh / 2 + dy - 0.5
    sx = (sin * v + cos * u) / scale + left + ww / 2 + dx - 0.5
    matrix, fill = _bilinear(sy.ravel(), sx.ravel(), h, w)
    return Warp(matrix, fill, (h, w), (H, W))


def _bilinear(sy: np.ndarray, sx: np.ndarray, h: int, w: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Sparse bilinear sampling at (sy, sx) (pixel-centre coordinates); taps outside the image go to the
    fill weight, so the border blends into grey like Lucid's constant padding."""
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    rows, cols, vals = [], [], []
    fill = np.zeros(len(sy))
    index = np.arange(len(sy))
    for oy, ox, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + oy, x0 + ox
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        rows.append(index[inside])
        cols.append((yy[inside] * w + xx[inside]).astype(np.int64))
        vals.append(weight[inside])
        fill += np.where(inside, 0.0, weight)
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(len(sy), h * w))
    return matrix, fill


__all__ = ["FILL", "NONE", "PRESETS", "STANDARD", "TransformSpec", "Warp", "resolve", "sample"]
