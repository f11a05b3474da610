"""Top activations with DeconvNet projections (``blackbox.visualize.top``) and receptive fields.

Known answers come from the hand-set detector network (``tests/detectors.py``): the red unit's top images
are the red pictures and the horizontal-stripe unit's the horizontal-stripe pictures, in float32, float16
and through an int8 QDQ copy. Scores are checked against a brute-force pass over every image, the
receptive field against the support of one neuron's gradient (on a strided network and MobileNetV2-int8),
and the projections against ``unit_gradients`` under the DeconvNet rules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, real
from detectors import CONCEPTS, SIZE, concept_image, detector_model, quantized
from helpers import sine_classifier
from onnx import TensorProto

import blackbox
from blackbox.errors import ImageError, ParameterError, UnsupportedOpError
from blackbox.graph.autodiff import DECONVNET, PLAIN
from blackbox.image_io import read_image, write_png_atomic
from blackbox.inputs import prepare
from blackbox.visualize.engine import unit_gradients
from blackbox.visualize.receptive import receptive_field
from blackbox.visualize.top import (
    TILE,
    TopActivations,
    render_projection,
    top_activations,
)

N_IMAGES = 30


@pytest.fixture(scope="module")
def concept_folder(tmp_path_factory):
    """30 grey pictures, concepts in turn (6 of each), each in a random box; (folder, concepts, pictures)."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("concepts")
    names, pictures = [], []
    for i in range(N_IMAGES):
        concept = CONCEPTS[(i * 3) % len(CONCEPTS)]  # 0, 3, 1, 4, 2, ...: mixed, not in blocks
        image, _ = concept_image(concept, rng=rng)
        write_png_atomic(folder / f"im{i:02d}.png", image)
        names.append(concept)
        pictures.append(image)
    return folder, names, pictures


@pytest.fixture(scope="module")
def detectors():
    return blackbox.load(detector_model(), device="cpu")


def concept_of(result: TopActivations, names: list[str]) -> list[str]:
    return [names[i] for i in result.indices]


def brute_force_peaks(model, pictures: list[np.ndarray], layer: str, channel: int) -> np.ndarray:
    x = np.stack([(p.astype(np.float32) / 255).transpose(2, 0, 1) for p in pictures])
    return model.activations(x, [layer])[layer][:, channel].reshape(len(x), -1).max(axis=1)


# ------------------------------------------------------------------ known answers

def test_red_unit_tops_are_red_pictures_with_brute_force_scores(detectors, concept_folder):
    folder, names, pictures = concept_folder
    top = top_activations(detectors, folder, layer="colour", channel=0, k=5)
    assert concept_of(top, names) == ["red"] * 5
    assert top.sources == [str(folder / f"im{i:02d}.png") for i in top.indices]
    peaks = brute_force_peaks(detectors, pictures, "colour", 0)
    np.testing.assert_allclose(top.scores, np.sort(peaks)[::-1][:5], rtol=1e-6)
    np.testing.assert_allclose(top.scores, peaks[top.indices], rtol=1e-6)
    assert np.all(np.diff(top.scores) <= 0)
    for patch, (y0, x0, y1, x1), (py, px) in zip(top.patches, top.boxes, top.positions):
        assert patch.shape == (1, 1, 3) and (y1 - y0, x1 - x0) == (1, 1) and (y0, x0) == (py, px)
        red = (patch[..., 0].astype(int) - patch[..., 1:].max(axis=2)) > 200
        assert red.mean() > 0.5


def test_stripe_unit_tops_are_horizontal_stripes_with_8x8_fields(detectors, concept_folder):
    folder, names, pictures = concept_folder
    top = top_activations(detectors, folder, layer="stripes", channel=0, k=5)
    assert concept_of(top, names) == ["horizontal"] * 5
    np.testing.assert_allclose(top.scores, np.sort(brute_force_peaks(detectors, pictures, "stripes", 0))[::-1][:5],
                               rtol=1e-6)
    for patch, index, box, (py, px) in zip(top.patches, top.indices, top.model_boxes, top.positions):
        assert box == (py - 3, px - 3, py + 5, px + 5)  # 8 x 8 kernel, pads 3 before
        assert patch.shape == (8, 8, 3)
        np.testing.assert_array_equal(patch, pictures[index][box[0]:box[2], box[1]:box[3]])
        assert np.all(patch == patch[:, :1]) and len(np.unique(patch[:, 0, 0])) == 2  # rows alternate


