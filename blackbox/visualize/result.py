"""What an optimised picture comes back as: :class:`Visualization`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..image_io import write_png_atomic


@dataclass
class Visualization:
    """An optimised image (or ``n`` of them) for one objective.

    ``image``: H x W x 3 uint8 in display space (the preprocessing inverted; the first of ``images``);
    ``input``: the model-space input it becomes, in the model's own layout (first of ``inputs``);
    ``objective``: the final value for ``image`` (untransformed, priors subtracted), ``objectives`` one per
    image; ``trace``: the objective per step [steps, n] (under that step's random transform);
    ``params``: every setting used; ``notes``: what the numbers rest on (a dequantized copy, ...);
    ``scores``: the real model's class probabilities [n, K] for the inputs (the float16/int8 model
    itself, not its float copy).
    """

    images: np.ndarray
    inputs: np.ndarray
    objectives: np.ndarray
    trace: np.ndarray
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray:
        return self.images[0]

    @property
    def input(self) -> np.ndarray:
        return self.inputs[0]

    @property
    def objective(self) -> float:
        return float(self.objectives[0])

    @property
    def feature_error(self) -> float | None:
        """Inversion only: relative L2 distance of the reconstruction's features to the target's."""
        return self.extra.get("feature_error")

    def probability(self, target: int) -> np.ndarray:
        """The real model's probability of class ``target`` for each image."""
        return self.scores[:, int(target)]

    def strip(self) -> np.ndarray:
        """All images side by side (2 px white gaps)."""
        if len(self.images) == 1:
            return self.images[0]
        h = self.images.shape[1]
        gap = np.full((h, 2, 3), 255, np.uint8)
        parts = []
        for image in self.images:
            parts += [image, gap]
        return np.concatenate(parts[:-1], axis=1)

    def save_png(self, path: str | os.PathLike) -> str:
        """Write the image (all ``n`` side by side) as a PNG, atomically; returns the path."""
        write_png_atomic(path, self.strip())
        return os.fspath(path)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: settings, final objective(s), the last trace value, notes."""
        out = {"params": self.params, "objective": [float(v) for v in self.objectives],
               "notes": list(self.notes), "steps": int(len(self.trace))}
        if self.feature_error is not None:
            out["feature_error"] = float(self.feature_error)
        target = self.params.get("target")
        if target is not None and self.scores is not None:
            out["probability"] = [float(p) for p in self.probability(target)]
        return out


__all__ = ["Visualization"]
