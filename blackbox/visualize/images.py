"""Image collections for the data-set views (top activations, dissection, embeddings).

A collection is a folder, a list of paths, or a list (or stacked array) of images; it is prepared
batch by batch so memory stays flat in the number of images. Nothing here reads pixels before it is
needed: an empty folder or a missing file is refused before any model work starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ImageError
from ..image_io import IMAGE_SUFFIXES
from ..inputs import Sample, prepare

__all__ = ["collect", "batches", "source_name"]


def collect(images: Any, what: str = "images") -> list:
    """The items of a collection, in a stable order: a folder's image files sorted by name, or the
    given paths/arrays as they are."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            items = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not items:
                raise ImageError(f"the folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES[:5])}, ...); "
                                 f"point {what} at a folder of pictures")
            return items
        if not path.exists():
            raise ImageError(f"{what}: {str(path)!r} does not exist; give a folder of images or a list of files")
        return [str(path)]
    if isinstance(images, np.ndarray):
        items = [images] if images.ndim <= 3 and images.dtype == np.uint8 else list(images)
    else:
        items = list(images)
    if not items:
        raise ImageError(f"{what} is empty; give a folder of images, a list of paths or of arrays")
    for item in items:
        if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
            raise ImageError(f"{what}: {os.fspath(item)!r} is not a file")
    return items


def source_name(item: Any, index: int) -> str:
    """How a result names the image it came from: the path, or ``array[i]``."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"array[{index}]"


def batches(model, items: Sequence, batch_size: int | None = None) -> Iterator[tuple[int, list[Sample]]]:
    """(index of the first item, prepared samples) for consecutive batches of ``items``."""
    size = max(1, int(batch_size or model.batch_size()))
    for start in range(0, len(items), size):
        yield start, [prepare(model, item) for item in items[start:start + size]]
