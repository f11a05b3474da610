"""The report page in a real browser (headless Chromium): images load, the page's own script runs, and a
label that tries to run script does not. Skipped only when no Chromium binary exists
(CI: ``apt-get install -y chromium``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox.cli import main

from conftest import MODELS

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


@pytest.fixture(autouse=True)
def _chromium_present():
    """A real browser is part of the test kit (.ci/run installs Debian's chromium): fail, never skip."""
    assert CHROMIUM is not None, "no chromium binary on PATH (apt-get install -y chromium)"

PWN_SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
PWN_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    labels = folder / "labels.txt"
    labels.write_text(f"circle\n{PWN_SCRIPT}\n{PWN_IMG}\nstar\n")
    out = folder / "out"
    samples = MODELS / "samples"
    code = main(["report", str(MODELS / "shapes.onnx"), str(samples / "square.png"), str(samples / "triangle.png"),
                 str(samples / "star.png"), "--methods", "occlusion,rise", "--param", "rise.n_masks=300",
                 "--metrics", "deletion,insertion,pointing,sanity", "--sanity-layers", "2", "--step", "64",
                 "--labels", str(labels), "--out", str(out)])
    assert code == 0
    return out / "index.html"


def test_page_loads_images_and_runs_only_its_own_script(page):
    result = _chromium("--dump-dom", page.as_uri())
    dom = result.stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, result.stderr[-2000:]
    tag = body.group(0)
    assert 'data-ready="1"' in tag  # the page's own script ran (allowed by its CSP hash)
    loaded = int(re.search(r'data-images-loaded="(\d+)"', tag).group(1))
    total = int(re.search(r'data-images-total="(\d+)"', tag).group(1))
    # 3 images x 2 methods x (overlay + curves) + 6 sanity plots
    assert total >= 18 and loaded == total
    assert "data-pwned" not in tag  # neither the <script> label nor the onerror label ran
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','script')&lt;/script&gt;" in dom
    assert "&lt;img src=x onerror=" in dom


def test_screenshot_shows_the_report(page, tmp_path):
    shot = tmp_path / "report.png"
    result = _chromium("--window-size=1400,1800", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (1800, 1400)
    assert float(picture.std()) > 20  # not a blank page
    # the overlays are colourful: some strongly saturated pixels must be on screen
    hsv = cv2.cvtColor(picture, cv2.COLOR_BGR2HSV)
    assert np.mean(hsv[..., 1] > 150) > 0.01
    keep = Path(tempfile.gettempdir()) / "blackbox-report-screenshot.png"
    shutil.copyfile(shot, keep)  # for a person to look at
