"""Network dissection (``blackbox.visualize.dissection``) and the shapes concept set generator.

Known answers come from the hand-set detector network (``tests/detectors.py``): its units are red, green,
blue, horizontal- and vertical-stripe detectors, so each must be labelled with its own concept, in float32,
float16 and through an int8 QDQ copy. The quantile and the IoU are checked against direct, unstreamed
re-computations (``np.quantile`` over every activation; per-image, per-unit loops with cv2's resize).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectors import CONCEPTS, SIZE, concept_image, detector_model, quantized
from onnx import TensorProto

import blackbox
from blackbox.datasets.concepts import MARKER, colour_name, make_concepts
from blackbox.datasets.shapes import CLASSES
from blackbox.errors import BlackboxError, ImageError, ParameterError
from blackbox.image_io import read_image, write_png_atomic
from blackbox.inputs import prepare
from blackbox.visualize.dissection import Dissection, dissect, load_concepts


def write_set(root: Path, items: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> Path:
    """A concept folder from (image, {concept: bool mask}) pairs; empty masks are left out."""
    (root / "images").mkdir(parents=True)
    for i, (image, masks) in enumerate(items):
        write_png_atomic(root / "images" / f"im{i:03d}.png", image)
        for concept, mask in masks.items():
            if mask.any():
                (root / "masks" / concept).mkdir(parents=True, exist_ok=True)
                write_png_atomic(root / "masks" / concept / f"im{i:03d}.png", mask.astype(np.uint8) * 255)
    return root


def detector_items(n: int, seed: int = 0, scale: int = 1) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Grey pictures with one concept, or two side by side (left and right half); ``scale`` enlarges them
    (nearest) so the preprocess has to resize."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        chosen = rng.choice(len(CONCEPTS), size=1 + i % 2, replace=False)
        halves = [(0, SIZE // 2), (SIZE // 2, SIZE)] if len(chosen) == 2 else [(0, SIZE)]
        image, masks = None, {}
        for k, (lo, hi) in zip(chosen, halves):
            h, w = rng.integers(10, 17), rng.integers(10, min(16, hi - lo) + 1)
            y0, x0 = rng.integers(0, SIZE - h + 1), rng.integers(lo, hi - w + 1)
            drawn, mask = concept_image(CONCEPTS[k], box=(int(y0), int(y0 + h), int(x0), int(x0 + w)))
            image = drawn if image is None else np.where(mask[:, :, None], drawn, image)
            masks[CONCEPTS[k]] = mask
        if scale > 1:
            image = np.kron(image, np.ones((scale, scale, 1), np.uint8))
            masks = {c: np.kron(m, np.ones((scale, scale), bool)) for c, m in masks.items()}
        items.append((image, masks))
    return items


@pytest.fixture(scope="module")
def detector_set(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("detectors"), detector_items(40))


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory) -> Path:
    return make_concepts(tmp_path_factory.mktemp("shapes") / "concepts", n=60, seed=3)


def detector(kind: str, tmp_path: Path) -> tuple[blackbox.Model, str]:
    if kind == "int8":
        return blackbox.load(quantized(detector_model(), tmp_path), device="cpu"), "features_QuantizeLinear_Output"
    dtype = TensorProto.FLOAT16 if kind == "float16" else TensorProto.FLOAT
    return blackbox.load(detector_model(dtype), device="cpu"), "features"


# ----------------------------------------------------------------------------------------- known answers

@pytest.mark.parametrize("kind", ["float32", "float16", "int8"])
def test_each_detector_unit_is_labelled_with_its_own_concept(kind, detector_set, tmp_path):
    model, layer = detector(kind, tmp_path)
    result = dissect(model, detector_set, layers=layer)
    labels = {u["unit"]: (u["concept"], u["iou"]) for u in result.units if u["layer"] == layer}
    assert [labels[c][0] for c in range(5)] == list(CONCEPTS)
    for c in range(3):  # a 1x1 colour detector's region is exactly the colour's pixels
        assert labels[c][1] > 0.9, (kind, CONCEPTS[c], labels[c])
    for c in (3, 4):  # the top 0.5% of a stripe unit is its 8 x 8 kernel fully inside the stripes, in phase
        others = np.delete(result.iou[layer][c], result.concepts.index(CONCEPTS[c]))
        assert labels[c][1] > 0.1 and others.max() < 0.01, (kind, CONCEPTS[c], labels[c], others)
    # a lower threshold takes in every stripe position that fires: ReLU of a cosine kernel fires on half the
    # phases (rows or columns), so the IoU tops out near 0.5
    wider = dissect(model, detector_set, layers=layer, quantile=0.05)
    assert [u["concept"] for u in wider.units] == list(CONCEPTS)
    assert all(u["iou"] > 0.35 for u in wider.units[3:]), wider.units
    assert result.interpretable == {layer: 5}
    assert result.iou[layer].shape == (5, len(CONCEPTS)) and result.thresholds[layer].shape == (5,)
    assert sorted(result.concepts) == sorted(CONCEPTS)


def test_colour_and_stripe_layers_together(detector_set):
    model = blackbox.load(detector_model(), device="cpu")
    result = dissect(model, detector_set, layers=["colour", "stripes"])
    assert [u["concept"] for u in result.units] == list(CONCEPTS)
    assert [u["layer"] for u in result.units] == ["colour"] * 3 + ["stripes"] * 2
    assert result.interpretable == {"colour": 3, "stripes": 2}
    for u in result.units:  # the top images of a unit show its concept
        images = result.top_images[u["layer"]][u["unit"]]
        assert len(images) == 4
        assert all(u["concept"] in result.masks[i] for i in images), u


# ----------------------------------------------------------------------------------------- exactness

def all_activations(model, folder: Path, layer: str) -> tuple[list[str], np.ndarray]:
    paths = sorted(str(p) for p in (folder / "images").iterdir())
    acts = [model.activations(prepare(model, p).x[None], [layer])[layer][0] for p in paths]
    return paths, np.stack(acts).astype(np.float32)


@pytest.mark.parametrize("quantile, batch_size", [(0.005, None), (0.1, 3), (0.37, 7)])
def test_thresholds_equal_numpy_quantile_over_every_activation(quantile, batch_size, shapes_set, shapes_model):
    layers = ["/stem/stem.0/stem.0.2/Relu_output_0", "/res_conv2/Conv_output_0"]
    result = dissect(shapes_model, shapes_set, layers=layers, quantile=quantile, batch_size=batch_size)
    for layer in layers:
        _, acts = all_activations(shapes_model, shapes_set, layer)
        direct = np.quantile(acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1), 1 - quantile, axis=1)
        np.testing.assert_array_equal(result.thresholds[layer], direct.astype(np.float32))


def brute_force_iou(model, folder: Path, layer: str, quantile: float) -> tuple[list[str], np.ndarray]:
    """The documented semantics, written out per image and per unit with cv2's bilinear resize."""
    paths, acts = all_activations(model, folder, layer)
    units = acts.shape[1]
    per_unit = acts.transpose(1, 0, 2, 3).reshape(units, -1)
    thresholds = np.quantile(per_unit, 1 - quantile, axis=1).astype(np.float32)
    concepts = sorted(p.name for p in (folder / "masks").iterdir() if any(p.iterdir()))
    inter = np.zeros((units, len(concepts)))
    union = np.zeros_like(inter)
    for i, path in enumerate(paths):
        geometry = prepare(model, path).geometry
        h, w = geometry.model_size
        for c in range(units):
            picture = geometry.to_image(cv2.resize(acts[i, c], (w, h), interpolation=cv2.INTER_LINEAR))
            tied = thresholds[c] >= per_unit[c].max() and per_unit[c].min() < thresholds[c]
            active = (picture >= thresholds[c] if tied else picture > thresholds[c]) & geometry.seen()
            for k, concept in enumerate(concepts):
                mask_file = folder / "masks" / concept / Path(path).name
                mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 127 if mask_file.exists() \
                    else np.zeros(active.shape, bool)
                inter[c, k] += np.sum(active & mask)
                union[c, k] += np.sum(active | mask)
    return concepts, np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def test_iou_matches_brute_force_through_a_resizing_preprocess(tmp_path):
    """48 px pictures for a 32 px model: the unit maps go back through the preprocess geometry."""
    folder = write_set(tmp_path / "set", detector_items(6, seed=5, scale=3)[:3] + detector_items(3, seed=6))
    model = blackbox.load(detector_model(), device="cpu")
    assert prepare(model, str(folder / "images" / "im000.png")).geometry.original_size == (96, 96)
    result = dissect(model, folder, layers="features", quantile=0.05)
    concepts, direct = brute_force_iou(model, folder, "features", 0.05)
    assert result.concepts == concepts
    np.testing.assert_allclose(result.iou["features"], direct, rtol=0, atol=1e-12)


