"""Tests for image decoding (blackbox.image_io) and preprocessing/geometry (blackbox.preprocess)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox.errors import ImageError, ParameterError
from blackbox.image_io import as_rgb_array, exif_orientation, read_image, write_png_atomic
from blackbox.preprocess import PRESETS, Geometry, Preprocess, Prepared

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"


def _require_real(function):
    """Real-photo tests fail, not skip, without ../shared/real: a silent pass would hide the parity."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        assert (REAL / "models").is_dir() and (REAL / "images").is_dir(), \
            f"real models/photos not found at {REAL} (read-only shared data beside the repository)"
        return function(*args, **kwargs)

    return wrapper


needs_real = _require_real


# ------------------------------------------------------------------------------------------ helpers


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"error message must be one line: {msg!r}"
    return msg


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def _png(width: int, height: int, color_type: int, bit_depth: int, rows: list[bytes], extra: bytes = b"") -> bytes:
    """A PNG written by hand (OpenCV cannot write paletted PNGs)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    )


def _exif_tiff(orientation: int, big_endian: bool = True) -> bytes:
    """A minimal TIFF-structured EXIF block holding only IFD0 / Orientation."""
    e = ">" if big_endian else "<"
    head = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    entry = struct.pack(e + "HHIH", 0x0112, 3, 1, orientation) + b"\x00\x00"
    return head + struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)


def _jpeg_with_orientation(bgr: np.ndarray, orientation: int) -> bytes:
    """Encode with OpenCV, then splice an APP1 Exif segment in after the JFIF APP0 segment."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = buf.tobytes()
    assert data[:4] == b"\xff\xd8\xff\xe0"
    app0_end = 4 + struct.unpack(">H", data[4:6])[0]
    payload = b"Exif\x00\x00" + _exif_tiff(orientation)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:app0_end] + app1 + data[app0_end:]


def _asymmetric_bgr(h: int = 40, w: int = 64) -> np.ndarray:
    """A picture whose every flip/rotation is distinguishable: coloured blocks in three corners."""
    img = np.full((h, w, 3), 128, np.uint8)
    img[:10, :16] = (0, 0, 255)  # red, top-left (BGR)
    img[:10, -16:] = (0, 255, 0)  # green, top-right
    img[-10:, :16] = (255, 0, 0)  # blue, bottom-left
    return img


# ------------------------------------------------------------------------------------------ presets


def test_preset_numbers():
    im = Preprocess.preset("imagenet")
    assert (im.resize, im.channel_order, im.channels) == ("crop", "RGB", 3)
    assert im.scale == pytest.approx(1 / 255)
    assert im.mean == (0.485, 0.456, 0.406) and im.std == (0.229, 0.224, 0.225)
    caffe = Preprocess.preset("caffe")
    # shorter side 256 + centre crop with bilinear resizing reproduces the published SqueezeNet figures
    assert (caffe.resize, caffe.channel_order, caffe.scale, caffe.interpolation) == ("crop", "BGR", 1.0, "linear")
    assert im.interpolation == "linear"
    assert caffe.mean == (104.0, 117.0, 123.0) and caffe.std == (1.0,)
    mn = Preprocess.preset("mnist")
    assert (mn.channels, mn.scale, mn.mean, mn.std) == (1, 1.0, (0.0,), (1.0,))
    mnn = Preprocess.preset("mnist-normalized")
    assert (mnn.channels, mnn.mean, mnn.std) == (1, (0.1307,), (0.3081,))
    assert mnn.scale == pytest.approx(1 / 255)
    cf = Preprocess.preset("cifar")
    assert cf.mean == (0.5, 0.5, 0.5) and cf.std == (0.5, 0.5, 0.5) and cf.scale == pytest.approx(1 / 255)
    assert Preprocess.preset("none") == Preprocess()  # "none": pixels in 0..1, nothing else
    assert Preprocess.preset("raw").scale == 1.0
    assert {"imagenet", "caffe", "mnist", "mnist-normalized", "cifar", "none", "raw"} <= set(PRESETS)


