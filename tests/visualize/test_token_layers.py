"""Unit views on transformer layers: a token layer's or a channel-last map's channel c is its last axis,
read on the patch grid like pytorch-grad-cam's ``reshape_transform`` (activation grids, channel and
neuron objectives with their gradients, top activations), checked against torch on the same network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_token_models import TinySwin, TinyViT, loaded, module_output, tokens_to_maps

from blackbox.errors import ParameterError
from blackbox.visualize import activations, top_activations
from blackbox.visualize import objectives as obj
from blackbox.visualize.engine import gradients_for


def built(cls):
    """(net, x [4, 3, 32, 32], loaded model) of the TorchScript export."""
    net, x, _, model = loaded(cls)
    return net, x, model


def _hooked_live(net, x):
    """The CAM module's output for ``x``, still on the autograd graph."""
    seen = {}
    handle = net.cam_module.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))
    try:
        net(x)
    finally:
        handle.remove()
    return seen["out"]


def test_activation_grid_tiles_are_the_patch_token_channels():
    net, x, model = built(TinyViT)
    layer = model.default_cam_layer()
    grid = activations(model, x[0].numpy(), layer=layer, show_input=False)
    expected = tokens_to_maps(torch.from_numpy(module_output(net, net.cam_module, x[:1])[0]), 1, (4, 4)).numpy()
    assert grid.tiles.shape == (16, 4, 4)
    np.testing.assert_allclose(grid.tiles, expected, rtol=1e-5, atol=1e-5)


def test_channel_and_neuron_objectives_read_the_channel_axis_with_gradients():
    """channel(c) on tokens: the mean of channel c over the 16 patch tokens (not the class token);
    neuron(c, y, x) on Swin's channel-last map: A[y, x, c]. Values and input gradients against autograd."""
    for cls, objective, pick in [
        (TinyViT, lambda name: obj.channel(name, 5), lambda a: a[:, 1:, 5].mean(1)),
        (TinySwin, lambda name: obj.neuron(name, 7, 1, 2), lambda a: a[:, 1, 2, 7]),
    ]:
        net, x, model = built(cls)
        step = gradients_for(model, objective(model.default_cam_layer()))(x[:2].numpy())
        xt = x[:2].clone().requires_grad_(True)
        value = pick(_hooked_live(net, xt))
        value.sum().backward()
        np.testing.assert_allclose(step.values, value.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(step.grad, xt.grad.numpy(), rtol=1e-3, atol=1e-5 * float(xt.grad.abs().max()))


def test_top_activations_on_a_channel_last_map():
    net, x, model = built(TinySwin)
    layer, channel = model.default_cam_layer(), 3
    top = top_activations(model, list(x.numpy()), layer=layer, channel=channel, k=2, projections=False)
    maps = module_output(net, net.cam_module, x)[..., channel]  # [N, h, w]
    best = maps.reshape(len(maps), -1).max(1)
    order = np.argsort(-best, kind="stable")[:2]
    assert top.indices == [int(i) for i in order]
    np.testing.assert_allclose(top.scores, best[order], rtol=1e-5, atol=1e-6)
    for i, position in zip(order, top.positions):
        assert maps[i][position] == maps[i].max()
    with pytest.raises(ParameterError, match="channels 0..31"):
        top_activations(model, list(x.numpy()), layer=layer, channel=32, projections=False)