def test_iou_matches_brute_force_on_an_upsampled_8x8_layer(tmp_path, shapes_model):
    folder = make_concepts(tmp_path / "tiny", n=6, seed=11)
    result = dissect(shapes_model, folder, layers="/relu_1/Relu_output_0", quantile=0.05, batch_size=4)
    concepts, direct = brute_force_iou(shapes_model, folder, "/relu_1/Relu_output_0", 0.05)
    assert result.concepts == concepts
    assert direct.max() > 0.1  # something overlaps: the comparison is not between two zero matrices
    np.testing.assert_allclose(result.iou["/relu_1/Relu_output_0"], direct, rtol=0, atol=1e-12)


def test_batch_size_does_not_change_the_result(detector_set):
    model = blackbox.load(detector_model(), device="cpu")
    one = dissect(model, detector_set, layers="features", batch_size=1)
    many = dissect(model, detector_set, layers="features")
    assert one.units == many.units
    np.testing.assert_array_equal(one.thresholds["features"], many.thresholds["features"])
    np.testing.assert_array_equal(one.top_images["features"], many.top_images["features"])


# ----------------------------------------------------------------------------------------- shapes model

def test_shapes_model_all_spatial_layers(shapes_set, shapes_model, capsys):
    layers = [layer.name for layer in shapes_model.layers() if layer.spatial]
    result = dissect(shapes_model, shapes_set, layers=layers, progress=True)
    assert "dissect" in capsys.readouterr().err  # the progress bar went to stderr
    assert list(result.interpretable) == layers
    for layer in layers:
        units = shapes_model.layer(layer).shape[0]
        assert len([u for u in result.units if u["layer"] == layer]) == units
        assert 0 <= result.interpretable[layer] <= units
        assert result.interpretable[layer] == int(np.sum(result.iou[layer].max(axis=1) > 0.04))
    shape_units = [u for u in result.units if u["concept"] in CLASSES and u["iou"] > 0.04]
    assert shape_units, result.summary()
    assert result.interpretable[layers[-1]] >= 10  # the last block is mostly interpretable
    summary = result.summary()
    assert all(layer in summary for layer in layers)
    print("\n" + summary)


