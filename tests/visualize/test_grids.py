"""Filter and activation grids: the hand-set detectors show as the colours and stripes they detect, int8
and fp16 models show their dequantized / up-cast weights, and activation tiles are the layer's values."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import blackbox
from blackbox.errors import ParameterError
from blackbox.inputs import prepare
from blackbox.visualize.grids import activations, filters
from conftest import real
from detectors import SIZE, concept_image, detector_model, quantized, stripe_kernels

GAP = 2


def cells(grid, count: int) -> list[np.ndarray]:
    """The ``count`` cells of a square-ish grid picture, row-major (layout of grids.compose)."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    h = (grid.image.shape[0] - GAP) // rows - GAP
    w = (grid.image.shape[1] - GAP) // cols - GAP
    out = []
    for i in range(count):
        r, c = divmod(i, cols)
        y, x = GAP + r * (h + GAP), GAP + c * (w + GAP)
        out.append(grid.image[y:y + h, x:x + w].astype(int))
    return out


def assert_dominant(cell: np.ndarray, channel: int, margin: float = 100) -> None:
    mean = cell.reshape(-1, 3).mean(axis=0)
    others = [mean[c] for c in range(3) if c != channel]
    assert mean[channel] > max(others) + margin, mean


@pytest.fixture(scope="module")
def detectors():
    return blackbox.load(detector_model(), device="cpu")


@pytest.fixture(scope="module")
def mobilenet():
    return blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", device="cpu")


def bgr_detectors() -> onnx.ModelProto:
    """The detector network for BGR input: the colour filters read their channel in reverse order, so
    unit 0 still detects red; the metadata says the model wants BGR."""
    model = detector_model()
    for init in model.graph.initializer:
        if init.name == "colour_w":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:, ::-1].copy(), "colour_w"))
    meta = next(p for p in model.metadata_props if p.key == "blackbox.preprocess")
    meta.value = json.dumps({**json.loads(meta.value), "channel_order": "BGR"})
    return model


