"""``blackbox report --engine ray``: the same records as the local engine, on a local Ray instance started
here (two workers), on a ``ray start --head`` process, with a worker killed mid-run, and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import blackbox
from blackbox.cli import main
from blackbox.report import ReportConfig, run_report

from conftest import MODELS

ray = pytest.importorskip("ray")
from blackbox.report.engines import ray as ray_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = MODELS / "shapes.onnx"
METHODS = ["occlusion", "grad_cam"]
PARAMS = {"occlusion": {"window": 16, "stride": 8}}
# slow items (a dense occlusion), so that a worker can be killed while it has work in flight
SLOW = {"occlusion": {"window": 8, "stride": 1}}
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Eight images: the six samples and two flipped copies."""
    folder = tmp_path_factory.mktemp("images")
    paths = sorted(str(p) for p in (MODELS / "samples").glob("*.png") if not p.stem.endswith("_mask"))
    for name in ("circle", "star"):
        picture = cv2.imread(str(MODELS / "samples" / f"{name}.png"))
        cv2.imwrite(str(folder / f"{name}_flipped.png"), picture[:, ::-1])
        paths.append(str(folder / f"{name}_flipped.png"))
    return paths


@pytest.fixture(scope="module")
def model():
    return blackbox.load(MODEL)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance of two CPUs (127.0.0.1) for the module; the engine uses this connection."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    ray_engine._bind_to_loopback()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def _config(out: Path, params=PARAMS, methods=METHODS, **more) -> ReportConfig:
    return ReportConfig(out=str(out), methods=list(methods), params=params, **more)


def _records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def _same(a: Path, b: Path) -> None:
    """Record for record: every number and file equal (times and the NPZ's checksum, which covers its
    timing summary, aside); the maps themselves bit for bit."""
    ra, rb = _records(a), _records(b)
    assert len(ra) == len(rb) and ra
    for x, y in zip(ra, rb):
        assert x["status"] == "ok", x
        assert {k: v for k, v in x.items() if k not in ("seconds", "sha256")} == \
               {k: v for k, v in y.items() if k not in ("seconds", "sha256")}
        assert x["sha256"]["overlay"] == y["sha256"]["overlay"]
        with np.load(a / x["files"]["npz"]) as p, np.load(b / y["files"]["npz"]) as q:
            for key in ("heatmap", "model_heatmap", "attributions"):
                if key in p.files:
                    assert np.array_equal(p[key], q[key]), (x["key"], key)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, model, images) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    summary = run_report(model, images, _config(out), progress=False)
    assert summary.failed == 0 and summary.engine["name"] == "local"
    return out


def test_ray_records_equal_local(cluster, local_run, model, images, tmp_path):
    out = tmp_path / "ray"
    summary = run_report(model, images, _config(out, engine="ray", workers=2), progress=False)
    assert summary.failed == 0 and len(summary.records) == 16
    assert summary.engine["name"] == "ray" and summary.engine["workers"] == 2 and summary.engine["retried"] == 0
    _same(local_run, out)
    assert not list(out.glob(".blackbox-engine-*"))  # the shared-folder token is gone


