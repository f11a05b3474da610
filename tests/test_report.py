"""``blackbox report``: files, escaping, failures and exit codes, resume after a kill, determinism."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox.cli import main
from blackbox.report import expand_inputs

from conftest import MODELS

SAMPLES = MODELS / "samples"
EVIL = "<script>alert(1)</script>"
FAST = ["--methods", "occlusion,rise", "--param", "rise.n_masks=300", "--step", "64"]


def _run(*args: str) -> int:
    return main(["report", *map(str, args)])


def _check_files(out: Path) -> None:
    """No half-written file anywhere: every PNG decodes, every JSON parses, every NPZ loads."""
    for path in out.rglob("*"):
        if path.suffix == ".png":
            assert cv2.imread(str(path)) is not None, path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path) as data:
                assert "heatmap" in data.files


def _numbers(out: Path) -> list[dict]:
    """Everything a run computed, minus wall-clock times (and the files' checksums: the NPZ records them)."""
    records = json.loads((out / "results.json").read_text())["results"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "sha256")} for r in records]


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    labels = folder / "labels.txt"
    labels.write_text(f"circle\n{EVIL}\ntriangle\nstar\n")
    out = folder / "out"
    code = _run(MODELS / "shapes.onnx", SAMPLES / "circle.png", SAMPLES / "square.png", SAMPLES / "star.png",
                *FAST, "--labels", labels, "--out", out)
    return code, out


def test_run_writes_every_file(labelled_run):
    code, out = labelled_run
    assert code == 0
    records = json.loads((out / "results.json").read_text())["results"]
    assert [(Path(r["image"]).name, r["method"]) for r in records] == [
        (name, method) for name in ("circle.png", "square.png", "star.png") for method in ("occlusion", "rise")]
    for r in records:
        assert r["status"] == "ok", r
        for rel in r["files"].values():
            assert (out / rel).is_file()
        assert (out / "items" / r["key"] / f"{r['method']}.json").is_file()
        m = r["metrics"]
        assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1
        assert isinstance(m["pointing_mask"], bool)  # the X_mask.png sibling is found as truth
        assert r["top"][0]["probability"] >= r["top"][-1]["probability"] and len(r["top"]) == 4
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 6 and {row["status"] for row in rows} == {"ok"}
    assert float(rows[0]["deletion_auc"]) == pytest.approx(records[0]["metrics"]["deletion_auc"])
    page = (out / "index.html").read_text()
    assert "sha256" in page and "gradient support" in page and "blackbox report" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    _check_files(out)


def test_labels_are_escaped(labelled_run):
    _, out = labelled_run
    page = (out / "index.html").read_text()
    assert EVIL not in page and "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text (square.png is class 1)
    # the summary JSON, the per-record data file beside the page and our own script, nothing else
    assert page.count("<script") == 3 and '<script src="results.js"></script>' in page
    data = page.split('<script type="application/json" id="blackbox-summary">')[1].split("</script>")[0]
    assert "\\u003cscript\\u003e" in data and json.loads(data)["run"]["model"]["labels"]["first"][1] == EVIL
    script = (out / "results.js").read_text()
    assert script.startswith("window.__blackbox=") and script.endswith(";\n") and EVIL not in script
    rows = json.loads(script[len("window.__blackbox="):-2])["records"]
    assert rows[2]["l"] == EVIL and "\\u003cscript\\u003e" in script
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert rows[2]["label"] == EVIL  # the CSV keeps the data; it starts no formula


