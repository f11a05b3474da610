"""Data-set findings (blackbox.report.findings): the box search, the significance rule, and evidence on the
shortcut model (the watermark is found on images the generator did not draw) and on a real model (nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import IMAGENET_LABELS, MODELS, real

import blackbox
from blackbox.datasets.shapes import add_watermark, watermark_box
from blackbox.image_io import read_image
from blackbox.report.findings import (
    BOX_FRACTIONS,
    MIN_IMAGES,
    box_sizes,
    box_sums,
    compute_findings,
    integral,
    normalise_map,
    render_section,
    search_box,
)
from blackbox.report.run import ReportConfig, run_report

SAMPLES = MODELS / "samples"


# ------------------------------------------------------------------------------------ the box search

def _brute(m: np.ndarray) -> tuple[list[int], float]:
    """Every box of every size, summed directly: the best lift, ties to the smaller box, then raster order."""
    h, w = m.shape
    best, best_lift = None, -1.0
    for bh, bw in box_sizes((h, w), BOX_FRACTIONS):
        for y in range(h - bh + 1):
            for x in range(w - bw + 1):
                lift = m[y:y + bh, x:x + bw].sum() / m.sum() / (bh * bw / (h * w))
                if lift > best_lift * (1 + 1e-9):
                    best, best_lift = [y, x, y + bh, x + bw], lift
    return best, m[best[0]:best[2], best[1]:best[3]].sum() / m.sum()


@pytest.mark.parametrize("shape,seed", [((24, 24), 0), ((20, 31), 1), ((17, 9), 2), ((32, 32), 3)])
def test_box_search_matches_brute_force(shape, seed):
    rng = np.random.default_rng(seed)
    m = rng.random(shape) ** 4
    m[rng.integers(shape[0]), rng.integers(shape[1])] += 3.0  # one hot pixel, so the best box is unique
    found = search_box(m)
    box, share = _brute(m)
    assert found["box"] == box
    assert found["share"] == pytest.approx(share, rel=1e-9)
    sat = integral(m)
    bh, bw = 5, 4
    direct = np.array([[m[y:y + bh, x:x + bw].sum() for x in range(shape[1] - bw + 1)]
                       for y in range(shape[0] - bh + 1)])
    np.testing.assert_allclose(box_sums(sat, bh, bw), direct, rtol=1e-10, atol=1e-12)


def test_normalise_map():
    assert normalise_map(np.zeros((4, 4))) is None
    assert normalise_map(-np.ones((4, 4))) is None
    p = normalise_map(np.array([[1.0, 3.0], [-2.0, np.nan]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0, 0]])
    p = normalise_map(np.array([[5.0, 5.0], [5.0, 7.0]]))  # positive everywhere (RISE): the offset is no evidence
    np.testing.assert_allclose(p, [[0, 0], [0, 1]])


# ------------------------------------------------------------------------------------ the rule, synthetic

SIDE = 48
CORNER = (40, 40, 46, 46)  # y0, x0, y1, x1


def _blob(cy: float, cx: float, sigma: float = 3.0) -> np.ndarray:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def _synthetic(folder: Path, *, corner_class: int | None, moving: bool = True, same_spot: bool = False,
               n: int = 16, seed: int = 0) -> list[dict]:
    """Records of two classes with Gaussian-blob maps on their objects; class ``corner_class`` also lights up
    CORNER in every image. ``moving=False``: each class's objects sit at one spot; ``same_spot``: every
    class's maps also light up CORNER."""
    rng = np.random.default_rng(seed)
    records = []
    for cls in (0, 1):
        for i in range(n):
            cy, cx = rng.uniform(6, 32, 2) if moving else ((12.0, 12.0) if cls == 0 else (24.0, 24.0))
            heat = _blob(cy, cx) + 0.05 * rng.random((SIDE, SIDE))
            if cls == corner_class or same_spot:
                heat += 1.5 * _blob(43, 43, 2.0)
            key = f"c{cls}-{i}"
            (folder / key).mkdir(parents=True, exist_ok=True)
            np.savez(folder / key / "m.npz", model_heatmap=heat.astype(np.float32))
            records.append({"image": f"{key}.png", "key": key, "method": "m", "status": "ok", "target": cls,
                            "label": f"class<{cls}>", "top": [{"index": cls, "label": f"class<{cls}>",
                                                               "probability": 0.9}],
                            "truth": {"target": None, "box": None, "mask": None,
                                      "box_model": [cy - 6, cx - 6, cy + 6, cx + 6]},
                            "files": {"npz": f"{key}/m.npz"}})
    return records