def test_resume_across_engines(cluster, local_run, model, images, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(local_run, out)
    records = sorted((out / "items").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records}
    missing = records[0]
    missing.unlink()
    summary = run_report(model, images, _config(out, engine="ray", workers=2, resume=True), progress=False)
    assert summary.engine["items"] == 1  # only the missing record is computed, on Ray
    assert summary.failed == 0
    for path, stamp in stamps.items():
        if path != missing:
            assert path.stat().st_mtime_ns == stamp, path  # reused, not rewritten
    assert missing.is_file()
    _same(local_run, out)


def test_killed_worker_is_retried(cluster, model, images, tmp_path, capfd):
    reference = tmp_path / "reference"
    run_report(model, images, _config(reference, params=SLOW, methods=["occlusion"]), progress=False)
    out = tmp_path / "killed"
    killed: list[int] = []

    def kill_when_busy(workers):
        def killer():
            deadline = time.time() + 60
            while time.time() < deadline and not list((out / "items").glob("*/*.json")):
                time.sleep(0.01)
            os.kill(workers[0]["pid"], signal.SIGKILL)
            killed.append(workers[0]["pid"])
        threading.Thread(target=killer, daemon=True).start()

    ray_engine.on_workers = kill_when_busy
    try:
        summary = run_report(model, images, _config(out, params=SLOW, methods=["occlusion"], engine="ray",
                                                    workers=2), progress=False)
    finally:
        ray_engine.on_workers = None
    assert killed
    assert summary.failed == 0 and len(summary.records) == 8
    assert summary.engine["retried"] >= 1 and summary.engine["replaced_workers"] == 1
    assert "a Ray worker was lost" in capfd.readouterr().err
    written = sorted(p.relative_to(out) for p in (out / "items").glob("*/*.json"))
    assert len(written) == len(set(written)) == 8  # every record once
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".blackbox-tmp")]
    _same(reference, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_against_ray_start_head(local_run, images, tmp_path):
    """A ``ray start --head`` process on 127.0.0.1, the report connecting with --address (a fresh process:
    a driver connects to one cluster)."""
    port = _free_port()
    env = {**os.environ, **ENV}
    temp = tempfile.mkdtemp(prefix="bbray-", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    head = subprocess.Popen([shutil.which("ray") or "ray", "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
                time.sleep(0.5)
        out = tmp_path / "head"
        command = [sys.executable, "-m", "blackbox", "report", str(MODEL), *images, "--methods", ",".join(METHODS),
                   "--param", "occlusion.window=16", "--param", "occlusion.stride=8", "--out", str(out),
                   "--engine", "ray", "--address", f"127.0.0.1:{port}", "--workers", "2", "--json"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["ok"] == 16
        run = json.loads((out / "results.json").read_text())["run"]
        assert run["command"][-6:] == ["--engine", "ray", "--address", f"127.0.0.1:{port}", "--workers", "2"]
        assert run["config"]["engine"] == "ray"
        _same(local_run, out)
    finally:
        # stop the head (and only it): SIGTERM to its session, which drains and stops its processes
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_without_ray_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["report", str(MODEL), str(MODELS / "samples" / "circle.png"), "--engine", "ray",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert 'pip install "blackbox-explain[ray]"' in err[0]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_engine_flags_need_ray_engine(tmp_path, capsys):
    code = main(["report", str(MODEL), str(MODELS / "samples" / "circle.png"), "--workers", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "--engine ray" in capsys.readouterr().err


def test_worker_without_the_shared_folder_returns_files(model, images, tmp_path):
    """An actor that does not see the output folder (no token file) computes in a scratch folder and hands
    every file back to the driver (run here in-process, without Ray)."""
    from blackbox import runtime
    from blackbox.report.engines import Job, WorkItem
    from blackbox.report.inputs import expand_inputs
    from blackbox.report.run import Truth
    from blackbox.report.targets import DEFAULT

    entry = expand_inputs([images[0]])[0]
    config = _config(tmp_path / "out", methods=["grad_cam"])
    try:
        worker = ray_engine.ReportWorker(ray_engine._model_recipe(model, "cpu"), config, str(tmp_path / "out"),
                                         ".blackbox-engine-missing", 1)
        assert not worker.shared
        job = Job(method="grad_cam", slot=DEFAULT[0], stem="grad_cam", digest="x")
        [(record, files)] = worker.run([WorkItem(entry=entry, truth=Truth(), jobs=[job])])
    finally:
        runtime.set_threads(None)
    assert record["status"] == "ok" and record["config_hash"] == "x"
    assert set(files) == {record["files"]["overlay"], record["files"]["npz"],
                          f"items/{entry.key}/grad_cam.json"}
    assert json.loads(files[f"items/{entry.key}/grad_cam.json"])["key"] == entry.key
    assert not (tmp_path / "out").exists()
