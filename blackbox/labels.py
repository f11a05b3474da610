"""Class names: read from a file, a list or model metadata, and look a name up by any of its aliases."""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass

import onnx

from .errors import ParameterError, TargetError

_SYNSET = re.compile(r"^n\d{8}\s+(.*)$")
_INDEXED = re.compile(r"^\s*(\d+)\s*[,:\t]\s*(.+)$")


@dataclass(frozen=True)
class Labels:
    """Display names per class index plus every alias a user may type (synonyms, case-insensitive)."""

    names: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def index_of(self, text: str) -> int:
        """The class a name (or synonym, or synset id) names: an exact match first, else a case-insensitive
        one. A name two classes share is refused rather than resolved to the first (ImageNet has two
        'crane's), listing the candidates."""
        wanted = text.strip()
        for same in (lambda a: a == wanted, lambda a: a.lower() == wanted.lower()):
            found = [i for i, options in enumerate(self.aliases) if any(same(o) for o in options)]
            if len(found) == 1:
                return found[0]
            if found:
                shown = ", ".join(str(i) for i in found[:-1]) + f" and {found[-1]}"
                raise TargetError(f"{text!r} names classes {shown}; pass the index")
        close = difflib.get_close_matches(text, list(self.names), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise TargetError(f"unknown label {text!r}{hint}; pass a class index or one of the model's labels")


def _from_lines(lines: list[str], source: str) -> Labels:
    lines = [line.rstrip("\n\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    aliases: list[tuple[str, ...]] = []
    indexed = lines and all(_INDEXED.match(line) for line in lines if line.strip())
    if indexed:
        entries = {}
        for line in lines:
            match = _INDEXED.match(line)
            if match:
                entries[int(match.group(1))] = match.group(2).strip()
        if sorted(entries) != list(range(len(entries))):
            raise ParameterError(f"labels file {source}: indices must run 0..N-1 without gaps")
        lines = [entries[i] for i in range(len(entries))]
    for line in lines:
        text = line.strip()
        synset = _SYNSET.match(text)
        if synset:
            text = synset.group(1)
        parts = tuple(p.strip() for p in text.split(",") if p.strip()) if synset else (text,)
        names.append(parts[0] if parts else text)
        aliases.append(parts + ((line.split()[0],) if synset else ()))
    return Labels(tuple(names), tuple(aliases), source)


def read_labels(spec: str | os.PathLike | list[str] | tuple[str, ...]) -> Labels:
    """A labels file (one name per line, ``index,name`` or ImageNet synset lines) or a list of names."""
    if isinstance(spec, (list, tuple)):
        return _from_lines([str(s) for s in spec], "list")
    path = os.fspath(spec)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        raise ParameterError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParameterError(f"cannot read labels file {path}: {error.__class__.__name__}") from None
    if not any(line.strip() for line in lines):
        raise ParameterError(f"labels file {path} is empty")
    return _from_lines(lines, path)


def labels_from_metadata(model: onnx.ModelProto) -> Labels | None:
    """Labels stored by blackbox-aware exporters under ``blackbox.labels`` (a JSON list)."""
    for prop in model.metadata_props:
        if prop.key == "blackbox.labels":
            try:
                names = json.loads(prop.value)
            except json.JSONDecodeError:
                return None
            if isinstance(names, list) and names:
                return _from_lines([str(n) for n in names], "model metadata")
    return None
