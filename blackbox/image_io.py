"""Reading and writing pictures with OpenCV, returning honest uint8 arrays in RGB order.

Decisions (kept here so every caller agrees):

- Colour images come back as H x W x 3 uint8 **RGB**; grayscale files (gray or gray+alpha PNG, gray JPEG,
  1/2/4-bit PNG, ...) as H x W x 1 uint8. The preprocess decides what the model needs.
- Alpha is **dropped** by default: it is what ``PIL.Image.convert("RGB")`` does in the torchvision,
  Captum and LIME pipelines people reproduce, so the model sees the same colours it sees there.
  ``alpha="white"`` composites over white instead (what an image viewer shows).
- 16-bit images are scaled with rounding (v * 255 / 65535), never truncated to the low byte.
- EXIF orientation is applied (JPEG APP1 and PNG eXIf) by reading the tag ourselves: OpenCV applies
  it only when it also drops alpha and depth (IMREAD_COLOR), and ignores it with IMREAD_UNCHANGED.
- Every failure is an :class:`~blackbox.errors.ImageError` with one line; no cv2 traceback escapes.
- Size limits are checked from the file's header **before** decoding (PNG IHDR, JPEG SOF, BMP, GIF, WebP,
  TIFF, PNM headers are read here; for any other format OpenCV's own limit ``OPENCV_IO_MAX_IMAGE_PIXELS``
  is set to ours and the size is checked again after decoding). A picture may have at most
  :data:`MAX_PIXELS` pixels (PIL's default decompression-bomb limit, 89,478,485 = 2**30 / 12; override with
  the ``BLACKBOX_MAX_IMAGE_PIXELS`` environment variable) and a long:short side ratio of at most
  :data:`MAX_ASPECT` (50:1, override with ``BLACKBOX_MAX_IMAGE_ASPECT``): a 96-byte 1 x 5000 PNG is not a
  photo, and every map of it blown up to something visible would be gigabytes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
                  ".jp2", ".exr", ".hdr", ".pic", ".sr", ".ras")
"""Suffixes a folder or a glob picks up (what OpenCV decodes). A file named explicitly is always taken."""


def _limit_from_env(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


MAX_PIXELS = _limit_from_env("BLACKBOX_MAX_IMAGE_PIXELS", 89_478_485)
MAX_ASPECT = _limit_from_env("BLACKBOX_MAX_IMAGE_ASPECT", 50)
# OpenCV reads this once, at its first decode: formats we do not parse stop inside the decoder too
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402

# OpenCV logs decoder complaints on stderr before we can say it better in one line: keep it quiet.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV builds
    cv2.setLogLevel(0)
import numpy as np

from .errors import ImageError
from .files import check_input_file, write_atomic

__all__ = ["read_image", "as_rgb_array", "write_png_atomic", "exif_orientation", "header_size", "check_size", "picture_size",
           "MAX_PIXELS", "MAX_ASPECT"]

_ALPHA_MODES = ("drop", "white")


# --------------------------------------------------------------------------------------------- EXIF


def _tiff_orientation(buf: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent or malformed."""
    if len(buf) < 8:
        return 1
    if buf[:2] == b"II":
        e = "<"
    elif buf[:2] == b"MM":
        e = ">"
    else:
        return 1
    try:
        if struct.unpack(e + "H", buf[2:4])[0] != 42:
            return 1
        ifd = struct.unpack(e + "I", buf[4:8])[0]
        (count,) = struct.unpack(e + "H", buf[ifd : ifd + 2])
        for k in range(count):
            p = ifd + 2 + 12 * k
            tag, typ, n = struct.unpack(e + "HHI", buf[p : p + 8])
            if tag == 0x0112 and n >= 1:
                if typ == 3:  # SHORT
                    value = struct.unpack(e + "H", buf[p + 8 : p + 10])[0]
                elif typ == 4:  # LONG (non-standard, seen in the wild)
                    value = struct.unpack(e + "I", buf[p + 8 : p + 12])[0]
                else:
                    return 1
                return value if 1 <= value <= 8 else 1
    except (struct.error, IndexError):
        return 1
    return 1


