"""Activation maximisation: the image that most excites a class, a channel or one neuron.

Erhan et al. 2009; Simonyan et al. 2014 (class models); Olah et al. 2017 (Lucid: Fourier basis,
colour decorrelation, transformation robustness); Yosinski et al. 2015 and pytorch-cnn-visualizations
(class generation with L2 decay, periodic blur and clipping: ``regularizers="classic"``).
Defaults are Lucid/Lucent's: Fourier parametrisation with colour decorrelation, the standard
transforms, Adam at lr 0.05, redirected ReLU gradients for the first 16 steps. Lucid renders 512 steps
at 128 px; here 256 steps at the model's input size by default, which already gives a recognisable
picture at a fraction of the time (see the closing note of the feature-visualisation issue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ParameterError
from ..inputs import prepare
from . import objectives as obj
from . import param as params_
from . import regularizers as priors
from .optimize import model_input, optimise
from .result import Visualization
from .space import DisplaySpace, to_uint8
from .transforms import resolve as resolve_transforms

if TYPE_CHECKING:
    from ..model import Model

STEPS = 256
LR = 0.05
DIVERSITY = 1e2  # Lucid's weight in its diversity example (channel - 1e2 * similarity)


def resolve_size(model: "Model", size: int | Sequence[int] | None) -> tuple[int, int]:
    if size is None:
        return model.image.height, model.image.width
    try:
        h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError):
        raise ParameterError(f"size must be an integer or (height, width), got {size!r}") from None
    if not (8 <= h <= 2048 and 8 <= w <= 2048):
        raise ParameterError(f"size must be between 8 and 2048 pixels a side, got {size!r}")
    return h, w


def unit_objective(model: "Model", *, target: int | str | None, layer: str | None, channel: int | None,
                   neuron: Any, score: str) -> tuple[obj.Objective, dict[str, Any]]:
    """The objective the arguments name, and how to describe it."""
    if target is not None:
        if layer is not None or channel is not None or neuron is not None:
            raise ParameterError("give either target (a class) or layer with channel/neuron, not both")
        index = model.class_index(target)
        return obj.class_score(index, score), {"target": index, "label": model.label(index), "score": score}
    if layer is None:
        raise ParameterError("say what to maximise: target (a class index or label) or layer with channel")
    entry = model.layer(layer)
    if channel is None:
        raise ParameterError(f"layer {entry.name!r} needs channel (0..{entry.channels - 1 if entry.channels else '?'})")
    if neuron is None:
        return obj.channel(entry.name, int(channel)), {"layer": entry.name, "channel": int(channel)}
    if not entry.spatial:
        raise ParameterError(f"neuron needs a spatial layer ([C, H, W]); {entry.name!r} has shape {list(entry.shape)}")
    y, x = (None, None) if neuron is True or neuron == "center" else _position(neuron)
    return obj.neuron(entry.name, int(channel), y, x), {"layer": entry.name, "channel": int(channel),
                                                        "neuron": [y, x]}


def _position(neuron: Any) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in neuron)
        return y, x
    except (TypeError, ValueError):
        raise ParameterError(f"neuron must be (y, x) or 'center', got {neuron!r}") from None


def diversity_layer(model: "Model", objective: obj.Objective) -> str:
    """The layer the diversity term compares: the objective's own, else the default CAM layer."""
    return objective.layers[0] if objective.layers else model.default_cam_layer()


def activation_maximization(model: "Model", *, target: int | str | None = None, layer: str | None = None,
                            channel: int | None = None, neuron: Any = None, image: Any = None,
                            steps: int = STEPS, size: int | Sequence[int] | None = None, param: str = "fft",
                            transforms: str | dict = "standard", regularizers: str | dict | None = None,
                            lr: float = LR, n: int = 1, seed: int = 0, score: str = "logit",
                            diversity: float | None = None, objective: obj.Objective | None = None,
                            progress: bool = False) -> Visualization:
    """The image that maximises a class score (``target``), a channel's mean (``layer`` + ``channel``) or
    one activation (``neuron=(y, x)`` or ``"center"``) of ``model``.

    ``image``: start from this picture (path or array) instead of noise. ``n > 1``: a batch with a
    diversity term (weight ``diversity``, default 100 as in Lucid) on the objective's layer (the default
    CAM layer for class targets). ``param``: "fft" (default), "pixels", "rgb". ``transforms``:
    "standard", "none" or a dict. ``regularizers``: None, "classic" (L2 decay, periodic blur, gradient
    clipping) or a dict (see :mod:`blackbox.visualize.regularizers`). ``score``: the class score space
    (logit by default). ``objective``: any :class:`~blackbox.visualize.objectives.Objective` instead.
    """
    if objective is None:
        objective, described = unit_objective(model, target=target, layer=layer, channel=channel, neuron=neuron,
                                              score=score)
    else:
        described = {"objective": objective.description}
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= 64:
        raise ParameterError(f"n must be an integer from 1 to 64, got {n!r}")
    if n > 1:
        weight = DIVERSITY if diversity is None else float(diversity)
        if weight:
            div_layer = diversity_layer(model, objective)
            objective = objective + weight * obj.diversity(div_layer, n)
            described |= {"diversity": weight, "diversity_layer": div_layer}
    height, width = resolve_size(model, size)
    settings = priors.resolve(regularizers)
    spec = resolve_transforms(transforms)
    p = params_.make(param, n, model.image.channels, height, width, seed=seed)
    if image is not None:
        p.set_image(np.repeat(start_image(model, image, (height, width)), n, axis=0))
    run = optimise(model, objective, p, steps=steps, lr=lr, transforms=spec, settings=settings, seed=seed,
                   progress=progress, desc="activation maximization")
    notes = obj.class_note(model, objective)
    return finish(model, p.image(), run, notes=notes, params=described | {
        "steps": steps, "size": [height, width], "param": param, "transforms": transforms if isinstance(transforms, str)
        else dict(transforms), "regularizers": regularizers, "lr": lr, "n": n, "seed": seed})


def start_image(model: "Model", image: Any, size: tuple[int, int]) -> np.ndarray:
    """A picture as one display image [1, c, h, w] in [0, 1]: what the model sees, resized to ``size``."""
    import cv2

    sample = prepare(model, image)
    display = np.clip(DisplaySpace(model).to_display(sample.x[None])[0], 0, 1)  # [c, H, W]
    if display.shape[1:] != size:
        display = np.stack([cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_AREA) for c in display])
    return display[None]


def finish(model: "Model", images: np.ndarray, run, params: dict[str, Any], extra: dict | None = None,
           notes: Sequence[str] = ()) -> Visualization:
    """The :class:`Visualization` of display images [n, c, h, w] after a run."""
    from ..inputs import from_internal

    x = model_input(model, images)
    scores = model.scores(x, score="probability")
    return Visualization(images=np.stack([to_uint8(im) for im in images]),
                         inputs=np.stack([from_internal(model, xi) for xi in x]),
                         objectives=np.asarray(run.final, dtype=np.float64), trace=np.asarray(run.trace),
                         params=params, notes=model.precision_notes + list(notes), scores=scores,
                         extra=extra or {})


__all__ = ["DIVERSITY", "LR", "STEPS", "activation_maximization", "finish", "resolve_size", "start_image",
           "unit_objective"]
