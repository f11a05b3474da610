"""The report page in a real browser: Playwright driving Debian's Chromium (no browser download).

The page loads its pictures and runs only its own script (labels and notes that try to run script do
not); the class selector switches the maps; a click zooms a map into a lightbox with the full-size
overlay; two methods are compared side by side; notes are shown under their map. Screenshots are kept
under the temporary folder for a person to look at (``blackbox-report-*.png``).
"""

from __future__ import annotations

import json
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
SHOTS = Path(tempfile.gettempdir())

PWN_SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
PWN_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"


@pytest.fixture(autouse=True)
def _chromium_present():
    """A real browser is part of the test kit (.ci/run installs Debian's chromium): fail, never skip."""
    assert CHROMIUM is not None, "no chromium binary on PATH (apt-get install -y chromium)"


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    """Headless Chromium on the command line (``--dump-dom``, ``--screenshot``): for the scale tests."""
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two shapes x occlusion and RISE x the two most likely classes, with hostile labels; then one
    record's notes replaced by hostile text and the page made again with --resume (nothing recomputed)."""
    folder = tmp_path_factory.mktemp("browser")
    labels = folder / "labels.txt"
    labels.write_text(f"circle\n{PWN_SCRIPT}\n{PWN_IMG}\nstar\n")
    out = folder / "out"
    samples = MODELS / "samples"
    args = ["report", str(MODELS / "shapes.onnx"), str(samples / "square.png"), str(samples / "star.png"),
            "--methods", "occlusion,rise", "--param", "rise.n_masks=200", "--metrics", "deletion,insertion,sanity",
            "--sanity-layers", "1", "--step", "128",
            "--target", "top2", "--labels", str(labels), "--out", str(out), "--quiet"]
    assert main(args) == 0
    record_file = next(out.glob("items/square-*/rise__top1.json"))
    record = json.loads(record_file.read_text())
    record["notes"] = [f"a hostile note {PWN_IMG}", "a second note"]
    record_file.write_text(json.dumps(record))
    assert main([*args, "--resume"]) == 0
    return out


@pytest.fixture
def page(browser, report):
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((report / "index.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    yield page
    page.close()
    assert not errors, errors


def _loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "im => im.complete && im.naturalWidth > 0")


def _shot(page, name: str, part=None) -> np.ndarray:
    """A screenshot of the viewport (or of the element ``part``), kept for a person to look at."""
    path = SHOTS / f"blackbox-report-{name}.png"
    (part or page).screenshot(path=str(path))
    picture = cv2.imread(str(path))
    assert picture is not None and float(picture.std()) > 20  # not a blank page
    return picture


def test_page_loads_images_and_runs_only_its_own_script(page):
    page.set_viewport_size({"width": 1500, "height": 12000})  # every lazy picture in view
    page.wait_for_function("() => document.body.getAttribute('data-images-loaded') === "
                           "document.body.getAttribute('data-images-total')", timeout=30000)
    total = int(page.get_attribute("body", "data-images-total"))
    # 2 images: original + 2 methods x (overlay + colour bar + curves), and the sanity plots below
    assert total >= 2 * 7 + 4 and page.get_attribute("body", "data-images-failed") == "0"
    assert page.get_attribute("body", "data-pwned") is None  # no label and no note ran as script
    html = page.content()
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','script')&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html


def test_class_selector_switches_the_maps(page):
    row = page.locator("#grid tbody tr").first
    thumb = row.locator("td").nth(2).locator("img.thumb")
    before = thumb.get_attribute("src")
    assert "occlusion__top1" in before
    options = row.locator("select.target option").all_text_contents()
    assert len(options) == 2 and options[0].startswith(f"#1 {PWN_SCRIPT} (1)")  # square.png is class 1, as text
    _shot(page, "grid", page.locator("#grid"))
    row.locator("select.target").select_option("1")
    row = page.locator("#grid tbody tr").first
    thumb = row.locator("td").nth(2).locator("img.thumb")
    after = thumb.get_attribute("src")
    assert "occlusion__top2" in after and after != before
    page.wait_for_function("im => im.complete && im.naturalWidth > 0", arg=thumb.element_handle())
    bars = row.locator("[data-kind=colorbar]")
    assert bars.count() == 2  # one colour bar per method, in real units
    low, high = float(bars.first.get_attribute("data-low")), float(bars.first.get_attribute("data-high"))
    assert low < 0 < high  # occlusion's map is signed: 0 in the middle
    # the page-level selector: every image shows its second target
    page.select_option("#f-target", "1")
    srcs = page.eval_on_selector_all("#grid tbody tr td:nth-child(3) img.thumb", "ims => ims.map(i => i.src)")
    assert len(srcs) == 2 and all("occlusion__top2" in s for s in srcs)
    _shot(page, "grid-second-target", page.locator("#grid"))


def test_click_to_zoom(page):
    page.locator("#grid tbody tr").first.locator("button.zoom").first.click()
    assert page.locator("#lightbox").is_visible()
    page.wait_for_function("() => { const im = document.getElementById('lightbox-img');"
                           " return im && im.complete && im.naturalWidth > 0; }")
    src = page.get_attribute("#lightbox-img", "src")
    assert src.startswith("items/") and src.endswith("/occlusion__top1.png")  # the full-size overlay
    natural = page.eval_on_selector("#lightbox-img", "im => im.naturalWidth")
    assert natural >= 256 and page.locator("#lightbox-img").is_visible()
    _shot(page, "zoom")
    page.keyboard.press("Escape")
    assert not page.locator("#lightbox").is_visible()


def test_compare_two_methods_side_by_side(page):
    page.locator("#grid tbody tr").first.locator("button.cmp-open").click()
    assert page.locator("#compare").is_visible()
    figures = page.locator("#compare figure")
    assert [figures.nth(k).get_attribute("data-method") for k in range(2)] == ["occlusion", "rise"]
    for k in range(2):
        image = figures.nth(k).locator("img.big")
        page.wait_for_function("im => im.complete && im.naturalWidth > 0", arg=image.element_handle())
        assert image.bounding_box()["width"] >= 400  # large
    left, right = (figures.nth(k).locator("img.big").get_attribute("src") for k in range(2))
    assert left.endswith("/occlusion__top1.png") and right.endswith("/rise__top1.png")
    assert left.rsplit("/", 2)[1] == right.rsplit("/", 2)[1]  # the same image
    picture = _shot(page, "compare")
    assert np.mean(cv2.cvtColor(picture, cv2.COLOR_BGR2HSV)[..., 1] > 150) > 0.01  # colourful maps on screen
    page.select_option("#cmp-t", "1")  # the image's second class, both sides
    left = figures.nth(0).locator("img.big").get_attribute("src")
    right = figures.nth(1).locator("img.big").get_attribute("src")
    assert left.endswith("/occlusion__top2.png") and right.endswith("/rise__top2.png")
    page.select_option("#cmp-a", "1")
    assert figures.nth(0).get_attribute("data-method") == "rise"


def test_notes_are_shown_under_their_map_as_text(page):
    row = page.locator("#grid tbody tr").first
    notes = row.locator("td").nth(3).locator("li.note")  # square.png, rise, first target
    assert notes.count() == 2
    assert notes.first.text_content() == f"\u26a0 a hostile note {PWN_IMG}"
    assert row.locator("td").nth(2).locator("li.note").count() == 0  # occlusion's map has none
    assert "1 map(s) with warnings" in page.text_content("#warned")
    assert page.get_attribute("body", "data-pwned") is None
    _shot(page, "notes", row)
