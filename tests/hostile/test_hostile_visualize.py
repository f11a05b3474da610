"""Hostile inputs to ``blackbox layers``, ``blackbox visualize`` and ``blackbox concepts``.

Every case asserts the whole promise (exit 2, one ``blackbox: error:`` line naming the problem, no
traceback, nothing written or touched): unknown layers (with close names), channels out of range, layers
that are not spatial, concept folders without masks or with masks of the wrong size, empty image folders,
bad positions and numbers, conflicting or missing objectives, and ops without a gradient rule for the views
that need gradients. Most run in-process (``blackbox.cli.main``); a few in a child process as a user runs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from conftest import MODELS
from detectors import CONCEPTS, concept_image, detector_model
from helpers import sine_classifier
from harness import assert_user_error, run_cli, run_main, snapshot

SHAPES = str(MODELS / "shapes.onnx")
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b"




def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("visualize_models")
    onnx.save(detector_model(), str(folder / "detectors.onnx"))
    onnx.save(sine_classifier(), str(folder / "sine.onnx"))
    return folder


@pytest.fixture
def user(tmp_path: Path, models: Path) -> Path:
    """A user's folder: the models, pictures, an empty folder, broken concept sets, files of their own."""
    folder = tmp_path / "user"
    folder.mkdir()
    for name in ("detectors.onnx", "sine.onnx"):
        shutil.copy(models / name, folder / name)
    rng = np.random.default_rng(0)
    for i in range(4):
        image, mask = concept_image(CONCEPTS[i], rng=rng)
        _png(folder / "images" / f"{i}.png", image[:, :, ::-1])
        _png(folder / "good" / "images" / f"{i}.png", image[:, :, ::-1])
        _png(folder / "good" / "masks" / CONCEPTS[i] / f"{i}.png", mask.astype(np.uint8) * 255)
    image = concept_image("red")[0][:, :, ::-1]
    _png(folder / "red.png", image)
    (folder / "empty").mkdir()
    _png(folder / "nomasks" / "images" / "a.png", image)
    (folder / "nomasks" / "masks" / "red").mkdir(parents=True)
    _png(folder / "bigmask" / "images" / "a.png", image)
    _png(folder / "bigmask" / "masks" / "red" / "a.png", np.zeros((40, 40), np.uint8))
    _png(folder / "orphan" / "images" / "a.png", image)
    _png(folder / "orphan" / "masks" / "red" / "b.png", np.zeros((32, 32), np.uint8))
    _png(folder / "greymask" / "images" / "a.png", image)
    _png(folder / "greymask" / "masks" / "red" / "a.png", np.full((32, 32), 100, np.uint8))
    (folder / "notes.txt").write_text("my own notes\n")
    (folder / "mine").mkdir()
    (folder / "mine" / "keep.txt").write_text("a folder of the user's\n")
    (folder / "model.onnx").write_text("this is not an ONNX model\n")
    return folder


def _view(view: str, *extra: str, model: str = "{user}/detectors.onnx") -> list[str]:
    return ["visualize", model, view, *extra, "--out", "{user}/out"]


def _am(*extra: str, model: str = "{user}/detectors.onnx") -> list[str]:
    return _view("am", *extra, "--steps", "4", model=model)


SINE = "{user}/sine.onnx"

