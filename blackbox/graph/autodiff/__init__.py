"""Reverse-mode differentiation of ONNX graphs into standard ONNX ops.

``build_gradient_model(model, input_name=..., score_name=...)`` returns a model that computes the score
and ``d sum(score * seed) / d input`` (plus values and gradients of tapped intermediate tensors) with
nothing but stock ONNX Runtime kernels, on CPU or CUDA. See ``core.py`` for the walk, ``prepare.py``
for the normalisation it relies on and ``rules/`` for the per-op rules.
"""

from .core import GRAD_SUFFIX, RELU_MODES, SEED_NAME, GradContext, GradientModel, build_gradient_model
from .prepare import prepare
from .rules import RULES, Rule, rule

SUPPORTED_OPS = tuple(sorted(RULES))

__all__ = [
    "GRAD_SUFFIX",
    "RELU_MODES",
    "RULES",
    "SEED_NAME",
    "SUPPORTED_OPS",
    "GradContext",
    "GradientModel",
    "Rule",
    "build_gradient_model",
    "prepare",
    "rule",
]
