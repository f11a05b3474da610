"""ViT/DeiT-style token models: layer layouts, the default CAM layer, and CAMs against pytorch-grad-cam's
formula with its ViT ``reshape_transform`` (drop the class/distillation tokens, reshape the patch tokens
to the grid, channels first), computed in torch with autograd at the hooked module's output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_token_models import (
    score_cam_weights,
    TinyViT,
    loaded,
    module_output,
    module_output_grad,
    tokens_to_maps,
)
from test_cam import close, reference_cam

import blackbox
from blackbox.errors import ParameterError

F = torch.nn.functional
def vit(exporter: str, *, distilled: bool = False, size=(32, 32), opset: int | None = None):
    """(net, x [1, 3, H, W], loaded model) for one tiny ViT export."""
    net, x, _, model = loaded(TinyViT, exporter, opset, size=size, distilled=distilled)
    return net, x[:1], model


@pytest.mark.parametrize("exporter,opset", [("torchscript", None), ("dynamo", None), ("torchscript", 14)])
def test_default_layer_is_the_last_blocks_first_layernorm(exporter, opset):
    """Also at opset 14, where LayerNorm is spelt out and its output is the bias Add."""
    net, x, model = vit(exporter, opset=opset)
    layer = model.layer(model.default_cam_layer())
    assert (layer.layout, layer.extra, layer.grid, layer.shape) == ("tokens", 1, (4, 4), (17, 16))
    assert layer.op_type == ("Add" if opset == 14 else "LayerNormalization")
    # the very tensor pytorch-grad-cam hooks (model.blocks[-1].norm1), by value
    np.testing.assert_allclose(model.activations(x.numpy(), [layer.name])[layer.name],
                               module_output(net, net.cam_module, x), rtol=1e-5, atol=1e-5)
    layers = model.layers()
    # attention weights [heads, T, T] and the head split [T, heads, d] are not maps; the patch embedding
    # is an NCHW map but not the default
    assert not any(entry.spatial for entry in layers if entry.op_type == "Softmax")
    assert {entry.layout for entry in layers if entry.spatial} == {"nchw", "tokens"}
    patch = next(entry for entry in layers if entry.op_type == "Conv")
    assert patch.layout == "nchw" and patch.grid == (4, 4) and patch.name != layer.name


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_cams_match_pytorch_grad_cam_with_reshape_transform(exporter):
    net, x, model = vit(exporter)
    worst = 0.0
    for target in (2, 7):
        a, g = module_output_grad(net, net.cam_module, x, target)
        a, g = tokens_to_maps(a, 1, (4, 4)), tokens_to_maps(g, 1, (4, 4))
        for variant in ("grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam"):
            e = blackbox.explain(model, x[0].numpy(), variant, target=target, score="raw")
            assert e.extras["layout"] == "tokens" and e.extras["layer_shape"] == [16, 4, 4]
            worst = max(worst, close(e.attributions, reference_cam(variant, a, g).numpy(),
                                     what=f"{exporter}/{variant}/{target}"))
            assert e.heatmap.shape == (32, 32)
    print(f"vit/{exporter}: max relative difference {worst:.2e}")


def test_score_cam_reads_the_patch_tokens_as_maps():
    """Score-CAM on the token layer: Wang et al.'s weights from the reshaped maps, upsampled, min-max
    normalised, as keep-masks; computed here in torch."""
    net, x, model = vit("torchscript")
    target = 3
    maps = tokens_to_maps(torch.from_numpy(module_output(net, net.cam_module, x)[0]).double(), 1, (4, 4))
    weights = score_cam_weights(net, x, maps, target)
    expected = np.maximum(np.einsum("k,khw->hw", weights, maps.numpy()), 0.0)
    e = blackbox.explain(model, x[0].numpy(), "score_cam", target=target)
    assert e.extras["layout"] == "tokens" and e.n_evals == 17
    np.testing.assert_allclose(e.extras["channel_weights"], weights, rtol=1e-4, atol=1e-7)
    close(e.attributions, expected)


def test_distillation_tokens_and_a_non_square_grid():
    """DeiT: class + distillation token (extra 2) on a 32 x 48 input: a 4 x 6 patch grid, not a square."""
    net, x, model = vit("torchscript", distilled=True, size=(32, 48))
    layer = model.layer(model.default_cam_layer())
    assert (layer.layout, layer.extra, layer.grid) == ("tokens", 2, (4, 6))
    a, g = module_output_grad(net, net.cam_module, x, 5)
    e = blackbox.explain(model, x[0].numpy(), "grad_cam", target=5, score="raw")
    close(e.attributions, reference_cam("grad_cam", tokens_to_maps(a, 2, (4, 6)), tokens_to_maps(g, 2, (4, 6))).numpy())
    assert e.heatmap.shape == (32, 48)


def test_named_layers_and_layouts():
    _, x, model = vit("torchscript")
    default = model.default_cam_layer()
    auto = blackbox.explain(model, x[0].numpy(), "grad_cam", target=1, score="raw")
    told = blackbox.explain(model, x[0].numpy(), "grad_cam", target=1, score="raw", layer=default, layout="tokens")
    np.testing.assert_array_equal(auto.attributions, told.attributions)
    # the block's residual output, named: another token layer of the same grid
    residual = [entry for entry in model.layers() if entry.layout == "tokens" and entry.op_type == "Add"][-1]
    e = blackbox.explain(model, x[0].numpy(), "xgrad_cam", target=1, score="raw", layer=residual.name)
    assert e.attributions.shape == (4, 4) and e.extras["layer"] == residual.name
    # refusals: one line, naming what fits
    with pytest.raises(ParameterError) as err:
        blackbox.explain(model, x[0].numpy(), "grad_cam", target=1, layer=default, layout="nhwc")
    message = str(err.value)
    assert "\n" not in message and "'nhwc' does not fit" in message and "possible layouts: tokens" in message
    softmax = next(entry for entry in model.layers() if entry.op_type == "Softmax")
    with pytest.raises(ParameterError, match="its layout is not spatial; possible layouts: nchw, nhwc"):
        blackbox.explain(model, x[0].numpy(), "score_cam", target=1, layer=softmax.name)
    with pytest.raises(ParameterError, match="layout"):
        blackbox.explain(model, x[0].numpy(), "grad_cam", target=1, layout="hwc")


def test_layout_reaches_the_cli_parameter_list():
    from blackbox.methods import METHODS

    for name in ("grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "guided_grad_cam", "score_cam"):
        spec = METHODS[name]
        assert spec.parameters()["layout"] == "auto"
        assert spec.params["layout"].choices == ("auto", "nchw", "nhwc", "tokens")


def test_batched_cams_read_tokens_like_single_ones():
    """explain_many's batched Grad-CAM and guided Grad-CAM (one tapped call for several images, each its
    own target) equal one call per image on the token layer."""
    model = vit("torchscript")[2]
    torch.manual_seed(1)
    xs = list(torch.randn(3, 3, 32, 32).numpy())
    for method in ("grad_cam", "guided_grad_cam"):
        many = list(blackbox.explain_many(model, xs, method, targets=[1, 4, 8], score="raw", batch_size=3))
        for x, target, e in zip(xs, (1, 4, 8), many):
            one = blackbox.explain(model, x, method, target=target, score="raw")
            assert e.extras["layout"] == "tokens" and e.target == target
            np.testing.assert_allclose(e.attributions, one.attributions, rtol=1e-5, atol=1e-6)
