"""Hostile inputs to the command line: parameters, arguments, output folders, images, targets, labels.

Every case asserts the whole promise (exit 2, one ``blackbox: error:`` line naming the problem, no
traceback, nothing written or touched). Cases that could allocate without bound run in a child process
under an address-space limit (``run_cli``); the rest call ``blackbox.cli.main`` in-process, which is the
same code without the 1.5 s interpreter start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import blackbox
from blackbox.errors import ParameterError, TargetError
from blackbox.labels import read_labels
from blackbox.methods import METHODS
from blackbox.methods.base import EVALUATION_LIMIT, MEMORY_LIMIT
from blackbox.text import printable
from conftest import IMAGENET_LABELS, MODELS, real
from harness import assert_user_error, run_cli, run_main, snapshot
from helpers import conv_classifier, save

SHAPES = str(MODELS / "shapes.onnx")
STAR = MODELS / "samples" / "star.png"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b"




@pytest.fixture
def user(tmp_path: Path) -> Path:
    """A user's folder: an image, a labels file with a shared name, a regular file, an output name."""
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.copy(STAR, folder / "star.png")
    (folder / "other").mkdir()
    shutil.copy(STAR, folder / "other" / "star.png")
    (folder / "crane.txt").write_text("crane\nsquare\ncrane\nstar\n")
    (folder / "evil.txt").write_text(f"circle{ESCAPES}\nsquare\ntriangle\nstar\n")
    (folder / "empty.txt").write_text("\n\n")
    (folder / "notes.txt").write_text("my own notes\n")
    (folder / "blank.png").write_bytes(b"")
    (folder / "model.onnx").write_text("this is not an ONNX model\n")
    (folder / "truncated.onnx").write_bytes((MODELS / "shapes.onnx").read_bytes()[:300])
    return folder


def _explain(*extra: str) -> list[str]:
    return ["explain", SHAPES, "{user}/star.png", "--out", "{user}/out", *extra]