def test_projection_is_the_deconvnet_gradient_of_one_activation(detectors, concept_folder):
    folder, _, pictures = concept_folder
    top = top_activations(detectors, folder, layer="stripes", channel=0, k=3)
    x = np.stack([(pictures[i].astype(np.float32) / 255).transpose(2, 0, 1) for i in top.indices])
    weights = np.zeros((3, 2, SIZE, SIZE), np.float32)
    for i, (y, xx) in enumerate(top.positions):
        weights[i, 0, y, xx] = 1
    expected = unit_gradients(detectors, x, "stripes", weights, rules=DECONVNET)
    for raw, grad, (y0, x0, y1, x1), shown, patch in zip(top.raw_projections, expected, top.model_boxes,
                                                         top.projections, top.patches):
        np.testing.assert_allclose(raw, grad[:, y0:y1, x0:x1], rtol=1e-5, atol=1e-7)
        assert np.abs(grad).sum() == pytest.approx(np.abs(raw).sum(), rel=1e-5)  # nothing outside the field
        grey = raw.mean(axis=0)
        assert np.allclose(grey, grey[:, :1], atol=1e-7)  # columns constant: a horizontal pattern
        assert np.ptp(grey[:, 0]) > 0.05  # rows vary
        assert shown.shape == patch.shape and shown.dtype == np.uint8
        assert np.all(shown == shown[:, :1]) and shown.max() == 255 and shown.min() == 0


def test_rendered_projection_is_symmetric_around_grey():
    g = np.zeros((3, 2, 2))
    g[:, 0, 0], g[:, 1, 1] = 0.5, -0.25
    shown = render_projection(g, (2, 2))
    assert shown[0, 0].tolist() == [255] * 3 and shown[0, 1].tolist() == [128] * 3
    assert shown[1, 1].tolist() == [64] * 3
    assert render_projection(np.zeros((3, 2, 2)), (4, 4)).tolist() == np.full((4, 4, 3), 128).tolist()


@pytest.mark.parametrize("kind", ["float16", "int8"])
def test_lower_precision_copies_choose_the_same_images(kind, detectors, concept_folder, tmp_path):
    folder, names, _ = concept_folder
    proto = quantized(detector_model(), tmp_path) if kind == "int8" else detector_model(TensorProto.FLOAT16)
    model = blackbox.load(proto, device="cpu")
    for layer, channel, concept in [("colour", 0, "red"), ("stripes", 0, "horizontal"), ("colour", 2, "blue")]:
        reference = top_activations(detectors, folder, layer=layer, channel=channel, k=6, projections=False)
        low = top_activations(model, folder, layer=layer, channel=channel, k=6)
        assert concept_of(low, names) == [concept] * 6
        assert sorted(low.sources) == sorted(reference.sources)
        assert all(np.isfinite(p).all() for p in low.raw_projections)


def test_streaming_in_small_batches_gives_the_same_top_k(detectors, concept_folder):
    folder, _, pictures = concept_folder
    whole = top_activations(detectors, folder, layer="stripes", channel=1, k=4, projections=False)
    small = top_activations(detectors, folder, layer="stripes", channel=1, k=4, batch_size=3, projections=False)
    arrays = top_activations(detectors, pictures, layer="stripes", channel=1, k=4, batch_size=7, projections=False)
    assert small.indices == whole.indices == arrays.indices
    assert arrays.sources == [f"array[{i}]" for i in whole.indices]
    np.testing.assert_array_equal(small.scores, whole.scores)
    assert len(small.patches) == 4 and small.projections == []


