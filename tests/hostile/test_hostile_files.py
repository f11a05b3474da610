"""Hostile image files, output paths, targets CSVs and report folders through the real CLI.

Every input is built here (crafted headers that claim huge sizes, truncated files, garbage, special
files, ragged or binary CSVs). Each CLI case asserts the harness's promise: exit 2, one line naming the
problem, no traceback, nothing written or removed, under a 3 GiB address-space limit, so a 100-byte file
that claims 10 gigapixels cannot make blackbox allocate them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import MODELS  # noqa: E402
from harness import assert_user_error, run_cli, snapshot  # noqa: E402

from blackbox.files import TEMP_PREFIX, check_input_file, jsonable, write_atomic  # noqa: E402
from blackbox.errors import BlackboxError  # noqa: E402

MODEL = MODELS / "shapes.onnx"
SAMPLES = MODELS / "samples"


# --------------------------------------------------------------------------------- crafted images

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB, with a tiny IDAT and IEND (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int, *, app_bytes: int = 0) -> bytes:
    """SOI, an optional large APP1 segment, then a baseline SOF0 claiming width x height, then EOI."""
    app = b"\xff\xe1" + struct.pack(">H", app_bytes + 2) + b"\x00" * app_bytes if app_bytes else b""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app + sof + b"\xff\xd9"


def bmp_claiming(width: int, height: int) -> bytes:
    header = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 16


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x3b"


def webp_claiming(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def tiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\x00" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def real_png(height: int, width: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


IMAGE_CASES = {
    "png-100k-square": (lambda: png_claiming(100_000, 100_000), ["pixels", "limit"]),
    "png-20k-square": (lambda: png_claiming(20_000, 20_000), ["400,000,000 pixels"]),
    "png-4g-wide": (lambda: png_claiming(0x7FFFFFFF, 2), ["pixels"]),
    "png-zero-size": (lambda: png_claiming(0, 64), ["0x64"]),
    "png-1x5000-strip": (lambda: real_png(1, 5000), ["elongated", "50:1"]),
    "png-5000x1-column": (lambda: real_png(5000, 1), ["elongated"]),
    "jpeg-65k-square": (lambda: jpeg_claiming(65_000, 65_000), ["pixels"]),
    "jpeg-sof-after-big-app1": (lambda: jpeg_claiming(60_000, 60_000, app_bytes=60_000), ["pixels"]),
    "jpeg-strip": (lambda: jpeg_claiming(10_000, 10), ["elongated"]),
    "bmp-50k-square": (lambda: bmp_claiming(50_000, -50_000), ["pixels"]),
    "gif-65k-square": (lambda: gif_claiming(65_535, 65_535), ["pixels"]),
    "webp-16k-square": (lambda: webp_claiming(16_384, 16_384), ["pixels"]),
    "tiff-100k-square": (lambda: tiff_claiming(100_000, 100_000), ["pixels"]),
    "pgm-100k-square": (lambda: b"P5\n# comment\n100000 100000\n255\n" + b"\x00" * 32, ["pixels"]),
    "png-truncated": (lambda: (SAMPLES / "star.png").read_bytes()[:60], ["truncated"]),
    "garbage": (lambda: bytes(range(256)) * 4, ["decode"]),
    "html-named-png": (lambda: b"<html><body>not found</body></html>", ["decode"]),
    "empty": (lambda: b"", ["empty"]),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_hostile_image(tmp_path, name):
    make, mentions = IMAGE_CASES[name]
    image = tmp_path / "in" / f"{name}.png"
    image.parent.mkdir()
    image.write_bytes(make())
    before = snapshot(tmp_path)
    outcome = run_cli(["explain", MODEL, image, "--out", tmp_path / "out"])
    assert_user_error(outcome, mentions=mentions, before=before, folders=[tmp_path])
    assert outcome.peak_rss_bytes < 1 << 30


def _special_path(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope.png"
    if kind == "folder":
        (tmp_path / "pics.png").mkdir()
        return tmp_path / "pics.png"
    if kind == "parent-is-a-file":
        (tmp_path / "file").write_bytes(b"x")
        return tmp_path / "file" / "star.png"
    if kind == "dangling-symlink":
        (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
        return tmp_path / "link.png"
    if kind == "fifo":  # reading it would block forever
        os.mkfifo(tmp_path / "pipe.png")
        return tmp_path / "pipe.png"
    if kind == "device":
        return Path("/dev/zero")  # reading it would never end
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,mentions", [
    ("missing", ["not found"]), ("folder", ["folder"]), ("parent-is-a-file", ["not found"]),
    ("dangling-symlink", ["not found"]), ("fifo", ["not a regular file"]), ("device", ["not a regular file"]),
])
def test_unreadable_image_path(tmp_path, kind, mentions):
    path = _special_path(tmp_path, kind)
    before = snapshot(tmp_path)
    outcome = run_cli(["explain", MODEL, path, "--out", tmp_path / "out"], timeout=60)
    assert_user_error(outcome, mentions=mentions, before=before, folders=[tmp_path])


def test_pixel_limit_is_configurable(tmp_path):
    """The limit is the documented knob, not a constant: 64 x 64 = 4096 pixels over a limit of 1000."""
    before = snapshot(tmp_path)
    outcome = run_cli(["explain", MODEL, SAMPLES / "star.png", "--out", tmp_path / "out"],
                      env={"BLACKBOX_MAX_IMAGE_PIXELS": "1000"})
    assert_user_error(outcome, mentions=["4,096 pixels", "1,000"], before=before, folders=[tmp_path])


def test_strip_within_raised_aspect_limit_runs_in_bounded_memory(tmp_path):
    """With the aspect limit raised, the 96-byte 1 x 5000 PNG is explained; the plain overlay is not
    enlarged past 2048 px on its long side (it was 256 x 1,280,000: 20 GB), and both the plain overlay and
    the default figure fit in 1 GiB."""
    image = tmp_path / "strip.png"
    image.write_bytes(real_png(1, 5000))
    env = {"BLACKBOX_MAX_IMAGE_ASPECT": "10000"}
    plain = run_cli(["explain", MODEL, image, "--out", tmp_path / "plain", "--plain"], env=env)
    assert plain.returncode == 0, plain.stderr
    (png,) = (tmp_path / "plain").glob("strip_occlusion_*.png")
    assert cv2.imread(str(png)).shape == (1, 5000, 3)
    assert plain.peak_rss_bytes < 1 << 30
    figure = run_cli(["explain", MODEL, image, "--out", tmp_path / "figure"], env=env)
    assert figure.returncode == 0, figure.stderr
    (png,) = (tmp_path / "figure").glob("strip_occlusion_*.png")
    assert cv2.imread(str(png)).shape[0] > 100  # a panel figure, not the 1-pixel strip
    assert figure.peak_rss_bytes < 1 << 30


def test_out_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_bytes(b"mine")
    before = snapshot(tmp_path)
    outcome = run_cli(["explain", MODEL, SAMPLES / "star.png", "--out", tmp_path / "file" / "out"])
    assert_user_error(outcome, mentions=["not a folder"], before=before, folders=[tmp_path])


# --------------------------------------------------------------------------------- targets CSV

CSV_CASES = {
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00garbage", ["not utf-8"]),
    "nul-bytes": (b"image,target\nstar.png\x00,star\n", ["nul"]),
    "no-image-column": (b"file,target\nstar.png,star\n", ["'image' column"]),
    "ragged-long": (b"image,target\nstar.png,star,extra,cells\n", ["line 2", "4 cells"]),
    "ragged-short": (b"image,target,y0,x0,y1,x1\nstar.png,star,1,2\n", ["line 2", "4 cells"]),
    "inverted-box": (b"image,y0,x0,y1,x1\nstar.png,40,40,10,10\n", ["line 2", "y0 < y1"]),
    "nan-box": (b"image,y0,x0,y1,x1\nstar.png,nan,0,10,10\n", ["line 2", "nan"]),
    "infinite-box": (b"image,y0,x0,y1,x1\nstar.png,0,0,inf,10\n", ["line 2", "infinite"]),
    "box-outside-image": (b"image,y0,x0,y1,x1\nstar.png,0,0,10,65\n", ["line 2", "outside the 64x64"]),
    "negative-box": (b"image,y0,x0,y1,x1\nstar.png,-5,0,10,10\n", ["line 2", "outside"]),
    "box-not-numbers": (b"image,y0,x0,y1,x1\nstar.png,a,b,c,d\n", ["line 2", "four numbers"]),
    "missing-image-row": (b"image,target\nstar.png,star\nghost.png,circle\n", ["line 3", "not found"]),
    "empty-image-cell": (b"image,target\n,star\n", ["line 2", "empty"]),
    "missing-mask": (b"image,mask\nstar.png,ghost_mask.png\n", ["line 2", "mask file", "not found"]),
}


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_hostile_targets_csv(tmp_path, name):
    text, mentions = CSV_CASES[name]
    data = tmp_path / "data"
    data.mkdir()
    (data / "star.png").write_bytes((SAMPLES / "star.png").read_bytes())
    table = data / "truth.csv"
    table.write_bytes(text)
    before = snapshot(tmp_path)
    outcome = run_cli(["report", MODEL, data / "star.png", "--targets-csv", table, "--out", tmp_path / "out"])
    assert_user_error(outcome, mentions=mentions, before=before, folders=[tmp_path])


def test_targets_csv_is_a_folder(tmp_path):
    (tmp_path / "truth.csv").mkdir()
    before = snapshot(tmp_path)
    outcome = run_cli(["report", MODEL, SAMPLES / "star.png", "--targets-csv", tmp_path / "truth.csv",
                       "--out", tmp_path / "out"])
    assert_user_error(outcome, mentions=["folder"], before=before, folders=[tmp_path])


# --------------------------------------------------------------------------------- report folders

def _report(out: Path, *extra: str, methods: str = "occlusion") -> list[str]:
    return ["report", MODEL, SAMPLES / "star.png", SAMPLES / "circle.png", "--methods", methods,
            "--step", "256", "--device", "cpu", "--out", out, *extra]


def test_second_report_on_one_folder_refuses_while_the_first_runs(tmp_path):
    """Two real processes: the first holds the folder's lock; the second says who and exits 2, touching
    nothing of the first's; the first then finishes cleanly."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "blackbox.cli",
                              *map(str, _report(out, "--param", "rise.n_masks=20000", methods="rise"))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".blackbox-report.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = run_cli(_report(out))
        assert_user_error(second, mentions=["another blackbox report", str(out), f"pid {first.pid}"])
        assert first.poll() is None, "the second run should not have waited for the first"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    # the kernel dropped the killed run's lock: a new run goes ahead
    assert run_cli(_report(out)).returncode == 0