# (arguments with {user} for the user's folder, words the line must contain)
IN_PROCESS = {
    # method parameters: declared types, ranges and choices, checked before any work
    "bad json": (_explain("--param", "window=[8,"), ["window", "JSON"]),
    "empty value": (_explain("--param", "window="), ["window", "JSON"]),
    "json NaN in a list": (_explain("--param", "stride=[NaN,4]"), ["stride", "JSON"]),
    "word for a window": (_explain("--param", "window=abc"), ["window", "whole number"]),
    "fractional window": (_explain("--param", "window=8.5"), ["window", "8.5"]),
    "zero window": (_explain("--param", "window=0"), ["window", ">= 1"]),
    "one-element window": (_explain("--param", "window=[8]"), ["window", "list of 2 or 3"]),
    "four-element window": (_explain("--param", "window=[3,8,8,8]"), ["window"]),
    "negative stride": (_explain("--param", "stride=-1"), ["stride"]),
    "boolean window": (_explain("--param", "window=true"), ["window"]),
    "window larger than the image": (_explain("--param", "window=65"), ["window", "64"]),
    "no equals sign": (_explain("--param", "window"), ["KEY=VALUE"]),
    "unknown parameter": (_explain("--param", "colour=1"), ["colour", "window"]),
    "rise without masks": (_explain("--method", "rise", "--param", "n_masks=0"), ["n_masks"]),
    "rise p_keep above 1": (_explain("--method", "rise", "--param", "p_keep=1.5"), ["p_keep", "< 1"]),
    "rise p_keep NaN": (_explain("--method", "rise", "--param", "p_keep=NaN"), ["p_keep"]),
    "rise one-cell grid": (_explain("--method", "rise", "--param", "grid=1"), ["grid"]),
    "unknown integration rule": (_explain("--method", "integrated_gradients", "--param", "integration=simpson"),
                                 ["integration", "gausslegendre"]),
    "negative noise": (_explain("--method", "smoothgrad", "--param", "noise=-0.1"), ["noise", ">= 0"]),
    "lime with one sample": (_explain("--method", "lime", "--param", "num_samples=1"), ["num_samples", ">= 2"]),
    "kernel shap over the budget": (_explain("--method", "kernel_shap", "--param", "n_samples=2000000"),
                                    ["n_samples", "1,000,000"]),
    "unknown lrp rule": (_explain("--method", "lrp", "--param", "rule=gamma"), ["rule", "epsilon"]),
    "perturbation steps over the budget": (_explain("--method", "meaningful_perturbation", "--param", "steps=100000"),
                                           ["steps", "1,000,000"]),
    "extremal variant": (_explain("--method", "extremal_perturbation", "--param", "variant=sideways"),
                         ["variant", "preserve"]),
    # argparse: one line, not a usage dump
    "bad score choice": (_explain("--score", "banana"), ["--score", "banana"]),
    "zero batch size": (_explain("--batch-size", "0"), ["--batch-size", "at least 1"]),
    "negative batch size": (_explain("--batch-size", "-4"), ["--batch-size"]),
    "word batch size": (_explain("--batch-size", "abc"), ["--batch-size", "whole number"]),
    "negative seed": (_explain("--seed", "-1"), ["--seed", "at least 0"]),
    "fractional seed": (_explain("--seed", "1.5"), ["--seed"]),
    "unknown method": (_explain("--method", "magic"), ["magic", "occlusion"]),
    "bad output kind": (_explain("--output-kind", "votes"), ["--output-kind"]),
    "no images": (["explain", SHAPES], ["required", "images"]),
    "unknown command": (["explode", SHAPES], ["explode"]),
    "zero top-k": (["predict", SHAPES, "{user}/star.png", "--top", "0"], ["--top"]),
    "report bad json": (["report", SHAPES, "{user}/star.png", "--out", "{user}/out", "--methods", "rise",
                         "--param", "rise.n_masks=[8,"], ["n_masks", "JSON"]),
    "report zero top-k": (["report", SHAPES, "{user}/star.png", "--out", "{user}/out", "--top", "0"], ["--top"]),
    "report NaN tolerance": (["report", SHAPES, "{user}/star.png", "--out", "{user}/out", "--tolerance", "nan"],
                             ["--tolerance"]),
    "report zero sanity layers": (["report", SHAPES, "{user}/star.png", "--out", "{user}/out",
                                   "--sanity-layers", "0"], ["--sanity-layers"]),
    # output folders, checked before any work
    "out is /dev/null": (["explain", SHAPES, "{user}/star.png", "--out", "/dev/null"], ["/dev/null", "not a folder"]),
    "out is the user's file": (["explain", SHAPES, "{user}/star.png", "--out", "{user}/notes.txt"],
                               ["notes.txt", "not a folder"]),
    "out below a file": (["explain", SHAPES, "{user}/star.png", "--out", "{user}/notes.txt/run"],
                         ["notes.txt", "not a folder"]),
    "out not writable": (["explain", SHAPES, "{user}/star.png", "--out", "/proc/blackbox-out"], ["/proc", "write"]),
    "report out is a file": (["report", SHAPES, "{user}/star.png", "--out", "{user}/notes.txt"], ["not a folder"]),
    # images
    "explain a folder": (["explain", SHAPES, "{user}/other", "--out", "{user}/out"], ["folder", "blackbox report"]),
    "predict a folder": (["predict", SHAPES, "{user}/other"], ["folder"]),
    "missing image": (_explain()[:2] + ["{user}/nothing.png", "--out", "{user}/out"], ["not found", "nothing.png"]),
    "empty image file": (["explain", SHAPES, "{user}/blank.png", "--out", "{user}/out"], ["blank.png", "empty"]),
    "device file as image": (["explain", SHAPES, "/dev/null", "--out", "{user}/out"], ["/dev/null", "regular file"]),
    "two images, one output name": (_explain()[:3] + ["{user}/other/star.png", "--out", "{user}/out"],
                                    ["star_occlusion"]),
    # figure options, checked before any work
    "alpha above 1": (_explain("--alpha", "2"), ["--alpha", "0 to 1"]),
    "word alpha": (_explain("--alpha", "abc"), ["--alpha", "number"]),
    "NaN alpha": (_explain("--alpha", "nan"), ["--alpha"]),
    "unknown sign": (_explain("--sign", "up"), ["--sign", "up"]),
    "clip of 100": (_explain("--clip", "100"), ["--clip", "< 100"]),
    "negative clip": (_explain("--clip", "-1"), ["--clip"]),
    "unknown colormap": (_explain("--colormap", "rainbowz"), ["rainbowz", "colour map"]),
    "unknown mode": (_explain("--mode", "sparkle"), ["--mode", "sparkle"]),
    "masked with both signs": (_explain("--mode", "masked", "--sign", "all"), ["masked", "sign"]),
    "plain overlay colormap": (_explain("--plain", "--colormap", "RdBu_r"), ["RdBu_r", "jet"]),
    # targets and labels
    "top zero": (_explain("--target", "top0"), ["top0", "K >= 1"]),
    "top more than the classes": (_explain("--target", "top9"), ["top9", "4 classes"]),
    "empty item in a target list": (_explain("--target", "1,,2"), ["empty item"]),
    "unknown label in a target list": (_explain("--target", "star,hexagon"), ["hexagon"]),
    "shared label": (_explain("--labels", "{user}/crane.txt", "--target", "crane"), ["crane", "0 and 2", "index"]),
    "target out of range": (_explain("--target", "99"), ["99", "0..3"]),
    "negative target": (_explain("--target", "-1"), ["-1"]),
    "unknown label": (_explain("--target", "hexagon"), ["hexagon"]),
    "missing labels file": (_explain("--labels", "{user}/nothing.txt"), ["nothing.txt", "not found"]),
    "empty labels file": (_explain("--labels", "{user}/empty.txt"), ["empty"]),
    # models
    "missing model": (["info", "{user}/nothing.onnx"], ["nothing.onnx"]),
}


