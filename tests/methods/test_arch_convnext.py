"""ConvNeXt-style networks (depthwise 7x7, channel-last LayerNorm, GELU MLP, layer scale; torchvision's
init: small weights, zero biases): saliency and integrated gradients equal PyTorch autograd and Captum for
both exporters, and integrated gradients' completeness gap is reported when the integral is not converged.

With zero biases the LayerNorm'ed stem makes f(a x) = f(x) for all but tiny a, so f jumps near the zero
baseline: 16 Gauss-Legendre steps miss most of the jump (the attributions sum far from f(x) - f(0)), 256
steps resolve it.
"""

from __future__ import annotations

import warnings

import captum.attr as captum_attr  # test extra: missing means a broken install, not a skip
import numpy as np
import pytest
import torch  # test extra: missing means a broken install, not a skip
from arch_conv_models import close, EXPORTERS, exported_arch

import blackbox

TARGET = 3
# both exporters with a dynamic batch; the fixed batch of 1 (rewritten by the loader) with TorchScript, whose
# fixed-size export hard-codes the batch in Reshape constants (the dynamo exporter's is evaluated per sample)
VARIANTS = [("torchscript", True), ("dynamo", True), ("torchscript", False)]
VARIANT_IDS = ["torchscript-dynamic", "dynamo-dynamic", "torchscript-fixed1"]
_LOADED: dict = {}


def loaded(exporter: str, dynamic_batch: bool = True):
    key = (exporter, dynamic_batch)
    if key not in _LOADED:
        net, x, proto = exported_arch("convnext", exporter, dynamic_batch=dynamic_batch)
        _LOADED[key] = (net, x, blackbox.load(proto, output_name="logits", device="cpu"))
    return _LOADED[key]


def captum_ig(net, x: np.ndarray, n_steps: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, delta = captum_attr.IntegratedGradients(net).attribute(
            torch.tensor(x), target=TARGET, n_steps=n_steps, return_convergence_delta=True)
    return out.detach().numpy()[0], float(delta[0])


@pytest.mark.parametrize("exporter,dynamic_batch", VARIANTS, ids=VARIANT_IDS)
def test_saliency_and_integrated_gradients_match_torch(exporter, dynamic_batch):
    net, x, model = loaded(exporter, dynamic_batch)
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[0, TARGET].backward()
    e = blackbox.explain(model, x[0], "saliency", target=TARGET, score="raw", abs=False)
    close(e.attributions, xt.grad.numpy()[0], f"saliency {exporter}")
    e = blackbox.explain(model, x[0], "integrated_gradients", target=TARGET, score="raw", n_steps=16)
    want, delta = captum_ig(net, x, 16)
    close(e.attributions, want, f"integrated gradients {exporter}")
    change = e.extras["score_input"] - e.extras["score_baseline"]
    assert e.extras["convergence_delta"] == pytest.approx(delta, abs=1e-4 * max(abs(change), 1.0))


def _ig_note(e) -> list[str]:
    return [n for n in e.notes if n.startswith("integrated gradients:")]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_completeness_gap_is_reported_and_more_steps_shrink_it(exporter):
    net, x, model = loaded(exporter)
    few = blackbox.explain(model, x[0], "integrated_gradients", target=TARGET, score="raw", n_steps=16)
    total = float(few.attributions.astype(np.float64).sum())
    change = few.extras["score_input"] - few.extras["score_baseline"]
    gap = abs(total - change) / abs(change)
    assert few.extras["completeness_gap"] == pytest.approx(gap, rel=1e-6)
    assert few.extras["attribution_sum"] == pytest.approx(total, rel=1e-6)
    assert gap > 0.2, f"expected 16 steps to leave a large gap on the LayerNorm model, got {gap:.1%}"
    # Captum's own delta says the same: the gap is the integral's, not blackbox's
    _, delta = captum_ig(net, x, 16)
    assert abs(delta) / abs(change) == pytest.approx(gap, rel=1e-3)
    (note,) = _ig_note(few)
    assert f"{total:.4g}" in note and f"{change:.4g}" in note and f"{100 * gap:.0f}%" in note
    assert "n_steps=16" in note and "baseline" in note
    many = blackbox.explain(model, x[0], "integrated_gradients", target=TARGET, score="raw", n_steps=256)
    assert many.extras["completeness_gap"] < 0.01 < gap
    assert _ig_note(many) == []
