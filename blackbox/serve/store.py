"""The pictures the explorer knows: uploads (kept in a private temporary folder, named by their SHA-256) and
files of the ``--images`` folder, plus the one rule for serving a file from a folder.

Every picture is checked with the library's own reader (:func:`blackbox.image_io.read_image`): the pixel and
aspect limits are read from the header before decoding, so a tiny file claiming a huge size is refused
without allocating it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ..errors import ImageError
from ..image_io import IMAGE_SUFFIXES, check_size, header_size, read_image

__all__ = ["MAX_FOLDER_FILES", "MAX_UPLOAD_BYTES", "ImageEntry", "ImageStore", "UploadError", "safe_file"]

MAX_UPLOAD_BYTES = 20 << 20  # default upload limit (``--max-upload-mb``)
MAX_FOLDER_FILES = 5000  # an --images folder lists at most this many pictures


class UploadError(Exception):
    """A refused upload or file request, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageEntry:
    id: str  # SHA-256 of the file's bytes
    name: str  # what the user called it
    path: Path  # where its bytes are (the upload folder or the --images folder)
    height: int
    width: int

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "height": self.height, "width": self.width}


def safe_file(root: Path, relative: str) -> Path:
    """``relative`` as a regular file inside ``root``, or UploadError(404). Refuses absolute paths, ``..``
    (also once more percent-decoded, for clients that encode twice), NUL bytes, and anything that resolves
    outside ``root`` (a symbolic link pointing out included)."""
    text = str(relative)
    for candidate in (text, unquote(text)):
        parts = candidate.replace("\\", "/").split("/")
        if "\x00" in candidate or candidate.startswith(("/", "\\")) or ".." in parts or \
                (len(candidate) > 1 and candidate[1] == ":"):
            raise UploadError(404, f"no such file: {relative!r}")
    base = root.resolve()
    try:
        path = (base / text).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise UploadError(404, f"no such file: {relative!r}") from None
    if not path.is_relative_to(base) or not path.is_file():
        raise UploadError(404, f"no such file: {relative!r}")
    return path


class ImageStore:
    """Uploads and folder pictures by id. Uploads live in a temporary folder removed by :meth:`close`."""

    def __init__(self, folder: str | os.PathLike | None = None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.folder = Path(folder).resolve() if folder is not None else None
        self.max_upload_bytes = int(max_upload_bytes)
        self._uploads = tempfile.TemporaryDirectory(prefix="blackbox-serve-")
        self._entries: dict[str, ImageEntry] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._uploads.cleanup()

    def get(self, image_id: str) -> ImageEntry:
        with self._lock:
            entry = self._entries.get(str(image_id))
        if entry is None:
            raise UploadError(404, f"no image with id {image_id!r}: upload it or open it from the folder first")
        return entry

    # ------------------------------------------------------------------ uploads

    def add_upload(self, name: str, data: bytes) -> ImageEntry:
        """Check and keep uploaded bytes: 400 empty, 413 too many bytes or pixels, 415 not a picture."""
        if not data:
            raise UploadError(400, "the uploaded file is empty (0 bytes)")
        if len(data) > self.max_upload_bytes:
            raise UploadError(413, f"the upload is {len(data):,} bytes, over the limit of {self.max_upload_bytes:,}")
        digest = hashlib.sha256(data).hexdigest()
        claimed = header_size(data)
        if claimed is not None:
            try:
                check_size(*claimed, f"the uploaded picture {name!r}")
            except ImageError as error:
                raise UploadError(413, str(error)) from None
        path = Path(self._uploads.name) / digest
        if not path.exists():
            partial = path.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(path)
        return self._register(digest, name, path, shown=name)

    # ------------------------------------------------------------------ the --images folder

    def folder_files(self) -> list[str]:
        """Pictures of the folder (recursive, by suffix), relative POSIX paths, sorted; links leading out of
        the folder are left out."""
        if self.folder is None:
            return []
        found: list[str] = []
        for directory, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                if file.startswith(".") or not file.lower().endswith(IMAGE_SUFFIXES):
                    continue
                path = Path(directory) / file
                try:
                    if not path.resolve(strict=True).is_relative_to(self.folder):
                        continue
                except OSError:
                    continue
                found.append(path.relative_to(self.folder).as_posix())
                if len(found) >= MAX_FOLDER_FILES:
                    return sorted(found)
        return sorted(found)

    def folder_file(self, relative: str) -> Path:
        if self.folder is None:
            raise UploadError(404, "the server was started without --images, so there is no folder to read")
        return safe_file(self.folder, relative)

    def open_folder_file(self, relative: str) -> ImageEntry:
        path = self.folder_file(relative)
        size = path.stat().st_size
        if size > max(self.max_upload_bytes, 1):
            raise UploadError(413, f"{relative} is {size:,} bytes, over the limit of {self.max_upload_bytes:,}")
        data = path.read_bytes()
        if not data:
            raise UploadError(400, f"{relative} is empty (0 bytes)")
        return self._register(hashlib.sha256(data).hexdigest(), relative, path, shown=relative)

    # ------------------------------------------------------------------ both

    def _register(self, digest: str, name: str, path: Path, *, shown: str) -> ImageEntry:
        try:
            picture = read_image(path)
        except ImageError as error:
            message = str(error).replace(str(path), repr(shown))
            status = 413 if "over the limit" in message or "elongated" in message else 415
            raise UploadError(status, message) from None
        entry = ImageEntry(digest, name, path, int(picture.shape[0]), int(picture.shape[1]))
        with self._lock:
            self._entries.setdefault(digest, entry)
            return self._entries[digest]