def test_report_removes_only_its_own_dead_temporaries(tmp_path):
    out = tmp_path / "out"
    (out / "items" / "mine").mkdir(parents=True)
    users = [out / ".notes.tmp", out / "items" / "mine" / ".draft.123.abcdef01.tmp",
             out / f"{TEMP_PREFIX}1-0123abcd.results.json"]  # ours by prefix, but not a .tmp name
    for path in users:
        path.write_text("the user's")
    live = out / f"{TEMP_PREFIX}{os.getpid()}-0123abcd.results.json.tmp"  # this test process is alive
    live.write_text("a live run's")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = out / "items" / f"{TEMP_PREFIX}{dead_pid}-89abcdef.star.npz.tmp"
    dead.write_text("a killed run's")
    outcome = run_cli(_report(out))
    assert outcome.returncode == 0, outcome.stderr
    assert all(p.read_text() == "the user's" for p in users)
    assert live.exists() and not dead.exists()


def test_resume_redoes_corrupt_files_and_says_so(tmp_path):
    out = tmp_path / "out"
    assert run_cli(_report(out)).returncode == 0
    records = json.loads((out / "results.json").read_text())["results"]
    npz, png = out / records[0]["files"]["npz"], out / records[1]["files"]["overlay"]
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    png.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")  # same name, garbage inside
    outcome = run_cli(_report(out, "--resume"))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stderr.count("redoing") == 2 and "checksum" in outcome.stderr
    redone = json.loads((out / "results.json").read_text())["run"]["redone"]
    assert sorted(r["key"] for r in redone) == sorted([records[0]["key"], records[1]["key"]])
    assert np.load(npz)["heatmap"].shape == (64, 64)
    assert cv2.imread(str(png)) is not None
    assert all(r["status"] == "ok" for r in json.loads((out / "results.json").read_text())["results"])


