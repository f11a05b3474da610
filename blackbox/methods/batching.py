"""Rows of several images in one stream of engine batches: the plumbing of the batched perturbation methods.

A batched method lays its images' mask rows end to end (image 0's rows, then image 1's, ...) and walks
them in chunks of whole engine batches, so every ONNX Runtime call but the last is full even when one
image's masks would not fill a batch. Each chunk is a list of spans ``(image, start, stop)``: rows
``start..stop`` of that image. Only one chunk of masks exists at a time, so memory stays flat in the
number of images.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np

from .base import Context, Result

Span = tuple[int, int, int]  # (image, start, stop): rows start..stop of that image

# rows per chunk: at least this many (few Python round trips), always whole engine batches
_CHUNK_ROWS = 256


def chunk_rows(batch_size: int) -> int:
    """Rows per chunk: a multiple of the engine batch, so chunk boundaries never leave a batch part-full."""
    batch_size = max(1, int(batch_size))
    return batch_size * max(4, math.ceil(_CHUNK_ROWS / batch_size))


def row_chunks(counts: Sequence[int], size: int) -> Iterator[list[Span]]:
    """The rows of images with ``counts[i]`` rows each, image after image, in chunks of ``size`` rows."""
    chunk: list[Span] = []
    room = size
    for image, count in enumerate(counts):
        start = 0
        while start < count:
            stop = min(count, start + room)
            chunk.append((image, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def score_spans(contexts: Sequence[Context], baselines: Sequence[np.ndarray], spans: Sequence[Span],
                masks: np.ndarray, *, ry: np.ndarray, rx: np.ndarray,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Target scores [n] of one chunk: ``masks`` [n, Cm, h, w] are the spans' rows in order, each scored
    against its own image, baseline and target. Only the chunk's images are sent to the engine."""
    images = sorted({image for image, _, _ in spans})
    local = {image: k for k, image in enumerate(images)}
    rows = np.concatenate([np.full(stop - start, local[image], np.int64) for image, start, stop in spans])
    model = contexts[0].model
    return model.score_masks_many(
        np.stack([contexts[i].x for i in images]), masks, rows=rows,
        baselines=np.stack([np.broadcast_to(baselines[i], contexts[i].x.shape) for i in images]),
        targets=[contexts[i].target for i in images], score=contexts[0].score, ry=ry, rx=rx,
        progress=progress)[:, 0]


def span_slices(spans: Sequence[Span]) -> Iterator[tuple[int, int, int, slice]]:
    """(image, start, stop, where the span's rows lie in the chunk) for each span."""
    offset = 0
    for image, start, stop in spans:
        yield image, start, stop, slice(offset, offset + stop - start)
        offset += stop - start


def in_groups(contexts: Sequence[Context], run: Callable[[list[Context]], list[Result]]) -> list[Result]:
    """``run`` on each group of contexts that can share engine calls (same model, score space and input
    shape), results back in the contexts' order."""
    groups: dict[tuple, list[int]] = {}
    for index, ctx in enumerate(contexts):
        groups.setdefault((id(ctx.model), ctx.score, ctx.shape), []).append(index)
    results: list[Result | None] = [None] * len(contexts)
    for indices in groups.values():
        for index, result in zip(indices, run([contexts[i] for i in indices])):
            results[index] = result
    return results  # type: ignore[return-value]