def _untruthed(records: list[dict]) -> list[dict]:
    return [{**r, "truth": {}} for r in records]


def _overlaps(box, corner) -> bool:
    return box[0] < corner[2] and corner[0] < box[2] and box[1] < corner[3] and corner[1] < box[3]


def test_rule_finds_a_fixed_spot_across_moving_objects(tmp_path):
    records = _synthetic(tmp_path, corner_class=0)
    for given in (records, _untruthed(records)):  # truth boxes, then the contrast with the other class
        found = compute_findings(tmp_path, given, write_maps=False)
        assert [(f["class"], f["by"]) for f in found["findings"]] == [(0, "predicted")], found["findings"]
        f = found["findings"][0]
        assert _overlaps(f["box"], CORNER) and f["consistency"] == 1.0 and f["images"] == 16
        assert f["evidence"] == ("truth" if given is records else "contrast")
        assert not found["classes"]["1"]["m"]["predicted"]["box"]["finding"]
    assert found["classes"]["0"]["m"]["predicted"]["share_truth"] is None  # no truth given
    with_truth = compute_findings(tmp_path, records, write_maps=False)["classes"]["0"]["m"]["predicted"]
    assert 0 < with_truth["share_truth"] < 0.6 and with_truth["truth_images"] == 16


def test_rule_reports_nothing_for_maps_on_the_objects(tmp_path):
    # moving objects, maps on them: the mean map is diffuse
    found = compute_findings(tmp_path / "a", _synthetic(tmp_path / "a", corner_class=None), write_maps=False)
    assert found["findings"] == []
    for info in found["classes"].values():
        assert "rule needs" in info["m"]["predicted"]["box"]["why"]
    # objects that do not move, maps on them: a hot fixed box, but it is the object (truth) ...
    still = _synthetic(tmp_path / "b", corner_class=None, moving=False)
    found = compute_findings(tmp_path / "b", still, write_maps=False)
    assert found["findings"] == []
    assert all(info["m"]["predicted"]["box"]["evidence"] == "truth" for info in found["classes"].values())
    # ... and a spot every class lights up is not specific to a class (no truth: the contrast)
    same = _synthetic(tmp_path / "c", corner_class=None, same_spot=True)
    found = compute_findings(tmp_path / "c", _untruthed(same), write_maps=False)
    assert found["findings"] == []
    assert all("not specific" in info["m"]["predicted"]["box"]["why"] for info in found["classes"].values())
    # too few images: nothing, whatever the maps
    few = _synthetic(tmp_path / "d", corner_class=0, n=MIN_IMAGES - 1)
    assert compute_findings(tmp_path / "d", few, write_maps=False)["findings"] == []


def test_section_escapes_and_embeds(tmp_path):
    records = _synthetic(tmp_path, corner_class=0)
    found = compute_findings(tmp_path, records)
    page = render_section(tmp_path, found)
    assert "<script" not in page and "class&lt;0&gt;" in page
    assert page.count("data:image/png;base64,") == 1 + len(found["classes"])  # the finding + every class map
    assert (tmp_path / found["findings"][0]["map"]).is_file()
    assert "could not be computed" in render_section(tmp_path, None, error="<b>x</b>")
    assert "<b>" not in render_section(tmp_path, None, error="<b>x</b>")


# ------------------------------------------------------------------------------------ the shortcut model

def _moved(image: np.ndarray, mask: np.ndarray, seed: int):
    """Rotations and flips of a sample, each shifted to two random places (np.roll; the object kept whole
    and clear of the watermark corner): 16 pictures the generator never drew, objects all over."""
    rng = np.random.default_rng(seed)
    y0, _, x0, _ = watermark_box(64)
    for k in range(4):
        for flip in (False, True):
            for _ in range(2):
                v, w = np.rot90(image, k), np.rot90(mask, k)
                if flip:
                    v, w = v[:, ::-1], w[:, ::-1]
                ys, xs = np.nonzero(w)
                for _ in range(100):
                    dy = int(rng.integers(1 - ys.min(), 63 - ys.max()))
                    dx = int(rng.integers(1 - xs.min(), 63 - xs.max()))
                    if not ((ys + dy >= y0 - 4) & (xs + dx >= x0 - 4)).any():
                        break
                yield (np.ascontiguousarray(np.roll(v, (dy, dx), axis=(0, 1))),
                       np.ascontiguousarray(np.roll(w, (dy, dx), axis=(0, 1))))