# (arguments with {user} for the user's folder, words the line must contain)
IN_PROCESS = {
    # layers and channels
    "unknown layer lists close names": (_am("--layer", "colourr", "--channel", "0"), ["colourr", "close names",
                                                                                      "'colour'"]),
    "unknown second layer of invert": (_view("invert", "{user}/red.png", "--layer", "colour", "--layer", "strpes",
                                             "--steps", "4"), ["strpes", "'stripes'"]),
    "unknown layer for dream": (_view("dream", "{user}/red.png", "--layer", "nothing"), ["nothing", "blackbox layers"]),
    "unknown layer for filters": (_view("filters", "--layer", "nothing"), ["nothing"]),
    "unknown layer for embed": (_view("embed", "{user}/images", "--layer", "nothing"), ["nothing"]),
    "channel out of range for am": (_am("--layer", "colour", "--channel", "3"), ["channel 3", "0..2"]),
    "channel out of range for top": (_view("top", "{user}/images", "--layer", "stripes", "--channel", "2"),
                                     ["channel 2", "0..1"]),
    "channel out of range for dream": (_view("dream", "{user}/red.png", "--layer", "colour", "--channel", "9",
                                             "--steps", "2"), ["channel 9"]),
    "negative channel": (_am("--layer", "colour", "--channel", "-1"), ["--channel", "-1"]),
    "neuron outside the layer": (_am("--layer", "colour", "--channel", "0", "--neuron", "40,0"), ["40"]),
    # spatial layers where a map is needed
    "vector layer for top": (_view("top", "{user}/images", "--layer", "flat", "--channel", "0"), ["flat", "spatial"]),
    "vector layer for activations": (_view("activations", "{user}/red.png", "--layer", "logits"),
                                     ["logits", "spatial"]),
    "vector layer for dissect": (_view("dissect", "--concepts", "{user}/good", "--layer", "flat"),
                                 ["flat", "spatial"]),
    "vector layer for a neuron": (_am("--layer", "flat", "--channel", "0", "--neuron", "center"),
                                  ["flat", "spatial"]),
    "pooled layer for filters": (_view("filters", "--layer", "pooled"), ["pooled", "convolution"]),
    # concept folders
    "concept folder without masks": (_view("dissect", "--concepts", "{user}/nomasks", "--layer", "colour"),
                                     ["nomasks", "mask"]),
    "mask of the wrong size": (_view("dissect", "--concepts", "{user}/bigmask", "--layer", "colour"),
                               ["a.png", "40 x 40", "32 x 32"]),
    "mask without its image": (_view("dissect", "--concepts", "{user}/orphan", "--layer", "colour"), ["b.png"]),
    "mask that is not binary": (_view("dissect", "--concepts", "{user}/greymask", "--layer", "colour"), ["a.png"]),
    "missing concept folder": (_view("dissect", "--concepts", "{user}/nowhere", "--layer", "colour"), ["nowhere"]),
    "image folder as concept folder": (_view("dissect", "--concepts", "{user}/images", "--layer", "colour"),
                                       ["images"]),
    "dissect without a layer": (_view("dissect", "--concepts", "{user}/good"), ["--layer"]),
    "quantile of 1": (_view("dissect", "--concepts", "{user}/good", "--layer", "colour", "--quantile", "1"),
                      ["--quantile"]),
    "quantile of 0": (_view("dissect", "--concepts", "{user}/good", "--layer", "colour", "--quantile", "0"),
                      ["quantile"]),
    # image collections and images
    "empty image folder for top": (_view("top", "{user}/empty", "--layer", "colour", "--channel", "0"),
                                   ["empty", "no images"]),
    "empty image folder for embed": (_view("embed", "{user}/empty"), ["empty", "no images"]),
    "missing image among files": (_view("top", "{user}/red.png", "{user}/gone.png", "--layer", "colour",
                                        "--channel", "0"), ["gone.png"]),
    "two images are too few for embed": (_view("embed", "{user}/red.png", "{user}/images/0.png"), ["at least 3"]),
    "a folder for one image": (_view("activations", "{user}/images", "--layer", "colour"), ["folder"]),
    "missing image for dream": (_view("dream", "{user}/gone.png", "--layer", "colour"), ["gone.png"]),
    "text file as a start image": (_am("--target", "0", "--image", "{user}/notes.txt"), ["notes.txt"]),
    # what to maximise
    "target and layer together": (_am("--target", "0", "--layer", "colour", "--channel", "0"),
                                  ["--target", "not both"]),
    "target and neuron together": (_am("--target", "0", "--neuron", "center"), ["not both"]),
    "nothing to maximise": (_am(), ["--target", "--layer"]),
    "layer without a channel": (_am("--layer", "colour"), ["--channel"]),
    "target out of range": (_am("--target", "5"), ["5", "0..4"]),
    "empty item in targets": (_am("--target", "0,,1"), ["empty item"]),
    "label without labels": (_am("--target", "red"), ["red", "labels"]),
    "escapes in a target": (_am("--target", ESCAPES), ["\\x1b"]),
    # numbers and choices (argparse types: one line, before anything loads)
    "bad neuron text": (_am("--layer", "colour", "--channel", "0", "--neuron", "1;2"), ["--neuron", "Y,X"]),
    "negative neuron": (_am("--layer", "colour", "--channel", "0", "--neuron=-1,0"), ["--neuron", "0,0"]),
    "neuron with three numbers": (_am("--layer", "colour", "--channel", "0", "--neuron", "1,2,3"), ["Y,X"]),
    "zero steps": (_view("am", "--target", "0", "--steps", "0"), ["--steps", "at least 1"]),
    "word steps": (_view("am", "--target", "0", "--steps", "many"), ["--steps", "whole number"]),
    "too many steps": (_view("am", "--target", "0", "--steps", "1000000"), ["steps", "100000"]),
    "negative lr": (_am("--target", "0", "--lr", "-0.1"), ["--lr"]),
    "nan lr": (_am("--target", "0", "--lr", "nan"), ["--lr"]),
    "tiny size": (_am("--target", "0", "--size", "4"), ["--size"]),
    "bad size text": (_am("--target", "0", "--size", "big"), ["--size"]),
    "too many images": (_am("--target", "0", "--n", "65"), ["n must be", "64"]),
    "unknown param": (_am("--target", "0", "--param", "wavelets"), ["--param", "wavelets"]),
    "unknown score": (_am("--target", "0", "--score", "odds"), ["--score"]),
    "zero k": (_view("top", "{user}/images", "--layer", "colour", "--channel", "0", "--k", "0"), ["--k"]),
    "zero octaves": (_view("dream", "{user}/red.png", "--layer", "colour", "--octaves", "0"), ["--octaves"]),
    "octave scale of 1": (_view("dream", "{user}/red.png", "--layer", "colour", "--octave-scale", "1"),
                          ["octave_scale"]),
    "zero perplexity": (_view("embed", "{user}/images", "--perplexity", "0"), ["--perplexity"]),
    "unknown colormap": (_view("activations", "{user}/red.png", "--layer", "colour", "--colormap", "rainbowz"),
                         ["rainbowz"]),
    "unknown view": (["visualize", "{user}/detectors.onnx", "explode", "--out", "{user}/out"], ["explode"]),
    "no view": (["visualize", "{user}/detectors.onnx"], ["VIEW"]),
    "invert without a layer": (_view("invert", "{user}/red.png"), ["--layer"]),
    # output folders
    "out is a file": (["visualize", "{user}/detectors.onnx", "filters", "--out", "{user}/notes.txt"], ["notes.txt"]),
    # ops without a gradient rule: the views that need gradients say which op, and what still works
    "am through Sin": (_am("--target", "0", model=SINE), ["Sin", "forward-only", "filters"]),
    "invert through Sin": (_view("invert", "{user}/red.png", "--layer", "wave", "--steps", "4", model=SINE),
                           ["Sin", "--no-projections"]),
    "dream through Sin": (_view("dream", "{user}/red.png", "--layer", "wave", "--steps", "2", model=SINE), ["Sin"]),
    "top projections through Sin": (_view("top", "{user}/images", "--layer", "wave", "--channel", "0", model=SINE),
                                    ["Sin", "--no-projections"]),
    # layers, concepts, report --visualize
    "layers of a missing model": (["layers", "{user}/nothing.onnx"], ["nothing.onnx"]),
    "layers of an image": (["layers", "{user}/red.png"], ["red.png"]),
    "concepts into a user's folder": (["concepts", "{user}/mine", "--n", "2", "--size", "32"], ["mine", "not empty"]),
    "concepts into a file": (["concepts", "{user}/notes.txt", "--n", "2", "--size", "32"], ["notes.txt"]),
    "concepts too small": (["concepts", "{user}/out", "--size", "16"], ["--size", "32"]),
    "concepts zero images": (["concepts", "{user}/out", "--n", "0"], ["--n"]),
    "report concepts without visualize": (["report", SHAPES, "{user}/red.png", "--out", "{user}/out", "--concepts",
                                           "{user}/good"], ["--visualize"]),
    "report steps without visualize": (["report", SHAPES, "{user}/red.png", "--out", "{user}/out",
                                        "--visualize-steps", "8"], ["--visualize"]),
    "report with a bad concept folder": (["report", SHAPES, "{user}/red.png", "--out", "{user}/out", "--visualize",
                                          "--concepts", "{user}/bigmask"], ["40 x 40"]),
    "report huge visualize steps": (["report", SHAPES, "{user}/red.png", "--out", "{user}/out", "--visualize",
                                     "--visualize-steps", "1000000000"], ["--visualize-steps"]),
    "report zero visualize steps": (["report", SHAPES, "{user}/red.png", "--out", "{user}/out", "--visualize",
                                     "--visualize-steps", "0"], ["--visualize-steps"]),
}


