"""Activation maximisation, deep dream and inversion with known answers (hand-set colour and stripe
detectors, in float32, float16 and an int8 copy) and on the real fp16 and int8 ImageNet models."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import blackbox
from blackbox.errors import ParameterError
from blackbox.image_io import read_image
from blackbox.visualize import activation_maximization, deep_dream, invert
from conftest import IMAGENET_LABELS, real
from blackbox.visualize import objectives as O
from blackbox.visualize.maximize import start_image
from blackbox.visualize.optimize import evaluate
from detectors import SIZE, concept_image, detector_model, quantized

STEPS = 96


@pytest.fixture(scope="module", params=["float32", "float16", "int8"])
def detectors(request, tmp_path_factory):
    if request.param == "int8":
        return blackbox.load(quantized(detector_model(), tmp_path_factory.mktemp("q")), device="cpu")
    dtype = TensorProto.FLOAT16 if request.param == "float16" else TensorProto.FLOAT
    return blackbox.load(detector_model(dtype), device="cpu")


def stripe_orientation(image: np.ndarray) -> str:
    """Horizontal stripes change from row to row and hardly along a row; vertical ones the other way."""
    grey = image.astype(np.float64).mean(axis=2)
    down = np.abs(np.diff(grey, axis=0)).mean()
    across = np.abs(np.diff(grey, axis=1)).mean()
    return "horizontal" if down > across else "vertical"


@pytest.mark.parametrize("target, channel", [(0, 0), (1, 1), (2, 2)])
def test_class_visualisation_recovers_the_detected_colour(detectors, target, channel):
    v = activation_maximization(detectors, target=target, steps=2 * STEPS)  # int8's log-odds climb slower
    mean = v.image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert np.argmax(mean) == channel and mean[channel] > np.delete(mean, channel).max() + 25
    assert v.image.shape == (SIZE, SIZE, 3) and v.image.dtype == np.uint8
    assert v.trace.shape == (2 * STEPS, 1) and v.objective > v.trace[0, 0]  # it climbed
    assert v.params["target"] == target and v.input.shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("channel, orientation", [(0, "horizontal"), (1, "vertical")])
def test_channel_visualisation_recovers_the_stripe_orientation(detectors, channel, orientation):
    layer = "stripes" if "stripes" in [l.name for l in detectors.layers()] else \
        next(l.name for l in detectors.layers() if l.name.startswith("stripes"))
    v = activation_maximization(detectors, layer=layer, channel=channel, steps=STEPS)
    assert stripe_orientation(v.image) == orientation
    plain = activation_maximization(detectors, layer=layer, channel=1 - channel, steps=STEPS)
    assert stripe_orientation(plain.image) != orientation


def test_a_neuron_is_excited_where_it_looks():
    model = blackbox.load(detector_model(), device="cpu")
    v = activation_maximization(model, layer="colour", channel=0, neuron=(8, 24), steps=STEPS, transforms="none")
    red = v.image[..., 0].astype(np.float64) - v.image[..., 1:].mean(axis=2)
    assert np.unravel_index(np.argmax(red), red.shape) == (8, 24)  # a 1x1 unit: exactly its pixel


def test_diversity_makes_the_batch_less_alike():
    model = blackbox.load(detector_model(), device="cpu")
    same = activation_maximization(model, layer="features", channel=3, n=3, diversity=0, steps=STEPS)
    diverse = activation_maximization(model, layer="features", channel=3, n=3, steps=STEPS)
    assert diverse.params["diversity"] == 100 and diverse.images.shape == (3, SIZE, SIZE, 3)

    def similarity(v):
        acts = model.activations(np.stack([blackbox.inputs.to_internal(model, x) for x in v.inputs]),
                                 ["features"])["features"]
        grams = np.stack([(a.reshape(5, -1) @ a.reshape(5, -1).T).ravel() for a in acts])
        grams /= np.linalg.norm(grams, axis=1, keepdims=True)
        sims = grams @ grams.T
        return (sims.sum() - 3) / 6
    assert similarity(diverse) < similarity(same) - 0.05


def test_starting_from_a_picture_keeps_it_and_classic_regularizers_smooth():
    model = blackbox.load(detector_model(), device="cpu")
    picture, _ = concept_image("green", box=(0, 32, 0, 32))
    v = activation_maximization(model, target=0, image=picture, steps=1, lr=1e-4, transforms="none")
    assert np.abs(v.image.astype(int) - picture.astype(int)).max() <= 3
    rough = activation_maximization(model, layer="stripes", channel=0, steps=48, param="rgb", transforms="none")
    smooth = activation_maximization(model, layer="stripes", channel=0, steps=48, param="rgb", transforms="none",
                                     regularizers={"blur_every": 2, "blur_sigma": 1.5})

    def roughness(image):
        return np.abs(np.diff(image.astype(np.float64), axis=1)).mean()
    assert roughness(smooth.image) < roughness(rough.image)
    classic = activation_maximization(model, target=1, steps=48, param="rgb", regularizers="classic")
    assert classic.image.reshape(-1, 3).mean(axis=0).argmax() == 1


def test_bad_arguments_are_one_line_errors():
    model = blackbox.load(detector_model(), device="cpu")
    cases = [(dict(), "say what to maximise"), (dict(target=0, layer="colour"), "not both"),
             (dict(layer="colour"), "needs channel"), (dict(layer="flat", channel=0, neuron=(0, 0)), "spatial"),
             (dict(target=7), "out of range"), (dict(target=0, steps=0), "steps"), (dict(target=0, n=0), "n must"),
             (dict(target=0, size=3), "size"), (dict(target=0, param="dct"), "unknown param"),
             (dict(layer="colour", channel=0, neuron="middle"), "neuron must")]
    for kwargs, text in cases:
        with pytest.raises(blackbox.errors.BlackboxError, match=text) as error:
            activation_maximization(model, **kwargs)
        assert "\n" not in str(error.value)


def test_deep_dream_amplifies_what_the_layer_sees():
    model = blackbox.load(detector_model(), device="cpu")
    picture, _ = concept_image("horizontal", box=(4, 28, 4, 28))
    v = deep_dream(model, picture, layer="stripes", octaves=2, steps=12)
    before = evaluate(model, O.dream("stripes"), start_image(model, picture, (SIZE, SIZE)))[0]
    assert v.objective > 1.1 * before
    assert stripe_orientation(v.image) == "horizontal"
    with pytest.raises(ParameterError, match="octaves"):
        deep_dream(model, picture, layer="stripes", octaves=0)


def test_inversion_reproduces_the_features(detectors):
    layer = next(l.name for l in detectors.layers() if l.name.startswith("features"))
    picture, _ = concept_image("red", box=(4, 20, 6, 26))
    exact = invert(detectors, picture, layer=layer, steps=150, tv=0, alpha=0)
    assert exact.feature_error < 0.05
    regularised = invert(detectors, picture, layer=layer, steps=150)
    assert regularised.feature_error < 0.25
    assert regularised.extra["original"].shape == (1, 3, SIZE, SIZE)


# ---------------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def imagenet_models():
    return {"mobilenetv2-int8": blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet",
                                              labels=IMAGENET_LABELS, device="cpu"),
            "squeezenet-fp16": blackbox.load(real("models", "squeezenet1.0-fp16.onnx"), preprocess="caffe",
                                             labels=IMAGENET_LABELS, device="cpu")}


# SqueezeNet's plain-logit tabby raises "tiger cat" as much (p 0.48 and 0.4 with the defaults): the
# log-odds make the class beat its neighbours. MobileNetV2-int8's class term is the log-odds already.
@pytest.mark.parametrize("name, label, score", [("mobilenetv2-int8", "flamingo", "logit"),
                                                ("mobilenetv2-int8", "bald eagle", "logit"),
                                                ("mobilenetv2-int8", "tabby", "logit"),
                                                ("squeezenet-fp16", "flamingo", "logit"),
                                                ("squeezenet-fp16", "bald eagle", "logit"),
                                                ("squeezenet-fp16", "tabby", "log_odds")])
def test_class_visualisations_convince_the_real_models(imagenet_models, name, label, score, tmp_path):
    model = imagenet_models[name]
    v = activation_maximization(model, target=label, score=score)
    index = model.class_index(label)
    assert v.probability(index)[0] > 0.9  # the real fp16/int8 model, not its float copy
    assert v.image.shape == (224, 224, 3) and v.image.std() > 20  # a picture, not flat grey
    assert any(note.startswith(("int8", "float16")) for note in v.notes)
    path = v.save_png(tmp_path / "am.png")
    assert read_image(path).shape == (224, 224, 3)


def test_inversion_error_grows_with_depth_on_mobilenetv2_int8(imagenet_models):
    model = imagenet_models["mobilenetv2-int8"]
    layers = ["474_quantized", "537_quantized", "627_quantized"]  # 112x112, 14x14, 7x7 (first conv to last)
    errors = [invert(model, real("images", "flamingo.jpg"), layer=layer, steps=80).feature_error for layer in layers]
    assert errors[0] < errors[1] < errors[2], errors
    assert errors[0] < 0.2
