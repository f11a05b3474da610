"""Bad input: one clear line on stderr, exit 2, no traceback and no partial output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper

import blackbox
from blackbox.errors import ImageError, ModelError, TargetError
from conftest import MODELS
from helpers import conv_classifier, save

SHAPES = str(MODELS / "shapes.onnx")
STAR = str(MODELS / "samples" / "star.png")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blackbox", *args], capture_output=True, text=True, timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("blackbox: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def two_input_model(tmp_path: Path) -> str:
    model = conv_classifier()
    model.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 3, 16, 16]))
    return str(save(model, tmp_path / "two.onnx"))


def no_image_model(tmp_path: Path) -> str:
    graph = helper.make_graph([helper.make_node("Cast", ["tokens"], ["scores"], to=TensorProto.FLOAT)], "text",
                              [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 10])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])])
    return str(save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "text.onnx"))


def scalar_output_model(tmp_path: Path) -> str:
    model = conv_classifier(classes=1)
    return str(save(model, tmp_path / "scalar.onnx"))


def outside_external_data_model(tmp_path: Path) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(8 * 3 * 3 * 3, np.float32).tobytes())
    model = conv_classifier()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../secret.bin")
    model.ir_version = 8
    with open(folder / "model.onnx", "wb") as handle:
        handle.write(model.SerializeToString())
    return str(folder / "model.onnx")


def test_missing_model_file(tmp_path):
    assert_user_error(run_cli("info", str(tmp_path / "nope.onnx")), "not found")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for\n" * 20)
    assert_user_error(run_cli("info", str(path)), "not an onnx model")


def test_truncated_onnx_file(tmp_path):
    path = tmp_path / "half.onnx"
    data = Path(SHAPES).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_user_error(run_cli("info", str(path)), "not an onnx model")


def test_empty_model_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_user_error(run_cli("info", str(path)), "empty")


def test_no_image_input(tmp_path):
    assert_user_error(run_cli("info", no_image_model(tmp_path)), "no image input")


def test_several_candidate_inputs(tmp_path):
    path = two_input_model(tmp_path)
    assert_user_error(run_cli("info", path), "several inputs", "--input")
    with pytest.raises(ModelError, match="give its value"):
        blackbox.load(path, input_name="pixels", device="cpu")
    model = blackbox.load(path, input_name="pixels", inputs={"other": np.zeros((1, 3, 16, 16), np.float32)},
                          device="cpu")
    assert model.image.name == "pixels"


def test_output_that_is_not_class_scores(tmp_path):
    assert_user_error(run_cli("info", scalar_output_model(tmp_path)), "class scores")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    assert_user_error(run_cli("info", outside_external_data_model(tmp_path)), "outside")


def test_missing_image(tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("explain", SHAPES, str(tmp_path / "ghost.png"), "--out", str(out)), "not found")
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_and_empty_images(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        assert_user_error(run_cli("predict", SHAPES, str(path)))


def test_images_with_two_or_five_channels(shapes_model, tmp_path):
    for channels in (2, 5):
        with pytest.raises(ImageError, match="channel"):
            shapes_model.predict(np.zeros((64, 64, channels), np.uint8))
    with pytest.raises(ImageError, match="channel"):
        blackbox.explain(shapes_model, np.zeros((64, 64, 5), np.uint8))


def test_no_partial_output_when_a_later_image_fails(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    assert_user_error(run_cli("explain", SHAPES, STAR, str(bad), "--out", str(out)))
    assert not out.exists() or not any(out.iterdir())


def test_target_out_of_range_and_unknown_label(shapes_model, tmp_path):
    assert_user_error(run_cli("explain", SHAPES, STAR, "--target", "7", "--out", str(tmp_path)), "out of range")
    assert_user_error(run_cli("explain", SHAPES, STAR, "--target", "hexagon", "--out", str(tmp_path)), "unknown label")
    with pytest.raises(TargetError, match="did you mean 'star'"):
        blackbox.explain(shapes_model, STAR, target="stars")
    assert not list(tmp_path.iterdir())


def test_nan_scores_from_the_cli(tmp_path):
    path = save(conv_classifier(final="nan_when_dark"), tmp_path / "nan.onnx")
    dark = tmp_path / "dark.png"
    cv2.imwrite(str(dark), np.full((16, 16, 3), 10, np.uint8))
    assert_user_error(run_cli("predict", str(path), str(dark)), "nan")


def test_unknown_method_preset_and_parameter(tmp_path):
    assert_user_error(run_cli("explain", SHAPES, STAR, "--method", "telepathy"), "unknown method")
    assert_user_error(run_cli("info", SHAPES, "--preset", "instagram"), "preset")
    assert_user_error(run_cli("explain", SHAPES, STAR, "--param", "colour=red"), "no parameter colour")
    assert_user_error(run_cli("explain", SHAPES, STAR, "--param", "window=100", "--out", str(tmp_path)), "window")


def test_wrong_labels_file(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert_user_error(run_cli("info", SHAPES, "--labels", str(labels)), "3 classes")
