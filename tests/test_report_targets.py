"""The report's targets, score columns, notes, colour bars and chart legends.

Several targets per image (``--target a,b`` / ``topK``): one record per image x method x target, the target
in the configuration hash and the file name, ``--resume`` across target lists and for single-target runs;
the probability / log-probability / logit columns named truly (a model that outputs probabilities has no
logits); notes next to their map, escaped; the colour bar's range and colours are the overlay's own; the
deletion/insertion legend sits outside the axes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from onnx import numpy_helper

import blackbox
from blackbox.cli import main
from blackbox.errors import ParameterError
from blackbox.report import ReportConfig, run_report
from blackbox.report.colorbar import colorbar_rgb, overlay_range
from blackbox.report.html import page_data
from blackbox.report.plots import PALETTE, layout, line_plot
from blackbox.report.run import CSV_COLUMNS
from blackbox.report.targets import parse_targets, true_space

from conftest import MODELS
from helpers import conv_classifier, save

SAMPLES = MODELS / "samples"
IMAGES = [str(SAMPLES / "circle.png"), str(SAMPLES / "star.png")]
FAST = {"occlusion": {"window": 16, "stride": 16}}


def _config(out: Path, **more) -> ReportConfig:
    base = {"methods": ["occlusion"], "params": FAST, "metrics": ["deletion"], "step": 512}
    return ReportConfig(out=str(out), **{**base, **more})


def _softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


# ------------------------------------------------------------------------------------ parsing targets

def test_parse_targets(shapes_model):
    assert [s.name for s in parse_targets(shapes_model, None)] == ["top1"]
    assert parse_targets(shapes_model, "top1") == parse_targets(shapes_model, None)  # the same records
    assert [s.name for s in parse_targets(shapes_model, "top3")] == ["top1", "top2", "top3"]
    assert len(parse_targets(shapes_model, "top9")) == 4  # capped at the classes the model has
    slots = parse_targets(shapes_model, "star, 0,circle")
    assert [(s.name, s.index, s.token) for s in slots] == [("c3", 3, "star"), ("c0", 0, "0")]  # circle = 0
    assert parse_targets(shapes_model, "square")[0].token == "square"  # one class: the text as given
    assert parse_targets(shapes_model, 3)[0].token == 3 and parse_targets(shapes_model, 3)[0].name == "c3"
    for bad in ("hexagon", "circle,hexagon", "circle,,star", "top0", "top2,circle", "7"):
        with pytest.raises(ParameterError):
            parse_targets(shapes_model, bad)


def test_a_label_with_commas_is_one_class(tmp_path):
    model = blackbox.load(save(conv_classifier(), tmp_path / "m.onnx"), device="cpu",
                          labels=["tench, Tinca tinca", "goldfish", "shark", "ray"])
    assert [s.index for s in parse_targets(model, "tench, Tinca tinca")] == [0]
    assert [s.index for s in parse_targets(model, "goldfish,ray")] == [1, 3]


def test_true_space_names():
    assert true_space("logit", "logits") == "logit"
    assert true_space("logit", "probabilities") == "log_probability"
    assert true_space("logit", "log_probabilities") == "log_probability"
    assert true_space("log_probability", "probabilities") == "log_probability"  # already named by blackbox.api
    assert true_space("raw", "probabilities") == "probability" and true_space("probability", "logits") == "probability"


# ------------------------------------------------------------------------------ records per target

@pytest.fixture(scope="module")
def top2(tmp_path_factory, shapes_model):
    out = tmp_path_factory.mktemp("targets") / "out"
    summary = run_report(shapes_model, IMAGES, _config(out, target="top2"), progress=False)
    return out, summary


def test_one_record_per_image_method_and_target(top2, shapes_model):
    out, summary = top2
    records = summary.records
    assert [(Path(r["image"]).name, r["slot"]) for r in records] == [
        ("circle.png", "top1"), ("circle.png", "top2"), ("star.png", "top1"), ("star.png", "top2")]
    for path in IMAGES:
        logits = shapes_model.scores(blackbox.inputs.prepare(shapes_model, path).x, score="raw")[0]
        mine = [r for r in records if r["image"] == path]
        assert [r["target"] for r in mine] == [int(i) for i in np.argsort(-logits)[:2]]
        for r in mine:
            assert r["status"] == "ok" and r["files"]["overlay"].endswith(f"occlusion__{r['slot']}.png")
            assert (out / "items" / r["key"] / f"occlusion__{r['slot']}.json").is_file()
            # the scores are the target's, in the spaces their columns name
            p = _softmax(logits.astype(np.float64))[r["target"]]
            assert r["probability"] == pytest.approx(p, rel=1e-5)
            assert r["logit"] == pytest.approx(float(logits[r["target"]]), rel=1e-5)
            assert r["log_probability"] == pytest.approx(np.log(p), rel=1e-4, abs=1e-6)
            assert r["score_space"] == "logit" and r["score"] == pytest.approx(r["logit"], rel=1e-5)  # occlusion's
    assert len({r["config_hash"] for r in records}) == 4  # the target is part of each record's hash
    npz = [r["files"]["npz"] for r in records if r["image"] == IMAGES[0]]
    maps = [np.load(out / rel)["heatmap"] for rel in npz]
    assert not np.allclose(maps[0], maps[1])  # two classes, two different maps


def test_columns_in_csv_and_parquet(top2):
    out, summary = top2
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert list(rows[0]) == list(CSV_COLUMNS)
    for row, record in zip(rows, summary.records):
        assert row["slot"] == record["slot"] and int(row["target"]) == record["target"]
        assert float(row["probability"]) == pytest.approx(record["probability"])
        assert float(row["logit"]) == pytest.approx(record["logit"])
        assert float(row["log_probability"]) == pytest.approx(record["log_probability"])
        assert row["explained_space"] == "logit" and float(row["explained_score"]) == pytest.approx(record["score"])
    table = pq.read_table(out / "results.parquet")
    assert table.column_names == list(CSV_COLUMNS)
    assert str(table.schema.field("logit").type) == "double" and str(table.schema.field("n_notes").type) == "int64"
    typed = table.to_pylist()
    assert [t["log_probability"] for t in typed] == pytest.approx([r["log_probability"] for r in summary.records])


def test_resume_keeps_the_targets_it_has(top2, shapes_model):
    out, _ = top2
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("items/*/*.json")}
    again = run_report(shapes_model, IMAGES, _config(out, target="top2", resume=True), progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("items/*/*.json")} == stamps and not again.redone
    more = run_report(shapes_model, IMAGES, _config(out, target="top3", resume=True), progress=False)
    assert [r["slot"] for r in more.records] == ["top1", "top2", "top3"] * 2
    assert all(p.stat().st_mtime_ns == stamps[p] for p in stamps)  # top1, top2 reused; only top3 made
    assert len(list(out.glob("items/*/occlusion__top3.json"))) == 2


def test_resume_of_a_single_target_run_made_before_targets(tmp_path, shapes_model):
    """A record written before several targets existed has no slot or stem: a single-target run (the
    default top-1, or one --target class) still finds it, under the same name and hash."""
    out = tmp_path / "out"
    for target in (None, "star"):
        first = run_report(shapes_model, IMAGES, _config(out, target=target), progress=False)
        assert all(r["slot"] is None and r["files"]["overlay"].endswith("/occlusion.png") for r in first.records)
        for path in out.glob("items/*/occlusion.json"):
            record = json.loads(path.read_text())
            path.write_text(json.dumps({k: v for k, v in record.items() if k not in ("slot", "stem")}))
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("items/*/*.json")}
        again = run_report(shapes_model, IMAGES, _config(out, target=target, resume=True), progress=False)
        assert not again.redone and {p: p.stat().st_mtime_ns for p in stamps} == stamps
        assert [r["status"] for r in again.records] == ["ok", "ok"]
    assert {r["label"] for r in again.records} == {"star"}


def test_cli_several_targets_and_a_bad_one(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(MODELS / "shapes.onnx"), IMAGES[0], "--methods", "occlusion", "--metrics",
                 "deletion", "--step", "512", "--target", "star,circle", "--out", str(out), "--quiet"]) == 0
    records = json.loads((out / "results.json").read_text())["results"]
    assert [(r["slot"], r["label"]) for r in records] == [("c3", "star"), ("c0", "circle")]
    capsys.readouterr()
    assert main(["report", str(MODELS / "shapes.onnx"), IMAGES[0], "--target", "star,hexagon",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blackbox: error:") and "hexagon" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- spaces and notes

def test_probability_model_has_no_logit_and_says_log_probability(tmp_path):
    """A model ending in Softmax: no logits exist; blackbox's 'logit' space is the log-probability. Two
    equal rows in its last layer tie classes 0 and 1; no metadata: the preprocessing is guessed."""
    proto = conv_classifier(final="softmax")
    fc = next(i for i in proto.graph.initializer if i.name == "fc")
    weights = numpy_helper.to_array(fc).copy()
    weights[1] = weights[0]
    fc.CopyFrom(numpy_helper.from_array(weights, "fc"))
    model = blackbox.load(save(proto, tmp_path / "tied.onnx"), device="cpu")
    assert model.output_kind == "probabilities" and model.preprocess_guessed
    out = tmp_path / "out"
    summary = run_report(model, IMAGES[:1], _config(out, methods=["saliency"], params={}, target="0,2", step=64),
                         progress=False)
    tied, other = summary.records
    probs = model.scores(blackbox.inputs.prepare(model, IMAGES[0]).x, score="probability")[0]
    for r in (tied, other):
        assert r["logit"] is None and r["score_space"] == "log_probability"
        assert r["log_probability"] == pytest.approx(np.log(probs[r["target"]]), rel=1e-5)
        assert r["score"] == pytest.approx(r["log_probability"], rel=1e-4)
        assert any("preprocessing was guessed" in n for n in r["notes"])
    assert any("tied with class 1" in n for n in tied["notes"]) and not any("tied" in n for n in other["notes"])
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert rows[0]["logit"] == "" and rows[0]["explained_space"] == "log_probability"
    assert int(rows[0]["n_notes"]) == len(tied["notes"]) >= 2 and "tied with class 1" in rows[0]["notes"]
    assert summary.methods["saliency"]["warned"] == 2
    page = (out / "index.html").read_text()
    assert "2 map(s) with warnings" in page


def test_notes_go_to_the_page_data_escaped(tmp_path):
    evil = "<img src=x onerror=alert(1)> note"
    records = [{"image": str(SAMPLES / "star.png"), "key": "star-1", "method": "m", "status": "ok", "target": 0,
                "label": "a", "probability": 0.5, "notes": [evil], "files": {}}]
    data = page_data(tmp_path, records, ["m"])
    assert data["records"][0]["n"] == [evil]  # the script writes it with textContent
    from blackbox.report.html import json_for_script

    assert "<img" not in json_for_script(data) and "\\u003cimg" in json_for_script(data)


# ---------------------------------------------------------------------------------- colour bars

def test_colour_bar_is_the_overlays_scale_and_colours():
    """On a black picture with alpha 1 the overlay shows the colour map itself: every pixel's colour must
    be the bar's colour at that pixel's value (non-negative map, jet), and the values at or beyond the
    bar's ends must get its end colours (signed map, diverging)."""
    from blackbox.render import overlay

    rng = np.random.default_rng(0)
    black = np.zeros((256, 256, 3), np.uint8)
    heat = rng.gamma(2.0, 1.0, size=(256, 256)).astype(np.float32)
    bar = overlay_range(heat, black.shape)
    assert not bar["signed"] and bar["low"] < bar["high"]
    assert np.mean(heat >= bar["high"]) == pytest.approx(0.005, abs=0.002)  # the 99.5th percentile
    colours = colorbar_rgb(None, False)[0].astype(int)
    picture = overlay(black, heat, alpha=1.0).astype(int)
    index = np.clip(np.round((heat - bar["low"]) / (bar["high"] - bar["low"]) * 255), 0, 255).astype(int)
    assert np.abs(picture - colours[index]).max() <= 2

    signed = rng.normal(size=(256, 256)).astype(np.float32)
    bar = overlay_range(signed, black.shape)
    assert bar["signed"] and bar["low"] == pytest.approx(-bar["high"])
    colours = colorbar_rgb(None, True)[0].astype(int)
    picture = overlay(black, signed, alpha=1.0).astype(int)
    assert np.abs(picture[signed >= bar["high"]] - colours[-1]).max() <= 1
    assert np.abs(picture[signed <= bar["low"]] - colours[0]).max() <= 1
    assert np.abs(colours[127] - [247, 247, 247]).max() <= 8  # 0: the middle, white


