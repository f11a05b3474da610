"""How gradients cross rectifiers (``Relu``, ``Clip`` with a lower bound of 0), and the named rule sets.

The ``Relu`` and rectifying ``Clip`` rules compute the forward gate and hand the incoming gradient to
``ctx.rectifier``; which rectifier is in effect is the rule set's choice, so no rule knows which
explanation method asked. Conventions (``on``: where the forward unit passes):

* plain: ``where(on, g, 0)``, PyTorch's ``threshold_backward`` (0 at x == 0);
* guided: ``where(on, relu(g), 0)`` (guided backpropagation, Springenberg et al. 2015; Captum);
* deconvnet: ``relu(g)``, ignoring the forward gate (Zeiler & Fergus 2014; Captum's Deconvolution);
* redirected: Lucid's ``redirected_relu_grad`` (lucid/misc/redirected_relu_grad.py), for feature
  visualisation from inputs where a unit is off: per sample, when the plain gradient is zero over the
  whole tensor, an off unit passes the gradient that would turn it on (``g > 0`` below the lower bound,
  ``g < 0`` above an upper bound) and on units pass ``g``; otherwise the plain gradient. Lucid's
  gradient is that of a loss it minimises, so its "negative gradient" is our positive one. It also
  stops redirecting after 16 optimisation steps: that schedule belongs to the caller (pick
  :data:`PLAIN` after step 16).
"""

from __future__ import annotations

from ..registry import Rectifier, RuleSet


def _plain(ctx, node, g, on, below):
    return g if on is None else ctx.emit("Where", [on, g, ctx.scalar(0.0, node.input[0])])


def _guided(ctx, node, g, on, below):
    return _plain(ctx, node, ctx.emit("Relu", [g]), on, below)


def _deconvnet(ctx, node, g, on, below):
    return ctx.emit("Relu", [g])


def _redirected(ctx, node, g, on, below):
    x = node.input[0]
    zero = ctx.scalar(0.0, x)
    plain = ctx.emit("Where", [on, g, zero])
    up = ctx.emit("Relu", [g])  # would push an off unit under the lower bound up, towards on
    off = up if below is None else ctx.emit("Where", [below(), up, ctx.emit("Min", [g, zero])])
    redirected = ctx.emit("Where", [on, g, off])
    rank = ctx.rank(x)
    axes = list(range(1, rank)) if rank >= 2 else [0]  # per batch entry, as Lucid
    passing = ctx.emit("Greater", [ctx.reduce("ReduceMax", ctx.emit("Abs", [plain]), axes, keepdims=True), zero])
    return ctx.emit("Where", [passing, plain, redirected])


PLAIN = RuleSet("plain", Rectifier("plain", _plain, masks_only=True))
GUIDED = RuleSet("guided", Rectifier("guided", _guided, masks_only=True))
DECONVNET = RuleSet("deconvnet", Rectifier("deconvnet", _deconvnet, masks_only=False))
REDIRECTED = RuleSet("redirected", Rectifier("redirected", _redirected, masks_only=False))

RECTIFIER_RULESETS = {s.name: s for s in (PLAIN, GUIDED, DECONVNET, REDIRECTED)}

__all__ = ["DECONVNET", "GUIDED", "PLAIN", "RECTIFIER_RULESETS", "REDIRECTED"]
