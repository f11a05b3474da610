"""How a tensor's values lie over the image: an NCHW map, a channel-last NHWC map, or tokens.

A tensor's shape alone cannot tell: an attention tensor [N, heads, T, T] looks like an NCHW map, a
Swin window batch [N * windows, 49, C] like a token sequence. So layouts are followed along the data
flow from the image input, one table entry per kind of op: maps stay maps through convolutions,
activations, normalisations and slicing; a flattened NCHW map transposed to [N, H*W, C] becomes tokens
whose grid is that map's (the patch embedding's stride on the input size); a class or distillation
token concatenated in front adds to ``extra``; tokens reshaped to [N, h, w, C] become a channel-last
map. Anything else (reshapes to heads or windows, products of two activations) loses the layout.

A :class:`Reading` turns a tensor's values into maps [N, C, h, w], the way pytorch-grad-cam's
``reshape_transform`` does by hand for ViT and Swin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

NCHW, NHWC, TOKENS = "nchw", "nhwc", "tokens"
LAYOUTS = (NCHW, NHWC, TOKENS)  # the spatial readings a user can ask for
_NCT = "nct"  # internal: a flattened NCHW map [N, C, extra + h*w], on its way to tokens
_NHW = "nhw"  # internal: a single-channel image [N, H, W]
_NGCHW = "ngchw"  # internal: an NCHW map with its channels split over several axes (ShuffleNet's shuffle)
MAX_EXTRA = 4  # class/distillation/register tokens in front of the patch tokens, at most


@dataclass(frozen=True)
class Tag:
    """The layout of one tensor (batch axis included in ``shape``): ``grid`` = (h, w) of its positions,
    ``extra`` = leading non-patch tokens (tokens only)."""

    layout: str
    grid: tuple[int, int]
    extra: int = 0


@dataclass(frozen=True)
class Reading:
    """How per-sample values of one shape read as maps [C, h, w]."""

    layout: str
    grid: tuple[int, int]
    extra: int = 0

    def maps(self, values: np.ndarray) -> np.ndarray:
        """[N, *shape] -> [N, C, h, w] (tokens: the ``extra`` leading ones dropped)."""
        values = np.asarray(values)
        h, w = self.grid
        if self.layout == NCHW:
            return values
        if self.layout == NHWC:
            return values.transpose(0, 3, 1, 2)
        patches = values[:, self.extra:]
        return patches.reshape(len(values), h, w, patches.shape[-1]).transpose(0, 3, 1, 2)

    def unmaps(self, maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """The inverse of :meth:`maps` into per-sample ``shape`` (tokens: zeros at the extra tokens):
        what a seed or mask given per map position is in the tensor's own layout."""
        maps = np.asarray(maps)
        if self.layout == NCHW:
            return maps
        if self.layout == NHWC:
            return maps.transpose(0, 2, 3, 1)
        out = np.zeros((len(maps), *shape), maps.dtype)
        out[:, self.extra:] = maps.transpose(0, 2, 3, 1).reshape(len(maps), -1, maps.shape[1])
        return out

    def channels(self, shape: Sequence[int]) -> int:
        return int(shape[0] if self.layout == NCHW else shape[-1])


# ------------------------------------------------------------------------------------------ tagging
def _map_grid(layout: str, shape: Sequence[int]) -> tuple[int, int] | None:
    if len(shape) != 4:
        return None
    return (shape[2], shape[3]) if layout == NCHW else (shape[1], shape[2])


def _fits(tag: Tag, shape: Sequence[int]) -> Tag | None:
    """``tag`` re-derived for an output of ``shape``, or None when the shape cannot hold it."""
    if any(not isinstance(d, int) for d in shape):
        return None
    if tag.layout in (NCHW, NHWC):
        grid = _map_grid(tag.layout, shape)
        return Tag(tag.layout, grid) if grid else None
    if tag.layout == _NHW:
        return Tag(_NHW, (shape[1], shape[2])) if len(shape) == 3 else None
    if tag.layout == _NGCHW:
        return Tag(_NGCHW, (shape[-2], shape[-1])) if len(shape) > 4 else None
    if len(shape) != 3:
        return None
    count = shape[1] if tag.layout == TOKENS else shape[2]
    patches = tag.grid[0] * tag.grid[1]
    if count == tag.extra + patches:
        return tag
    return Tag(tag.layout, tag.grid) if count == patches else None  # the leading tokens sliced off