def test_preset_values_on_pixels():
    px = np.array([[[255, 0, 128]]], np.uint8)  # one RGB pixel
    x = Preprocess.preset("imagenet", size=1, shorter=1).resolve(height=1, width=1, channels=3, layout="NCHW")(px).x
    want = (np.array([1.0, 0.0, 128 / 255]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[:, 0, 0], want, rtol=1e-6)
    x = Preprocess.preset("caffe", size=1).resolve(height=1, width=1, channels=3, layout="NCHW")(px).x
    np.testing.assert_allclose(x[:, 0, 0], [128 - 104, 0 - 117, 255 - 123])  # BGR order, BGR means
    x = Preprocess.preset("cifar", size=1, layout="NHWC").resolve(height=1, width=1, channels=3, layout="NCHW")(px).x
    assert x.shape == (1, 1, 3)
    np.testing.assert_allclose(x[0, 0], (np.array([255, 0, 128]) / 255 - 0.5) / 0.5, atol=1e-6)
    gray = np.array([[[200]]], np.uint8)
    x = Preprocess.preset("mnist-normalized", size=1).resolve(height=1, width=1, channels=1, layout="NCHW")(gray).x
    np.testing.assert_allclose(x, [[[(200 / 255 - 0.1307) / 0.3081]]], rtol=1e-6)
    x = Preprocess.preset("mnist", size=1).resolve(height=1, width=1, channels=1, layout="NCHW")(px).x
    assert x.dtype == np.float32 and x.shape == (1, 1, 1)
    assert x[0, 0, 0] == pytest.approx(0.299 * 255 + 0.587 * 0 + 0.114 * 128, abs=0.6)  # luminance


def test_unknown_preset_and_settings():
    with pytest.raises(ParameterError) as e:
        Preprocess.preset("imagenett")
    msg = _one_line(e)
    assert "imagenett" in msg and "imagenet" in msg and "caffe" in msg
    with pytest.raises(ParameterError) as e:
        Preprocess.from_dict({"sise": [224, 224]})
    assert "sise" in _one_line(e)
    with pytest.raises(ParameterError):
        Preprocess(resize="stretch")
    with pytest.raises(ParameterError):
        Preprocess(std=(0.0,))
    with pytest.raises(ParameterError):
        Preprocess(channels=1, mean=(0.1, 0.2, 0.3))


def test_dict_round_trip_and_json():
    p = Preprocess.preset("imagenet", size=[299, 299])
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Preprocess.from_dict(json.loads(json.dumps(d))) == p
    q = Preprocess.from_dict({"preset": "caffe", "size": [227, 227]})
    assert q.channel_order == "BGR" and q.size == (227, 227)


def test_resolve_fills_from_model_and_checks():
    p = Preprocess.preset("imagenet").resolve(height=224, width=224, channels=3, layout="NCHW")
    assert (p.size, p.shorter, p.channels, p.layout) == ((224, 224), 256, 3, "NCHW")
    p = Preprocess.preset("imagenet").resolve(height=299, width=299, channels=3, layout="NHWC")
    assert p.shorter == round(299 * 256 / 224) and p.layout == "NHWC"
    with pytest.raises(ParameterError) as e:  # ImageNet (3 channels) on an MNIST model
        Preprocess.preset("imagenet").resolve(height=28, width=28, channels=1, layout="NCHW")
    assert "channel" in _one_line(e)
    with pytest.raises(ParameterError) as e:  # 3 means for a 1-channel model
        Preprocess(mean=(0.1, 0.2, 0.3)).resolve(height=28, width=28, channels=1, layout="NCHW")
    assert "mean" in _one_line(e)
    with pytest.raises(ParameterError):
        Preprocess.preset("imagenet", size=(256, 256)).resolve(height=224, width=224, channels=3, layout="NCHW")
    with pytest.raises(ParameterError) as e:
        Preprocess().resolve(height=None, width=None, channels=3, layout="NCHW")
    assert "size" in _one_line(e)
    p = Preprocess(size=(64, 48)).resolve(height=None, width=None, channels=3, layout="NCHW")
    assert p.size == (64, 48)
    with pytest.raises(ParameterError):
        Preprocess()(np.zeros((8, 8, 3), np.uint8))  # no size anywhere


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("h0,w0", [(300, 400), (400, 300), (375, 500), (513, 257)])
def test_crop_geometry_matches_manual_pipeline(h0, w0):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h0, w0, 3), dtype=np.uint8)
    p = Preprocess.preset("imagenet", scale=1.0, mean=(0.0,), std=(1.0,), layout="NHWC", interpolation="area")
    p = p.resolve(height=224, width=224, channels=3, layout="NCHW")
    out = p(img)
    g = out.geometry
    short, long_ = min(h0, w0), max(h0, w0)
    rs = (256, int(256 * long_ / short)) if h0 <= w0 else (int(256 * long_ / short), 256)
    assert g.resized_size == rs and g.original_size == (h0, w0) and g.model_size == (224, 224)
    top, left = int(round((rs[0] - 224) / 2)), int(round((rs[1] - 224) / 2))
    assert g.crop_offset == (top, left)
    manual = cv2.resize(img, (rs[1], rs[0]), interpolation=cv2.INTER_AREA)[top : top + 224, left : left + 224]
    np.testing.assert_array_equal(out.x, manual.astype(np.float32))
    assert out.x.dtype == np.float32 and out.x.flags.c_contiguous
    assert out.image.shape == (h0, w0, 3) and out.image.dtype == np.uint8