def test_boxes_map_back_to_enlarged_pictures(tmp_path, detectors):
    """64 x 64 pictures on the 32 x 32 model: boxes (and patches) are twice the model-input field."""
    rng = np.random.default_rng(3)
    pictures = [np.kron(concept_image(c, rng=rng)[0], np.ones((2, 2, 1), np.uint8))
                for c in ["horizontal", "vertical", "red", "horizontal"]]
    top = top_activations(detectors, pictures, layer="stripes", channel=0, k=2)
    for patch, box, model_box, index in zip(top.patches, top.boxes, top.model_boxes, top.indices):
        assert box == tuple(2.0 * v for v in model_box)
        assert patch.shape == (16, 16, 3) == top.projections[0].shape
        y0, x0 = int(box[0]), int(box[1])
        np.testing.assert_array_equal(patch, pictures[index][y0:y0 + 16, x0:x0 + 16])
    assert sorted(top.indices) == [0, 3]


def test_a_model_space_array_is_shown_through_the_preprocessing(detectors):
    image, _ = concept_image("red", box=(0, SIZE, 0, SIZE))
    x = (image.astype(np.float32) / 255).transpose(2, 0, 1)
    top = top_activations(detectors, [x], layer="colour", channel=0, k=3)
    assert len(top.patches) == 1 and top.patches[0].tolist() == [[[255, 0, 0]]]


# ------------------------------------------------------------------ receptive fields

def gradient_support(model, layer: str, position: tuple[int, int], *, n: int, seed: int = 0) -> tuple:
    """The bounding box of the nonzero input gradient of unit 0 at ``position`` over ``n`` random inputs."""
    shape = model.layer(layer).shape
    x = np.random.default_rng(seed).normal(size=(n, model.image.channels, model.image.height,
                                                 model.image.width)).astype(np.float32)
    weights = np.zeros((n, *shape), np.float32)
    weights[:, 0, position[0], position[1]] = 1
    support = np.abs(unit_gradients(model, x, layer, weights, rules=PLAIN)).sum(axis=(0, 1)) > 0
    ys, xs = np.nonzero(support)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def test_receptive_fields_of_the_detectors(detectors):
    colour, stripes = receptive_field(detectors, "colour"), receptive_field(detectors, "stripes")
    assert (colour.size, colour.stride, colour.offset) == ((1, 1), (1, 1), (0, 0))
    assert (stripes.size, stripes.stride, stripes.offset) == ((8, 8), (1, 1), (-3, -3))
    assert receptive_field(detectors, "features").size == (8, 8)  # the max over the concat's branches
    assert stripes.box(0, 31) == (0, 28, 5, 32)  # clipped to the input


@pytest.mark.parametrize("layer, position, n", [
    ("/stem/stem.1/stem.1.2/Relu_output_0", (3, 3), 8),  # conv, max-pool stride 2, conv
    ("/res_conv1/Conv_output_0", (3, 3), 8),  # three conv + pool stages: stride 8
])
def test_receptive_field_equals_gradient_support_on_a_strided_network(shapes_model, layer, position, n):
    field = receptive_field(shapes_model, layer)
    assert field.stride[0] > 1
    assert gradient_support(shapes_model, layer, position, n=n) == field.box(*position)


@pytest.fixture(scope="module")
def mobilenet():
    return blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", device="cpu")


def test_receptive_field_equals_gradient_support_on_mobilenet_int8(mobilenet):
    field = receptive_field(mobilenet, "534_quantized")
    assert (field.size, field.stride) == ((75, 75), (16, 16))
    for position in [(7, 7), (0, 13)]:  # inside, and clipped at the top right corner
        assert gradient_support(mobilenet, "534_quantized", position, n=2) == field.box(*position)


