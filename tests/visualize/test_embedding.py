"""t-SNE embeddings: concept images of the hand-set detectors cluster by concept, predictions are the
model's, the NPZ round-trips, and bad collections fail in one line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import blackbox
from blackbox.errors import BlackboxError, ImageError, ParameterError
from blackbox.image_io import write_png_atomic
from blackbox.visualize.embedding import class_colours, default_embedding_layer, embed
from conftest import real
from detectors import CONCEPTS, concept_image, detector_model

PER_CONCEPT = 12


@pytest.fixture(scope="module")
def detectors():
    return blackbox.load(detector_model(), device="cpu")


@pytest.fixture(scope="module")
def concept_set():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(len(CONCEPTS)), PER_CONCEPT)
    images = [concept_image(CONCEPTS[k], rng=rng)[0] for k in labels]
    return images, labels


@pytest.fixture(scope="module")
def embedding(detectors, concept_set):
    return embed(detectors, concept_set[0], layer="features", batch_size=16)


def knn_agreement(coords: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :k]
    return float((labels[neighbours] == labels[:, None]).mean())


def test_concepts_cluster_in_2d(embedding, concept_set):
    images, labels = concept_set
    assert embedding.coords.shape == (len(images), 2) and embedding.features.shape == (len(images), 5)
    assert embedding.layer == "features"
    assert knn_agreement(embedding.coords, labels) > 0.9
    assert knn_agreement(np.random.default_rng(0).normal(size=embedding.coords.shape), labels) < 0.5


def test_features_are_pooled_layer_values(embedding, detectors, concept_set):
    x = np.stack([blackbox.inputs.prepare(detectors, im).x for im in concept_set[0][:4]])
    maps = detectors.activations(x, ["features"])["features"]
    np.testing.assert_allclose(embedding.features[:4], maps.mean(axis=(2, 3)), rtol=1e-6)


def test_predictions_are_the_models(embedding, detectors, concept_set):
    expected = detectors.predict(concept_set[0]).argmax(axis=1)
    np.testing.assert_array_equal(embedding.predictions, expected)
    assert (embedding.predictions == concept_set[1]).mean() > 0.9  # each detector wins on its concept


def test_map_draws_every_class_colour(embedding):
    image = embedding.image
    assert image.dtype == np.uint8 and image.shape[1] == 1600 and image.shape[0] > 1600
    present = {tuple(p) for p in image.reshape(-1, 3)[::7]}
    for colour in class_colours(embedding.predictions).values():
        assert colour in present


def test_save_round_trips(embedding, tmp_path):
    paths = embedding.save(tmp_path / "out")
    assert sorted(p.rsplit("/", 1)[1] for p in paths.values()) == ["embedding.npz", "embedding.png"]
    with np.load(paths["npz"]) as data:  # no pickles: plain arrays and strings
        np.testing.assert_array_equal(data["coords"], embedding.coords)
        np.testing.assert_array_equal(data["features"], embedding.features)
        np.testing.assert_array_equal(data["predictions"], embedding.predictions)
        assert data["sources"].tolist() == embedding.sources == [f"array[{i}]" for i in range(len(embedding.sources))]
        assert str(data["layer"]) == "features"
    assert np.array_equal(cv2.imread(paths["png"])[..., ::-1], embedding.image)


def test_folder_default_layer_and_seed(detectors, tmp_path, capsys):
    rng = np.random.default_rng(5)
    for i in range(6):
        write_png_atomic(tmp_path / f"im{i}.png", concept_image(CONCEPTS[i % 5], rng=rng)[0])
    first = embed(detectors, tmp_path, batch_size=4, progress=True)  # perplexity 30 clamped below 6 images
    assert default_embedding_layer(detectors) == "flat" == first.layer  # what the Gemm head reads
    assert first.sources == [str(tmp_path / f"im{i}.png") for i in range(6)]
    assert "embed flat" in capsys.readouterr().err
    again = embed(detectors, tmp_path, seed=0)
    np.testing.assert_allclose(again.coords, first.coords, rtol=1e-5, atol=1e-5)


def test_fewer_than_three_images_is_refused(detectors, concept_set):
    with pytest.raises(ParameterError, match="at least 3 images") as info:
        embed(detectors, concept_set[0][:2])
    assert "\n" not in str(info.value)


def test_empty_folder_is_refused(detectors, tmp_path):
    with pytest.raises(ImageError) as info:
        embed(detectors, tmp_path)
    assert "holds no images" in str(info.value) and "\n" not in str(info.value)


def test_bad_perplexity_is_refused(detectors, concept_set):
    with pytest.raises(BlackboxError, match="perplexity"):
        embed(detectors, concept_set[0][:5], perplexity=0)


def test_mobilenet_int8_photos():
    model = blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", device="cpu")
    photos = [str(real("images", name)) for name in
              ("tabby_cat.jpg", "coyote.jpg", "flamingo.jpg", "pelican.jpg", "bald_eagle.jpg", "boat.jpg")]
    result = embed(model, photos)
    assert result.layer == "472_quantized"  # the flattened pooled features the MatMul head reads
    assert result.coords.shape == (6, 2) and result.features.shape == (6, 1280)
    assert np.isfinite(result.coords).all() and np.isfinite(result.features).all()
    np.testing.assert_array_equal(result.predictions, model.predict(photos).argmax(axis=1))
    assert result.predictions[:5].tolist() == [281, 272, 130, 144, 22]
