"""Expand the report's INPUT arguments (files, folders, globs, .txt lists) into an ordered list of images.

Nothing here raises for a bad entry: a path that does not exist or a glob that matches nothing becomes an
:class:`Entry` with an ``error``, so the report records it as a failed row and goes on.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..image_io import IMAGE_SUFFIXES

MASK_SUFFIX = "_mask"
"""``photo_mask.png`` next to ``photo.png`` is photo's truth mask, not an input of its own."""

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Entry:
    """One input row: ``path`` as the user will read it, ``key`` a stable, file-system-safe id (unique
    per resolved path), ``error`` set when the entry cannot be an image at all."""

    path: str
    key: str
    error: str | None = None


def item_key(text: str) -> str:
    """Readable and unique: the sanitised file stem plus 8 hex digits of the resolved path's SHA-1."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).stem)[:40].strip("._") or "item"
    try:
        resolved = os.path.realpath(text)
    except (OSError, ValueError):
        resolved = text
    return f"{stem}-{hashlib.sha1(resolved.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder(path: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and _is_image(Path(f))]
    return found


def _list_file(path: Path, depth: int) -> Iterable[tuple[str, str | None]]:
    """A .txt list: one path, folder or glob per line; '#' starts a comment; relative paths are relative
    to the list's folder. Lists may not nest deeper than 4 levels (a list naming itself)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        yield str(path), f"cannot read the input list: {error.strerror or error}"
        return
    for line in lines:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if not os.path.isabs(item):
            item = os.path.join(str(path.parent), item)
        yield from _expand_one(item, depth + 1)


def _expand_one(item: str, depth: int) -> Iterable[tuple[str, str | None]]:
    path = Path(item)
    if path.is_dir():
        yield from ((f, None) for f in _folder(path))
    elif path.is_file():
        if path.suffix.lower() == ".txt":
            if depth > 4:
                yield item, "input lists nest too deeply (does a list name itself?)"
            else:
                yield from _list_file(path, depth)
        else:
            yield item, None
    elif _GLOB_CHARS.search(item):
        matches = sorted(glob.glob(item, recursive=True))
        files = [m for m in matches if Path(m).is_file() and _is_image(Path(m))]
        for folder in (m for m in matches if Path(m).is_dir()):
            files += _folder(Path(folder))
        if not files:
            yield item, "no image file matches this pattern"
        yield from ((f, None) for f in files)
    elif path.exists():
        yield item, "not a regular file"
    else:
        yield item, "file not found"


def expand_inputs(items: Sequence[str], *, skip_masks: bool = True) -> list[Entry]:
    """Files, folders (recursive, sorted), globs (``**`` recursive) and ``.txt`` lists -> entries in
    the order given, duplicates (same resolved file) removed. With ``skip_masks``, ``X_mask.png`` is
    dropped when ``X.<any suffix>`` is also an input: it is X's ground truth, found by the report."""
    raw: list[tuple[str, str | None]] = []
    for item in items:
        raw += list(_expand_one(os.fspath(item), 0))
    entries: list[Entry] = []
    seen: set[str] = set()
    for text, error in raw:
        key = item_key(text)
        if key in seen:
            continue
        seen.add(key)
        entries.append(Entry(path=text, key=key, error=error))
    if skip_masks:
        stems = {(os.path.dirname(os.path.realpath(e.path)), Path(e.path).stem) for e in entries if e.error is None}
        def is_mask(e: Entry) -> bool:
            stem = Path(e.path).stem
            return (e.error is None and stem.endswith(MASK_SUFFIX)
                    and (os.path.dirname(os.path.realpath(e.path)), stem[: -len(MASK_SUFFIX)]) in stems)
        entries = [e for e in entries if not is_mask(e)]
    return entries


def sibling_mask(path: str) -> str | None:
    """``X_mask.png`` beside ``X.<suffix>`` when it exists (the convention of ``models/samples``)."""
    p = Path(path)
    for suffix in (".png", p.suffix):
        candidate = p.with_name(p.stem + MASK_SUFFIX + suffix)
        if candidate.is_file():
            return str(candidate)
    return None
