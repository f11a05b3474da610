"""The command line's happy paths: info, predict, explain, methods."""

from __future__ import annotations

import json

import cv2
import numpy as np

from blackbox.cli import main
from conftest import IMAGENET_LABELS, MODELS, real

SHAPES = str(MODELS / "shapes.onnx")
SAMPLES = MODELS / "samples"


def test_info_json(capsys):
    assert main(["info", SHAPES, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input"]["name"] == "image" and info["output"]["classes"] == 4
    assert info["preprocess"]["source"] == "model metadata"


def test_info_text_for_a_real_model(capsys):
    assert main(["info", str(real("models", "squeezenet1.0-fp16.onnx")), "--preset", "caffe",
                 "--labels", str(IMAGENET_LABELS)]) == 0
    text = capsys.readouterr().out
    assert "float16" in text and "probabilities" in text and "rewritten to dynamic" in text and "tench" in text


def test_predict_top_k(capsys):
    assert main(["predict", SHAPES, str(SAMPLES / "star.png"), str(SAMPLES / "circle.png"), "--top", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["top"][0]["label"] for r in results] == ["star", "circle"]
    assert len(results[0]["top"]) == 2


def test_explain_writes_figure_and_npz_named_by_class(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", SHAPES, str(SAMPLES / "square.png"), "--out", str(out), "--param", "window=16",
                 "--param", "stride=8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["label"] == "square" and summary["params"]["window"] == 16
    png = cv2.imread(summary["figure"])
    assert png is not None and png.shape[1] > 3 * 256  # three panels side by side
    data = np.load(summary["npz"])
    assert data["heatmap"].shape == (64, 64) and data["attributions"].shape == (3, 64, 64)
    assert json.loads(str(data["summary"]))["method"] == "occlusion"
    assert sorted(p.name for p in out.iterdir()) == ["square_occlusion_square.npz", "square_occlusion_square.png"]


def test_explain_plain_writes_the_bare_overlay(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", SHAPES, str(SAMPLES / "square.png"), "--out", str(out), "--plain", "--alpha", "0.3",
                 "--target", "square,star", "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    png = cv2.imread(summaries[0]["overlay"])
    assert png is not None and png.shape[:2] == (256, 256)  # the 64 px picture enlarged 4x, nothing else
    assert sorted(p.name for p in out.iterdir()) == ["square_occlusion_square.npz", "square_occlusion_square.png",
                                                   "square_occlusion_star.npz", "square_occlusion_star.png"]


def test_explain_a_named_target(tmp_path, capsys):
    assert main(["explain", SHAPES, str(SAMPLES / "star.png"), "--target", "circle", "--out", str(tmp_path)]) == 0
    assert "class 0 (circle)" in capsys.readouterr().out


def test_methods_lists_occlusion(capsys):
    assert main(["methods"]) == 0
    assert "occlusion" in capsys.readouterr().out


def test_param_values_json_lists_and_bare_words(tmp_path, capsys):
    """JSON lists and numbers are parsed; a bare word is the string it spells (baseline=blur)."""
    assert main(["explain", SHAPES, str(SAMPLES / "star.png"), "--out", str(tmp_path), "--param", "window=[3,8,8]",
                 "--param", "stride=[3,4,4]", "--param", "baseline=blur", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)[0]
    assert summary["params"]["window"] == [3, 8, 8] and summary["params"]["baseline"] == "blur"
    assert captured.err == ""  # metadata preprocessing, a map with contrast: no warning