def exif_orientation(data: bytes) -> int:
    """EXIF orientation (1..8) stored in JPEG APP1 or PNG eXIf of an encoded file; 1 when none."""
    if data[:2] == b"\xff\xd8":  # JPEG: walk the marker segments up to the scan
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                return 1
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
                return 1
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
                return _tiff_orientation(data[i + 10 : i + 2 + length])
            i += 2 + length
        return 1
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: walk the chunks
        i, n = 8, len(data)
        while i + 8 <= n:
            length, ctype = struct.unpack(">I4s", data[i : i + 8])
            if ctype == b"eXIf":
                return _tiff_orientation(data[i + 8 : i + 8 + length])
            if ctype == b"IEND":
                return 1
            i += 12 + length
        return 1
    return 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the stored pixels into the displayed picture (same transforms as OpenCV's IMREAD_COLOR)."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 5:
        img = img.swapaxes(0, 1)
    elif orientation == 6:
        img = img.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        img = img.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        img = img.swapaxes(0, 1)[::-1]
    return np.ascontiguousarray(img)


# ------------------------------------------------------------------------------------- header sizes


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    e = "<" if data[:2] == b"II" else ">"
    try:
        ifd = struct.unpack(e + "I", data[4:8])[0]
        (count,) = struct.unpack(e + "H", data[ifd : ifd + 2])
        found = {}
        for k in range(count):
            p = ifd + 2 + 12 * k
            tag, typ = struct.unpack(e + "HH", data[p : p + 4])
            if tag in (256, 257):
                found[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), data[p + 8 : p + (10 if typ == 3 else 12)])[0]
        if 256 in found and 257 in found:
            return found[257], found[256]
    except (struct.error, IndexError):
        return None
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    fields: list[int] = []
    text = data[2:512].split(b"\n")
    for line in text:
        line = line.split(b"#")[0]
        for token in line.split():
            if not token.isdigit():
                return None
            fields.append(int(token))
            if len(fields) == 2:
                return fields[1], fields[0]
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) a file's header claims, read without decoding; None for formats not parsed here."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM" and len(data) >= 26:
            width, height = struct.unpack("<ii", data[18:26])
            return abs(height), abs(width)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return height, width
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = data[12:16]
            if kind == b"VP8 " and len(data) >= 30:
                width, height = struct.unpack("<HH", data[26:30])
                return height & 0x3FFF, width & 0x3FFF
            if kind == b"VP8L" and len(data) >= 25:
                bits = int.from_bytes(data[21:25], "little")
                return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
            if kind == b"VP8X" and len(data) >= 30:
                return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in b"123456" and data[1:2]:
            return _pnm_size(data)
    except struct.error:
        return None
    return None


def check_size(height: int, width: int, what: str) -> None:
    """Refuse pictures over :data:`MAX_PIXELS` pixels or more elongated than :data:`MAX_ASPECT`:1."""
    if height <= 0 or width <= 0:
        raise ImageError(f"{what} claims a size of {width}x{height} pixels; re-export it")
    if height * width > MAX_PIXELS:
        raise ImageError(f"{what} is {width}x{height} = {height * width:,} pixels, over the limit of "
                         f"{MAX_PIXELS:,}; shrink it (or raise BLACKBOX_MAX_IMAGE_PIXELS if you trust the file)")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise ImageError(f"{what} is {width}x{height} pixels, more elongated than {MAX_ASPECT}:1; crop it "
                         "(or raise BLACKBOX_MAX_IMAGE_ASPECT)")


# ------------------------------------------------------------------------------------ normalisation