@pytest.mark.parametrize("name", sorted(IN_PROCESS))
def test_user_error_in_process(name, user, capsys):
    args, mentions = IN_PROCESS[name]
    before = snapshot(user)
    outcome = run_main([a.replace("{user}", str(user)) for a in args], capsys)
    assert_user_error(outcome, mentions=mentions, before=before, folders=[user])
    assert not (user / "out").exists()


# Cases where a mistake would claim terabytes, or ONNX Runtime could log on its own: a real child
# process under the harness's address-space limit, stderr exactly one line.
IN_CHILD = {
    "rise 10^12 masks": (_explain("--method", "rise", "--param", "n_masks=1000000000000"),
                         ["n_masks", f"{EVALUATION_LIMIT:,}"]),
    "integrated gradients 10^8 steps": (_explain("--method", "integrated_gradients", "--param", "n_steps=100000000"),
                                        ["n_steps", f"{EVALUATION_LIMIT:,}"]),
    "smoothgrad over the memory budget": (_explain("--method", "smoothgrad", "--param", "n_samples=900000"),
                                          ["n_samples", f"{MEMORY_LIMIT >> 30} GiB"]),
    "text file as a model": (["explain", "{user}/model.onnx", "{user}/star.png", "--out", "{user}/out"], ["model.onnx"]),
    "truncated model": (["predict", "{user}/truncated.onnx", "{user}/star.png"], ["truncated.onnx"]),
}


@pytest.mark.parametrize("name", sorted(IN_CHILD))
def test_user_error_in_a_child(name, user):
    args, mentions = IN_CHILD[name]
    before = snapshot(user)
    outcome = run_cli([a.replace("{user}", str(user)) for a in args])
    assert_user_error(outcome, mentions=mentions, before=before, folders=[user])
    assert outcome.stdout == ""


def test_escapes_in_names_never_reach_the_terminal(user, capsys):
    """Labels and file names carry escapes; text output and error lines show them inert, JSON keeps them."""
    outcome = run_main(["predict", SHAPES, str(user / "star.png"), "--labels", str(user / "evil.txt"), "--top", "4"],
                       capsys)
    assert outcome.returncode == 0 and "\x1b" not in outcome.stdout and "\x07" not in outcome.stdout
    assert "circle\\x1b]0;pwned\\x07\\x1b[2J\\x9b" in outcome.stdout
    outcome = run_main(["predict", SHAPES, str(user / "star.png"), "--labels", str(user / "evil.txt"), "--json"],
                       capsys)
    assert f"circle{ESCAPES}" in [t["label"] for t in json.loads(outcome.stdout)[0]["top"]]
    before = snapshot(user)
    outcome = run_main(["explain", SHAPES, str(user / f"star{ESCAPES}.png"), "--target", ESCAPES,
                        "--out", str(user / "out")], capsys)
    line = assert_user_error(outcome, mentions=["\\x1b]0;pwned\\x07"], before=before, folders=[user])
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)