# --------------------------------------------------------------------------------- in-process units

def test_csv_cells_escape_control_characters_json_keeps_them():
    from blackbox.report.run import results_csv

    label = "cat\x1b]0;owned\x07\x1b[2J"
    rows = list(csv.DictReader(io.StringIO(results_csv([{"image": "a\rb.png", "label": label, "status": "ok"}]))))
    assert rows[0]["label"] == "cat\\x1b]0;owned\\x07\\x1b[2J" and rows[0]["image"] == "a\\x0db.png"
    assert json.loads(json.dumps(jsonable({"label": label})))["label"] == label


def test_atomic_files_get_umask_permissions_and_leave_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.npz", lambda stream: np.savez(stream, x=np.zeros(3)))
        write_atomic(tmp_path / "b.png", real_png(2, 2))
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}

    def fail(stream):
        stream.write(b"half")
        raise OSError(28, "No space left on device")

    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(BlackboxError, match="No space left"):
        write_atomic(tmp_path / "keep.txt", fail)
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.png", "keep.txt"]


def test_check_input_file_one_line_per_problem(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "file").write_bytes(b"x")
    for path, words in [(tmp_path / "empty", "empty"), (tmp_path, "folder"), (tmp_path / "none", "not found"),
                        (tmp_path / "file" / "x", "not found"), (Path("/dev/null"), "not a regular file")]:
        with pytest.raises(BlackboxError, match=words) as caught:
            check_input_file(path, "model file")
        assert "\n" not in str(caught.value)
    assert check_input_file(tmp_path / "file", "model file") == tmp_path / "file"


def test_overlay_enlargement_is_bounded():
    from blackbox.render import enlargement, overlay

    assert enlargement(64, 64) == 4 and enlargement(28, 28) == 10
    assert enlargement(1, 5000) == 1 and enlargement(40, 2000) == 1 and enlargement(10, 300) == 6
    picture = np.zeros((4, 600, 3), np.uint8)
    shown = overlay(picture, np.random.default_rng(0).random((4, 600)).astype(np.float32))
    assert shown.shape == (12, 1800, 3)