def _to_uint8(img: np.ndarray, what: str) -> np.ndarray:
    """Scale any supported depth to uint8 with rounding (16-bit: v*255/65535; float: 0..1)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:  # in row blocks: a uint32 copy of a whole large picture is 2x its size
        out = np.empty(img.shape, np.uint8)
        rows = max(1, (1 << 20) // max(1, img[0].size))
        for r in range(0, img.shape[0], rows):
            out[r : r + rows] = (img[r : r + rows].astype(np.uint32) * 255 + 32767) // 65535
        return out
    if img.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(img)):
            raise ImageError(f"{what} has NaN or infinite pixels; save it as an 8-bit PNG or JPEG")
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(
        f"{what} has {img.dtype} pixels, which blackbox does not read; save it as an 8- or 16-bit PNG"
    )


def _channels_to_rgb(img: np.ndarray, *, bgr: bool, gray_file: bool, alpha: str, what: str) -> np.ndarray:
    """H x W x {1,3,4} (BGR(A) when ``bgr``) -> H x W x 3 RGB or H x W x 1 uint8."""
    if alpha not in _ALPHA_MODES:
        raise ImageError(f"unknown alpha mode {alpha!r}; use one of {', '.join(_ALPHA_MODES)}")
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 2 or c > 4:
        hint = " (it looks channel-first: transpose it to H x W x C)" if img.shape[0] in (1, 3, 4) else ""
        raise ImageError(
            f"{what} has {c} channels; blackbox reads 1 (gray), 3 (RGB) or 4 (RGBA){hint}"
        )
    if c == 4:
        colour, a = img[:, :, :3], img[:, :, 3:]
        if alpha == "white":
            w = a.astype(np.float32) / 255.0
            colour = np.rint(colour.astype(np.float32) * w + 255.0 * (1.0 - w)).astype(np.uint8)
        img = colour
        c = 3
    if c == 3:
        if gray_file:  # gray(+alpha) PNG expanded to BGR(A) by the decoder: keep it honest
            return np.ascontiguousarray(img[:, :, :1])
        return np.ascontiguousarray(img[:, :, ::-1] if bgr else img)
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------------------------- API


def _read_file(path: str | os.PathLike) -> tuple[Path, bytes, tuple[int, int] | None]:
    """(path, bytes, (height, width) the header claims, already checked against the limits)."""
    p = check_input_file(path, "image file", error=ImageError)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image file {p}: {e.strerror or e}; check its permissions") from None
    claimed = header_size(data)
    if claimed is not None:
        check_size(*claimed, f"image file {p}")
    return p, data, claimed


def read_image(path: str | os.PathLike, *, alpha: str = "drop") -> np.ndarray:
    """Decode an image file into H x W x 3 uint8 RGB (H x W x 1 for grayscale files), upright.

    ``alpha``: "drop" (default; like PIL ``convert("RGB")``) or "white" (composite over white).
    """
    p, data, _ = _read_file(path)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise ImageError(
            f"{p} is not an image OpenCV can decode (or it is truncated); convert it to PNG or JPEG"
        )
    if img.size == 0 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"image file {p} has no pixels (size {img.shape[:2]}); re-export it")
    what = f"image file {p}"
    check_size(img.shape[0], img.shape[1], what)
    img = _to_uint8(img, what)
    gray_file = data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] in (0, 4)
    img = _channels_to_rgb(img, bgr=True, gray_file=gray_file, alpha=alpha, what=what)
    return _apply_orientation(img, exif_orientation(data))


def as_rgb_array(image: np.ndarray, *, alpha: str = "drop") -> np.ndarray:
    """Validate a user array (H x W x {1,3,4} or H x W, RGB order) into uint8 RGB / gray H x W x C.

    uint8 is taken as is and uint16 scaled like 16-bit files; other dtypes are refused, because
    guessing whether floats are 0..1 or 0..255 silently changes what the model sees.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array for the image, got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        raise ImageError(
            f"image array has shape {image.shape}: pass one image as H x W x C, not a batch (drop axis 0)"
        )
    if image.ndim not in (2, 3):
        raise ImageError(f"image array has shape {image.shape}; expected H x W x C or H x W")
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image array has no pixels (shape {image.shape})")
    if image.dtype == np.uint16:
        image = _to_uint8(image, "image array")
    elif image.dtype != np.uint8:
        raise ImageError(
            f"image array has dtype {image.dtype}; pass uint8 0..255 "
            "(e.g. np.clip(img * 255, 0, 255).round().astype(np.uint8) for floats in 0..1)"
        )
    return _channels_to_rgb(image, bgr=False, gray_file=False, alpha=alpha, what="image array")


def write_png_atomic(path: str | os.PathLike, rgb_uint8: np.ndarray) -> None:
    """Write an RGB (H x W x 3), RGBA (x 4) or gray (H x W [x 1]) uint8 PNG without ever leaving a
    half-written file: encode in memory, then :func:`blackbox.files.write_atomic`."""
    img = np.asarray(rgb_uint8)
    if img.dtype != np.uint8:
        raise ImageError(f"PNG pixels must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    elif img.ndim != 2:
        raise ImageError(f"cannot write an array of shape {img.shape} as PNG; expected H x W x 3 RGB")
    if img.size == 0:
        raise ImageError(f"cannot write an empty image (shape {img.shape}) as PNG")
    try:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    except cv2.error:
        ok = False
    if not ok:
        raise ImageError(f"OpenCV could not encode the {img.shape} image as PNG")
    write_atomic(path, buf.tobytes(), error=ImageError)


def picture_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the upright picture in an image file, from its header when blackbox parses the
    format (no decode), else by decoding it; the same limits and one-line errors as :func:`read_image`."""
    p, data, claimed = _read_file(path)
    if claimed is None:
        return read_image(p).shape[:2]
    height, width = claimed
    return (width, height) if exif_orientation(data) >= 5 else (height, width)
