"""Derivative-free optimisation for black-box models: finite-difference gradients and Adam.

Why: blackbox only *evaluates* the model (ONNX Runtime, no autograd), yet the optimisation-based
saliency methods (meaningful and extremal perturbation) descend a gradient. The gradient of the model's
score with respect to a mask is estimated from antithetic random probes, all of one step evaluated in
one batch:

    g = 1 / (2 eps n) * sum_i (f(theta + eps u_i) - f(theta - eps u_i)) u_i,    E[u u^T] = I

which is an unbiased estimate of the gradient of a Gaussian-smoothed f (and of f's own gradient to
O(eps^2) for smooth f). Antithetic pairs cancel f(theta) and the even-order terms, so the estimate
needs no separate evaluation of the centre, and (f+ + f-) / 2 gives the centre value to O(eps^2) for
free. With n directions in d dimensions the expected cosine with the true gradient is about
sqrt(n / (n + d)); Adam's momentum averages the remaining noise over steps.

Several independent problems (for example one mask per requested area) can share one call: ``theta``
has a leading problem axis [K, ...] and ``f`` returns [P, K] for P stacked probes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ParameterError

DIRECTIONS = ("gaussian", "rademacher", "smooth")


def smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] Gaussian blur along one axis (zero outside), rows scaled to unit norm: blurring i.i.d.
    N(0, 1) noise with it on both axes of a grid gives unit-variance, spatially correlated noise."""
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / np.linalg.norm(weights, axis=1, keepdims=True)).astype(np.float32)


def random_directions(rng: np.random.Generator, n: int, shape: tuple[int, ...], *,
                      kind: str = "gaussian", sigma: float = 1.0) -> np.ndarray:
    """``n`` random probe directions of ``shape`` (float32 [n, *shape]), unit variance per coordinate.

    ``kind``: "gaussian" (u ~ N(0, I)) or "rademacher" (u = +-1; lower variance for the same n because
    |u|^2 = d exactly): E[u u^T] = I, so the estimate is the gradient itself. "smooth": Gaussian noise
    blurred over the last two axes (a grid) with ``sigma`` cells: E[u u^T] = C, a spatial correlation,
    so the estimate is C times the gradient, the gradient smoothed over about sigma cells. That is still
    a descent direction (C is positive semi-definite), and its effective dimension is about
    d / (4 pi sigma^2) rather than d, so n probes estimate it far better: what a smooth mask needs."""
    if kind == "gaussian":
        return rng.standard_normal((n, *shape), dtype=np.float32)
    if kind == "rademacher":
        return (rng.integers(0, 2, size=(n, *shape), dtype=np.int8) * 2 - 1).astype(np.float32)
    if kind == "smooth":
        if len(shape) < 2:
            raise ParameterError("smooth directions need a grid (at least two axes)")
        noise = rng.standard_normal((n, *shape), dtype=np.float32)
        return smoothing_matrix(shape[-2], sigma) @ noise @ smoothing_matrix(shape[-1], sigma).T
    raise ParameterError(f"unknown directions {kind!r}: use one of {', '.join(DIRECTIONS)}")


def antithetic_gradient(plus: np.ndarray, minus: np.ndarray, directions: np.ndarray, eps: float) -> np.ndarray:
    """Gradient estimate from antithetic probe values.

    ``plus``/``minus``: [n, K] values at theta +- eps u; ``directions``: [n, K, ...]. Returns [K, ...].
    """
    n = directions.shape[0]
    slopes = (np.asarray(plus, np.float64) - np.asarray(minus, np.float64)) / (2.0 * eps)  # [n, K]
    flat = directions.reshape(n, slopes.shape[1], -1).astype(np.float64)
    grad = np.einsum("nk,nkd->kd", slopes, flat) / n
    return grad.reshape(directions.shape[1:])


def estimate_gradient(f: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, *, n_directions: int = 32,
                      eps: float = 0.05, rng: np.random.Generator | None = None,
                      kind: str = "gaussian", sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Finite-difference gradient of ``f`` at ``theta`` [K, ...] from ``n_directions`` antithetic pairs.

    ``f`` receives all 2 * n_directions probes at once, stacked as [2n, K, ...], and returns [2n, K]: one
    call per step, so a model evaluates them as one batch. Returns (gradient [K, ...], centre value
    estimate [K] = mean of the probe values)."""
    if n_directions < 1:
        raise ParameterError(f"n_directions must be at least 1, got {n_directions}")
    if eps <= 0:
        raise ParameterError(f"eps must be positive, got {eps}")
    rng = rng if rng is not None else np.random.default_rng()
    theta = np.asarray(theta, np.float32)
    u = random_directions(rng, n_directions, theta.shape, kind=kind, sigma=sigma)
    probes = np.concatenate([theta + eps * u, theta - eps * u])
    values = np.asarray(f(probes), np.float64).reshape(2 * n_directions, theta.shape[0])
    plus, minus = values[:n_directions], values[n_directions:]
    return antithetic_gradient(plus, minus, u, eps), values.mean(axis=0)


class Adam:
    """Adam (Kingma & Ba 2015) on a NumPy array, with optional box constraints (projected steps).

    Why Adam: finite-difference gradients are noisy and badly scaled across coordinates; the first
    moment averages the noise over steps and the second rescales each coordinate. ``lr`` default 0.1 as
    in Fong & Vedaldi's meaningful perturbation; betas and eps as in the paper."""

    def __init__(self, *, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 lower: float | None = None, upper: float | None = None):
        if lr <= 0:
            raise ParameterError(f"lr must be positive, got {lr}")
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(beta1), float(beta2), float(eps)
        self.lower, self.upper = lower, upper
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray, *, lr: float | None = None) -> np.ndarray:
        """One descent step; returns the new parameters (clipped to [lower, upper] when given)."""
        grad = np.asarray(grad, np.float64)
        if self.m is None:
            self.m = np.zeros_like(grad)
            self.v = np.zeros_like(grad)
        self.t += 1
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1.0 - self.beta2) * grad * grad
        m_hat = self.m / (1.0 - self.beta1 ** self.t)
        v_hat = self.v / (1.0 - self.beta2 ** self.t)
        rate = self.lr if lr is None else lr
        out = np.asarray(params, np.float64) - rate * m_hat / (np.sqrt(v_hat) + self.eps)
        if self.lower is not None or self.upper is not None:
            out = np.clip(out, self.lower, self.upper)
        return out.astype(np.float32)