def test_printable_escapes_controls_and_keeps_unicode():
    assert printable("café 象 ✓") == "café 象 ✓"
    assert printable("a\x1b[2Jb\x7f\x9b\n\t") == "a\\x1b[2Jb\\x7f\\x9b\\x0a\\x09"
    assert printable("") == ""


# ------------------------------------------------------------------------------- the API side, same checks

@pytest.mark.parametrize("method,params,word", [
    ("occlusion", {"window": 8.5}, "window"), ("occlusion", {"stride": [4, "x"]}, "stride"),
    ("rise", {"n_masks": 10 ** 12}, "n_masks"), ("rise", {"n_masks": True}, "n_masks"),
    ("integrated_gradients", {"n_steps": 2.0}, "n_steps"), ("smoothgrad", {"abs": "yes"}, "abs"),
    ("lrp", {"epsilon": float("inf")}, "epsilon")])
def test_api_checks_parameters_before_any_work(shapes_model, method, params, word):
    with pytest.raises(ParameterError, match=word):
        blackbox.explain(shapes_model, STAR, method, **params)


def test_real_counts_stay_within_the_budgets():
    """The caps are for typos, not for real use: RISE 8000 masks, IG 300 steps at 224 x 224, LIME 5000."""
    shape = (3, 224, 224)
    for method, params in [("rise", {"n_masks": 8000, "grid": 14}), ("integrated_gradients", {"n_steps": 300}),
                           ("smoothgrad", {"n_samples": 200}), ("lime", {"num_samples": 5000}),
                           ("kernel_shap", {"n_samples": 10000}), ("occlusion", {"window": [2, 2, 3], "stride": 2})]:
        METHODS[method].check_params(params, shape=shape, layout="NHWC" if method == "occlusion" else "NCHW")


def test_ambiguous_label_names_its_classes_and_exact_names_still_resolve():
    labels = read_labels(real("labels", "imagenet-synsets.txt"))
    with pytest.raises(TargetError, match="'crane' names classes 134 and 517; pass the index"):
        labels.index_of("crane")
    assert labels.index_of("tabby") == labels.index_of("Tabby cat") == 281
    assert labels.index_of("n02123045") == 281
    cased = read_labels(["Apple", "apple", "pear"])
    assert cased.index_of("apple") == 1 and cased.index_of("Apple") == 0 and cased.index_of("PEAR") == 2
    with pytest.raises(TargetError, match="classes 0 and 1"):
        cased.index_of("APPLE")


# ------------------------------------------------------------------------------------ semantics: occlusion

def test_occlusion_window_follows_the_attributions_layout(tmp_path):
    """On an NHWC model a 3-tuple window is (h, w, c), as Captum reads it in the input's own layout."""
    nchw = blackbox.load(save(conv_classifier(seed=5), tmp_path / "nchw.onnx"), preprocess="none", device="cpu")
    nhwc = blackbox.load(save(conv_classifier(seed=5, layout="NHWC"), tmp_path / "nhwc.onnx"), preprocess="none",
                         device="cpu")
    x = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    a = blackbox.explain(nchw, x, "occlusion", target=1, window=(1, 4, 6), stride=(1, 2, 3), baseline=0.0)
    b = blackbox.explain(nhwc, x.transpose(1, 2, 0), "occlusion", target=1, window=(4, 6, 1), stride=(2, 3, 1),
                         baseline=0.0)
    assert b.attributions.shape == (16, 16, 3) and b.extras["window"] == [4, 6, 1]
    assert a.extras["window"] == [1, 4, 6] and a.n_evals == b.n_evals
    # an attribution is a difference of float32 scores; the NCHW model takes the incremental path, whose
    # patch convolutions may sum in another order: a few ulps of the scores, depending on the CPU's kernels
    logits = float(np.abs(nchw.scores(x, score="raw")).max())
    np.testing.assert_allclose(b.attributions, a.attributions.transpose(1, 2, 0), rtol=1e-5, atol=1e-5 * logits)
    # the NCHW order on the NHWC model asks for 6 channels of 3: refused, not silently read as (c, h, w)
    with pytest.raises(ParameterError, match="channels 6"):
        blackbox.explain(nhwc, x.transpose(1, 2, 0), "occlusion", target=1, window=(1, 4, 6), stride=(1, 2, 3))


