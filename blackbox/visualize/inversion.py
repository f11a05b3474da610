"""Network inversion (Mahendran & Vedaldi 2015): the picture a layer's features describe.

Starting from grey noise, find the image whose activations at ``layer`` match a photo's,
``min ||phi(x) - phi0||^2 / ||phi0||^2 + alpha-norm + total variation`` (maximised here as its negative).
Early layers keep nearly everything and give the photo back; deeper layers keep what the class needs
and lose colour, position and detail: ``feature_error`` grows with depth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..inputs import prepare
from . import objectives as obj
from . import param as params_
from . import regularizers as priors
from .maximize import finish, start_image
from .optimize import model_input, optimise
from .transforms import resolve as resolve_transforms

if TYPE_CHECKING:
    from ..model import Model

STEPS = 200
LR = 0.02
# prior weights under Mahendran & Vedaldi's normalisation (V = B / 6.5, B = 1/2): light enough that early
# layers give the photo back (feature error 0.06 on MobileNetV2-int8's first convolution), strong
# enough to keep pixels in range and flat areas flat
TV = 0.005  # weight of TV^2
ALPHA = 0.001  # weight of the 6-norm


def invert(model: "Model", image: Any, *, layer: str, steps: int = STEPS, lr: float = LR, param: str = "rgb",
           tv: float = TV, alpha: float = ALPHA, transforms: str | dict = "none", seed: int = 0,
           progress: bool = False):
    """The reconstruction of ``image`` from ``layer``'s activations (:class:`~blackbox.visualize.Visualization`
    with ``feature_error``: ||phi(x) - phi0|| / ||phi0|| of the result, and ``extra["original"]``)."""
    entry = model.layer(layer)
    sample = prepare(model, image)
    target = model.activations(sample.x[None], [entry.name])[entry.name][0]
    objective = obj.inversion(entry.name, target)
    settings = priors.resolve({"tv": (float(tv), 2.0), "alpha": (float(alpha), 6.0)})
    height, width = model.image.height, model.image.width
    p = params_.make(param, 1, model.image.channels, height, width, seed=seed)
    run = optimise(model, objective, p, steps=steps, lr=lr, transforms=resolve_transforms(transforms),
                   settings=settings, seed=seed, progress=progress, desc=f"invert {entry.name}")
    result = p.image()
    features = model.activations(model_input(model, result), [entry.name])[entry.name][0]
    error = float(np.linalg.norm(features - target) / max(np.linalg.norm(target), 1e-12))
    original = start_image(model, image, (height, width))
    return finish(model, result, run, {
        "method": "invert", "layer": entry.name, "steps": steps, "lr": lr, "param": param, "tv": tv,
        "alpha": alpha, "transforms": transforms, "seed": seed},
        extra={"feature_error": error, "original": original})


__all__ = ["invert"]