def test_make_concepts_is_deterministic_and_labels_shapes_and_colours(tmp_path):
    a = make_concepts(tmp_path / "a", n=12, seed=4)
    b = make_concepts(tmp_path / "b", n=12, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    data = load_concepts(a)
    assert len(data.images) == 12
    assert set(data.concepts) >= {"background"} and set(data.concepts) & set(CLASSES)
    for i, masks in enumerate(data.masks):  # one shape, one colour and the background per image
        assert len(set(masks) & set(CLASSES)) == 1 and "background" in masks and len(masks) == 3
        shape = next(c for c in masks if c in CLASSES)
        obj = cv2.imread(masks[shape], cv2.IMREAD_GRAYSCALE) > 127
        back = cv2.imread(masks["background"], cv2.IMREAD_GRAYSCALE) > 127
        assert obj.any() and np.array_equal(obj, ~back)
    assert colour_name((250, 10, 10)) == "red" and colour_name((10, 10, 240)) == "blue"


def test_make_concepts_rewrites_its_own_folder_and_refuses_a_users(tmp_path):
    out = make_concepts(tmp_path / "set", n=8)
    make_concepts(out, n=3)
    assert len(list((out / "images").iterdir())) == 3
    assert json.loads((out / MARKER).read_text())["n"] == 3
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ParameterError) as err:
        make_concepts(user, n=3)
    assert "\n" not in str(err.value) and "not empty" in str(err.value)
    assert (user / "holiday.jpg").exists()


# ----------------------------------------------------------------------------------------- output

