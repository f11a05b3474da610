"""ShuffleNet V2-style networks (channel shuffle through run-time Shape/Gather/Div/Concat/Reshape): every
gradient method works and equals PyTorch, with a dynamic batch (the sizes shape inference loses are
recovered) and with a fixed batch of 1 (rewritten to a symbolic batch by the loader), for both exporters.

Tolerances as in test_gradient_methods: rtol 1e-4, atol 1e-5 x max |reference| (float32 on both sides).
"""

from __future__ import annotations

import warnings

import captum.attr as captum_attr  # test extra: missing means a broken install, not a skip
import numpy as np
import pytest
import torch  # test extra: missing means a broken install, not a skip
from arch_conv_models import close, exported_arch

import blackbox

TARGET = 3
# both exporters with a dynamic batch; the fixed batch of 1 (rewritten by the loader) with TorchScript, whose
# fixed-size export hard-codes the batch in Reshape constants (the dynamo exporter's is evaluated per sample)
VARIANTS = [("torchscript", True), ("dynamo", True), ("torchscript", False)]
VARIANT_IDS = ["torchscript-dynamic", "dynamo-dynamic", "torchscript-fixed1"]
_LOADED: dict = {}


def loaded(exporter: str, dynamic_batch: bool):
    key = (exporter, dynamic_batch)
    if key not in _LOADED:
        net, x, proto = exported_arch("shufflenet", exporter, dynamic_batch=dynamic_batch)
        _LOADED[key] = (net, x, blackbox.load(proto, output_name="logits", device="cpu"))
    return _LOADED[key]


def autograd(net, x: np.ndarray, target: int = TARGET) -> np.ndarray:
    """d logits[:, target] / dx for a batch x [N, C, H, W]."""
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[:, target].sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("exporter,dynamic_batch", VARIANTS, ids=VARIANT_IDS)
def test_saliency_and_integrated_gradients_match_torch(exporter, dynamic_batch):
    net, x, model = loaded(exporter, dynamic_batch)
    assert model.fixed_batch == (None if dynamic_batch else 1)
    e = blackbox.explain(model, x[0], "saliency", target=TARGET, score="raw", abs=False)
    close(e.attributions, autograd(net, x)[0], f"saliency {exporter}")
    e = blackbox.explain(model, x[0], "integrated_gradients", target=TARGET, score="raw", n_steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = captum_attr.IntegratedGradients(net).attribute(torch.tensor(x), target=TARGET, n_steps=8)
    close(e.attributions, want.detach().numpy()[0], f"integrated gradients {exporter}")


@pytest.mark.parametrize("exporter,dynamic_batch", VARIANTS, ids=VARIANT_IDS)
def test_rows_of_one_call_are_independent(exporter, dynamic_batch):
    """Several rows in one gradient call (what IG, SmoothGrad and explain_many do) equal PyTorch per row:
    a batch rewrite that mixed samples (a Reshape whose leading 1 is not the batch) fails here."""
    net, _, model = loaded(exporter, dynamic_batch)
    xs = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)
    seed = np.zeros((3, model.num_classes), np.float32)
    seed[:, TARGET] = 1.0
    grads = model.gradients.run(xs, seed, score="raw").grad
    close(grads, autograd(net, xs), f"three rows {exporter}")