def test_colour_bar_of_an_enlarged_picture_follows_the_overlay(top2):
    """A 64 px picture is enlarged 4x for its overlay and the map resized with it: the bar's range must be
    that of the enlarged map, so every overlay pixel still has the bar's colour at its value; and a report
    record's range is the one its own map gives."""
    import cv2

    from blackbox.render import overlay

    rng = np.random.default_rng(1)
    black = np.zeros((64, 64, 3), np.uint8)
    heat = rng.gamma(2.0, 1.0, size=(64, 64)).astype(np.float32)
    bar = overlay_range(heat, black.shape)
    picture = overlay(black, heat, alpha=1.0).astype(int)
    assert picture.shape[:2] == (256, 256)
    big = cv2.resize(heat, (256, 256), interpolation=cv2.INTER_LINEAR)
    index = np.clip(np.round((big - bar["low"]) / (bar["high"] - bar["low"]) * 255), 0, 255).astype(int)
    assert np.abs(picture - colorbar_rgb(None, False)[0].astype(int)[index]).max() <= 2
    assert bar["high"] < float(heat.max())  # the robust scale, not the map's maximum

    out, summary = top2
    for record in summary.records:
        heatmap = np.load(out / record["files"]["npz"])["heatmap"]
        again = overlay_range(heatmap, record["picture"]["size"])
        bar = dict(record["colorbar"])
        assert bar.pop("display") is None  # occlusion maps are shown as they are
        assert bar == pytest.approx(again)