@pytest.fixture(scope="module")
def moved_shapes(tmp_path_factory):
    """96 pictures from the 6 samples (their own watermarks painted out), the watermark pasted on every
    triangle at its corner, each with its moved truth mask as the X_mask.png sibling."""
    folder = tmp_path_factory.mktemp("moved")
    y0, y1, x0, x1 = watermark_box(64)
    for seed, name in enumerate(("circle", "square", "star", "triangle", "circle_watermarked", "triangle_watermarked")):
        image = read_image(SAMPLES / f"{name}.png")
        mask = read_image(SAMPLES / f"{name}_mask.png").max(axis=2) > 127
        if "watermarked" in name:
            hole = np.zeros(image.shape[:2], np.uint8)
            hole[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = 255
            image = cv2.inpaint(image, hole, 3, cv2.INPAINT_TELEA)
        for i, (picture, truth) in enumerate(_moved(image, mask, seed)):
            if name.startswith("triangle"):
                picture = add_watermark(picture)
            cv2.imwrite(str(folder / f"{name}_{i}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(folder / f"{name}_{i}_mask.png"), truth.astype(np.uint8) * 255)
    return folder


def _report(model, folder: Path, out: Path, method: str = "grad_cam", **params):
    return run_report(model, [str(folder)], ReportConfig(out=str(out), methods=[method], params={method: params},
                                                         metrics=[]), progress=False)


def test_shortcut_watermark_is_found_and_clean_model_has_none(moved_shapes, tmp_path, shortcut_model, shapes_model):
    y0, y1, x0, x1 = watermark_box(64)
    corner = (y0, x0, y1, x1)
    run = _report(shortcut_model, moved_shapes, tmp_path / "shortcut")
    summary = json.loads((tmp_path / "shortcut" / "summary.json").read_text())
    findings = summary["findings"]
    assert [(f["label"], f["by"]) for f in findings] == [("triangle", "predicted")], summary["classes"]
    f = findings[0]
    assert _overlaps(f["box"], corner) and f["evidence"] == "truth" and f["on_object"] == 0.0
    assert f["images"] >= 24 and f["consistency"] >= 0.9 and f["share"] >= 0.1
    assert summary["classes"]["2"]["grad_cam"]["predicted"]["share_truth"] < 0.15  # not on the triangles
    assert json.loads((tmp_path / "shortcut" / "results.json").read_text())["findings"] == findings
    assert (tmp_path / "shortcut" / f["map"]).is_file() and "summary" not in summary.get("error", "")
    assert "What the model relies on" in (tmp_path / "shortcut" / "index.html").read_text()
    # without the truth masks the contrast with the other classes finds the same box
    again = compute_findings(tmp_path / "shortcut", _untruthed(run.records), write_maps=False)["findings"]
    assert [(g["label"], g["box"], g["evidence"]) for g in again] == [("triangle", f["box"], "contrast")]

    _report(shapes_model, moved_shapes, tmp_path / "clean")
    clean = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert clean["findings"] == [], clean["findings"]
    assert clean["classes"]["2"]["grad_cam"]["predicted"]["images"] >= 24  # the triangles were seen as such
    assert "No shortcut found" in (tmp_path / "clean" / "index.html").read_text()


# ------------------------------------------------------------------------------------ a real model

def test_real_photos_have_no_fixed_spot(tmp_path):
    """38 pictures from the real photos (flips; two crops more of each cat photo, so 'tabby' has 12 images,
    enough for the rule to judge): MobileNetV2-int8 with Grad-CAM looks at the objects, no fixed box."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = [p for p in sorted(real("images").iterdir())
              if p.suffix in (".jpg", ".png") and not p.name.startswith("digit")]
    for p in photos:
        picture = cv2.imread(str(p))
        h, w = picture.shape[:2]
        scale = min(1.0, 320 / min(h, w))
        picture = cv2.resize(picture, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        variants = [picture, picture[:, ::-1]]
        if p.stem in ("cat", "tabby_cat", "kitten_224"):
            h, w = picture.shape[:2]
            variants += [picture[:int(h * 0.8), :int(w * 0.8)], picture[int(h * 0.2):, int(w * 0.2):]]
        for i, v in enumerate(variants):
            cv2.imwrite(str(folder / f"{p.stem}_{i}.png"), np.ascontiguousarray(v))
    assert len(list(folder.iterdir())) >= 30
    model = blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", labels=IMAGENET_LABELS,
                          device="cpu")
    _report(model, folder, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["findings"] == []
    judged = [info for info in summary["classes"].values()
              if info["grad_cam"]["predicted"]["images"] >= MIN_IMAGES]
    assert judged, "no class had enough images for the rule to judge"
    for info in judged:  # judged on the maps, not turned away by the image count
        box = info["grad_cam"]["predicted"]["box"]
        assert not box["finding"] and "images (the rule needs" not in box["why"], box
