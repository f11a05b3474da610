"""The command line's views inside the network: layers, visualize (am, dream, invert, top, dissect, filters,
activations, embed), concepts, and report's --visualize flags. Every view runs the real code on tiny models
with known answers (tests/detectors.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import blackbox
from blackbox.cli import _report_command, build_parser, main
from conftest import MODELS
from detectors import CONCEPTS, SIZE, concept_image, detector_model, quantized
from helpers import sine_classifier

SHAPES = str(MODELS / "shapes.onnx")


def _write(path: Path, rgb: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The detector model (float and an int8 QDQ copy), a labels file naming its units, ten concept pictures
    in a folder, a concept set with masks, and the Sin model that has no gradient rule."""
    root = tmp_path_factory.mktemp("cli_visualize")
    onnx.save(detector_model(), str(root / "detectors.onnx"))
    onnx.save(quantized(detector_model(), root), str(root / "detectors-int8.onnx"))
    onnx.save(sine_classifier(), str(root / "sine.onnx"))
    (root / "labels.txt").write_text("\n".join(CONCEPTS) + "\n")
    rng = np.random.default_rng(0)
    for i in range(10):
        concept = CONCEPTS[i % 5]
        image, mask = concept_image(concept, rng=rng)
        _write(root / "images" / f"{i:02d}_{concept}.png", image)
        _write(root / "concepts" / "images" / f"{i:02d}.png", image)
        _write(root / "concepts" / "masks" / concept / f"{i:02d}.png", np.repeat(mask[:, :, None] * 255, 3, 2)
               .astype(np.uint8))
    return {"model": str(root / "detectors.onnx"), "int8": str(root / "detectors-int8.onnx"),
            "sine": str(root / "sine.onnx"), "labels": str(root / "labels.txt"), "images": str(root / "images"),
            "red": str(root / "images" / "00_red.png"), "concepts": str(root / "concepts")}