def test_pixel_maps_are_shown_as_blurred_magnitudes(tmp_path, shapes_model):
    """Integrated gradients' speckle is drawn as |map| blurred (the figures' display), and the colour bar
    spans that shown map, not the raw one; the NPZ keeps the raw attributions."""
    from blackbox.render.display import display_map

    out = tmp_path / "out"
    summary = run_report(shapes_model, IMAGES[:1], _config(out, methods=["integrated_gradients"]), progress=False)
    (record,) = summary.records
    arrays = np.load(out / record["files"]["npz"])
    shown, display = display_map("integrated_gradients", arrays["heatmap"], max(arrays["model_heatmap"].shape))
    assert display and "blurred" in display and (shown >= 0).all() and (arrays["heatmap"] < 0).any()
    bar = dict(record["colorbar"])
    assert bar.pop("display") == display
    assert bar == pytest.approx(overlay_range(shown, record["picture"]["size"]))
    assert not bar["signed"]


# ---------------------------------------------------------------------------------- chart legends

@pytest.mark.parametrize("size,names", [((224, 150), ["del AUC 0.017", "ins AUC 0.925"]),
                                        ((360, 220), ["rank |map|", "rank map", "SSIM"]),
                                        ((160, 160), ["a long legend name one", "another long name", "x"])])
