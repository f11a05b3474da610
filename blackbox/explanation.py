"""Explanation: what every method returns, and how it is saved (figure or overlay PNG, NPZ, JSON summary)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BlackboxError
from .files import jsonable, write_atomic
from .image_io import write_png_atomic
from .render import DEFAULT_CLIP, overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Explanation:
    """The result of :func:`blackbox.explain`.

    ``attributions`` is the method's raw output (pixel methods: shaped like one model input, in the
    model's layout); ``heatmap`` is an H x W float32 map in the space of the input you gave (the
    original picture for images, the model input for model-space tensors); ``model_heatmap`` is the same
    map at model-input resolution.
    """

    method: str
    target: int
    label: str
    target_score: float
    score: str
    attributions: np.ndarray
    heatmap: np.ndarray
    model_heatmap: np.ndarray
    image: np.ndarray  # RGB uint8 picture the heatmap belongs to (for overlays)
    params: dict[str, Any]
    n_evals: int
    seconds: float
    source: str = "array"
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    seen: np.ndarray | None = None  # bool H x W: picture pixels inside the model's crop (None: all)

    def overlay(self, *, alpha: float = 0.5, colormap: str | None = None) -> np.ndarray:
        """RGB uint8 picture with the heatmap drawn over it."""
        return overlay(self.image, self.heatmap, alpha=alpha, colormap=colormap, seen=self.seen)

    def save_overlay(self, path: str | os.PathLike, *, alpha: float = 0.5, colormap: str | None = None) -> Path:
        """Write the overlay as a PNG (atomically: a temporary file, then rename)."""
        write_png_atomic(path, self.overlay(alpha=alpha, colormap=colormap))
        return Path(path)

    def figure(self, *, sign: str | None = None, clip: float = DEFAULT_CLIP, mode: str = "blend",
               alpha: float = 0.5, colormap: str | None = None) -> Figure:
        """A matplotlib Figure: the original (the model's crop outlined), the map with a colour bar in its
        own units, the overlay, and a title with method, class and score. Options: see
        :func:`blackbox.render.figure`."""
        from .render import figure

        return figure(self, sign=sign, clip=clip, mode=mode, alpha=alpha, colormap=colormap)

    def save_figure(self, path: str | os.PathLike, *, sign: str | None = None, clip: float = DEFAULT_CLIP,
                    mode: str = "blend", alpha: float = 0.5, colormap: str | None = None) -> Path:
        """Write :meth:`figure` as a PNG (atomically: a temporary file, then rename)."""
        from .render import save_figure

        fig = self.figure(sign=sign, clip=clip, mode=mode, alpha=alpha, colormap=colormap)
        return save_figure(fig, path)

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write attributions, heatmaps and the summary to an ``.npz`` (atomically)."""
        path = Path(path)
        arrays = {"attributions": self.attributions, "heatmap": self.heatmap, "model_heatmap": self.model_heatmap,
                  "summary": np.array(json.dumps(self.summary()))}
        for key, value in self.extras.items():
            if isinstance(value, np.ndarray):
                arrays[f"extra_{key}"] = value
        write_atomic(path, lambda stream: np.savez_compressed(stream, **arrays), error=BlackboxError)
        return path

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts about this explanation (no arrays)."""
        extras = {k: jsonable(v, max_array=64) for k, v in self.extras.items() if not isinstance(v, np.ndarray)}
        return {
            "source": self.source, "method": self.method, "target": int(self.target), "label": self.label,
            "target_score": float(self.target_score), "score": self.score,
            "params": {k: jsonable(v, max_array=64) for k, v in self.params.items()}, "n_evals": int(self.n_evals),
            "seconds": round(float(self.seconds), 4), "attributions_shape": list(self.attributions.shape),
            "heatmap_shape": list(self.heatmap.shape), "notes": list(self.notes), **({"extras": extras} if extras else {}),
        }

    def __repr__(self) -> str:
        return (f"Explanation(method={self.method!r}, target={self.target} ({self.label}), "
                f"{self.score}={self.target_score:.4g}, heatmap={self.heatmap.shape}, n_evals={self.n_evals}, "
                f"seconds={self.seconds:.2f})")

