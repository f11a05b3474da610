"""Receptive fields of a layer's units, computed analytically by walking the graph from the input.

Why analytic rather than empirical (the support of one neuron's gradient)? The gradient support depends
on the input (a ReLU that is off cuts a path, so a neuron's support on one picture is smaller than its
field) and it needs a gradient rule for every op on the path, while the walk needs neither: forward-only
views (``top_activations(..., projections=False)``) must work on any model. The tests check that the two
agree where gradients exist.

Per tensor and per spatial axis the walk keeps ``(size, stride, offset)`` in model-input pixels: the unit
at position ``i`` sees input pixels ``[offset + i * stride, offset + i * stride + size)`` (before clipping
to the picture). Rules:

* ``Conv`` / ``MaxPool`` / ``AveragePool`` / ``LpPool`` (kernel ``k``, stride ``s``, begin pad ``p``,
  dilation ``d``; ``auto_pad`` resolved from the input size): ``size += (d (k - 1)) * stride``,
  ``offset -= p * stride``, ``stride *= s``;
* ``Pad`` with constant pads: ``offset -= pad_begin * stride``;
* ``Transpose`` moves the spatial axes with the permutation;
* any other op whose spatial output size equals its inputs' (activations, BatchNormalization, the
  clip/scale/round steps of a dequantized copy, Add, Mul, Concat, Sin...) keeps the field, the union over
  its inputs (the max over branches);
* anything else that changes the spatial size (global pooling, Resize, ConvTranspose, Slice, ...) is taken
  as seeing the whole input: a conservative answer, never a field too small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
from onnx import helper, numpy_helper

from ..errors import ParameterError
from ..graph.layers import tensor_shapes

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["ReceptiveField", "receptive_field"]

_WINDOWED = {"Conv", "MaxPool", "AveragePool", "LpPool"}


@dataclass(frozen=True)
class ReceptiveField:
    """The input region a unit at (y, x) of a layer sees, in model-input pixels (internal H x W).

    ``whole`` marks a layer whose units see the entire input (stride and offset are then unused)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: tuple[int, int]
    whole: bool = False

    def box(self, y: int, x: int, *, clip: bool = True) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1), pixel edges, of the unit at layer position (y, x); clipped to the input."""
        h, w = self.input_size
        if self.whole:
            return 0, 0, h, w
        y0 = self.offset[0] + y * self.stride[0]
        x0 = self.offset[1] + x * self.stride[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if not clip:
            return y0, x0, y1, x1
        return max(0, y0), max(0, x0), min(h, y1), min(w, x1)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "stride": list(self.stride), "offset": list(self.offset),
                "whole": self.whole}


@dataclass(frozen=True)
class _Axis:
    size: int
    stride: int
    offset: int


@dataclass(frozen=True)
class _Field:
    """A tensor's field during the walk: per spatial axis, and where those axes sit in the tensor."""

    axes: tuple[int, int]  # tensor axes holding (y, x)
    y: _Axis | None  # None: sees the whole input
    x: _Axis | None

    @property
    def whole(self) -> bool:
        return self.y is None or self.x is None


def receptive_field(model: Model, layer: str) -> ReceptiveField:
    """The receptive field of the units of ``layer`` (a name :meth:`Model.layer` knows)."""
    tensor = model.layer(layer).tensor
    graph = model.float_graph()
    shapes = _shapes(graph)
    h, w = model.image.height, model.image.width
    layout = model.image.layout or "NCHW"
    start = _Field((1, 2) if layout == "NHWC" else (2, 3), _Axis(1, 1, 0), _Axis(1, 1, 0))
    fields: dict[str, _Field] = {model.image.name: start}
    constants = _constants(graph)
    for node in graph.graph.node:
        carried = [fields[i] for i in node.input if i in fields]
        if not carried:
            continue
        for out in node.output:
            fields[out] = _through(node, carried, shapes, constants)
        if tensor in node.output:
            break
    if tensor not in fields:
        raise ParameterError(f"layer {layer!r} does not depend on the model input; it has no receptive field")
    found = fields[tensor]
    if found.whole:
        return ReceptiveField((h, w), (0, 0), (0, 0), (h, w), whole=True)
    return ReceptiveField((found.y.size, found.x.size), (found.y.stride, found.x.stride),
                          (found.y.offset, found.x.offset), (h, w))


# ------------------------------------------------------------------ the walk

def _shapes(graph: onnx.ModelProto) -> dict[str, list]:
    """Per tensor its inferred dims (batch 1), the inputs' and initializers' included."""
    shapes = dict(tensor_shapes(graph, probe=False))  # an unknown size counts as kept: no run needed
    for value in graph.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        shapes.setdefault(value.name, dims)
    for init in graph.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _constants(graph: onnx.ModelProto) -> dict[str, list[int]]:
    """Small integer constants (Pad's pads) from initializers and Constant nodes."""
    out = {}
    for init in graph.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and len(init.dims) == 1:
            out[init.name] = [int(v) for v in numpy_helper.to_array(init)]
    for node in graph.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.INT64:
                    out[node.output[0]] = [int(v) for v in numpy_helper.to_array(attr.t).ravel()]
    return out