def test_crop_covers_non_square_model():
    p = Preprocess(size=(100, 200), resize="crop").resolve(height=100, width=200, channels=3, layout="NCHW")
    g = p.geometry(120, 120)  # shorter-side 114 would leave the 200-wide input uncovered
    assert g.resized_size[0] >= 100 and g.resized_size[1] >= 200
    assert p(np.zeros((120, 120, 3), np.uint8)).x.shape == (3, 100, 200)


def test_interpolation_auto_area_down_linear_up():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    p = Preprocess(size=(30, 40), scale=1.0, layout="NHWC", channels=3)
    np.testing.assert_array_equal(p(big).x, cv2.resize(big, (40, 30), interpolation=cv2.INTER_AREA))
    small = big[:10, :12]
    np.testing.assert_array_equal(p(small).x, cv2.resize(small, (40, 30), interpolation=cv2.INTER_LINEAR))


@pytest.fixture
def crop_geometry() -> Geometry:
    p = Preprocess.preset("imagenet").resolve(height=224, width=224, channels=3, layout="NCHW")
    return p.geometry(375, 500)  # resized 256 x 341, crop at (16, 58)


def test_to_image_constant_map_is_exact(crop_geometry):
    g = crop_geometry
    out = g.to_image(np.full((224, 224), 0.7, np.float32))
    assert out.shape == (375, 500) and out.dtype == np.float32
    (h0, w0), (rh, rw), (top, left) = g.original_size, g.resized_size, g.crop_offset
    fy, fx = h0 / rh, w0 / rw
    y = (np.arange(h0) + 0.5) / fy  # picture pixel centres in resized coordinates
    x = (np.arange(w0) + 0.5) / fx
    iny = (y >= top) & (y <= top + 224)
    inx = (x >= left) & (x <= left + 224)
    inside = iny[:, None] & inx[None, :]
    assert np.all(out[inside] == np.float32(0.7))
    assert np.all(out[~inside] == 0.0)
    assert inside.mean() == pytest.approx((224 * 224) / (rh * rw), rel=0.02)


def test_to_image_hot_pixel_lands_in_place(crop_geometry):
    g = crop_geometry
    (h0, w0), (rh, rw), (top, left) = g.original_size, g.resized_size, g.crop_offset
    for i, j in [(0, 0), (100, 37), (223, 223), (5, 200)]:
        m = np.zeros((224, 224), np.float32)
        m[i, j] = 1.0
        out = g.to_image(m)
        py, px = np.unravel_index(np.argmax(out), out.shape)
        cy, cx = (top + i + 0.5) * h0 / rh, (left + j + 0.5) * w0 / rw  # centre of the model pixel
        assert abs(py + 0.5 - cy) <= 1.0 and abs(px + 0.5 - cx) <= 1.0, (i, j, py, px, cy, cx)


