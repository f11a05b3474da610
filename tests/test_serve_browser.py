"""The explorer in a real browser: Playwright drives Debian's Chromium (no browser download) against a real
uvicorn server on 127.0.0.1 serving the real MobileNetV2-int8 ImageNet model. Upload a photo, click a
class, wait for the heatmap and check it is drawn (not blank), switch and compare methods, open a layer's
activation grid and a unit. Screenshots of every screen go to the test's temporary folder."""

from __future__ import annotations

import base64
import shutil

import cv2
import numpy as np
import pytest
from conftest import real
from playwright.sync_api import sync_playwright
from serve_helpers import mobilenet, running_server

from blackbox.serve import create_app

CHROMIUM = shutil.which("chromium")
LAYER = "627_quantized"  # MobileNetV2's last spatial map (1280 x 7 x 7), Grad-CAM's layer
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert CHROMIUM is not None, "no chromium binary on PATH (apt-get install -y chromium)"
    folder = tmp_path_factory.mktemp("serve-real-images")
    for name in ("kitten_224.png", "coyote.jpg", "flamingo.jpg"):
        shutil.copy(real("images", name), folder / name)
    app = create_app(mobilenet(), str(folder), am_steps=3)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server)
        page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
        yield page
        assert errors == []  # the page's script never threw
        browser.close()


def _shot(locator) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(locator.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    return picture


def _colourful(picture: np.ndarray) -> float:
    """Share of pixels with strong colour (HSV saturation over 0.5): a heatmap has many, a photo of a grey
    kitten on white has few, a blank element none."""
    saturation = cv2.cvtColor(picture, cv2.COLOR_BGR2HSV)[:, :, 1]
    return float((saturation > 128).mean())


def _heatmap(page, panel: str):
    image = page.locator(f"#{panel} img[data-kind='heatmap']")
    image.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.evaluate(f"() => document.querySelector(\"#{panel} img[data-kind='heatmap']\").naturalWidth") > 0
    return image


def test_upload_click_a_class_and_see_the_heatmap(page, tmp_path):
    page.screenshot(path=str(tmp_path / "1_empty.png"), full_page=True)
    page.set_input_files("input[type=file]", str(real("images", "kitten_224.png")))
    tabby = page.locator(".class", has_text="tabby")
    tabby.wait_for(timeout=TIMEOUT_MS)
    assert page.locator(".class").count() == 5
    page.screenshot(path=str(tmp_path / "2_top5.png"), full_page=True)
    assert page.locator("#method").input_value() == "grad_cam"
    tabby.click()
    first = _heatmap(page, "panel-a")
    page.screenshot(path=str(tmp_path / "3_heatmap.png"), full_page=True)
    shown = _shot(first)
    assert shown.std() > 20 and _colourful(shown) > 0.3  # a drawn map, not a blank or the bare photo
    photo = _shot(page.locator("#picture"))
    assert _colourful(photo) < 0.1
    assert "tabby" in page.locator("#panel-a .facts").inner_text()

    # switch the method: a new job, a new picture
    first_job = first.get_attribute("data-job")
    page.select_option("#method", "saliency")
    page.wait_for_function("() => document.querySelector(\"#panel-a img[data-kind='heatmap']\").dataset.method === "
                           "'saliency' && document.querySelector('#panel-a').dataset.state === 'done'",
                           timeout=TIMEOUT_MS)
    second = _heatmap(page, "panel-a")
    assert second.get_attribute("data-job") != first_job
    assert not np.array_equal(_shot(second), shown) and _shot(second).std() > 10

    # compare two methods side by side
    page.select_option("#method", "grad_cam")
    page.select_option("#compare", "saliency")
    page.wait_for_function("() => document.querySelector('#panel-a').dataset.state === 'done' && "
                           "document.querySelector('#panel-b').dataset.state === 'done'", timeout=TIMEOUT_MS)
    left, right = _heatmap(page, "panel-a"), _heatmap(page, "panel-b")
    assert left.get_attribute("data-method") == "grad_cam" and right.get_attribute("data-method") == "saliency"
    box_left, box_right = left.bounding_box(), right.bounding_box()
    assert box_right["x"] > box_left["x"] + box_left["width"] * 0.9  # beside it, not below
    assert "cached" in page.locator("#panel-a .facts").inner_text()  # grad_cam again: from the cache
    page.screenshot(path=str(tmp_path / "4_compare.png"), full_page=True)


def test_layer_grid_and_a_unit(page, tmp_path):
    page.select_option("#layer", LAYER)
    grid = page.locator("#grid")
    grid.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert _shot(grid).std() > 20
    assert "1280 units" in page.locator("#layer-text").inner_text()
    page.screenshot(path=str(tmp_path / "5_grid.png"), full_page=True)
    geometry = page.evaluate("() => state.grid")
    box = grid.bounding_box()
    scale = box["width"] / geometry["width"]
    step = (geometry["cell"][1] + geometry["gap"]) * scale
    column, row = 3, 2  # click the middle of unit row*columns+column
    grid.click(position={"x": (geometry["gap"] * scale + column * step + step / 2),
                         "y": (geometry["gap"] * scale + row * step + step / 2)})
    unit = row * geometry["columns"] + column
    assert page.locator("#unit").get_attribute("data-unit") == str(unit)
    assert f"unit {unit}" in page.locator("#unit-title").inner_text()
    for kind in ("top-images", "maximization"):
        page.locator(f"img[data-kind='{kind}']").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert _shot(page.locator("img[data-kind='maximization']")).std() > 10
    assert "3 steps" in page.locator("#unit-am .facts").inner_text()
    sources = page.locator("#unit-top .facts").inner_text()
    assert any(name in sources for name in ("kitten_224.png", "coyote.jpg", "flamingo.jpg"))
    page.screenshot(path=str(tmp_path / "6_unit.png"), full_page=True)


def test_drop_a_picture_and_pick_one_from_the_folder(page):
    data = base64.b64encode(real("images", "flamingo.jpg").read_bytes()).decode()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'flamingo.jpg', {type: 'image/jpeg'}));
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
    }""", data)
    page.locator(".class", has_text="flamingo").wait_for(timeout=TIMEOUT_MS)
    assert "flamingo.jpg" in page.locator("#picture-name").inner_text()
    page.select_option("#folder", "coyote.jpg")
    page.locator(".class", has_text="coyote").wait_for(timeout=TIMEOUT_MS)
    assert "coyote.jpg" in page.locator("#picture-name").inner_text()


def test_progress_and_cancel_in_the_page(page):
    page.select_option("#compare", "")
    page.select_option("#method", "rise")
    page.locator(".class").first.click()
    job = page.locator("#panel-a .job")
    job.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#panel-a progress').value > 0", timeout=TIMEOUT_MS)
    page.locator("#panel-a .cancel").click()
    page.wait_for_function("() => document.querySelector('#panel-a .facts').textContent === 'Cancelled.'",
                           timeout=TIMEOUT_MS)
    assert not job.is_visible()
