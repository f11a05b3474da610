"""Files blackbox reads and writes: one atomic writer, one readable-input check, one JSON sanitiser.

Every output goes through :func:`write_atomic`, so all of them agree on the three things that matter:

- a killed run never leaves a half-written file under a real name (temporary in the target folder, fsync,
  ``os.replace``, then fsync of the folder so the rename itself survives a crash);
- permissions come from the umask, exactly as a plain ``open(path, "w")`` would give (``mkstemp`` would
  make every file 0600);
- temporaries carry a name this process owns (``.blackbox-<pid>-<random>.<name>.tmp``), so a clean-up
  can tell ours from a user's file and a live run's from a dead one's (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from .errors import BlackboxError

__all__ = ["write_atomic", "check_input_file", "remove_stale_temporaries", "sha256_file", "jsonable",
           "TEMP_PREFIX"]

TEMP_PREFIX = ".blackbox-"
_TEMP_NAME = re.compile(r"^\.blackbox-(\d+)-[0-9a-f]{8}\..*\.tmp$")


def _temporary(target: Path) -> Path:
    return target.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.{target.name[:120]}.tmp"


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None], *,
                 error: type[BlackboxError] = BlackboxError) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes to a binary stream) to ``path`` so
    that ``path`` is either untouched or complete. An OS failure becomes one ``error`` line."""
    target = Path(path)
    tmp: Path | None = None
    try:
        tmp = _temporary(target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as stream:
            if callable(data):
                data(stream)
            else:
                stream.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
        tmp = None
        _fsync_folder(target.parent)
    except OSError as e:
        raise error(f"cannot write {target}: {e.strerror or e}; check that the folder exists and is "
                    "writable and the disk has room") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return target


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, it is just not ours to signal
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete blackbox temporaries under ``folder`` whose owner process is gone; returns what was removed.

    Only names :func:`write_atomic` makes are candidates, and only when their PID is dead: a user's own
    ``.notes.tmp`` and a concurrent run's live temporaries are never touched."""
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for base, _, names in os.walk(root):
        for name in names:
            match = _TEMP_NAME.match(name)
            if match and not _alive(int(match.group(1))):
                candidate = Path(base) / name
                try:
                    if candidate.is_file() and not candidate.is_symlink():
                        candidate.unlink()
                        removed.append(candidate)
                except OSError:
                    pass
    return removed


def check_input_file(path: str | os.PathLike, what: str, *,
                     error: type[BlackboxError] = BlackboxError) -> Path:
    """``path`` as a Path when it names a readable, non-empty regular file; else one ``error`` line
    (``what`` names it for the user: "image file", "model file", ...)."""
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"expected a path for the {what}, got {type(path).__name__}")
    p = Path(path)
    try:
        info = p.stat()
    except FileNotFoundError:
        raise error(f"{what} not found: {p}; check the path") from None
    except NotADirectoryError:
        raise error(f"{what} not found: {p} (a part of the path is a file, not a folder); check the path") \
            from None
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}; check the path and its permissions") from None
    if p.is_dir():
        raise error(f"{what} {p} is a folder, not a file; pass the path of one file")
    if not p.is_file():
        raise error(f"{what} {p} is not a regular file (a device, pipe or socket); pass a file saved on disk")
    if not os.access(p, os.R_OK):
        raise error(f"cannot read {what} {p}: permission denied; check its permissions")
    if info.st_size == 0:
        raise error(f"{what} {p} is empty (0 bytes); re-export or re-download it")
    return p


def sha256_file(path: str | os.PathLike) -> str | None:
    """Hex SHA-256 of a file's bytes (streamed), or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def jsonable(value: Any, *, max_array: int | None = None) -> Any:
    """A value ``json.dumps(..., allow_nan=False)`` accepts: numpy scalars to Python, NaN/inf to None,
    tuples to lists, unknown objects to their repr; arrays larger than ``max_array`` (when given) become a
    short ``"array[shape]"`` note instead of a list."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, max_array=max_array) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, max_array=max_array) for v in value]
    if isinstance(value, np.ndarray):
        if max_array is not None and value.size > max_array:
            return f"array{list(value.shape)}"
        return jsonable(value.tolist(), max_array=max_array)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int)) or value is None:
        return value
    return repr(value)
