"""``blackbox explain`` as a person sees it: names that carry the class, several targets, every note as a
warning line, progress bars that --quiet hides, and score spaces named truly."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

import blackbox
from blackbox.api import target_notes
from blackbox.cli import main
from conftest import MODELS, real
from helpers import conv_classifier, save

SHAPES = str(MODELS / "shapes.onnx")
STAR = str(MODELS / "samples" / "star.png")


def test_top3_writes_one_figure_and_npz_per_class_and_a_grid(tmp_path, capsys, shapes_model):
    out = tmp_path / "out"
    assert main(["explain", SHAPES, STAR, "--target", "top3", "--out", str(out), "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    best = np.argsort(-shapes_model.predict([STAR])[0])[:3]
    assert [s["target"] for s in summaries] == [int(i) for i in best]
    labels = [shapes_model.label(int(i)) for i in best]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"star_occlusion_{label}.{ext}" for label in labels for ext in ("png", "npz")]
                           + ["star_occlusion.png"])
    assert all(s["grid"] == str(out / "star_occlusion.png") for s in summaries)
    for summary in summaries:  # each NPZ holds its own class
        saved = json.loads(str(np.load(summary["npz"])["summary"]))
        assert saved["target"] == summary["target"] and summary["npz"].endswith(f"_{summary['label']}.npz")


def test_a_comma_list_of_labels_and_indices(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", SHAPES, STAR, "--target", "circle, 3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "class 0 (circle)" in text and "class 3 (star)" in text and "2 classes side by side" in text
    assert sorted(p.name for p in out.iterdir()) == ["star_occlusion.png", "star_occlusion_circle.npz",
                                                   "star_occlusion_circle.png", "star_occlusion_star.npz",
                                                   "star_occlusion_star.png"]


def test_without_labels_the_class_part_is_the_index(tmp_path, capsys):
    path = save(conv_classifier(), tmp_path / "bare.onnx")
    out = tmp_path / "out"
    assert main(["explain", str(path), STAR, "--preset", "none", "--target", "2", "--param", "window=4",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["star_occlusion_2.npz", "star_occlusion_2.png"]


def test_every_note_is_one_warning_line(tmp_path, capsys):
    """A model without preprocessing metadata, explained without --preset: the guessed preprocessing is a
    note of the explanation, shown as a warning naming image, method and class, like every other note."""
    path = save(conv_classifier(), tmp_path / "bare.onnx")
    model = blackbox.load(path, device="cpu")
    exp = blackbox.explain(model, STAR, "occlusion", window=4)
    assert any(n.startswith("the preprocessing was guessed") for n in exp.notes)
    capsys.readouterr()
    assert main(["explain", str(path), STAR, "--param", "window=4", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    want = [f"blackbox: warning: {STAR} [occlusion, {exp.label}]: {note}" for note in dict.fromkeys(exp.notes)]
    assert lines == want


def test_quiet_hides_the_progress_bars(tmp_path, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = {}
    for flag in ([], ["--quiet"]):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(["explain", SHAPES, STAR, "--out", str(tmp_path / "out"), *flag]) == 0
        shown[bool(flag)] = terminal.getvalue()
    assert "eval" in shown[False]  # occlusion's 226 evaluations: a bar on a terminal
    assert shown[True] == ""


def test_a_log_probability_is_named_so(tmp_path, capsys):
    """MNIST-PyTorch ends in log-softmax: its "logit" score is log p, reported as log_probability."""
    model_path = real("models", "mnist-pytorch.onnx")
    digit = real("images", "digit_3.jpg")
    model = blackbox.load(model_path, preprocess="mnist-normalized", device="cpu")
    exp = blackbox.explain(model, digit, "occlusion", score="logit", window=4, stride=4)
    assert exp.score == "log_probability" and exp.target_score <= 0
    assert "log_probability" in exp.figure()._suptitle.get_text()
    assert main(["explain", str(model_path), str(digit), "--preset", "mnist-normalized", "--score", "logit",
                 "--param", "window=4", "--param", "stride=4", "--out", str(tmp_path)]) == 0
    assert f"log_probability {exp.target_score:.4g}" in capsys.readouterr().out
    logits = blackbox.explain(blackbox.load(SHAPES, device="cpu"), STAR, "occlusion", score="logit")
    assert logits.score == "logit"  # a logits model keeps the name


def test_tied_and_saturated_targets_get_notes():
    tied = target_notes(np.array([0.3333333, 0.3333334, 0.3333333, 0.0]), 1, "logit")
    assert len(tied) == 1 and "tied with class 0, 2" in tied[0]
    saturated = target_notes(np.array([1.0, 1e-9, 0.0]), 0, "probability")
    assert len(saturated) == 1 and "score logit" in saturated[0]
    assert target_notes(np.array([1.0, 1e-9, 0.0]), 0, "logit") == []  # logit maps are not flat there
    assert target_notes(np.array([0.6, 0.3, 0.1]), 0, "probability") == []


@pytest.mark.parametrize("args,options", [
    (["--sign", "negative", "--clip", "5", "--mode", "heat", "--colormap", "viridis"],
     {"sign": "negative", "clip": 5.0, "mode": "heat", "colormap": "viridis"}),
    (["--mode", "alpha", "--sign", "absolute", "--alpha", "0.8"], {"mode": "alpha", "sign": "absolute", "alpha": 0.8}),
])
def test_figure_flags_reach_the_figure(tmp_path, capsys, shapes_model, args, options):
    """The CLI's PNG is pixel for pixel the API's figure with the same options."""
    import cv2

    assert main(["explain", SHAPES, STAR, "--out", str(tmp_path / "cli"), "--json", *args]) == 0
    summary = json.loads(capsys.readouterr().out)[0]
    exp = blackbox.explain(shapes_model, STAR, "occlusion")
    want = exp.save_figure(tmp_path / "api.png", **options)
    default = exp.save_figure(tmp_path / "default.png")
    got = cv2.imread(summary["figure"])
    np.testing.assert_array_equal(got, cv2.imread(str(want)))
    assert got.shape != cv2.imread(str(default)).shape or not np.array_equal(got, cv2.imread(str(default)))
