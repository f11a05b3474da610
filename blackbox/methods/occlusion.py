"""Occlusion (Zeiler & Fergus 2014) with Captum's semantics.

A window (channels x height x width) slides with a stride; window k starts at k * stride and is cut at
the border, with ceil((D - w) / s) + 1 positions per axis. Each occluded input is
``x * (1 - m) + baseline * m``; the attribution of a pixel is the mean, over the windows covering it, of
``f(x) - f(occluded)``.

Windows are evaluated as block masks on a grid of cell size gcd(window, stride), so only a few numbers
per evaluation cross into ONNX Runtime. With ``incremental`` (default "auto") a window's evaluation
instead recomputes the convolutional prefix only around the window (:mod:`blackbox.incremental`): the
same numbers, a fraction of the work. :func:`occlusion_many` evaluates several images' windows in
shared engine batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import incremental as incremental_runner
from ..baselines import make_baseline
from ..errors import ParameterError
from ..masks import block_matrix
from .base import Context, Param, Result, batched, register
from .batching import _CHUNK_ROWS, chunk_rows, in_groups, row_chunks, score_spans, span_slices


def _triple(value, name: str, channels: int, default_hw: tuple[int, int], layout: str = "NCHW") -> tuple[int, int, int]:
    """An int (square window over all channels), (h, w), or a 3-tuple in the layout of the attributions
    ((c, h, w) for NCHW models, (h, w, c) for NHWC, as Captum reads it in the input's own layout);
    returned in the internal order (c, h, w)."""
    if value is None:
        return channels, default_hw[0], default_hw[1]
    if isinstance(value, (int, np.integer)):
        return channels, int(value), int(value)
    values = tuple(int(v) for v in value)
    if len(values) == 2:
        return (channels,) + values
    if len(values) == 3 and layout == "NHWC":
        return values[2], values[0], values[1]
    if len(values) == 3 and layout != "NHW":
        return values
    order = "(height, width)" if layout == "NHW" else \
        "(height, width, channels)" if layout == "NHWC" else "(channels, height, width)"
    raise ParameterError(f"{name} must be an int, (height, width) or {order} for this {layout} model; got {value!r}")


def _geometry(window, stride, shape: tuple[int, int, int], layout: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and stride in the internal order (c, h, w), defaults filled in."""
    channels, height, width = shape
    default = (max(1, round(height / 8)), max(1, round(width / 8)))
    win = _triple(window, "window", channels, default, layout)
    if stride is None:
        return win, (win[0], max(1, win[1] // 2), max(1, win[2] // 2))
    return win, _triple(stride, "stride", win[0], (1, 1), layout)


def _memory(params: dict, shape: tuple[int, int, int], layout: str) -> int:
    """Bytes of the window vectors (``hy``/``hx`` float32, one pair per window) and of one chunk of dense
    cell-grid masks (the several-image path, float32 and a float64 working copy)."""
    win, step = _geometry(params["window"], params["stride"], shape, layout)
    if any(w < 1 or w > size or s < 1 for w, s, size in zip(win, step, shape)):
        return 0  # the method itself says what is wrong
    cells = [math.gcd(w, s) if w != size else w for w, s, size in zip(win, step, shape)]
    count = math.prod(positions(size, w, s) for size, w, s in zip(shape, win, step))
    grid = math.prod(math.ceil(size / c) for size, c in zip(shape[1:], cells[1:]))
    mask_channels = 1 if cells[0] == shape[0] else shape[0]
    vectors = count * (mask_channels * shape[1] + shape[2]) * 4
    return vectors + min(count, 4 * _CHUNK_ROWS) * mask_channels * grid * 12


def _in_layout(values: tuple[int, int, int], layout: str) -> list[int]:
    """(c, h, w) -> the order of the attributions."""
    c, h, w = values
    return [h, w, c] if layout == "NHWC" else [h, w] if layout == "NHW" else [c, h, w]


def positions(size: int, window: int, stride: int) -> int:
    """Number of window positions along one axis, as Captum counts them."""
    return math.ceil((size - window) / stride) + 1


def window_cells(size: int, window: int, stride: int, cell: int) -> np.ndarray:
    """[positions, cells] 0/1 matrix: which grid cells each window position covers (cut at the border)."""
    n_cells = math.ceil(size / cell)
    count = positions(size, window, stride)
    out = np.zeros((count, n_cells), np.float32)
    for k in range(count):
        start, stop = k * stride, min(k * stride + window, size)
        out[k, start // cell: math.ceil(stop / cell)] = 1.0
    return out


@register("occlusion", default_score="logit", kind="perturbation",
          summary="slide a window over the image; score drop when it is hidden (Captum semantics)",
          params={"window": Param(int, min=1, lengths=(2, 3), optional=True),
                  "stride": Param(int, min=1, lengths=(2, 3), optional=True),
                  "incremental": Param(choices=incremental_runner.MODES)},
          memory=_memory)
def occlusion(ctx: Context, *, window=None, stride=None, baseline="mean", incremental="auto") -> Result:
    """``window``/``stride``: int, (h, w), or a 3-tuple in the layout of ``attributions`` — (c, h, w) for
    NCHW models, (h, w, c) for NHWC — like Captum's ``sliding_window_shapes``/``strides``, which follow
    the input's own layout. ``extras`` report them in that layout too. Default window 1/8 of the image
    side, stride half a window. ``baseline``: a number (model space, as Captum), 'zeros', 'mean', 'blur', 'black', 'white', 'gray', an (r, g, b) colour or an array. Default
    'mean' (the image's mean colour): Captum's 0 means black for models fed 0..1 pixels, an unnatural
    patch that can itself raise a score; pass ``baseline=0`` to match Captum exactly.
    Default score: logit (hiding a patch rarely moves a saturated probability; for logit models this is
    the raw output Captum explains).
    ``incremental``: "auto" (default) evaluates each window by recomputing only the layers around it
    (one clean pass keeps the activations, see :mod:`blackbox.incremental`) when the model allows it
    (NCHW, float or float16 input, a convolutional prefix of known ops) and the estimated saving is
    worth it (at least 16 windows, and the patched layers estimated at most 3/4 of the model's
    multiply-adds); True does so whenever the model allows it; False always runs the whole model per window.
    The attributions are the same either way, to float tolerance."""
    plan = plan_windows(ctx.shape, ctx.model.layout, window, stride)
    base = make_baseline(ctx.model, ctx.sample, baseline)
    if incremental_runner.wanted(incremental, ctx.model, plan.count):
        found = _incremental_scores(ctx, plan, base, forced=incremental is True)
        if found is not None:
            return window_result(plan, found[0], found[1], ctx.shape, ctx.model.layout, incremental=True)
    hy, hx = window_vectors(plan)
    with ctx.bar(plan.count + 1, "occlusion") as bar:
        # nothing hidden: the unoccluded score from the same graph
        full = incremental_runner.window_scores(ctx.model, ctx.x, base, np.zeros_like(hy[:1]),
                                                np.zeros_like(hx[:1]), targets=[ctx.target], score=ctx.score)[0, 0]
        bar.update(1)
        occluded = incremental_runner.window_scores(ctx.model, ctx.x, base, hy, hx, targets=[ctx.target],
                                                    score=ctx.score, progress=bar.update)[:, 0]
    return window_result(plan, full, occluded, ctx.shape, ctx.model.layout)


def window_vectors(plan: WindowPlan) -> tuple[np.ndarray, np.ndarray]:
    """Each window as the outer product of its hidden rows (times its channels) and columns: ``hy``
    [K, Cm, H, 1] and ``hx`` [K, 1, 1, W], 0/1 float32 (see :mod:`blackbox.graph.window_masks`)."""
    ac, ah, aw = plan.axes
    rows = ((ah @ plan.ry.T) > 0).astype(np.float32)  # [ph, H]
    cols = ((aw @ plan.rx.T) > 0).astype(np.float32)  # [pw, W]
    a, b, d = plan.positions()
    hy = rows[b][:, None, :, None]
    if ac.shape[1] > 1:  # windows that cut channels
        hy = hy * (ac[a] > 0).astype(np.float32)[:, :, None, None]
    return np.ascontiguousarray(hy), np.ascontiguousarray(cols[d][:, None, None, :])


def window_boxes(hy: np.ndarray, hx: np.ndarray) -> np.ndarray:
    """[K, 4] (row0, row1, col0, col1; end exclusive): the pixels each window hides."""
    rows, cols = hy.max(axis=1)[:, :, 0] > 0, hx[:, 0, 0, :] > 0
    first_rows, first_cols = rows.argmax(axis=1), cols.argmax(axis=1)
    end_rows, end_cols = rows.shape[1] - rows[:, ::-1].argmax(axis=1), cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return np.stack([first_rows, end_rows, first_cols, end_cols], axis=1)


def _incremental_scores(ctx: Context, plan: WindowPlan, base: np.ndarray, forced: bool):
    """(unoccluded score, occluded scores [K]) by incremental inference, or None when it does not apply
    or (``forced`` False) is estimated to save too little. The window rectangles are blended as the
    window graph blends them, ``x + (baseline - x) * hy * hx``, so both paths see the same pixels."""
    model = ctx.model
    x = np.asarray(ctx.x, np.float32)
    diff = np.asarray(base, np.float32).reshape(x.shape) - x
    hy, hx = window_vectors(plan)
    with ctx.bar(plan.count + 1, "occlusion") as bar:
        key = ("occlusion", plan.window, plan.stride, ctx.shape)
        ready = incremental_runner.prepare(model, x, window_boxes(hy, hx), ctx.score, key, strict=forced)
        if ready is None:
            return None
        scores, activations, entry = ready
        if not forced and entry.plan.estimated_ratio > incremental_runner.AUTO_RATIO:
            return None
        bar.update(1)
        (ph, pw), starts = entry.plan.region.size, entry.plan.region.starts

        def patches(start: int, stop: int) -> np.ndarray:
            out = np.empty((stop - start, x.shape[0], ph, pw), np.float32)
            for i, k in enumerate(range(start, stop)):
                r, c = starts[k]
                hidden = hy[k, :, r:r + ph] * hx[k, :, :, c:c + pw]  # [Cm, ph, pw]
                out[i] = x[:, r:r + ph, c:c + pw] + diff[:, r:r + ph, c:c + pw] * hidden
            return out

        occluded = incremental_runner.local_scores(model, activations, entry, patches, targets=[ctx.target],
                                                   progress=bar.update)
    return float(scores[0, ctx.target]), occluded[:, 0]


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one geometry, shared by every image of that shape. A window is an outer product of
    one position per axis, so it is kept as its factors: ``axes`` (channels [pc, Cm], rows [ph, h],
    columns [pw, w]) say which cells each position covers (1 = hidden; Cm is 1 when every window hides
    all channels), window k being position ``divmod`` of k in (pc, ph, pw) order. ``ry`` [H, h] /
    ``rx`` [W, w] are the block matrices that spread cells to pixels. Why factors: a stride that shares
    no divisor with the window makes the cells single pixels, and the dense masks [K, Cm, h, w] of
    window 16 / stride 3 at 224 x 224 would be 1 GB (2 GB more as float64 for the average)."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    ry: np.ndarray
    rx: np.ndarray

    @property
    def count(self) -> int:
        return int(np.prod([a.shape[0] for a in self.axes]))

    def masks(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dense cell-grid masks [n, Cm, h, w] of windows ``start`` .. ``stop`` (a chunk's worth)."""
        ac, ah, aw = self.axes
        a, b, d = self.positions(start, stop)
        return ac[a][:, :, None, None] * ah[b][:, None, :, None] * aw[d][:, None, None, :]

    def positions(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(channel, row, column) position indices of windows ``start`` .. ``stop``."""
        k = np.arange(start, self.count if stop is None else stop)
        a, rest = np.divmod(k, self.axes[1].shape[0] * self.axes[2].shape[0])
        b, d = np.divmod(rest, self.axes[2].shape[0])
        return a, b, d


def plan_windows(shape: tuple[int, int, int], layout: str, window, stride) -> WindowPlan:
    """Check window and stride against the input and lay the windows out as per-axis cell coverage."""
    channels, height, width = shape
    win, step = _geometry(window, stride, shape, layout)
    for axis, (w, s, size) in enumerate(zip(win, step, (channels, height, width))):
        label = ("channels", "height", "width")[axis]
        if w < 1 or w > size:
            raise ParameterError(f"window {label} {w} must be between 1 and the input {label} {size}")
        if s < 1:
            raise ParameterError(f"stride {label} must be at least 1, got {s}")
        if s > w and w != size:
            raise ParameterError(f"stride {label} {s} is larger than the window {label} {w}: pixels would be skipped")
    cells = [math.gcd(w, s) if w != size else w for w, s, size in zip(win, step, shape)]
    ac, ah, aw = (window_cells(size, w, s, c) for size, w, s, c in zip((channels, height, width), win, step, cells))
    # one mask channel hides all channels at once; several are spread to the channels they cover
    if ac.shape[1] > 1:
        ac = ac[:, np.arange(channels) // cells[0]]
    ry = block_matrix(ah.shape[1], height, cells[1])
    rx = block_matrix(aw.shape[1], width, cells[2])
    return WindowPlan(win, step, (ac, ah, aw), ry, rx)


def window_result(plan: WindowPlan, full: float, occluded: np.ndarray, shape: tuple[int, int, int],
                  layout: str, incremental: bool = False) -> Result:
    """Attributions from the unoccluded score and one score per window: the mean drop over the windows
    covering each pixel, computed on the cell grid. ``extras["incremental"]`` says which path scored."""
    ac, ah, aw = (a.astype(np.float64) for a in plan.axes)
    channels, height, width = shape
    diffs = (full - np.asarray(occluded, np.float64)).reshape(ac.shape[0], ah.shape[0], aw.shape[0])
    total = np.einsum("abd,ac,bh,dw->chw", diffs, ac, ah, aw, optimize=True)
    count = np.einsum("c,h,w->chw", ac.sum(axis=0), ah.sum(axis=0), aw.sum(axis=0))
    cell_attr = total / np.maximum(count, 1.0)
    ry, rx = plan.ry, plan.rx
    attributions = (ry @ cell_attr @ rx.T).astype(np.float32)
    if attributions.shape[0] != channels:
        attributions = np.broadcast_to(attributions, (channels, height, width)).copy()
    return Result(attributions=attributions, heatmap=attributions.sum(axis=0), n_evals=plan.count + 1,
                  extras={"window": _in_layout(plan.window, layout), "stride": _in_layout(plan.stride, layout),
                          "incremental": incremental})


@batched("occlusion")
def occlusion_many(contexts: Sequence[Context], *, window=None, stride=None, baseline="mean",
                   incremental="auto") -> list[Result]:
    """:func:`occlusion` for several images: every image's windows (and its unoccluded row) laid end to
    end in full engine batches, each image scored against its own baseline and target. The windows are
    the same for every image of a shape, so they are built once, on the cell grid. Where the incremental
    path applies (``incremental`` as in :func:`occlusion`) each image takes it instead: its batches are
    one image's windows, and it costs less than full evaluation however the batches are filled."""
    return in_groups(contexts, lambda group: _occlusion_group(group, window, stride, baseline, incremental))


def _occlusion_group(contexts: list[Context], window, stride, baseline, incremental) -> list[Result]:
    first = contexts[0]
    layout = first.model.layout
    plan = plan_windows(first.shape, layout, window, stride)
    baselines = [make_baseline(ctx.model, ctx.sample, baseline) for ctx in contexts]
    done: list[Result] = []
    if incremental_runner.wanted(incremental, first.model, plan.count):
        for ctx, base in zip(contexts, baselines):  # one model and geometry: the choice is the same for all
            found = _incremental_scores(ctx, plan, base, forced=incremental is True)
            if found is None:
                break
            done.append(window_result(plan, found[0], found[1], ctx.shape, layout, incremental=True))
    if len(done) == len(contexts):
        return done
    return done + _full_group(contexts[len(done):], baselines[len(done):], plan)


def _full_group(contexts: list[Context], baselines: list[np.ndarray], plan: WindowPlan) -> list[Result]:
    first = contexts[0]
    layout = first.model.layout
    # row 0 of every image: nothing hidden (keep = 1 exactly, as the one-image form's ones mask)
    rows = plan.count + 1

    def keep(start: int, stop: int) -> np.ndarray:  # row 0: nothing hidden; row k: window k - 1 hidden
        out = 1.0 - plan.masks(max(start - 1, 0), stop - 1)
        if start == 0:
            out = np.concatenate([np.ones((1,) + out.shape[1:], np.float32), out])
        return out.astype(np.float32, copy=False)

    scores = [np.empty(rows, np.float32) for _ in contexts]
    with first.bar(rows * len(contexts), "occlusion") as bar:
        for spans in row_chunks([rows] * len(contexts), chunk_rows(first.model.batch_size())):
            masks = np.concatenate([keep(start, stop) for _, start, stop in spans])
            out = score_spans(contexts, baselines, spans, masks, ry=plan.ry, rx=plan.rx, progress=bar.update)
            for image, start, stop, where in span_slices(spans):
                scores[image][start:stop] = out[where]
    return [window_result(plan, s[0], s[1:], first.shape, layout) for s in scores]
