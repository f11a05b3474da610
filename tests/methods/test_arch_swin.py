"""Swin-style and ConvNeXt-style models: channel-last maps [N, H, W, C] (sizes that shape inference loses
under a dynamic batch, recovered by a probe run), the default CAM layer (pytorch-grad-cam's Swin example:
``layers[-1].blocks[-1].norm1``), and CAMs against its formula with the NHWC -> NCHW reshape in torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_token_models import (
    score_cam_weights,
    TinyConvNeXt,
    TinySwin,
    loaded,
    module_output,
    module_output_grad,
)
from test_cam import close, reference_cam

import blackbox
from blackbox.errors import ParameterError
from blackbox.graph.layers import tensor_shapes

F = torch.nn.functional
def built(cls, exporter: str):
    """(net, x [1, 3, 32, 32], ONNX export, loaded model)."""
    net, x, proto, model = loaded(cls, exporter)
    return net, x[:1], proto, model


def nhwc_maps(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's Swin reshape_transform for torchvision's channel-last maps: [h, w, C] -> [C, h, w]."""
    return t.permute(2, 0, 1)


def test_torchscript_swin_loses_sizes_and_the_probe_recovers_them():
    """Under a dynamic batch the TorchScript export computes every window reshape from Shape ops: shape
    inference leaves those sizes unknown, the probe run gives the real ones."""
    _, _, proto, model = built(TinySwin, "torchscript")
    inferred = tensor_shapes(proto, probe=False)
    layer = model.layer(model.default_cam_layer())
    assert not all(isinstance(d, int) for d in inferred[layer.tensor])
    assert tensor_shapes(proto)[layer.tensor] == [1, 4, 4, 32]
    assert all(all(isinstance(d, int) for d in entry.shape) for entry in model.layers())


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_default_layer_is_the_last_blocks_first_norm(exporter):
    net, x, _, model = built(TinySwin, exporter)
    layer = model.layer(model.default_cam_layer())
    assert (layer.layout, layer.grid, layer.shape, layer.op_type) == ("nhwc", (4, 4), (4, 4, 32), "LayerNormalization")
    np.testing.assert_allclose(model.activations(x.numpy(), [layer.name])[layer.name],
                               module_output(net, net.cam_module, x), rtol=1e-5, atol=1e-5)
    # window batches [N * windows, ws*ws, C] (at batch 1: [windows, 16, C], which looks like tokens) and
    # attention [N * windows, heads, T, T] are not maps; the net is channel-last from the patch norm on
    spatial = [entry for entry in model.layers() if entry.spatial]
    assert {entry.layout for entry in spatial} == {"nchw", "nhwc"}
    assert [entry.op_type for entry in spatial if entry.layout == "nchw"] == ["Conv", "Transpose"]
    windows = [entry for entry in model.layers() if entry.shape[-2:] == (16, 16)]
    assert windows and not any(entry.spatial for entry in windows)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_cams_match_pytorch_grad_cam_on_the_channel_last_map(exporter):
    net, x, _, model = built(TinySwin, exporter)
    worst = 0.0
    for target in (0, 6):
        a, g = module_output_grad(net, net.cam_module, x, target)
        for variant in ("grad_cam", "hires_cam"):
            e = blackbox.explain(model, x[0].numpy(), variant, target=target, score="raw")
            assert e.extras["layout"] == "nhwc" and e.extras["layer_shape"] == [32, 4, 4]
            worst = max(worst, close(e.attributions, reference_cam(variant, nhwc_maps(a), nhwc_maps(g)).numpy(),
                                     what=f"{exporter}/{variant}/{target}"))
    print(f"swin/{exporter}: max relative difference {worst:.2e}")


def test_score_cam_on_the_channel_last_map():
    net, x, _, model = built(TinySwin, "dynamo")
    target = 4
    maps = nhwc_maps(torch.from_numpy(module_output(net, net.cam_module, x)[0]).double())
    weights = score_cam_weights(net, x, maps, target)
    e = blackbox.explain(model, x[0].numpy(), "score_cam", target=target)
    np.testing.assert_allclose(e.extras["channel_weights"], weights, rtol=1e-4, atol=1e-7)
    close(e.attributions, np.maximum(np.einsum("k,khw->hw", weights, maps.numpy()), 0.0))


def test_convnext_channel_last_layer_named_with_layout_nhwc():
    """ConvNeXt: the CNN rule still picks the last NCHW map before pooling; its channel-last LayerNorm
    output, named with layout="nhwc", gives pytorch-grad-cam's CAM there."""
    net, x, proto, model = built(TinyConvNeXt, "torchscript")
    pooled = next(node for node in proto.graph.node if node.op_type == "ReduceMean").input[0]
    assert model.default_cam_layer() == pooled and model.layer(pooled).layout == "nchw"
    norm = next(entry for entry in model.layers() if entry.op_type == "LayerNormalization")
    assert (norm.layout, norm.shape) == ("nhwc", (8, 8, 16))
    a, g = module_output_grad(net, net.cam_module, x, 3)
    e = blackbox.explain(model, x[0].numpy(), "grad_cam", target=3, score="raw", layer=norm.name, layout="nhwc")
    close(e.attributions, reference_cam("grad_cam", nhwc_maps(a), nhwc_maps(g)).numpy())
    auto = blackbox.explain(model, x[0].numpy(), "grad_cam", target=3, score="raw", layer=norm.name)
    np.testing.assert_array_equal(auto.attributions, e.attributions)
    with pytest.raises(ParameterError, match="'tokens' does not fit it; possible layouts: nhwc, nchw"):
        blackbox.explain(model, x[0].numpy(), "grad_cam", target=3, layer=norm.name, layout="tokens")