def weights(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_colour_filters_are_drawn_in_their_colours(detectors):
    grid = filters(detectors)
    assert grid.layer == "colour_conv"
    np.testing.assert_array_equal(grid.tiles, weights(detector_model(), "colour_w").transpose(0, 2, 3, 1))
    drawn = cells(grid, 3)
    assert drawn[0].shape[0] >= 24
    for unit in range(3):
        assert_dominant(drawn[unit], unit)
    assert grid.image.dtype == np.uint8 and grid.image.shape[2] == 3


def test_bgr_model_red_filter_is_still_red():
    model = blackbox.load(bgr_detectors(), device="cpu")
    assert model.preprocess.channel_order == "BGR"
    red, _ = concept_image("red", box=(0, SIZE, 0, SIZE))
    fired = model.activations(prepare(model, red).x[None], ["colour"])["colour"][0].mean(axis=(1, 2))
    assert fired[0] > 0.9 and fired[1] == 0 and fired[2] == 0  # unit 0 really is the red detector
    drawn = cells(filters(model), 3)
    for unit in range(3):
        assert_dominant(drawn[unit], unit)


def test_stripe_filters_show_their_orientation(detectors):
    grid = filters(detectors, "stripes")  # the ReLU's output: walks back to its convolution
    assert grid.layer == "stripes" and grid.tiles.shape == (2, 8, 8, 3)
    horizontal, vertical = (c.mean(axis=2) for c in cells(grid, 2))
    assert horizontal.std(axis=1).max() < 1 and horizontal.std(axis=0).min() > 40  # rows constant
    assert vertical.std(axis=0).max() < 1 and vertical.std(axis=1).min() > 40  # columns constant
    assert {0, 255} <= set(np.unique(horizontal)) and 127 <= np.median(horizontal) <= 128  # 0 is mid grey


def test_conv_node_name_selects_it(detectors, tmp_path):
    model = detector_model()
    model.graph.node[2].name = "stripe_conv_node"
    grid = filters(blackbox.load(model, device="cpu"), "stripe_conv_node")
    assert grid.layer == "stripes_conv"  # reported as the layer it makes
    np.testing.assert_allclose(grid.tiles, stripe_kernels().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("layer, needle", [("features", "Concat"), ("flat", "Flatten"), ("pooled", "GlobalAveragePool")])
def test_layer_not_made_by_a_convolution_is_refused(detectors, layer, needle):
    with pytest.raises(ParameterError) as info:
        filters(detectors, layer)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_layer_names_close_ones(detectors):
    with pytest.raises(ParameterError, match="close names: 'stripes'"):
        filters(detectors, "stripess")


def test_int8_qdq_copy_draws_the_same_filters(detectors, tmp_path):
    model = blackbox.load(quantized(detector_model(), tmp_path), device="cpu")
    grid = filters(model)
    assert grid.layer == "colour"
    colour = filters(detectors).tiles
    np.testing.assert_allclose(grid.tiles, colour, atol=np.abs(colour).max() / 127)
    for unit, cell in enumerate(cells(grid, 3)):
        assert_dominant(cell, unit)
    stripes = filters(model, "stripes")
    step = np.abs(stripe_kernels()).max() / 127
    np.testing.assert_allclose(stripes.tiles, stripe_kernels().transpose(0, 2, 3, 1), atol=step)


def test_mobilenet_int8_first_conv_is_its_dequantized_weights(mobilenet):
    grid = filters(mobilenet)
    assert grid.layer == "474_quantized" and grid.tiles.shape == (32, 3, 3, 3)
    inits = {t.name: numpy_helper.to_array(t) for t in mobilenet.proto.graph.initializer}
    q, scale, zero = inits["475_quantized"], inits["475_scale"], inits["475_zero_point"]
    assert q.dtype == np.int8
    expected = (q.astype(np.float32) - zero.astype(np.float32).reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(grid.tiles, expected.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7)
    assert len(cells(grid, 32)) == 32 and grid.image.shape == (6 * (33 + GAP) + GAP,) * 2 + (3,)
    np.testing.assert_array_equal(filters(mobilenet, "474_quantized").tiles, grid.tiles)


def test_per_filter_scaling_stretches_every_filter(mobilenet):
    def reaches_extreme(cell):
        return cell.min() == 0 or cell.max() == 255

    shared = [reaches_extreme(c) for c in cells(filters(mobilenet), 32)]
    own = [reaches_extreme(c) for c in cells(filters(mobilenet, per_filter=True), 32)]
    assert all(own) and sum(shared) < 32


def test_mobilenet_depthwise_filters_are_grey(mobilenet):
    grid = filters(mobilenet, "477_quantized")  # 3 x 3 depthwise: one input channel per filter
    assert grid.tiles.shape == (32, 3, 3)
    for cell in cells(grid, 32):
        assert (cell[..., 0] == cell[..., 1]).all() and (cell[..., 1] == cell[..., 2]).all()


def test_squeezenet_fp16_bgr_first_conv():
    model = blackbox.load(real("models", "squeezenet1.0-fp16.onnx"), preprocess="caffe", device="cpu")
    grid = filters(model)
    conv1 = weights(model.proto, "conv1_w_0")
    assert conv1.dtype == np.float16 and len(grid.tiles) == 64 == len(cells(grid, 64))
    # BGR input channels shown as RGB: the tile's red plane is the weight of input channel 2
    np.testing.assert_array_equal(grid.tiles, conv1.astype(np.float32)[:, ::-1].transpose(0, 2, 3, 1))


# ------------------------------------------------------------------ activations

def test_activation_tiles_are_the_layer_values(detectors):
    picture, mask = concept_image("red", box=(4, 20, 8, 24))
    grid = activations(detectors, picture, layer="features")
    expected = detectors.activations(prepare(detectors, picture).x[None], ["features"])["features"][0]
    np.testing.assert_array_equal(grid.tiles, expected)
    assert grid.layer == "features" and grid.tiles.shape == (5, SIZE, SIZE)
    side = 2 * SIZE  # 32 px maps enlarged x2 to reach the 48 px minimum; picture + 5 tiles in 3 columns
    assert grid.image.shape == (2 * (side + GAP) + GAP, 3 * (side + GAP) + GAP, 3)
    first, red_unit = cells(grid, 6)[:2]
    assert_dominant(first, 0, margin=50)  # the picture (red box on grey) comes first
    inside = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert (red_unit[inside] == viridis(255)).all()  # the red detector peaks on the box: top colour
    assert not (red_unit[~inside] == viridis(255)).all(axis=1).any()


def viridis(index: int) -> np.ndarray:
    bgr = cv2.applyColorMap(np.full((1, 1), index, np.uint8), cv2.COLORMAP_VIRIDIS)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[0, 0]


def test_activations_without_picture_and_shared_scale(detectors):
    picture, _ = concept_image("green", box=(0, 16, 0, 16))
    grid = activations(detectors, picture, layer="colour", show_input=False, shared_scale=True)
    assert len(grid.tiles) == 3 and grid.image.shape == (2 * (64 + GAP) + GAP,) * 2 + (3,)
    red_unit, green_unit = cells(grid, 3)[:2]
    assert (green_unit == viridis(255)).all(axis=2).any()
    assert not (red_unit == viridis(255)).all(axis=2).any()  # weak under the shared scale: never the top
    own = activations(detectors, picture, layer="colour", show_input=False)
    for tile, cell in zip(own.tiles, cells(own, 3)):  # each its own min-max: every varying unit reaches the top
        assert (cell == viridis(255)).all(axis=2).any() == (tile.max() > tile.min())


def test_model_space_input_is_accepted(detectors):
    x = np.zeros((3, SIZE, SIZE), np.float32)
    x[0] = 1.0
    grid = activations(detectors, x, layer="colour")
    np.testing.assert_array_equal(grid.tiles, detectors.activations(x[None], ["colour"])["colour"][0])
    assert grid.tiles[0].min() > 0.9 and grid.tiles[1].max() == 0


@pytest.mark.parametrize("layer", ["flat", "logits", "pooled"])
def test_non_spatial_layer_is_refused_with_suggestions(detectors, layer):
    picture, _ = concept_image("red")
    with pytest.raises(ParameterError) as info:
        activations(detectors, picture, layer=layer)
    message = str(info.value)
    assert repr(layer) in message and "'features'" in message and "\n" not in message


def test_mobilenet_int8_activation_grid(mobilenet, tmp_path):
    photo = real("images", "flamingo.jpg")
    grid = activations(mobilenet, str(photo), layer="474_quantized")
    expected = mobilenet.activations(prepare(mobilenet, str(photo)).x[None], ["474_quantized"])["474_quantized"][0]
    np.testing.assert_array_equal(grid.tiles, expected)
    assert grid.tiles.shape == (32, 112, 112) and grid.image.shape == (6 * (112 + GAP) + GAP,) * 2 + (3,)
    path = grid.save_png(tmp_path / "grid.png")
    assert np.array_equal(cv2.imread(path)[..., ::-1], grid.image)
