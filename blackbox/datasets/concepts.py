"""A concept data set for dissecting the project's own ``shapes`` models (network dissection's input).

Why: dissection needs pictures with pixel masks of named concepts; the shapes generator already knows
each object's pixels, so shape classes and object colours come for free, with no download. Layout (what
:func:`blackbox.visualize.dissection.load_concepts` reads)::

    DIR/images/00000.png
    DIR/masks/circle/00000.png         shape of the object (circle, square, triangle, star)
    DIR/masks/red/00000.png            the object's colour, the nearest named colour (CIELAB distance)
    DIR/masks/background/00000.png     every pixel that is not the object
    DIR/concepts.json                  what made the folder (the marker that allows rewriting it)

Masks are 0/255 grey PNGs; a concept absent from an image has no file. Deterministic in ``seed``: the
images are those of :func:`blackbox.datasets.shapes.make_shapes`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np

from ..errors import ParameterError
from ..files import write_atomic
from ..image_io import write_png_atomic
from .shapes import CLASSES, make_shapes

__all__ = ["COLOURS", "MARKER", "colour_name", "make_concepts"]

MARKER = "concepts.json"
_GENERATOR = "blackbox.datasets.concepts"
_NAME = re.compile(r"^\d{5}\.png$")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (240, 140, 20), "yellow": (235, 220, 40), "green": (40, 170, 50),
    "cyan": (40, 210, 220), "blue": (40, 70, 220), "purple": (130, 50, 180), "pink": (240, 130, 190),
    "brown": (120, 75, 35), "white": (240, 240, 240), "grey": (128, 128, 128), "black": (20, 20, 20),
}
"""Named colours (RGB); an object is called by the nearest one in CIELAB."""

_LAB = cv2.cvtColor(np.array([list(COLOURS.values())], np.uint8), cv2.COLOR_RGB2LAB)[0].astype(np.float32)


def colour_name(rgb: np.ndarray) -> str:
    """The named colour nearest to one RGB value (CIELAB distance: closer to what a person would say)."""
    pixel = np.clip(np.rint(np.asarray(rgb, np.float64)), 0, 255).astype(np.uint8).reshape(1, 1, 3)
    lab = cv2.cvtColor(pixel, cv2.COLOR_RGB2LAB)[0, 0].astype(np.float32)
    return list(COLOURS)[int(np.argmin(np.linalg.norm(_LAB - lab, axis=1)))]


def _prepare_folder(out: Path) -> None:
    """Create ``out``, or clear a concept set this module wrote before; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{out} exists and is not a folder; give a new or empty folder for the concept set")
    if out.is_dir() and any(out.iterdir()):
        if not _ours(out / MARKER):
            raise ParameterError(f"{out} is not empty and is not a concept set made by make_concepts; "
                                 "give a new or empty folder")
        _clear(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParameterError(f"cannot create {out / 'images'}: {e.strerror or e}") from None


def _ours(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _clear(out: Path) -> None:
    """Remove only the files this module names (NNNNN.png) and folders it leaves empty."""
    folders = [out / "images"] + sorted(p for p in (out / "masks").glob("*") if p.is_dir())
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and _NAME.match(path.name):
                path.unlink()
        if folder.parent.name == "masks" and not any(folder.iterdir()):
            folder.rmdir()


def _write_mask(out: Path, concept: str, name: str, mask: np.ndarray) -> None:
    if not mask.any():
        return
    folder = out / "masks" / concept
    folder.mkdir(parents=True, exist_ok=True)
    write_png_atomic(folder / name, mask.astype(np.uint8) * 255)


def make_concepts(out_dir: str | os.PathLike, n: int = 120, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` shapes images with their concept masks (shape, colour, background) under ``out_dir``."""
    if int(n) < 1:
        raise ParameterError(f"n must be a positive number of images, got {n}")
    if int(size) < 32:
        raise ParameterError(f"size must be at least 32 pixels, got {size}")
    out = Path(out_dir)
    _prepare_folder(out)
    batch = make_shapes(int(n), seed=int(seed), size=int(size))
    counts: dict[str, int] = {}
    for i in range(len(batch)):
        name = f"{i:05d}.png"
        image, mask = batch.images[i], batch.masks[i]
        colour = colour_name(np.median(image[mask], axis=0)) if mask.any() else None
        write_png_atomic(out / "images" / name, image)
        present = {CLASSES[int(batch.labels[i])]: mask, "background": ~mask}
        if colour:
            present[colour] = mask
        for concept, region in present.items():
            _write_mask(out, concept, name, region)
            counts[concept] = counts.get(concept, 0) + int(region.any())
    meta = {"generator": _GENERATOR, "n": int(n), "size": int(size), "seed": int(seed),
            "concepts": dict(sorted(counts.items()))}
    write_atomic(out / MARKER, json.dumps(meta, indent=1), error=ParameterError)
    return out