# ---------------------------------------------------------------------------------- semantics: flat maps

def _constant_classifier(path: Path) -> Path:
    """Scores that ignore the image (x * 0 + bias): every perturbation map is exactly zero."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Unsqueeze", ["nothing", "one"], ["column"]),
             helper.make_node("Add", ["column", "bias"], ["logits"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([[0.5, 1.0, 0.2, 0.1]], np.float32), "bias")]
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_all_zero_map_gets_a_note_and_a_cli_warning(tmp_path, capsys):
    path = _constant_classifier(tmp_path / "constant.onnx")
    model = blackbox.load(path, preprocess="none", device="cpu")
    exp = blackbox.explain(model, np.zeros((3, 16, 16), np.float32), "occlusion", window=4)
    assert not exp.heatmap.any() and any(n.startswith("the map is all zero") for n in exp.notes)
    picture = tmp_path / "gray.png"
    cv2.imwrite(str(picture), np.full((16, 16, 3), 128, np.uint8))
    outcome = run_main(["explain", path, picture, "--preset", "none", "--param", "window=4",
                        "--out", tmp_path / "out"], capsys)
    assert outcome.returncode == 0, outcome.stderr
    assert len(outcome.lines) == 1 and outcome.lines[0].startswith("blackbox: warning: ")
    assert "all zero" in outcome.lines[0] and (tmp_path / "out" / "gray_occlusion_1.png").exists()


def test_constant_map_gets_a_note():
    from blackbox.api import flat_map_notes

    assert flat_map_notes(np.full((4, 4), 0.25))[0].startswith("the map is constant")
    assert flat_map_notes(np.zeros((4, 4)))[0].startswith("the map is all zero")
    assert flat_map_notes(np.eye(4)) == []


def test_grad_cam_on_a_saturated_int8_model_says_its_map_is_zero(capsys, tmp_path):
    """MobileNetV2-int8 on the elephant photo: three classes tie at 0.333 and Grad-CAM's map is all zero.
    Every note is one warning line naming the image, method and class: the int8 gradients, the flat map
    and the tie."""
    args = ["explain", real("models", "mobilenetv2-12-int8.onnx"), real("images", "elephant.jpg"),
            "--preset", "imagenet", "--labels", IMAGENET_LABELS, "--method", "grad_cam", "--out", tmp_path / "out"]
    outcome = run_main(args, capsys)
    assert outcome.returncode == 0, outcome.stderr
    warnings = [line for line in outcome.lines if line.startswith("blackbox: warning: ")]
    assert warnings == outcome.lines and len(warnings) == 3, outcome.stderr
    assert all("elephant.jpg [grad_cam, tusker]: " in line for line in warnings), outcome.stderr
    assert [any(word in line for line in warnings) for word in ("int8", "all zero", "tied with class 385, 386")] \
        == [True, True, True], outcome.stderr


# -------------------------------------------------------------------------- semantics: guessed preprocessing

def test_guessed_preprocessing_warns_once(tmp_path, capsys):
    path = save(conv_classifier(), tmp_path / "bare.onnx")
    outcome = run_main(["info", path], capsys)
    assert outcome.returncode == 0
    assert outcome.lines == [line for line in outcome.lines if line.startswith("blackbox: warning: no --preset")]
    assert len(outcome.lines) == 1 and "--preset" in outcome.lines[0]
    outcome = run_main(["info", path, "--preset", "none"], capsys)
    assert outcome.returncode == 0 and outcome.stderr == ""
    outcome = run_main(["info", SHAPES], capsys)  # metadata says how: no warning
    assert outcome.returncode == 0 and outcome.stderr == ""


def test_guessed_preprocessing_stays_quiet_when_the_command_fails(tmp_path, capsys):
    """An error line stays the only line: the warning is for runs that produced something."""
    path = save(conv_classifier(), tmp_path / "bare.onnx")
    outcome = run_main(["predict", path, STAR, "--target-typo"], capsys)
    assert outcome.returncode == 2 and len(outcome.lines) == 1
    outcome = run_main(["explain", path, STAR, "--target", "99", "--out", tmp_path / "out"], capsys)
    assert_user_error(outcome, mentions=["99"])
