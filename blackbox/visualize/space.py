"""Display space <-> model space: the linear part of the model's preprocessing, and its adjoint.

Feature visualisation optimises an image a person can look at (RGB in [0, 1], or grey for
one-channel models); the model sees ``(255 * pixel [channel order] * scale - mean) / std``. That map is
affine per channel, so its gradient is a per-channel factor and a channel permutation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..model import Model


class DisplaySpace:
    """``to_model`` / ``to_display`` / ``backward`` for one model's preprocessing, on [n, c, H, W]."""

    def __init__(self, model: "Model"):
        p = model.preprocess
        self.channels = model.image.channels
        c = self.channels
        self.order = [2, 1, 0] if (p.channel_order == "BGR" and c == 3) else list(range(c))
        mean = np.broadcast_to(np.asarray(p.mean, np.float64), (c,))
        std = np.broadcast_to(np.asarray(p.std, np.float64), (c,))
        self.gain = (255.0 * p.scale / std).reshape(1, c, 1, 1)  # d model / d display, per model channel
        self.offset = (-mean / std).reshape(1, c, 1, 1)

    def to_model(self, image: np.ndarray) -> np.ndarray:
        return (image[:, self.order] * self.gain + self.offset).astype(np.float32)

    def backward(self, grad_x: np.ndarray) -> np.ndarray:
        """d objective / d display, from d objective / d model input."""
        g = np.asarray(grad_x, np.float64) * self.gain
        out = np.empty_like(g)
        out[:, self.order] = g
        return out

    def to_display(self, x: np.ndarray) -> np.ndarray:
        """Model-space [n, c, H, W] -> display [n, c, H, W] (not clipped)."""
        d = (np.asarray(x, np.float64) - self.offset) / self.gain
        out = np.empty_like(d)
        out[:, self.order] = d
        return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """One display image [c, h, w] in [0, 1] -> h x w x 3 uint8 (grey repeated)."""
    a = np.clip(np.rint(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


__all__ = ["DisplaySpace", "to_uint8"]