def test_legend_is_outside_the_axes(size, names):
    width, height = size
    place = layout(names, width=width, height=height, xlabel="fraction of pixels")
    ax0, ay0, ax1, ay1 = place["axes"]
    lx0, ly0, lx1, ly1 = place["legend"]
    assert ly0 > ay1 and ly1 <= place["height"]  # wholly below the plotted area (and its tick labels)
    # curves that cover the whole plotted area: the legend's swatches are drawn only below it
    xs = np.linspace(0, 1, 50)
    series = [(n, xs, (np.sin(xs * 20 + k) + 1) / 2) for k, n in enumerate(names)]
    img = line_plot(series, width=width, height=height, ylim=(0, 1), xlim=(0, 1), xlabel="fraction of pixels")
    assert img.shape[0] == place["height"]
    for k, _ in enumerate(names):
        colour = np.array(PALETTE[k])
        hits = np.argwhere(np.all(img == colour, axis=2))
        below = hits[hits[:, 0] >= ly0]
        assert len(below) > 0  # its swatch is in the legend box
        ex, ey = place["entries"][k]
        assert ly0 <= ey - 3 <= ly1 and lx0 <= ex <= lx1


# ------------------------------------------------------------------------------------ progress bars

def test_progress_bars_only_when_asked(tmp_path, shapes_model, capfd):
    run_report(shapes_model, IMAGES, _config(tmp_path / "quiet", target="top2"), progress=False)
    assert capfd.readouterr().err == ""
    run_report(shapes_model, IMAGES, _config(tmp_path / "bars", target="top2"), progress=True)
    err = capfd.readouterr().err
    assert "report: 100%" in err and "4/4" in err  # the items
    assert "report page: 100%" in err  # the page's pictures
    assert "findings" in err