def _through(node: onnx.NodeProto, carried: list[_Field], shapes: dict, constants: dict) -> _Field:
    """The field of the node's output, from the fields of its inputs that depend on the picture."""
    if any(f.whole for f in carried):
        return _whole(carried[0])
    if node.op_type in _WINDOWED:
        return _windowed(node, carried[0], shapes)
    if node.op_type == "Transpose":
        perm = list(_attrs(node).get("perm") or reversed(range(len(shapes.get(node.input[0]) or [0] * 4))))
        f = carried[0]
        return _Field((perm.index(f.axes[0]), perm.index(f.axes[1])), f.y, f.x)
    if node.op_type == "Pad":
        return _padded(node, carried[0], constants)
    if not _same_spatial(node, carried, shapes):
        return _whole(carried[0])
    return _union(carried)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _whole(f: _Field) -> _Field:
    return _Field(f.axes, None, None)


def _spatial(dims: list | None, axes: tuple[int, int]) -> tuple | None:
    if not dims or len(dims) <= max(axes):
        return None
    return dims[axes[0]], dims[axes[1]]


def _same_spatial(node: onnx.NodeProto, carried: list[_Field], shapes: dict) -> bool:
    """Whether the op keeps the spatial grid: every picture-dependent input has the output's H x W
    (an unknown output shape counts as kept: shape inference skips mostly elementwise helpers)."""
    axes = carried[0].axes
    out = _spatial(shapes.get(node.output[0]), axes)
    if out is None:
        return True
    ins = [_spatial(shapes.get(i), axes) for i in node.input if i in shapes]
    return all(s is None or s == out for s in ins) and any(s == out for s in ins)


def _union(carried: list[_Field]) -> _Field:
    """Branches meeting elementwise or in a Concat: the smallest field holding each branch's field."""
    first = carried[0]
    axes = []
    for pick in (lambda f: f.y, lambda f: f.x):
        parts = [pick(f) for f in carried]
        if len({p.stride for p in parts}) > 1:
            return _whole(first)
        lo = min(p.offset for p in parts)
        hi = max(p.offset + p.size for p in parts)
        axes.append(_Axis(hi - lo, parts[0].stride, lo))
    return _Field(first.axes, axes[0], axes[1])


def _windowed(node: onnx.NodeProto, f: _Field, shapes: dict) -> _Field:
    """Conv and pooling windows (ONNX: NCHW, spatial axes 2 and 3)."""
    if f.axes != (2, 3):
        return _whole(f)
    a = _attrs(node)
    kernel = a.get("kernel_shape")
    if kernel is None and len(node.input) > 1:
        weight = shapes.get(node.input[1])
        kernel = weight[2:] if weight and len(weight) == 4 else None
    if kernel is None or len(kernel) != 2 or not all(isinstance(k, int) for k in kernel):
        return _whole(f)
    strides = a.get("strides") or [1, 1]
    dilations = a.get("dilations") or [1, 1]
    begins = _begin_pads(a, kernel, strides, dilations, _spatial(shapes.get(node.input[0]), (2, 3)))
    if begins is None:
        return _whole(f)
    out = []
    for axis, k, s, d, p in zip((f.y, f.x), kernel, strides, dilations, begins):
        out.append(_Axis(axis.size + d * (k - 1) * axis.stride, axis.stride * s, axis.offset - p * axis.stride))
    return _Field((2, 3), out[0], out[1])


def _begin_pads(a: dict, kernel, strides, dilations, size) -> list[int] | None:
    """The padding before each spatial axis, explicit or from ``auto_pad``."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        pads = a.get("pads") or [0, 0, 0, 0]
        return [int(pads[0]), int(pads[1])]
    if auto == "VALID":
        return [0, 0]
    if size is None or not all(isinstance(n, int) for n in size):
        return None
    begins = []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    return begins


def _padded(node: onnx.NodeProto, f: _Field, constants: dict) -> _Field:
    """A constant-pads Pad shifts the grid; pads it cannot read make the field whole (conservative)."""
    pads = _attrs(node).get("pads")
    if pads is None and len(node.input) > 1:
        pads = constants.get(node.input[1])
    if pads is None or len(pads) % 2 or len(pads) // 2 <= max(f.axes):
        return _whole(f)
    if len(node.input) > 3 and node.input[3]:  # pads on chosen axes only (opset 18): not read here
        return _whole(f)
    py, px = int(pads[f.axes[0]]), int(pads[f.axes[1]])
    return _Field(f.axes, _Axis(f.y.size, f.y.stride, f.y.offset - py * f.y.stride),
                  _Axis(f.x.size, f.x.stride, f.x.offset - px * f.x.stride))
