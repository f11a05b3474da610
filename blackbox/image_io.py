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
"""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path

import cv2

# OpenCV logs decoder complaints on stderr before we can say it better in one line: keep it quiet.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV builds
    cv2.setLogLevel(0)
import numpy as np

from .errors import ImageError

__all__ = ["read_image", "as_rgb_array", "write_png_atomic", "exif_orientation"]

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


# ------------------------------------------------------------------------------------ normalisation


def _to_uint8(img: np.ndarray, what: str) -> np.ndarray:
    """Scale any supported depth to uint8 with rounding (16-bit: v*255/65535; float: 0..1)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
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


def read_image(path: str | os.PathLike, *, alpha: str = "drop") -> np.ndarray:
    """Decode an image file into H x W x 3 uint8 RGB (H x W x 1 for grayscale files), upright.

    ``alpha``: "drop" (default; like PIL ``convert("RGB")``) or "white" (composite over white).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ImageError(f"expected an image file path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image file not found: {p}; check the path")
    if p.is_dir():
        raise ImageError(f"{p} is a folder, not an image file; pass the path of one image")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image file {p}: {e.strerror or e}; check its permissions") from None
    if not data:
        raise ImageError(f"image file {p} is empty (0 bytes); re-export or re-download it")
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
    half-written file: encode in memory, write a temp file in the same folder, then os.replace."""
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
    target = Path(path)
    folder = target.parent
    tmp = None
    try:
        # O_EXCL with a random name instead of mkstemp: the umask then gives the usual permissions
        tmp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise ImageError(
            f"cannot write PNG {target}: {e.strerror or e}; check that the folder exists and is writable"
        ) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