def _run(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------- layers

def test_layers_on_the_shapes_model(capsys):
    code, out, _ = _run(["layers", SHAPES], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["index", "name", "op", "shape", "kind", "layout"]
    assert len(lines) == 1 + len(blackbox.load(SHAPES, device="cpu").layers())
    first = lines[1].split()
    assert first[:4] == ["0", "/stem/stem.0/stem.0.0/Conv_output_0", "Conv", "16"] and "64 x 64" in lines[1]
    cam = [line for line in lines if "default CAM layer" in line]
    assert len(cam) == 1 and "/relu_1/Relu_output_0" in cam[0] and "64 x 8 x 8" in cam[0]
    assert "map      nchw 8x8" in cam[0]  # the layout column: how the values lie over the image
    assert lines[-1].split()[:5] == ["21", "logits", "Gemm", "4", "vector"]

    code, out, _ = _run(["layers", SHAPES, "--spatial", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and all(r["kind"] == "map" for r in rows) and len(rows) == 19
    assert [r["name"] for r in rows if r["default_cam"]] == ["/relu_1/Relu_output_0"]
    assert rows[0]["shape"] == [16, 64, 64] and rows[0]["op_type"] == "Conv"


def test_layers_of_an_int8_copy_keep_the_readable_names(files, capsys):
    code, out, _ = _run(["layers", files["int8"], "--json"], capsys)
    rows = json.loads(out)
    names = [r["name"] for r in rows]
    assert code == 0
    assert {"colour", "stripes", "features"} <= set(names)  # the quantized model's names, not the copy's
    shapes = {r["name"]: r["shape"] for r in rows}
    assert shapes["colour"] == [3, SIZE, SIZE] and shapes["stripes"] == [2, SIZE, SIZE]
    assert shapes["features"] == [5, SIZE, SIZE]
    code, text, _ = _run(["layers", files["int8"]], capsys)
    assert code == 0 and any(line.split()[1] == "colour" for line in text.splitlines()[1:])


# ------------------------------------------------------------------------------------- optimised pictures

def test_am_of_a_class_by_label_is_red_and_its_json_has_the_probability(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = _run(["visualize", files["model"], "am", "--target", "red,blue", "--labels", files["labels"],
                            "--steps", "32", "--out", out], capsys)
    assert code == 0, err
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("class 0 (red) objective") and "probability" in lines[0]
    assert lines[0].endswith(str(out / "am_0_red.png")) and "class 2 (blue)" in lines[1]
    picture = cv2.imread(str(out / "am_0_red.png"))[:, :, ::-1].astype(np.float64)
    r, g, b = picture.reshape(-1, 3).mean(axis=0)
    assert r > g + 5 and r > b + 5, (r, g, b)
    summary = json.loads((out / "am_0_red.json").read_text())
    assert summary["params"]["target"] == 0 and summary["params"]["label"] == "red"
    assert summary["steps"] == 32 and len(summary["probability"]) == 1 and 0 < summary["probability"][0] <= 1
    model = blackbox.load(files["model"], labels=files["labels"], device="cpu")
    probs = model.predict([str(out / "am_0_red.png")])[0]
    assert int(np.argmax(probs)) == 0  # the written picture is what the model calls red
    assert sorted(p.name for p in out.iterdir()) == ["am_0_red.json", "am_0_red.png", "am_2_blue.json",
                                                     "am_2_blue.png"]


def test_am_of_a_unit_with_json_output(files, tmp_path, capsys):
    code, text, err = _run(["visualize", files["model"], "am", "--layer", "colour", "--channel", "2", "--neuron",
                            "center", "--steps", "16", "--param", "pixels", "--out", tmp_path, "--json"], capsys)
    assert code == 0, err
    [summary] = json.loads(text)
    assert summary["params"]["layer"] == "colour" and summary["params"]["channel"] == 2
    assert "probability" not in summary and Path(summary["png"]).name == "am_colour_2_center.png"
    assert math.isfinite(summary["objective"][0]) and Path(summary["json"]).is_file()


def test_invert_on_two_layers_prints_an_error_table(files, tmp_path, capsys):
    code, text, err = _run(["visualize", files["model"], "invert", files["red"], "--layer", "colour", "--layer",
                            "features", "--steps", "24", "--out", tmp_path], capsys)
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "feature_error", "png"] and len(lines) == 3
    for line, layer in zip(lines[1:], ["colour", "features"]):
        name, error, png = line.split()
        assert name == layer and math.isfinite(float(error)) and 0 <= float(error) < 1.5 and Path(png).is_file()
    data = json.loads((tmp_path / "invert_00_red.json").read_text())
    assert [row["layer"] for row in data["layers"]] == ["colour", "features"]
    assert all(math.isfinite(row["feature_error"]) for row in data["layers"])


def test_dream_writes_its_picture(files, tmp_path, capsys):
    code, text, err = _run(["visualize", files["model"], "dream", files["red"], "--layer", "stripes", "--octaves", "2",
                            "--steps", "4", "--out", tmp_path], capsys)
    assert code == 0, err
    png = tmp_path / "dream_00_red_stripes.png"
    assert text.strip().endswith(str(png)) and cv2.imread(str(png)).shape == (SIZE, SIZE, 3)


# ------------------------------------------------------------------------------------- data-set views

def test_top_finds_the_red_pictures(files, tmp_path, capsys):
    code, text, err = _run(["visualize", files["model"], "top", files["images"], "--layer", "colour", "--channel",
                            "0", "--k", "2", "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "top_colour_0.json").read_text())
    assert [Path(t["source"]).name for t in data["top"]] == ["00_red.png", "05_red.png"]
    assert cv2.imread(str(tmp_path / "top_colour_0.png")) is not None and "00_red.png" in text


def test_dissect_labels_the_units(files, tmp_path, capsys):
    code, text, err = _run(["visualize", files["model"], "dissect", "--concepts", files["concepts"], "--layer",
                            "colour", "--layer", "stripes", "--out", tmp_path, "--json"], capsys)
    assert code == 0, err
    data = json.loads(text)
    assert data["interpretable"] == {"colour": 3, "stripes": 2}
    assert [u["concept"] for u in data["units"]] == list(CONCEPTS)
    assert (tmp_path / "dissection.csv").is_file() and len(list((tmp_path / "units").iterdir())) == 5


def test_filters_activations_and_embed_write_their_files(files, tmp_path, capsys):
    base = ["visualize", files["model"]]
    code, text, err = _run([*base, "filters", "--out", tmp_path], capsys)
    assert code == 0 and "3 filters of 1 x 1" in text and (tmp_path / "filters_colour_conv.png").is_file(), err
    code, text, err = _run([*base, "activations", files["red"], "--layer", "features", "--shared-scale",
                            "--out", tmp_path], capsys)
    assert code == 0 and "5 channels of 32 x 32" in text, err
    assert (tmp_path / "activations_00_red_features.png").is_file()
    code, text, err = _run([*base, "embed", files["images"], "--perplexity", "3", "--out", tmp_path, "--json"], capsys)
    assert code == 0, err
    data = json.loads(text)
    assert data["images"] == 10 and data["layer"] == "flat"
    assert np.load(data["npz"])["coords"].shape == (10, 2) and cv2.imread(data["png"]) is not None


def test_forward_only_views_work_on_a_model_without_gradient_rules(files, tmp_path, capsys):
    base = ["visualize", files["sine"]]
    for view in (["filters"], ["activations", files["red"], "--layer", "wave"],
                 ["embed", files["images"], "--perplexity", "3"],
                 ["top", files["images"], "--layer", "wave", "--channel", "1", "--k", "3", "--no-projections"],
                 ["dissect", "--concepts", files["concepts"], "--layer", "wave"]):
        code, _, err = _run([*base, *view, "--preset", "none", "--out", tmp_path], capsys)
        assert code == 0, (view, err)
    assert {"filters_conv.png", "activations_00_red_wave.png", "embedding.png", "top_wave_1.png",
            "dissection.json"} <= {p.name for p in tmp_path.iterdir()}


def test_concepts_writes_a_set_dissect_reads(tmp_path, capsys):
    out = tmp_path / "concepts"
    code, text, err = _run(["concepts", out, "--n", "6", "--size", "32"], capsys)
    assert code == 0, err
    assert text.startswith("6 images") and len(list((out / "images").iterdir())) == 6
    assert (out / "masks" / "background").is_dir()
    assert _run(["concepts", out, "--n", "4", "--size", "32"], capsys)[0] == 0  # its own set is rewritten
    assert len(list((out / "images").iterdir())) == 4
    code, text, err = _run(["visualize", SHAPES, "dissect", "--concepts", out, "--layer", "/relu_1/Relu_output_0",
                            "--out", tmp_path / "d"], capsys)
    assert code == 0 and "/relu_1/Relu_output_0" in text.splitlines()[1], err


# ------------------------------------------------------------------------------------- report --visualize

def test_report_visualize_flags_reach_the_config_and_the_recorded_command(tmp_path, monkeypatch, capsys):
    import blackbox.report as report

    seen = {}

    def fake_run_report(model, entries, config, progress=None):
        seen["config"] = config
        raise SystemExit(0)

    concepts = tmp_path / "concepts"
    assert main(["concepts", str(concepts), "--n", "3", "--size", "32"]) == 0
    monkeypatch.setattr(report, "run_report", fake_run_report)
    args = ["report", SHAPES, str(MODELS / "samples" / "star.png"), "--out", str(tmp_path / "r"), "--visualize",
            "--concepts", str(concepts), "--visualize-steps", "16"]
    with pytest.raises(SystemExit):
        main(args)
    config = seen["config"]
    assert config.visualize is True and config.concepts == str(concepts) and config.visualize_steps == 16
    command = config.command
    assert "--visualize" in command and command[command.index("--concepts") + 1] == str(concepts)
    assert command[command.index("--visualize-steps") + 1] == "16"
    again = build_parser().parse_args(command[1:])  # the recorded command parses back to the same options
    assert again.visualize and again.concepts == str(concepts) and again.visualize_steps == 16

    plain = build_parser().parse_args(["report", SHAPES, "x.png"])
    assert not plain.visualize and plain.concepts is None and plain.visualize_steps is None
    assert not {"--visualize", "--concepts", "--visualize-steps"} & set(_report_command(plain, ["occlusion"]))
