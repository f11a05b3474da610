"""The report on a real third-party model (MobileNetV2 int8, ImageNet preprocessing with a centre crop):
the int8 straight-through note sits under each gradient map, the crop the model saw is recorded and
outlined on the original's thumbnail, and each of the two targets gets its own record."""

from __future__ import annotations

import cv2
import numpy as np

import blackbox
from blackbox.report import ReportConfig, run_report
from blackbox.report.html import DATA_FILE

from conftest import IMAGENET_LABELS, real


def test_int8_notes_and_the_centre_crop(tmp_path):
    model = blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet",
                          labels=str(IMAGENET_LABELS), device="cpu")
    photo = str(real("images", "tabby_cat.jpg"))
    out = tmp_path / "out"
    summary = run_report(model, [photo], ReportConfig(out=str(out), methods=["grad_cam"], target="top2",
                                                      metrics=[], top=3), progress=False)
    first, second = summary.records
    assert (first["target"], second["target"]) == (281, 282)  # tabby, tiger cat
    assert first["probability"] > second["probability"] > 0.1 and first["logit"] > second["logit"]
    for record in summary.records:
        assert any(n.startswith("int8 model") for n in record["notes"]), record["notes"]
    h, w = first["picture"]["size"]
    y0, x0, y1, x1 = first["picture"]["crop"]
    side = min(h, w) * 224 / 256  # the shorter side resized to 256, then the centre 224 x 224
    assert np.allclose([y0, x0, y1, x1], [(h - side) / 2, (w - side) / 2, (h + side) / 2, (w + side) / 2], atol=1)
    assert 0 < x0 and x1 < w  # the model did not see the picture's edges
    script = (out / DATA_FILE).read_text()
    assert "int8 model" in script
    thumb = next(out.glob("thumbs/*/original-o-*.jpg"))
    picture = cv2.imread(str(thumb))
    scale = picture.shape[1] / w
    edge = picture[int(y0 * scale) + 3:int(y1 * scale) - 3, int(round(x0 * scale))]  # the crop's left edge
    yellow = np.all(np.abs(edge.astype(int) - [0, 215, 255]) < 60, axis=1)  # drawn in yellow (BGR)
    assert yellow.mean() > 0.8
