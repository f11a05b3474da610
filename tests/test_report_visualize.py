"""``blackbox report --visualize``: the model-level "Inside the network" section (blackbox.report.inside)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

import blackbox
import blackbox.visualize as V
from blackbox.datasets.concepts import make_concepts
from blackbox.errors import ImageError, ParameterError
from blackbox.files import sha256_file
from blackbox.report import ReportConfig, run_report
from blackbox.report.inside import dissection_layers

from conftest import MODELS
from helpers import save, sine_classifier

SAMPLES = MODELS / "samples"
IMAGES = [SAMPLES / f"{name}.png" for name in ("circle", "square", "star", "triangle")]
LABELS = ("circle", "square", "triangle", "star")


def _config(out: Path, **extra) -> ReportConfig:
    settings = {"visualize": True, "visualize_steps": 16, **extra}
    return ReportConfig(out=str(out), methods=["occlusion"], metrics=[], params={"occlusion": {"window": 16}},
                        **settings)


class _Counter:
    """Wraps the blackbox.visualize functions the section calls, counting the calls."""

    def __init__(self, monkeypatch):
        self.calls = {"filters": 0, "activation_maximization": 0, "dissect": 0}
        for name in self.calls:
            original = getattr(V, name)

            def wrapped(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(V, name, wrapped)


class _Tags(HTMLParser):
    """Checks the page nests its tags properly (void elements aside)."""

    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    return make_concepts(tmp_path_factory.mktemp("concepts") / "set", n=24)


@pytest.fixture(scope="module")
def shapes():
    return blackbox.load(MODELS / "shapes.onnx", device="cpu")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shapes, concepts):
    out = tmp_path_factory.mktemp("visualize") / "out"
    summary = run_report(shapes, IMAGES, _config(out, concepts=str(concepts)), progress=False)
    return summary, out


def test_section_files_summary_and_page(first_run, concepts):
    summary, out = first_run
    assert summary.failed == 0 and summary.ok == 4
    section = summary.inside
    assert section["status"] == "ok" and section["failed"] == []
    # results.json records the section as returned
    stored = json.loads((out / "results.json").read_text())
    assert stored["inside"] == json.loads(json.dumps(section))
    assert json.loads((out / "inside" / "inside.json").read_text())["am"] == stored["inside"]["am"]

    # 1. filters of the first convolution: 16 filters of 3 x 3
    f = section["filters"]
    assert f["status"] == "ok" and f["count"] == 16 and f["size"] == [3, 3] and "Conv" in f["layer"]
    # 2. AM of the most predicted classes: the four samples are predicted as four classes, so the three
    #    chosen are among them, each a PNG at the model's input size with the real model's probability
    predicted = {r["top"][0]["index"] for r in summary.records}
    am = section["am"]
    assert am["steps"] == 16 and "predicted most often over the report's 4 image(s)" in am["chosen"]
    assert len(am["classes"]) == 3 and {c["index"] for c in am["classes"]} <= predicted
    for c in am["classes"]:
        assert c["status"] == "ok" and c["label"] == LABELS[c["index"]] and c["steps"] == 16
        assert 0.0 <= c["probability"] <= 1.0 and np.isfinite(c["objective"])
        picture = cv2.imread(str(out / c["files"]["png"]))
        assert picture is not None and picture.shape == (64, 64, 3)
        model = blackbox.load(MODELS / "shapes.onnx", device="cpu")
        probs = model.scores(blackbox.inputs.prepare(model, out / c["files"]["png"]).x, score="probability")[0]
        assert abs(float(probs[c["index"]]) - c["probability"]) < 0.05  # the PNG (8-bit) is what was scored
    # 3. dissection of the chosen layers: counts agree with dissection.json, pictures exist
    d = section["dissection"]
    assert d["status"] == "ok" and d["images"] == 24 and d["layers"] == dissection_layers(blackbox.load(
        MODELS / "shapes.onnx", device="cpu"))
    assert len(d["layers"]) == 4 and d["layers"][-1] == "/relu_1/Relu_output_0"
    full = json.loads((out / d["files"]["json"]).read_text())
    assert full["interpretable"] == d["interpretable"] and sum(d["interpretable"].values()) > 0
    assert [r["interpretable"] for r in d["per_layer"]] == [d["interpretable"][layer] for layer in d["layers"]]
    ious = [u["iou"] for u in d["top_units"]]
    assert ious == sorted(ious, reverse=True) and ious[0] > d["iou_threshold"] and len(ious) == 8
    for u in d["top_units"]:
        assert cv2.imread(str(out / u["picture"])) is not None
    assert (out / d["files"]["csv"]).read_text().startswith("layer,unit,concept,iou,interpretable")
    # every file the section names has the checksum it recorded
    for part in [f, d, *am["classes"]]:
        for kind, rel in part["files"].items():
            assert sha256_file(out / rel) == part["sha256"][kind], rel

    page = (out / "index.html").read_text()
    assert page.index("Methods (means over images)") < page.index("Inside the network") < page.index(
        "Images &times; methods")
    inside = page[page.index('<h2 id="inside">'):page.index("<h2>Images")]
    for c in am["classes"]:
        assert f"<b>{c['label']}</b> (class {c['index']}) p={c['probability']:.3f} &middot; 16 steps" in inside
        assert f'href="{c["files"]["png"]}"' in inside  # the full-size file is linked
    assert 'href="inside/filters.png"' in inside and 'id="inside-dissection"' in inside
    rows = re.findall(r'<tr><td>(/[^<]+)</td><td class="num">(\d+)</td><td class="num">(\d+)</td>', inside)
    assert [(layer, int(n)) for layer, _, n in rows] == [(layer, d["interpretable"][layer]) for layer in d["layers"]]
    assert inside.count('<img src="data:image/png;base64,') == 1 + 3 + 8  # filters, AM, units
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []


def test_resume_reuses_the_section_and_recomputes_what_changed(first_run, concepts, shapes, tmp_path, monkeypatch):
    _, original = first_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    am_files = sorted((out / "inside").glob("am_*.png"))
    assert len(am_files) == 3
    stamps = {p: p.stat().st_mtime_ns for p in (out / "inside").rglob("*.png")}
    counter = _Counter(monkeypatch)

    again = run_report(shapes, IMAGES, _config(out, concepts=str(concepts), resume=True), progress=False)
    assert counter.calls == {"filters": 0, "activation_maximization": 0, "dissect": 0}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again.inside["filters"]["reused"] and again.inside["dissection"]["reused"]
    assert all(c["reused"] for c in again.inside["am"]["classes"])

    # other steps: only the AM pictures are made again; a damaged filter grid is made again too
    (out / "inside" / "filters.png").write_bytes(b"not a png")
    changed = run_report(shapes, IMAGES, _config(out, concepts=str(concepts), resume=True, visualize_steps=20),
                         progress=False)
    assert counter.calls == {"filters": 1, "activation_maximization": 3, "dissect": 0}
    assert changed.inside["am"]["steps"] == 20
    assert all(c["steps"] == 20 and not c.get("reused") for c in changed.inside["am"]["classes"])
    assert changed.inside["dissection"]["reused"] and not changed.inside["filters"].get("reused")
    assert all(p.stat().st_mtime_ns != stamps[p] for p in am_files)
    assert cv2.imread(str(out / "inside" / "filters.png")) is not None
    assert "&middot; 20 steps" in (out / "index.html").read_text()
    # the per-image items were not redone either (their configuration did not change)
    assert changed.redone == [] and changed.ok == 4


def test_a_bad_concept_folder_fails_before_any_work(shapes, tmp_path, monkeypatch):
    bad = tmp_path / "concepts"
    (bad / "images").mkdir(parents=True)
    cv2.imwrite(str(bad / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    counter = _Counter(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ImageError, match="no masks/ folder") as error:
        run_report(shapes, IMAGES, _config(out, concepts=str(bad)), progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(ImageError, match="does not exist"):
        run_report(shapes, IMAGES, _config(out, concepts=str(tmp_path / "missing")), progress=False)
    with pytest.raises(ParameterError, match="--visualize-steps"):
        run_report(shapes, IMAGES, _config(out, visualize_steps=0), progress=False)
    with pytest.raises(ParameterError, match="add --visualize"):
        run_report(shapes, IMAGES, ReportConfig(out=str(out), methods=["occlusion"], concepts=str(bad)),
                   progress=False)
    assert not out.exists()  # no records, not even the folder
    assert counter.calls == {"filters": 0, "activation_maximization": 0, "dissect": 0}


def test_a_model_without_gradients_keeps_its_results_and_says_why_in_one_line(tmp_path, concepts):
    evil = "<script>alert(1)</script>"
    model = blackbox.load(save(sine_classifier(16), tmp_path / "sine.onnx"), device="cpu", labels=[evil, "b", "c", "d"])
    out = tmp_path / "out"
    summary = run_report(model, IMAGES[:2], _config(out, concepts=str(concepts)), progress=False)
    assert summary.ok == 2 and summary.failed == 0  # the per-image results are all there
    records = json.loads((out / "results.json").read_text())["results"]
    assert [r["status"] for r in records] == ["ok", "ok"] and all((out / r["files"]["overlay"]).is_file()
                                                                  for r in records)
    section = summary.inside
    assert section["status"] == "partial"
    am = section["am"]
    assert all(c["status"] == "failed" for c in am["classes"]) and len(am["classes"]) == 3
    assert "Sin" in am["error"] and "\n" not in am["error"], am["error"]
    assert section["filters"]["status"] == "ok"  # forward-only parts still work
    assert section["dissection"]["status"] == "ok" and section["dissection"]["layers"] == ["conv", "wave"]
    page = (out / "index.html").read_text()
    assert page.count("activation maximization failed: ") == 1 and "Inside the network" in page
    assert evil not in page and "\\u003cscript\\u003e" in page  # the label escaped in the JSON too
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert json.loads((out / "results.json").read_text())["inside"]["am"]["error"] == am["error"]
