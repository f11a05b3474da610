"""LIME: the same samples, weights and coefficients as lime_image; finds the object and the shortcut."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers import shapes_evidence, watermark_hits

import blackbox
from blackbox.errors import ParameterError
from blackbox.methods.lime import lime_random_state, lime_samples
from blackbox.segmentation import grid_segments, segment
from blackbox.datasets.shapes import make_shapes
from conftest import MODELS

import lime.lime_image as lime_image  # test extra: missing means a broken install, not a skip

# the superpixel setting for the 64x64 shapes: lime's quickshift defaults (kernel_size=4) cut these small
# pictures into 2-5 pieces, and hiding a piece with its own mean colour keeps the object's silhouette.
SHAPES = {"segmentation": "slic", "hide_color": "mean"}


@pytest.fixture(scope="module")
def classifier_fn():
    """lime's view of the model: uint8-range RGB batches in, softmax probabilities out, plain ORT."""
    session = ort.InferenceSession(str(MODELS / "shapes.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        x = (np.asarray(images, np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2)
        logits = session.run(None, {name: np.ascontiguousarray(x)})[0].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return predict


def lime_reference(image, classifier_fn, segments, target, *, seed, num_samples, hide_color=None,
                   num_features=100000):
    """lime_image itself on the same picture, segments and seed; returns its result and coefficients."""
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    result = explainer.explain_instance(image, classifier_fn, labels=(target,), top_labels=None,
                                        hide_color=hide_color, num_samples=num_samples, num_features=num_features,
                                        segmentation_fn=lambda _: segments, batch_size=100)
    coefficients = np.zeros(int(segments.max()) + 1)
    for feature, weight in result.local_exp[target]:
        coefficients[feature] = weight
    return result, coefficients


# hide_color None: lime's fudged picture holds the exact superpixel means only for a float picture (a uint8
# copy truncates them), so lime gets the float picture; ours are taken in model space.
@pytest.mark.parametrize("hide_color,params", [(None, {}), (0, {}), (None, {"num_features": 4, "segmentation": "slic"}),
                                               ((200, 30, 90), {"segmentation": "slic"})])
def test_same_coefficients_as_lime_image(shapes_model, classifier_fn, hide_color, params):
    image = make_shapes(3, seed=5).images[1]
    ours = blackbox.explain(shapes_model, image, "lime", num_samples=300, seed=7, hide_color=hide_color, **params)
    segments = ours.extras["segments"]
    picture = image.astype(np.float64) if hide_color is None else image
    reference, coefficients = lime_reference(picture, classifier_fn, segments, ours.target, seed=7, num_samples=300,
                                             hide_color=hide_color,
                                             num_features=params.get("num_features", 100000))
    used = sorted(feature for feature, _ in reference.local_exp[ours.target])
    assert sorted(ours.extras["used_features"].tolist()) == used  # forward selection when num_features <= 6
    assert np.abs(ours.extras["coefficients"] - coefficients).max() < 1e-6
    assert abs(ours.extras["intercept"] - reference.intercept[ours.target]) < 1e-6
    assert abs(ours.extras["r2"] - reference.score) < 1e-6
    assert abs(ours.extras["local_pred"] - float(np.ravel(reference.local_pred)[0])) < 1e-6
    # the map paints each coefficient on its superpixel
    assert np.allclose(ours.model_heatmap, ours.extras["coefficients"][segments].astype(np.float32))


def test_default_segmentation_is_limes_quickshift(shapes_model):
    """Default segments equal what lime_image's own SegmentationAlgorithm makes of the model-size picture."""
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    image = make_shapes(2, seed=9).images[0]
    ours = blackbox.explain(shapes_model, image, "lime", num_samples=10, seed=0).extras["segments"]
    theirs = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=0)(image)
    assert np.array_equal(ours, theirs)


def test_samples_are_lime_images_draws():
    state = lime_random_state(42)
    ours = lime_samples(state, 50, 7)
    reference = np.random.RandomState(42)
    reference.randint(0, high=1000)
    theirs = reference.randint(0, 2, 50 * 7).reshape(50, 7)
    theirs[0, :] = 1
    assert np.array_equal(ours, theirs)


def test_segmentation_options(shapes_model):
    image = make_shapes(1, seed=3).images[0]
    grid = blackbox.explain(shapes_model, image, "lime", num_samples=40, segmentation="grid",
                            segmentation_params={"cells": 4})
    assert grid.extras["n_segments"] == 16 and np.array_equal(grid.extras["segments"], grid_segments(64, 64, 4))
    user = np.repeat(np.arange(64)[None] // 32 * 10, 64, axis=0)  # labels 0 and 10 -> relabelled 0, 1
    given = blackbox.explain(shapes_model, image, "lime", num_samples=40, segmentation=user)
    assert given.extras["n_segments"] == 2 and set(np.unique(given.extras["segments"])) == {0, 1}
    felz = segment(image, "felzenszwalb")
    assert felz.min() == 0 and len(np.unique(felz)) == felz.max() + 1


def test_pointing_game_and_deletion(shapes_model):
    result = shapes_evidence(shapes_model, "lime", num_samples=250, **SHAPES)
    assert result["pointing"] >= 0.9, result
    assert result["deletion"] < result["random"], result


def test_finds_the_watermark_shortcut(shortcut_model):
    assert watermark_hits(shortcut_model, "lime", num_samples=250, **SHAPES) >= 0.8


@pytest.mark.parametrize("params,name", [
    ({"num_samples": 1}, "num_samples"), ({"segmentation": "watershed"}, "segmentation"),
    ({"segmentation": np.zeros((32, 32), np.int64)}, "segmentation"), ({"kernel_width": 0}, "kernel_width"),
    ({"feature_selection": "best"}, "feature_selection"), ({"hide_color": 300}, "hide_color"),
    ({"segmentation": "grid", "segmentation_params": {"cells": 0}}, "cells"),
])
def test_bad_parameters(shapes_model, params, name):
    image = make_shapes(1, seed=1).images[0]
    with pytest.raises(ParameterError, match=name):
        blackbox.explain(shapes_model, image, "lime", **params)