def test_to_image_hot_pixel_when_picture_is_smaller():
    g = Preprocess(size=(224, 224)).geometry(28, 28)  # 8x enlargement: area average, mass kept
    m = np.zeros((224, 224))
    m[100, 37] = 1.0
    out = g.to_image(m)
    assert np.unravel_index(np.argmax(out), out.shape) == (100 // 8, 37 // 8)
    assert out.sum() == pytest.approx(1 / 64)


def test_round_trip_inside_crop(crop_geometry):
    g = crop_geometry
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    m = np.sin(3 * yy) + np.cos(2 * xx) + yy * xx  # smooth
    back = g.to_model(g.to_image(m))
    assert back.shape == (224, 224)
    np.testing.assert_allclose(back[2:-2, 2:-2], m[2:-2, 2:-2], atol=0.01)
    const = g.to_model(np.full((375, 500), 2.5))
    np.testing.assert_allclose(const, 2.5, rtol=1e-12)


def test_to_model_matches_image_pipeline(crop_geometry):
    rng = np.random.default_rng(2)
    pic = rng.random((375, 500)).astype(np.float32)
    g = crop_geometry
    (rh, rw), (top, left) = g.resized_size, g.crop_offset
    manual = cv2.resize(pic, (rw, rh), interpolation=cv2.INTER_AREA)[top : top + 224, left : left + 224]
    np.testing.assert_allclose(g.to_model(pic), manual, atol=1e-4)
    with pytest.raises(ParameterError):
        g.to_model(np.zeros((224, 224)))


def test_to_model_box(crop_geometry):
    g = crop_geometry
    (h0, w0), (rh, rw), (top, left) = g.original_size, g.resized_size, g.crop_offset
    assert g.to_model_box((0, 0, h0, w0)) == (0.0, 0.0, 224.0, 224.0)  # clipped to the input
    y0, x0, y1, x1 = g.to_model_box((100, 200, 200, 300))
    assert y0 == pytest.approx(100 * rh / h0 - top) and x1 == pytest.approx(300 * rw / w0 - left)
    assert g.to_image_box(g.to_model_box((100, 200, 200, 300))) == pytest.approx((100, 200, 200, 300))
    ey0, _, ey1, _ = g.to_model_box((0, 0, 10, 10))  # above the crop: empty
    assert ey0 == ey1 == 0.0


def test_display_inverts_the_recipe():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    for name, layout in [("imagenet", "NCHW"), ("caffe", "NCHW"), ("cifar", "NHWC"), ("raw", "NHWC")]:
        p = Preprocess.preset(name, size=(50, 60), resize="exact").resolve(
            height=50, width=60, channels=3, layout=layout
        )
        out = p(img)
        np.testing.assert_array_equal(p.display(out.x), img)
        np.testing.assert_array_equal(p.display(out.x[None]), img)
    p = Preprocess.preset("mnist-normalized", size=(50, 60)).resolve(height=50, width=60, channels=1, layout="NCHW")
    shown = p.display(p(img[:, :, :1]).x)
    assert shown.shape == (50, 60, 3)
    np.testing.assert_array_equal(shown[:, :, 1], img[:, :, 0])


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_opencv(tmp_path, orientation):
    data = _jpeg_with_orientation(_asymmetric_bgr(), orientation)
    assert exif_orientation(data) == orientation
    f = tmp_path / f"o{orientation}.jpg"
    f.write_bytes(data)
    got = read_image(f)
    want = cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # OpenCV applies EXIF here
    np.testing.assert_array_equal(got, want)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    bgr = _asymmetric_bgr()
    f = tmp_path / "rot6.jpg"
    f.write_bytes(_jpeg_with_orientation(bgr, 6))
    img = read_image(f)
    assert img.shape == (64, 40, 3)  # rotated: stored 40 x 64 becomes 64 x 40
    # the stored top-left (red) block is now top-right, the stored bottom-left (blue) block top-left
    assert img[2, -2, 0] > 200 and img[2, -2, 2] < 60
    assert img[2, 2, 2] > 200 and img[2, 2, 0] < 60
    raw = cv2.imdecode(np.frombuffer(f.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (40, 64, 3)  # IMREAD_UNCHANGED alone would have ignored the tag


def test_exif_orientation_png_with_alpha(tmp_path):
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = np.arange(12).reshape(3, 4) * 20
    rgba[..., 3] = 255
    rows = [rgba[r].tobytes() for r in range(3)]
    png = _png(4, 3, 6, 8, rows, _chunk(b"eXIf", _exif_tiff(6, big_endian=False)))
    f = tmp_path / "o6.png"
    f.write_bytes(png)
    img = read_image(f)
    np.testing.assert_array_equal(img, np.rot90(rgba[..., :3], k=-1))


def test_grayscale_files(tmp_path):
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    f = tmp_path / "g.png"
    cv2.imwrite(str(f), gray)
    img = read_image(f)
    assert img.shape == (4, 6, 1) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], gray)
    j = tmp_path / "g.jpg"
    cv2.imwrite(str(j), np.full((16, 16), 77, np.uint8))
    assert read_image(j).shape == (16, 16, 1)
    ga = _png(2, 1, 4, 8, [bytes([10, 255, 200, 0])])  # gray + alpha
    (tmp_path / "ga.png").write_bytes(ga)
    np.testing.assert_array_equal(read_image(tmp_path / "ga.png"), [[[10], [200]]])
    out = Preprocess(size=(4, 6), channels=3)(f)
    assert out.image.shape == (4, 6, 3)  # expanded for display
    np.testing.assert_allclose(out.x[1], gray / 255, rtol=1e-6)


def test_rgba_alpha_dropped_or_composited(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 10, 20, 30  # B, G, R
    bgra[..., 3] = [[255, 0], [128, 255]]
    f = tmp_path / "a.png"
    cv2.imwrite(str(f), bgra)
    img = read_image(f)
    assert img.shape == (2, 2, 3)
    assert np.all(img == [30, 20, 10])  # RGB content, alpha dropped (like PIL convert("RGB"))
    white = read_image(f, alpha="white")
    np.testing.assert_array_equal(white[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(white[0, 0], [30, 20, 10])
    assert 130 < white[1, 0, 0] < 150
    np.testing.assert_array_equal(as_rgb_array(bgra[..., [2, 1, 0, 3]]), img)


def test_16bit_png_is_scaled_not_truncated(tmp_path):
    vals = np.array([0, 257, 257 * 128, 65535, 300, 65000], np.uint16)
    bgr16 = np.stack([vals, vals, vals], -1).reshape(2, 3, 3)
    bgr16[..., 0] = 0  # blue 0, so RGB order is checked too
    f = tmp_path / "c16.png"
    cv2.imwrite(str(f), bgr16)
    img = read_image(f)
    assert img.dtype == np.uint8 and img.shape == (2, 3, 3)
    want = np.rint(vals.astype(np.float64) * 255 / 65535).astype(np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(img[..., 0], want)
    assert np.all(img[..., 2] == 0)
    g = tmp_path / "g16.png"
    cv2.imwrite(str(g), vals.reshape(2, 3))
    np.testing.assert_array_equal(read_image(g)[..., 0], want)


def test_paletted_png(tmp_path):
    plte = _chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]))
    f = tmp_path / "p.png"
    f.write_bytes(_png(3, 1, 3, 8, [bytes([0, 1, 2])], plte))
    np.testing.assert_array_equal(read_image(f), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    t = tmp_path / "pt.png"  # with a transparency table: alpha dropped
    t.write_bytes(_png(3, 1, 3, 8, [bytes([0, 1, 2])], plte + _chunk(b"tRNS", bytes([0, 128]))))
    np.testing.assert_array_equal(read_image(t), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    b = tmp_path / "p2.png"  # 2-bit palette
    b.write_bytes(_png(4, 1, 3, 2, [bytes([0b00011011])], _chunk(b"PLTE", bytes(range(12)))))
    np.testing.assert_array_equal(read_image(b)[0, :, 0], [0, 3, 6, 9])


def test_read_errors(tmp_path):
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "nope.jpg")
    assert "not found" in _one_line(e)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "empty.png")
    assert "empty" in _one_line(e)
    (tmp_path / "notes.txt").write_text("this is not a picture\n" * 10)
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "notes.txt")
    assert "not an image" in _one_line(e)
    png = _png(2, 2, 2, 8, [bytes(6), bytes(6)])
    (tmp_path / "cut.png").write_bytes(png[:40])
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "cut.png")
    _one_line(e)
    with pytest.raises(ImageError) as e:
        read_image(tmp_path)
    assert "folder" in _one_line(e)
    with pytest.raises(ImageError) as e:
        Preprocess(size=4)(tmp_path / "nope.jpg")
    _one_line(e)