@pytest.mark.parametrize("name", sorted(IN_PROCESS))
def test_user_error_in_process(name, user, capsys):
    args, mentions = IN_PROCESS[name]
    before = snapshot(user)
    outcome = run_main([a.replace("{user}", str(user)) for a in args], capsys)
    line = assert_user_error(outcome, mentions=mentions, before=before, folders=[user])
    assert not (user / "out").exists()
    assert "\x1b" not in line and "\x07" not in line


# As a user runs it: a child process, stdout empty, stderr exactly the one line (ONNX Runtime and the
# gradient builder must not log on their own).
IN_CHILD = {
    "am through Sin": (_am("--target", "0", "--preset", "none", model=SINE), ["Sin"]),
    "unknown layer": (_view("top", "{user}/images", "--layer", "colourr", "--channel", "0"), ["close names"]),
    "text file as a model": (["layers", "{user}/model.onnx"], ["model.onnx"]),
}


@pytest.mark.parametrize("name", sorted(IN_CHILD))
def test_user_error_in_a_child(name, user):
    args, mentions = IN_CHILD[name]
    before = snapshot(user)
    outcome = run_cli([a.replace("{user}", str(user)) for a in args])
    assert_user_error(outcome, mentions=mentions, before=before, folders=[user])
    assert outcome.stdout == "" and not (user / "out").exists()


def test_the_forward_only_views_still_work_where_gradients_do_not(user, capsys):
    """The model am refuses above: filters, activations, embed, top --no-projections and dissect all run."""
    base = ["visualize", str(user / "sine.onnx")]
    for view in (["filters"], ["activations", str(user / "red.png"), "--layer", "wave"],
                 ["embed", str(user / "images"), "--perplexity", "2"],
                 ["top", str(user / "images"), "--layer", "wave", "--channel", "0", "--no-projections", "--k", "2"],
                 ["dissect", "--concepts", str(user / "good"), "--layer", "wave"]):
        outcome = run_main([*base, *view, "--preset", "none", "--out", str(user / "out")], capsys)
        assert outcome.returncode == 0, (view, outcome.stderr)
        assert "Traceback" not in outcome.stderr and "error" not in outcome.stderr


def test_a_warning_follows_the_work_in_a_child(user):
    """No --preset on a model without metadata: the work is done, then one warning line (exit 0)."""
    outcome = run_cli(["visualize", user / "sine.onnx", "filters", "--out", user / "out"])
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.lines == [outcome.lines[0]] and outcome.lines[0].startswith("blackbox: warning: no --preset")
    assert (user / "out" / "filters_conv.png").is_file()