def test_inputs_expand_folders_globs_lists(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# samples\n{SAMPLES / 'star.png'}\n{SAMPLES}/circle*.png\nmissing.png\n")
    entries = expand_inputs([str(SAMPLES), str(listing), str(tmp_path / "nothing*.png")])
    names = [Path(e.path).name for e in entries if e.error is None]
    assert names == ["circle.png", "circle_watermarked.png", "square.png", "star.png", "triangle.png",
                     "triangle_watermarked.png"]  # masks are truth, duplicates dropped
    errors = {Path(e.path).name: e.error for e in entries if e.error}
    assert errors == {"missing.png": "file not found", "nothing*.png": "no image file matches this pattern"}
    assert len({e.key for e in entries}) == len(entries)


def test_broken_image_is_a_failed_row(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a picture")
    out = tmp_path / "out"
    code = _run(MODELS / "shapes.onnx", SAMPLES / "star.png", broken, tmp_path / "absent.png",
                "--methods", "occlusion", "--metrics", "deletion", "--step", "128", "--out", out)
    assert code == 1
    assert "failed" in capsys.readouterr().out
    records = {Path(r["image"]).name: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert records["star.png"]["status"] == "ok"
    assert records["broken.png"]["status"] == "failed" and "decode" in records["broken.png"]["error"]
    assert records["absent.png"]["status"] == "failed" and "not found" in records["absent.png"]["error"]
    page = (out / "index.html").read_text()
    assert "2 failed" in page
    _check_files(out)


def test_user_errors_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not onnx")
    cases = [
        (MODELS / "shapes.onnx", SAMPLES / "star.png", "--methods", "occlusion,nope"),
        (MODELS / "shapes.onnx", empty, "--methods", "occlusion"),
        (bad_model, SAMPLES / "star.png", "--methods", "occlusion"),
        (MODELS / "shapes.onnx", SAMPLES / "star.png", "--methods", "occlusion", "--param", "occlusion.nope=1"),
        (MODELS / "shapes.onnx", SAMPLES / "star.png", "--metrics", "deletion,accuracy"),
        (MODELS / "shapes.onnx", SAMPLES / "star.png", "--target", "hexagon"),
    ]
    for args in cases:
        assert _run(*args, "--out", tmp_path / "out") == 2
        assert capsys.readouterr().err.startswith("blackbox: error:")
    assert not (tmp_path / "out" / "index.html").exists()


def test_targets_csv_boxes_and_targets(tmp_path):
    table = tmp_path / "truth.csv"
    table.write_text("image,target,y0,x0,y1,x1\n"
                     f"{SAMPLES / 'circle_watermarked.png'},triangle,56,56,62,62\n")
    out = tmp_path / "out"
    assert _run(MODELS / "shapes.onnx", SAMPLES / "circle_watermarked.png", "--methods", "occlusion",
                "--step", "128", "--targets-csv", table, "--out", out) == 0
    (record,) = json.loads((out / "results.json").read_text())["results"]
    assert record["label"] == "triangle" and record["truth"]["box_model"] == [56.0, 56.0, 62.0, 62.0]
    assert {"pointing_box", "share_box", "pointing_mask", "share_mask"} <= set(record["metrics"])
    assert record["metrics"]["area_box"] == pytest.approx(36 / 4096)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "blackbox.cli", "report", *map(str, args)]


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    images = [SAMPLES / "circle.png", SAMPLES / "square.png", SAMPLES / "triangle.png"]
    common = [MODELS / "shapes.onnx", *images, "--methods", "occlusion,rise", "--param", "rise.n_masks=1500",
              "--step", "64", "--device", "cpu"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli(*common, "--out", killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(killed.glob("items/*/*.json")):
            assert process.poll() is None, "the run ended before writing its first item"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    first = sorted(killed.glob("items/*/*.json"))
    assert 1 <= len(first) < 6, "the kill should land halfway"
    stamp = {p: p.stat().st_mtime_ns for p in first}
    assert not (killed / "results.json").exists()
    _check_files(killed)

    resumed = subprocess.run(_cli(*common, "--out", killed, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert all(p.stat().st_mtime_ns == stamp[p] for p in first)  # finished items were not redone
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    _check_files(killed)

    fresh = tmp_path / "fresh"
    assert subprocess.run(_cli(*common, "--out", fresh), capture_output=True).returncode == 0
    assert len(_numbers(fresh)) == 6 and all(r["status"] == "ok" for r in _numbers(fresh))
    assert _numbers(killed) == _numbers(fresh)  # two runs (three processes), the same numbers
    with open(killed / "results.csv") as a, open(fresh / "results.csv") as b:
        drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert drop(csv.DictReader(a)) == drop(csv.DictReader(b))