def test_array_errors():
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 5), np.uint8)):
        with pytest.raises(ImageError) as e:
            as_rgb_array(bad)
        assert "channels" in _one_line(e)
    with pytest.raises(ImageError) as e:
        as_rgb_array(np.zeros((3, 32, 32), np.uint8))  # channel-first by mistake
    assert "transpose" in _one_line(e)
    with pytest.raises(ImageError) as e:
        as_rgb_array(np.zeros((4, 4, 3), np.float32))
    assert "uint8" in _one_line(e)
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((4,), np.uint8), np.zeros((1, 4, 4, 3), np.uint8)):
        with pytest.raises(ImageError) as e:
            as_rgb_array(bad)
        _one_line(e)
    with pytest.raises(ImageError):
        Preprocess(size=4)(np.zeros((4, 4, 2), np.uint8))
    assert as_rgb_array(np.zeros((5, 6), np.uint8)).shape == (5, 6, 1)
    assert as_rgb_array(np.full((2, 2, 3), 65535, np.uint16)).max() == 255


def test_write_png_atomic(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    f = tmp_path / "out.png"
    write_png_atomic(f, rgb)
    write_png_atomic(f, rgb)  # replacing an existing file
    np.testing.assert_array_equal(read_image(f), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left
    with pytest.raises(ImageError) as e:
        write_png_atomic(tmp_path / "missing" / "x.png", rgb)
    _one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_prepared_fields(tmp_path):
    f = tmp_path / "p.png"
    write_png_atomic(f, np.zeros((10, 12, 3), np.uint8))
    out = Preprocess.preset("imagenet", size=8).resolve(height=8, width=8, channels=3, layout="NCHW")(f)
    assert isinstance(out, Prepared) and out.source == str(f)
    assert out.x.shape == (3, 8, 8) and out.image.shape == (10, 12, 3)
    assert json.loads(json.dumps(out.geometry.to_dict()))["model_size"] == [8, 8]


# ---------------------------------------------------------------------------- real models and photos


def _imagenet_names() -> list[str]:
    lines = (REAL / "labels" / "imagenet-idx-name.txt").read_text().splitlines()
    return [line.split(",", 1)[1] for line in lines if line.strip()]


def _top1(model: str, preset: str, image: str, *, fp16: bool = False, **overrides) -> int:
    import onnxruntime as ort  # test extra: missing means a broken install, not a skip
    sess = ort.InferenceSession(str(REAL / "models" / model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    _, c, h, w = inp.shape
    p = Preprocess.preset(preset, **overrides).resolve(height=h, width=w, channels=c, layout="NCHW")
    x = p(REAL / "images" / image).x[None]
    if fp16:
        x = x.astype(np.float16)
    scores = np.asarray(sess.run(None, {inp.name: x})[0], dtype=np.float64).reshape(-1)
    return int(np.argmax(scores))


@needs_real
@pytest.mark.parametrize(
    "image,index,name",
    [("tabby_cat.jpg", 281, "tabby"), ("pelican.jpg", 144, "pelican"), ("bald_eagle.jpg", 22, "bald eagle")],
)
def test_real_mobilenetv2_int8_imagenet(image, index, name):
    assert name in _imagenet_names()[index]
    assert _top1("mobilenetv2-12-int8.onnx", "imagenet", image) == index


@needs_real
@pytest.mark.parametrize("image,index,name", [("kitten_224.png", 281, "tabby"), ("elephant.jpg", 386, "African elephant")])
def test_real_squeezenet_fp16_caffe(image, index, name):
    assert name in _imagenet_names()[index]
    assert _top1("squeezenet1.0-fp16.onnx", "caffe", image, fp16=True) == index


@needs_real
@pytest.mark.parametrize("model,preset", [("mnist-pytorch.onnx", "mnist-normalized"), ("mnist-cntk.onnx", "mnist")])
def test_real_mnist(model, preset):
    assert read_image(REAL / "images" / "digit_3.jpg").shape == (28, 28, 1)
    assert _top1(model, preset, "digit_3.jpg") == 3


@needs_real
def test_real_cifar10_weak_model():
    # A weak tutorial model: cat.jpg is "cat" (3) with anti-aliased shrinking (area, the default) by a
    # margin of ~1.4 logits; plain linear 500->32 shrinking aliases and flips it to "truck". dog.jpg is
    # "dog" (5) either way.
    assert _top1("cifar10-pytorch.onnx", "cifar", "cat.jpg") == 3
    assert _top1("cifar10-pytorch.onnx", "cifar", "dog.jpg") == 5
    assert _top1("cifar10-pytorch.onnx", "cifar", "dog.jpg", interpolation="linear") == 5
