"""Deep dream (Mordvintsev et al. 2015): amplify what a layer already sees in a picture, octave by octave.

Gradient ascent on the mean squared activation of ``layer`` (or one channel's mean), starting from
the picture as the model sees it. Octaves run the same ascent on smaller copies first, so large
structures grow before fine ones; what each octave added (its "detail") is upsampled onto the next,
sharper copy of the picture, so fine structure lost by shrinking is never lost from the result. A model
with a fixed input size sees every octave resized to that size, through a random jitter each step
(the classic random roll), by the same resampling the other visualisations use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import ParameterError
from . import objectives as obj
from . import param as params_
from .maximize import finish, start_image
from .optimize import optimise
from .transforms import TransformSpec

if TYPE_CHECKING:
    from ..model import Model

OCTAVES = 4
OCTAVE_SCALE = 1.4
STEPS = 20  # per octave
LR = 0.01


def deep_dream(model: "Model", image: Any, *, layer: str, channel: int | None = None, octaves: int = OCTAVES,
               octave_scale: float = OCTAVE_SCALE, steps: int = STEPS, lr: float = LR, jitter: int = 8,
               seed: int = 0, progress: bool = False):
    """The picture with ``layer``'s patterns amplified (:class:`~blackbox.visualize.Visualization`).

    ``channel``: amplify one channel (its mean) instead of the whole layer (mean square). ``octaves``
    scales from ``octave_scale ** -(octaves - 1)`` of the input size up to the full size, ``steps`` Adam
    steps each at ``lr`` (display units)."""
    entry = model.layer(layer)
    if not isinstance(octaves, (int, np.integer)) or not 1 <= octaves <= 10:
        raise ParameterError(f"octaves must be an integer from 1 to 10, got {octaves!r}")
    if not 1.0 < float(octave_scale) <= 4.0:
        raise ParameterError(f"octave_scale must be above 1 and at most 4, got {octave_scale!r}")
    objective = obj.dream(entry.name) if channel is None else obj.channel(entry.name, int(channel))
    height, width = model.image.height, model.image.width
    original = start_image(model, image, (height, width))[0]  # [c, H, W] display space
    spec = TransformSpec(jitter=int(jitter))
    trace, run, detail = [], None, None
    for octave in range(octaves):
        factor = float(octave_scale) ** (octaves - 1 - octave)
        size = (max(8, int(round(height / factor))), max(8, int(round(width / factor))))
        base = _resize(original, size)
        start = base if detail is None else np.clip(base + _resize(detail, size), 0, 1)
        p = params_.make("rgb", 1, original.shape[0], *size, seed=seed + octave)
        p.set_image(start[None])
        run = optimise(model, objective, p, steps=steps, lr=lr, transforms=spec, settings={}, seed=seed + octave,
                       redirect=False, progress=progress, desc=f"deep dream {octave + 1}/{octaves}")
        trace += run.trace
        detail = p.image()[0] - base  # what dreaming added: carried to the next octave, not re-blurred
    current = p.image()[0]
    run.trace = trace
    return finish(model, _resize(current, (height, width))[None], run, {
        "method": "deep_dream", "layer": entry.name, "channel": channel, "octaves": octaves,
        "octave_scale": octave_scale, "steps": steps, "lr": lr, "jitter": jitter, "seed": seed})


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[1:] == tuple(size):
        return image
    return np.stack([cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for c in image])


__all__ = ["deep_dream"]
