"""blackbox serve's HTTP API through Starlette's test client, on the shapes model: bad uploads and
traversal attempts are clear 4xx JSON answers and the server keeps answering; results match the library's
own; the worker queues, caches, reports progress and cancels."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from conftest import MODELS
from starlette.testclient import TestClient
from tqdm import tqdm

import blackbox
from blackbox.cli import main
from blackbox.render import overlay
from blackbox.serve import create_app
from blackbox.serve.jobs import JobQueue

SAMPLES = MODELS / "samples"
SQUARE = (SAMPLES / "square.png").read_bytes()


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR (correct CRC) claiming width x height, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image[:, :, ::-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An --images folder: three samples, one in a subfolder, a text file, and a link pointing outside."""
    root = tmp_path_factory.mktemp("serve-images")
    shutil.copy(SAMPLES / "square.png", root / "square.png")
    shutil.copy(SAMPLES / "circle.png", root / "circle.png")
    (root / "more").mkdir()
    shutil.copy(SAMPLES / "star.png", root / "more" / "star.png")
    (root / "notes.txt").write_text("not a picture")
    outside = tmp_path_factory.mktemp("serve-outside")
    shutil.copy(SAMPLES / "triangle.png", outside / "secret.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(outside, root / "escape_dir")
    return root


@pytest.fixture(scope="module")
def model():
    return blackbox.load(MODELS / "shapes.onnx", device="cpu")


@pytest.fixture(scope="module")
def client(model, folder):
    app = create_app(model, str(folder), max_upload_bytes=200_000, am_steps=4)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.explorer.close()


def _upload(client, data: bytes, name: str = "square.png", kind: str = "image/png"):
    return client.post("/api/images", files={"file": (name, data, kind)})


def _wait(client, job: dict, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job did not finish: {job}"
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


def _alive(client) -> None:
    response = client.get("/api/info")
    assert response.status_code == 200 and response.json()["classes"] == 4


# ------------------------------------------------------------------ uploads

def test_upload_gives_the_sha256_id_and_top_classes_agree_with_predict(client, model):
    response = _upload(client, SQUARE)
    assert response.status_code == 201
    entry = response.json()
    assert entry["id"] == hashlib.sha256(SQUARE).hexdigest() and (entry["height"], entry["width"]) == (64, 64)
    top = client.get(f"/api/images/{entry['id']}/top?k=3").json()["classes"]
    expected = model.predict(str(SAMPLES / "square.png"))[0]
    assert [c["index"] for c in top] == list(np.argsort(-expected)[:3])
    assert top[0]["label"] == "square"
    assert [c["probability"] for c in top] == pytest.approx(np.sort(expected)[::-1][:3], rel=1e-5)
    picture = client.get(f"/api/images/{entry['id']}/picture")
    assert picture.headers["content-type"] == "image/png"
    assert np.array_equal(_decode(picture.content), blackbox.image_io.read_image(SAMPLES / "square.png"))


BAD_UPLOADS = {
    "text file": (b"hello, I am text\n", "notes.txt", "text/plain", 415, "not an image"),
    "truncated png": (SQUARE[: len(SQUARE) // 2], "cut.png", "image/png", 415, "truncated"),
    "zero bytes": (b"", "empty.png", "image/png", 400, "empty"),
    "oversize bytes": (b"\x89PNG\r\n\x1a\n" + bytes(300_000), "big.png", "image/png", 413, "over the limit"),
    "huge declared pixels": (_png_claiming(100_000, 100_000), "bomb.png", "image/png", 413, "pixels"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_uploads_are_clear_json_errors_and_the_server_keeps_answering(client, case):
    data, name, kind, status, words = BAD_UPLOADS[case]
    response = _upload(client, data, name, kind)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert "Traceback" not in response.text
    _alive(client)


def test_malformed_requests_are_4xx(client):
    assert client.post("/api/images", content=SQUARE, headers={"content-type": "image/png"}).status_code == 415
    no_field = client.post("/api/images", files={"other": ("a.png", SQUARE, "image/png")})
    assert no_field.status_code == 400 and "'file'" in no_field.json()["error"]
    broken = client.post("/api/images", content=b"--x\r\nnonsense",
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= broken.status_code < 500
    not_json = client.post("/api/explanations", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    _alive(client)


# ------------------------------------------------------------------ files and traversal

def test_folder_lists_pictures_inside_only_and_serves_them_as_they_are(client, folder):
    files = client.get("/api/folder").json()["files"]
    assert files == ["circle.png", "more/star.png", "square.png"]  # no text file, no links leading out
    served = client.get("/api/folder/file/more/star.png")
    assert served.status_code == 200 and served.content == (folder / "more" / "star.png").read_bytes()
    opened = client.post("/api/folder/open", json={"name": "more/star.png"}).json()
    assert opened["id"] == hashlib.sha256(served.content).hexdigest() and opened["name"] == "more/star.png"


TRAVERSALS = ["../serve-outside0/secret.png", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
              "%252e%252e%252fetc%252fpasswd", "/etc/passwd", "%2Fetc%2Fpasswd", "escape.png",
              "escape_dir/secret.png", "more/..%2F..%2Fsquare.png", "..\\..\\etc\\passwd"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_on_the_folder_are_refused(client, path):
    response = client.get(f"/api/folder/file/{path}")
    assert response.status_code == 404, response.text
    assert b"root:" not in response.content and response.json()["error"]
    opened = client.post("/api/folder/open", json={"name": path.replace("%2F", "/").replace("%2e", ".")})
    assert opened.status_code == 404


@pytest.mark.parametrize("path", ["..%2Fapp.py", "%2e%2e/app.py", "%2e%2e%2f%2e%2e%2fcli.py", "/etc/passwd",
                                  "..%2F..%2F..%2Fpyproject.toml"])
def test_traversal_attempts_on_static_files_are_refused(client, path):
    response = client.get(f"/static/{path}")
    assert response.status_code == 404 and b"import" not in response.content


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "http://" not in script.text and "https://" not in script.text  # nothing fetched from elsewhere


# ------------------------------------------------------------------ unknown names

def test_unknown_image_method_target_layer_and_job_are_4xx_json(client):
    image = _upload(client, SQUARE).json()["id"]
    cases = [
        (client.post("/api/explanations", json={"image": image, "method": "nope"}), 400, "unknown method"),
        (client.post("/api/explanations", json={"image": image, "method": "grad_cam", "target": 9}), 400,
         "out of range"),
        (client.post("/api/explanations", json={"image": image, "method": "grad_cam", "target": "hexagon"}), 400,
         "hexagon"),
        (client.post("/api/explanations", json={"image": image, "method": "occlusion",
                                                "params": {"windw": 8}}), 400, "windw"),
        (client.post("/api/explanations", json={"image": "feed", "method": "grad_cam"}), 404, "no image"),
        (client.get(f"/api/images/{image}/activations", params={"layer": "no/such"}), 400, "no layer"),
        (client.get(f"/api/images/{image}/activations", params={"layer": "logits"}), 400, "not a spatial"),
        (client.post("/api/units/maximize", json={"layer": "no/such", "channel": 0}), 400, "no layer"),
        (client.post("/api/units/top", json={"layer": "/relu_1/Relu_output_0", "channel": "x"}), 400,
         "whole number"),
        (client.get("/api/jobs/999999"), 404, "no job"),
        (client.post("/api/jobs/999999/cancel"), 404, "no job"),
        (client.get("/api/images/feed/top"), 404, "no image"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"], response.text
    _alive(client)


def test_a_unit_out_of_range_fails_its_job_with_the_reason(client):
    job = client.post("/api/units/maximize", json={"layer": "/relu_1/Relu_output_0", "channel": 64, "steps": 2})
    done = _wait(client, job.json())
    assert done["status"] == "failed" and "0..63" in done["error"]
    assert client.get(f"/api/jobs/{done['id']}/png").status_code == 409


# ------------------------------------------------------------------ results, cache, concurrency

def test_explanation_png_is_the_librarys_overlay_and_a_repeat_is_a_cache_hit(client, model):
    image = _upload(client, SQUARE).json()["id"]
    request = {"image": image, "method": "grad_cam", "target": "square"}
    first = _wait(client, client.post("/api/explanations", json=request).json())
    assert first["status"] == "done" and not first["cached"]
    assert first["result"]["label"] == "square" and first["result"]["method"] == "grad_cam"
    png = client.get(first["png"]).content
    direct = blackbox.explain(model, str(SAMPLES / "square.png"), "grad_cam", target="square")
    assert np.array_equal(_decode(png), overlay(direct.image, direct.heatmap, seen=direct.seen))
    again = client.post("/api/explanations", json=request).json()
    assert again["status"] == "done" and again["cached"] and again["id"] != first["id"]
    assert client.get(again["png"]).content == png
    other = _wait(client, client.post("/api/explanations", json=request | {"target": "circle"}).json())
    assert not other["cached"] and client.get(other["png"]).content != png


def test_concurrent_requests_get_consistent_answers(client):
    images = [_upload(client, (SAMPLES / name).read_bytes(), name).json()["id"]
              for name in ("square.png", "circle.png", "star.png")]
    requests = [{"image": images[i % 3], "method": ("saliency", "occlusion")[i % 2], "target": i % 4,
                 "params": {"window": 16, "stride": 16} if i % 2 else {}} for i in range(6)] * 2

    def explain(request):
        job = _wait(client, client.post("/api/explanations", json=request).json())
        return job["status"], client.get(job["png"]).content if job["status"] == "done" else job["error"]

    def top(image):
        return client.get(f"/api/images/{image}/top").json()["classes"]

    with ThreadPoolExecutor(8) as pool:
        explained = list(pool.map(explain, requests))
        tops = list(pool.map(top, images * 4))
        bad = list(pool.map(lambda _: _upload(client, b"junk", "junk.png").status_code, range(4)))
    assert all(status == "done" for status, _ in explained)
    assert [png for _, png in explained[:6]] == [png for _, png in explained[6:]]  # same request, same bytes
    assert len({png for _, png in explained[:6]}) == 6  # and different requests, different maps
    assert tops[:3] == tops[3:6] == tops[6:9] == tops[9:]
    assert bad == [415] * 4
    _alive(client)


def test_activation_grid_geometry_names_every_unit(client, model):
    image = _upload(client, SQUARE).json()["id"]
    layer = "/stem/stem.2/stem.2.2/Relu_output_0"
    grid = client.get(f"/api/images/{image}/activations", params={"layer": layer}).json()
    picture = _decode(client.get(grid["png"]).content)
    assert grid["units"] == 64 and (grid["rows"], grid["columns"]) == (8, 8)
    assert picture.shape[:2] == (grid["height"], grid["width"])
    assert grid["gap"] + grid["rows"] * (grid["cell"][0] + grid["gap"]) == grid["height"]
    values = model.activations(blackbox.inputs.prepare(model, str(SAMPLES / "square.png")).x[None], [layer])[layer][0]
    assert grid["strongest"][0] == int(np.argmax(values.reshape(64, -1).max(axis=1)))


def test_unit_views_top_images_from_the_folder_and_maximization(client, model):
    layer = "/relu_1/Relu_output_0"
    top = _wait(client, client.post("/api/units/top", json={"layer": layer, "channel": 5, "k": 2}).json())
    assert top["status"] == "done", top
    sources = [item["source"] for item in top["result"]["top"]]
    assert len(sources) == 2 and set(sources) <= {"circle.png", "more/star.png", "square.png"}
    scores = {name: float(model.activations(blackbox.inputs.prepare(model, str(SAMPLES / name.split("/")[-1])).x[None],
                                            [layer])[layer][0, 5].max()) for name in ("circle.png", "more/star.png", "square.png")}
    assert sources == sorted(scores, key=scores.get, reverse=True)[:2]
    am = _wait(client, client.post("/api/units/maximize", json={"layer": layer, "channel": 5, "steps": 3}).json())
    assert am["status"] == "done" and am["result"]["steps"] == 3
    assert _decode(client.get(am["png"]).content).shape == (64, 64, 3)
    default = client.post("/api/units/maximize", json={"layer": layer, "channel": 6}).json()
    assert _wait(client, default)["result"]["steps"] == 4  # the app's am_steps


def test_cancel_a_running_explanation_and_the_next_one_still_runs(client):
    image = _upload(client, SQUARE).json()["id"]
    slow = client.post("/api/explanations", json={"image": image, "method": "rise",
                                                  "params": {"n_masks": 40_000}}).json()
    queued = client.post("/api/explanations", json={"image": image, "method": "saliency", "seed": 7}).json()
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{slow['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert client.post(f"/api/jobs/{slow['id']}/cancel").json()["id"] == slow["id"]
    cancelled = _wait(client, slow, timeout=30)
    assert cancelled["status"] == "cancelled"
    assert _wait(client, queued)["status"] == "done"


# ------------------------------------------------------------------ the worker itself

def test_queue_reports_bar_progress_cancels_queued_and_running_python_work():
    jobs = JobQueue()
    try:
        halfway, release = threading.Event(), threading.Event()

        def with_bar(job):
            with tqdm(total=10, file=io.StringIO(), mininterval=0) as bar:
                bar.update(5)
                halfway.set()
                release.wait(10)
            return "finished"

        first = jobs.submit("bar", with_bar)
        assert halfway.wait(10)
        assert jobs.get(first.id).progress == pytest.approx(0.5)
        waiting = jobs.submit("later", lambda job: "never")
        assert jobs.cancel(waiting.id).status == "cancelled"
        release.set()
        assert jobs.wait(first, 10) == "finished" and jobs.get(first.id).progress == 1.0

        spinning = threading.Event()

        def forever(job):
            spinning.set()
            while True:
                time.sleep(0.001)

        loop = jobs.submit("loop", forever)
        assert spinning.wait(10)
        jobs.cancel(loop.id)
        deadline = time.monotonic() + 10
        while jobs.get(loop.id).status != "cancelled":
            assert time.monotonic() < deadline, "the running job was not stopped"
            time.sleep(0.01)
        assert jobs.run("after", lambda job: 42, timeout=10) == 42  # the worker survived
        failing = jobs.submit("bug", lambda job: 1 / 0)
        with pytest.raises(blackbox.BlackboxError, match="ZeroDivisionError"):
            jobs.wait(failing, 10)
        assert jobs.run("after the bug", lambda job: "ok", timeout=10) == "ok"
    finally:
        jobs.close()


def test_queue_caches_by_key_and_shares_a_waiting_job():
    jobs = JobQueue(cache_size=2)
    try:
        calls = []
        gate = threading.Event()
        block = jobs.submit("gate", lambda job: gate.wait(10))
        a = jobs.submit("a", lambda job: calls.append("a") or "A", key="a")
        assert jobs.submit("a", lambda job: calls.append("a2"), key="a") is a  # same key while waiting
        gate.set()
        assert jobs.wait(block, 10) and jobs.wait(a, 10) == "A"
        hit = jobs.submit("a", lambda job: calls.append("a3"), key="a")
        assert hit.cached and hit.result == "A" and calls == ["a"]
        for key in ("b", "c"):
            jobs.run(key, lambda job, key=key: key, key=key, timeout=10)
        assert not jobs.submit("a", lambda job: "A again", key="a").cached  # evicted: the cache holds two
    finally:
        jobs.close()


# ------------------------------------------------------------------ the command line

def test_cli_port_in_use_is_one_line_and_exit_2(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code = main(["serve", str(MODELS / "shapes.onnx"), "--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("blackbox: error: port ") and "in use" in err[0]


def test_cli_bad_folder_and_missing_starlette_are_one_line(capsys, monkeypatch, tmp_path):
    code = main(["serve", str(MODELS / "shapes.onnx"), "--images", str(tmp_path / "absent")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a folder" in err[0]
    monkeypatch.setitem(__import__("sys").modules, "starlette", None)
    code = main(["serve", str(MODELS / "shapes.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install "blackbox-explain[serve]"' in err[0]
    with pytest.raises(SystemExit) as stop:
        main(["serve", str(MODELS / "shapes.onnx"), "--port", "70000"])
    assert stop.value.code == 2 and "not a port number" in capsys.readouterr().err