def test_save_writes_table_json_and_unit_pictures(detector_set, tmp_path):
    model = blackbox.load(detector_model(), device="cpu")
    result = dissect(model, detector_set, layers="features")
    paths = result.save(tmp_path / "out")
    assert all(Path(p).is_file() for p in paths)
    pngs = [p for p in paths if Path(p).suffix == ".png"]
    assert len(pngs) == 5
    for png in pngs:
        picture = read_image(png)
        assert picture.shape[2] == 3 and picture.shape[0] == 20 + 128 and picture.shape[1] > 4 * 128
    rows = list(csv.DictReader((tmp_path / "out" / "dissection.csv").open()))
    assert [r["concept"] for r in rows] == list(CONCEPTS) and all(r["interpretable"] == "1" for r in rows)
    saved = json.loads((tmp_path / "out" / "dissection.json").read_text())
    assert saved["interpretable"] == {"features": 5} and len(saved["layers"]["features"]["iou"]) == 5
    red = read_image(next(p for p in pngs if "unit0000" in str(p)))
    body = red[20:].reshape(-1, 3).astype(int)
    assert np.sum((body[:, 0] > 200) & (body[:, 1] < 60) & (body[:, 2] < 60)) > 500  # red pixels kept bright
    assert isinstance(result, Dissection) and "features" in result.summary()


# ----------------------------------------------------------------------------------------- bad input

def bad_sets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = detector_items(2)
    cases = {}

    def case(name: str, expect: str, edit) -> None:
        root = write_set(tmp_path / name, good)
        edit(root)
        cases[name] = (root, expect)

    def remove_images(root):
        for p in (root / "images").iterdir():
            p.unlink()

    def remove_masks(root):
        import shutil

        shutil.rmtree(root / "masks")

    def empty_concepts(root):
        for p in (root / "masks").rglob("*.png"):
            p.unlink()

    def resized(root):
        path = next((root / "masks").rglob("im000.png"))
        write_png_atomic(path, np.zeros((20, 24), np.uint8))

    def grey(root):
        path = next((root / "masks").rglob("im000.png"))
        write_png_atomic(path, np.random.default_rng(0).integers(60, 200, (SIZE, SIZE), dtype=np.uint8))

    def colour(root):
        path = next((root / "masks").rglob("im000.png"))
        write_png_atomic(path, np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))

    def orphan(root):
        path = next((root / "masks").rglob("im000.png"))
        path.rename(path.with_name("nobody.png"))

    case("no_images", "no images", remove_images)
    case("no_masks", "no masks/", remove_masks)
    case("empty_concepts", "no CONCEPT/ folder with any mask", empty_concepts)
    case("wrong_size", "is 24 x 20 but its image is 32 x 32", resized)
    case("grey_mask", "not binary", grey)
    case("colour_mask", "colour picture", colour)
    case("orphan_mask", "no image named 'nobody'", orphan)
    cases["missing"] = (tmp_path / "nowhere", "does not exist")
    return cases


def test_bad_concept_folders_are_one_line_errors(tmp_path):
    model = blackbox.load(detector_model(), device="cpu")
    for name, (root, expect) in bad_sets(tmp_path).items():
        with pytest.raises(ImageError) as err:
            dissect(model, root, layers="features")
        message = str(err.value)
        assert "\n" not in message and expect in message, (name, message)
        if name in ("wrong_size", "grey_mask", "colour_mask", "orphan_mask"):
            assert ".png" in message, (name, message)  # names the file


@pytest.mark.parametrize("kwargs, expect", [
    ({"layers": "pooled"}, "'pooled' is not a spatial map"),
    ({"layers": "featurs"}, "close names: 'features'"),
    ({"layers": []}, "at least one layer"),
    ({"layers": "features", "quantile": 0.0}, "quantile must be in (0, 1)"),
    ({"layers": "features", "iou_threshold": 1.5}, "iou_threshold must be in [0, 1)"),
    ({"layers": "features", "batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_parameters_are_one_line_errors(kwargs, expect, detector_set):
    model = blackbox.load(detector_model(), device="cpu")
    with pytest.raises(BlackboxError) as err:
        dissect(model, detector_set, **kwargs)
    assert isinstance(err.value, ParameterError)
    assert "\n" not in str(err.value) and expect in str(err.value)