def _transpose(node, tags, shapes, consts):
    tag = tags.get(node.input[0])
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    if tag is None or perm is None:
        return None
    moves = {(NCHW, (0, 2, 3, 1)): NHWC, (NHWC, (0, 3, 1, 2)): NCHW, (TOKENS, (0, 2, 1)): _NCT,
             (_NCT, (0, 2, 1)): TOKENS}
    rank = len(perm)
    if tag.layout == _NGCHW and perm[0] == 0 and perm[-2:] == [rank - 2, rank - 1]:
        return tag  # channel groups swapped, positions untouched
    layout = moves.get((tag.layout, tuple(perm)))
    if layout is None:
        return None
    if layout in (NCHW, NHWC):
        return Tag(layout, tag.grid)
    return Tag(layout, tag.grid, tag.extra)


def _reshape(node, tags, shapes, consts):
    """Reinterpretations (Reshape, Flatten, Squeeze, Unsqueeze) that keep positions recognisable."""
    tag, before, after = tags.get(node.input[0]), shapes.get(node.input[0]), shapes.get(node.output[0])
    if tag is None or not before or not after or len(before) < 3:
        return None
    n, h, w = before[0], *tag.grid
    if list(after) == list(before):
        return tag
    if tag.layout == NCHW and list(after) == [n, before[1], h * w]:
        return Tag(_NCT, tag.grid)
    if tag.layout in (NCHW, _NGCHW) and len(after) >= 4 and after[0] == n and list(after[-2:]) == [h, w]:
        return Tag(NCHW if len(after) == 4 else _NGCHW, tag.grid)  # channels split into groups or joined
    if tag.layout == NHWC and list(after) == [n, h * w, before[3]]:
        return Tag(TOKENS, tag.grid)
    if tag.layout in (TOKENS, _NCT) and tag.extra == 0 and len(after) == 4:
        c = before[2] if tag.layout == TOKENS else before[1]
        if tag.layout == TOKENS and after[0] == n and after[3] == c and after[1] * after[2] == h * w:
            return Tag(NHWC, (after[1], after[2]))
        if tag.layout == _NCT and after[0] == n and after[1] == c and after[2] * after[3] == h * w:
            return Tag(NCHW, (after[2], after[3]))
    if tag.layout == _NHW and list(after) == [n, 1, h, w]:
        return Tag(NCHW, tag.grid)
    if tag.layout == _NHW and list(after) == [n, h, w, 1]:
        return Tag(NHWC, tag.grid)
    return None


