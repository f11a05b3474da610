"""Reverse-mode differentiation of ONNX graphs into standard ONNX ops.

``build_gradient_model(model, input_name=..., score_name=..., rules=PLAIN)`` returns a model that computes
the score and ``d sum(score * seed) / d input`` (plus values and gradients of tapped intermediate tensors)
with nothing but stock ONNX Runtime kernels, on CPU or CUDA.

Modules: ``core.py`` the walk (prepare, select, seed, reverse walk, outputs); ``prepare.py`` the
normalisation it relies on; ``context.py`` what a rule may use; ``registry.py`` the rule registry and
:class:`RuleSet`; ``errors.py`` the one-line errors; ``rules/`` the per-op rules, the rectifiers and the
named rule sets (``rules/rectifiers.py``) and LRP's overrides (``rules/lrp.py``).
"""

from .context import GradContext
from .core import GRAD_SUFFIX, SEED_NAME, GradientModel, build_gradient_model
from .prepare import prepare
from .registry import RULES, Rectifier, Rule, RuleSet, rule
from .rules.lrp import lrp_ruleset
from .rules.rectifiers import DECONVNET, GUIDED, PLAIN, RECTIFIER_RULESETS, REDIRECTED

SUPPORTED_OPS = tuple(sorted(RULES))

__all__ = [
    "DECONVNET",
    "GRAD_SUFFIX",
    "GUIDED",
    "PLAIN",
    "RECTIFIER_RULESETS",
    "REDIRECTED",
    "RULES",
    "SEED_NAME",
    "SUPPORTED_OPS",
    "GradContext",
    "GradientModel",
    "Rectifier",
    "Rule",
    "RuleSet",
    "build_gradient_model",
    "lrp_ruleset",
    "prepare",
    "rule",
]
