"""The one optimisation loop of feature visualisation: Adam on a parametrised image, through random
transforms, with gradients from the objective's gradient graph.

Per step: parameters -> image (display space) -> a random transform per sample, resampled to the
model input -> model space -> objective and d objective / d x in one ONNX Runtime call -> back through
the preprocessing, the transform and the parametrisation -> an Adam step *up* the objective minus the
priors. As in Lucid, the ReLU gradient is redirected for the first 16 steps (``REDIRECTED``) so that
units that are off at a grey start can still be turned on; plain gradients afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ParameterError
from ..graph.autodiff import PLAIN, REDIRECTED
from . import regularizers as priors
from .engine import gradients_for
from .objectives import Objective
from .param import Parametrisation
from .space import DisplaySpace
from .transforms import NONE, TransformSpec, sample

if TYPE_CHECKING:
    from ..model import Model

REDIRECT_STEPS = 16  # Lucid's redirected_relu_grad schedule


class Adam:
    """Adam (Kingma & Ba) for ascent; Lucid and Lucent's optimiser, with their defaults."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        if self.m is None or self.m.shape != grad.shape:
            self.m, self.v, self.t = np.zeros_like(grad), np.zeros_like(grad), 0
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        params += self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


@dataclass
class Run:
    """What a loop leaves: the per-step objective (priors subtracted) [steps, n] and the final values."""

    trace: list = field(default_factory=list)
    final: np.ndarray | None = None


def check_steps(steps: int, lr: float) -> None:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1 or steps > 100_000:
        raise ParameterError(f"steps must be an integer from 1 to 100000, got {steps!r}")
    if not np.isfinite(lr) or lr <= 0:
        raise ParameterError(f"lr must be a positive number, got {lr!r}")


def optimise(model: "Model", objective: Objective, param: Parametrisation, *, steps: int, lr: float,
             transforms: TransformSpec, settings: dict, seed: int = 0, redirect: bool = True,
             progress: bool = False, desc: str = "visualize",
             window: Callable[[np.random.Generator], tuple] | None = None) -> Run:
    """Run the loop in place on ``param``; returns the trace. ``settings``: resolved regularizers.
    ``window``: a function giving each step's sampled region of the image (deep dream's tiles)."""
    check_steps(steps, lr)
    rng = np.random.default_rng(seed + 7919)
    space = DisplaySpace(model)
    out_size = (model.image.height, model.image.width)
    in_size = param.shape[2:]
    adam = Adam(lr)
    run = Run()
    plain = gradients_for(model, objective, PLAIN)
    redirected = gradients_for(model, objective, REDIRECTED) if redirect else plain
    direct = transforms.identity and tuple(in_size) == out_size and window is None
    blur_every = int(settings.get("blur_every", 0) or 0)
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        for step in range(steps):
            image = param.image()
            if direct:
                warps, seen = None, image
            else:
                warps = [sample(transforms, in_size, out_size, rng, window=window(rng) if window else None)
                         for _ in range(len(image))]
                seen = np.stack([w.forward(im) for w, im in zip(warps, image)])
            engine = redirected if step < REDIRECT_STEPS else plain
            result = engine(space.to_model(seen))
            grad_seen = space.backward(result.grad)
            grad = grad_seen if warps is None else np.stack([w.backward(g) for w, g in zip(warps, grad_seen)])
            cost, cost_grad = priors.penalty(image, settings)
            grad = grad - cost_grad
            clip = settings.get("clip_grad")
            if clip:
                norm = np.sqrt(np.sum(grad * grad, axis=(1, 2, 3), keepdims=True))
                grad = grad * np.minimum(1.0, float(clip) / np.maximum(norm, 1e-12))
            adam.step(param.params, param.backward(grad))
            param.after_step()
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                param.set_image(blur(param.image(), float(settings.get("blur_sigma", 1.0))))
            run.trace.append(result.values - cost)
            bar.update(1)
    run.final = evaluate(model, objective, param.image(), settings)
    return run


def evaluate(model: "Model", objective: Objective, image: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """The objective (priors subtracted) of display images [n, c, h, w], resized to the model, untransformed."""
    x = model_input(model, image)
    values = gradients_for(model, objective, PLAIN)(x).values
    if settings:
        values = values - priors.penalty(image, settings)[0]
    return values


def model_input(model: "Model", image: np.ndarray) -> np.ndarray:
    """Display images [n, c, h, w] -> model-space inputs [n, C, H, W] (bilinear resize when sizes differ)."""
    out_size = (model.image.height, model.image.width)
    if tuple(image.shape[2:]) != out_size:
        rng = np.random.default_rng(0)
        image = np.stack([sample(NONE, image.shape[2:], out_size, rng).forward(im) for im in image])
    return DisplaySpace(model).to_model(image)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of display images [n, c, h, w] (pytorch-cnn-visualizations' periodic blur)."""
    out = np.empty_like(image)
    for i in range(image.shape[0]):
        for c in range(image.shape[1]):
            out[i, c] = cv2.GaussianBlur(image[i, c], (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return out


__all__ = ["Adam", "REDIRECT_STEPS", "Run", "blur", "check_steps", "evaluate", "model_input", "optimise"]