def test_mobilenet_int8_on_real_photos(mobilenet, tmp_path):
    photos = [real("images", name) for name in ["tabby_cat.jpg", "coyote.jpg", "flamingo.jpg", "pelican.jpg",
                                                "bald_eagle.jpg", "dog.jpg"]]
    top = top_activations(mobilenet, photos, layer="534_quantized", channel=5, k=4)
    assert len(top.patches) == len(top.projections) == 4 and len(set(top.sources)) == 4
    assert np.all(np.isfinite(top.scores)) and np.all(np.diff(top.scores) <= 0)
    for patch, shown, raw, box, model_box, source in zip(top.patches, top.projections, top.raw_projections,
                                                         top.boxes, top.model_boxes, top.sources):
        picture = read_image(source)
        expect = (min(picture.shape[0], np.ceil(box[2] - 1e-6)) - np.floor(box[0] + 1e-6),
                  min(picture.shape[1], np.ceil(box[3] - 1e-6)) - np.floor(box[1] + 1e-6))
        assert patch.shape == (*map(int, expect), 3) == shown.shape
        assert raw.shape == (3, model_box[2] - model_box[0], model_box[3] - model_box[1])
        assert np.isfinite(raw).all() and np.abs(raw).max() > 0
    paths = top.save(tmp_path)
    assert [p.name for p in paths] == ["top_534_quantized_5.png", "top_534_quantized_5.json"]


# ------------------------------------------------------------------ saving

def test_save_writes_a_grid_and_the_numbers(shapes_model, tmp_path):
    folder = MODELS / "samples"
    layer = "/stem/stem.1/stem.1.3/MaxPool_output_0"
    top = top_activations(shapes_model, folder, layer=layer, channel=3, k=3)
    png, js = top.save(tmp_path / "out")
    assert png.name == "top_stem_stem.1_stem.1.3_MaxPool_output_0_3.png" and png.parent == tmp_path / "out"
    picture = read_image(png)
    assert picture.shape[0] >= 20 + 2 * TILE and picture.shape[1] >= 3 * TILE
    assert np.array_equal(picture, top.picture())
    data = json.loads(js.read_text())
    assert data["layer"] == layer and data["channel"] == 3 and len(data["top"]) == 3
    assert [d["score"] for d in data["top"]] == pytest.approx(top.scores.tolist())
    assert [d["source"] for d in data["top"]] == top.sources
    np.testing.assert_allclose([d["box"] for d in data["top"]], top.boxes, atol=1e-4)


def test_progress_goes_to_stderr(detectors, concept_folder, capsys):
    top_activations(detectors, concept_folder[0], layer="colour", channel=1, k=2, projections=False, progress=True)
    assert "top activations" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, error, match", [
    ({"layer": "colur", "channel": 0}, ParameterError, "close names: 'colour'"),
    ({"layer": "pooled", "channel": 0}, ParameterError, "not a spatial map"),
    ({"layer": "colour", "channel": 3}, ParameterError, "channels 0..2"),
    ({"layer": "colour", "channel": -1}, ParameterError, "out of range"),
    ({"layer": "colour", "channel": 0, "k": 0}, ParameterError, "k must be a positive integer"),
    ({"layer": "colour", "channel": 0, "batch_size": 0}, ParameterError, "batch_size"),
])
def test_bad_arguments_are_one_line(detectors, concept_folder, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        top_activations(detectors, concept_folder[0], **kwargs)
    assert "\n" not in str(info.value)


def test_an_empty_folder_is_refused(detectors, tmp_path):
    with pytest.raises(ImageError, match="holds no images") as info:
        top_activations(detectors, tmp_path, layer="colour", channel=0)
    assert "\n" not in str(info.value)


def test_an_op_without_gradient_rule_blocks_projections_only():
    model = blackbox.load(sine_classifier(), device="cpu")
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8) for _ in range(5)]
    with pytest.raises(UnsupportedOpError, match="Sin") as info:
        top_activations(model, pictures, layer="wave", channel=2, k=2)
    assert "\n" not in str(info.value)
    top = top_activations(model, pictures, layer="wave", channel=2, k=2, projections=False)
    assert len(top.patches) == 2 and top.projections == []
    assert receptive_field(model, "wave").size == (3, 3)
    peaks = model.activations(np.stack([prepare(model, p).x for p in pictures]), ["wave"])["wave"][:, 2]
    np.testing.assert_allclose(top.scores, np.sort(peaks.reshape(5, -1).max(axis=1))[::-1][:2], rtol=1e-6)