def _concat(node, tags, shapes, consts):
    """Channels joined; a map's pieces joined along a spatial axis (``torch.roll``); class and
    distillation tokens put in front of the patch tokens."""
    out = shapes.get(node.output[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    parts = [(tags.get(name), shapes.get(name)) for name in node.input]
    tagged = [t for t, _ in parts if t is not None]
    if not tagged or not out:
        return None
    axis = axis % len(out)
    first = tagged[0]
    if first.layout == TOKENS and axis == 1:
        if len(tagged) != 1 or parts[-1][0] is None or any(s is None for _, s in parts):
            return None  # several patch sequences, or tokens appended after the patches
        lead = sum(s[1] for _, s in parts[:-1])
        return _fits(Tag(TOKENS, first.grid, first.extra + lead), out)
    if any(t is not None and t.layout != first.layout for t, _ in parts):
        return None
    return _fits(first, out)


def _matmul(node, tags, shapes, consts):
    """Tokens or a channel-last map times a weight matrix: the channel axis changes, positions stay."""
    tag = tags.get(node.input[0])
    if tag is None or tag.layout not in (TOKENS, NHWC) or node.input[1] not in consts:
        return None
    return _fits(tag, shapes.get(node.output[0]) or [])


def _same_rank(node, tags, shapes, consts):
    """Element-wise ops, convolutions, pooling, normalisations, slicing, padding: the output keeps the
    layout of an input of its rank (the one of its exact shape first: a gate [N, C, 1, 1] times a map is
    the map)."""
    results = []
    for out in node.output:
        shape = shapes.get(out)
        if not shape:
            results.append(None)
            continue
        candidates = [(tags[i], shapes.get(i)) for i in node.input if i in tags]
        candidates.sort(key=lambda c: list(c[1] or []) != list(shape))
        found = None
        for tag, before in candidates:
            if before and len(before) == len(shape):
                found = _fits(tag, shape)
                if found is not None:
                    break
        results.append(found)
    return results


def _gather(node, tags, shapes, consts):
    """Channels picked from a map (Inception's ``transform_input`` reads x[:, 0]): still a map, or a
    single-channel one [N, h, w] when the index is a scalar."""
    tag, out = tags.get(node.input[0]), shapes.get(node.output[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if tag is None or tag.layout not in (NCHW, NHWC) or not out:
        return None
    if axis % 4 != (1 if tag.layout == NCHW else 3):
        return None
    if len(out) == 3:
        return Tag(_NHW, tag.grid) if tuple(out[1:]) == tag.grid else None
    return _fits(tag, out)


_LOSES = {"MatMulInteger", "Einsum", "Gemm", "GatherElements", "GatherND", "Shape", "Size", "ArgMax", "ArgMin",
          "TopK", "NonZero", "Tile", "Expand"}
_RULES: dict[str, Callable] = {"Transpose": _transpose, "Reshape": _reshape, "Flatten": _reshape,
                               "Squeeze": _reshape, "Unsqueeze": _reshape, "Concat": _concat, "MatMul": _matmul,
                               "Gather": _gather}


def image_tag(shape: Sequence) -> Tag | None:
    """The model input's layout from its shape (batch axis included), as the loader reads it."""
    if any(not isinstance(d, int) for d in shape[1:]):
        return None
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return Tag(NCHW, (shape[2], shape[3]))
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return Tag(NHWC, (shape[1], shape[2]))
    if len(shape) == 3:
        return Tag(_NHW, (shape[1], shape[2]))
    return None


def follow_layouts(model: onnx.ModelProto, shapes: Mapping[str, list]) -> dict[str, Tag]:
    """Tags of every tensor whose positions descend from the image input's, in one pass in graph order.
    ``shapes``: tensor -> dims with the batch axis (ints where known)."""
    graph = model.graph
    consts = {init.name for init in graph.initializer} | \
        {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    tags: dict[str, Tag] = {}
    for value in graph.input:
        if value.name in consts:
            continue
        tag = image_tag(shapes.get(value.name) or [])
        if tag is not None:
            tags[value.name] = tag
    for node in graph.node:
        if not any(name in tags for name in node.input) or node.op_type in _LOSES:
            continue
        rule = _RULES.get(node.op_type)
        found = rule(node, tags, shapes, consts) if rule else _same_rank(node, tags, shapes, consts)
        outputs = found if isinstance(found, list) else [found] + [None] * (len(node.output) - 1)
        for name, tag in zip(node.output, outputs):
            if tag is not None and name:
                tags[name] = tag
    return tags


def public_tag(tag: Tag | None) -> Tag | None:
    """The tag a user sees: internal layouts (flattened maps, single-channel images) are not readings."""
    return tag if tag is not None and tag.layout in LAYOUTS else None


# ------------------------------------------------------------------------------------------ readings
def _token_grid(count: int, image: tuple[int, int] | None, hint: tuple[int, int] | None):
    """(extra, grid) for ``count`` tokens: the model's patch grid when known, else the grid with the
    image's aspect ratio (a square for a square image); None unless exactly one choice fits."""
    found = []
    for extra in range(MAX_EXTRA + 1):
        n = count - extra
        if n < 2:
            break
        if hint is not None:
            if hint[0] * hint[1] == n:
                found.append((extra, hint))
            continue
        for h in range(1, n + 1):
            if n % h == 0 and (image is None and h * h == n or image is not None and h * image[1] == (n // h) * image[0]):
                found.append((extra, (h, n // h)))
    return found[0] if len(found) == 1 else None


def readings(shape: Sequence, tag: Tag | None, *, image: tuple[int, int] | None = None,
             grid: tuple[int, int] | None = None) -> dict[str, Reading]:
    """Every spatial reading of a per-sample ``shape``: its own layout when the data flow gave it one
    (first), and each layout the shape can hold (NCHW [C, h, w], NHWC [h, w, C], tokens [extra + h*w, C] with
    the model's patch ``grid`` or the ``image`` aspect), with more than one position."""
    out: dict[str, Reading] = {}
    if tag is not None and tag.layout in LAYOUTS and tag.grid[0] * tag.grid[1] > 1:
        out[tag.layout] = Reading(tag.layout, tag.grid, tag.extra)
    if any(not isinstance(d, int) for d in shape):
        return out
    if len(shape) == 3:
        if shape[1] * shape[2] > 1:
            out.setdefault(NCHW, Reading(NCHW, (shape[1], shape[2])))
        if shape[0] * shape[1] > 1:
            out.setdefault(NHWC, Reading(NHWC, (shape[0], shape[1])))
    if len(shape) == 2 and TOKENS not in out:
        found = _token_grid(shape[0], image, grid)
        if found is not None:
            out[TOKENS] = Reading(TOKENS, found[1], found[0])
    return out
