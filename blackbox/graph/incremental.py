"""Incremental inference for local perturbations: compute each layer only where the input changed.

An occluded image differs from the clean one only inside a window. Through the convolutional prefix of
a network the changed region grows by each kernel's reach and shrinks by its stride; everything outside
it equals the clean activations (Krypton, Nakandala et al. 2019). :func:`incremental_graph` rewrites a
model so that, per batch of perturbed samples, every known layer runs on a small patch per sample:

* a patch holds the values of one fixed-size rectangle per sample (per-sample position, fixed size, so
  one tensor [N, C, h, w] holds the batch); its positions are known in advance, in NumPy;
* a spatial layer (Conv, QLinearConv, MaxPool, AveragePool) reads the rectangle of input it needs from
  ``Concat([clean pixels, one padding pixel, the batch's patch pixels])`` (pixels as rows of C
  values) with one ``Gather`` of per-sample indices made in NumPy (Gather, Concat, Transpose and
  Reshape exist in every opset and for every dtype), then runs unpadded on it; pointwise layers run on the patch as it is; two-input layers (residual Add, Concat of
  branches) first bring both patches to their common rectangle the same way;
* the first layer whose rectangle would cover most of its map, or an op the transform does not know,
  runs as in the original graph, on full maps: the clean activation with each sample's patch pasted in
  (the same Gather over the whole map).

Exact: every output value is computed from the same input values by the same op, so results equal full
evaluation to float tolerance. The rectangles depend on the windows, so a graph is built per window
layout (:class:`IncrementalPlan`), and the clean activations come from one forward pass of the model
(shapes and values), which the caller runs. Pure ONNX -> ONNX, no ONNX Runtime inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_utils import DEFAULT_DOMAINS, finish_model, get_attr

PREFIX = "blackbox/inc/"
PATCH = PREFIX + "patch"  # float32 [N, C, P, Q]: the perturbed input rectangle of every sample
COVER = 0.8  # a layer whose rectangle covers this fraction of its map runs on full maps

_POINTWISE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
              "Softplus", "Neg", "Abs", "Exp", "Identity", "Cast", "Dropout", "BatchNormalization",
              "QuantizeLinear", "DequantizeLinear", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum",
              "PRelu", "Erf", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Gelu"}
_TWO_MAPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Concat", "QLinearAdd", "QLinearMul"}
_SPATIAL = {"Conv", "QLinearConv", "MaxPool", "AveragePool"}
_MS = "com.microsoft"


@dataclass(frozen=True)
class Region:
    """A fixed-size rectangle per sample: ``starts`` [K, 2] (row, column) inside a map of ``shape``."""

    starts: np.ndarray
    size: tuple[int, int]
    shape: tuple[int, int]

    @property
    def covers(self) -> float:
        return self.size[0] * self.size[1] / (self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class Gather:
    """One read of a rectangle ``size`` at per-sample origins (``rows``, ``columns`` [K]) from a tensor
    whose patches lie at ``source``; its indices are made per batch (a [K, R, S] table for every read
    of a stride-1 occlusion would take gigabytes)."""

    source: Region
    rows: np.ndarray
    cols: np.ndarray
    size: tuple[int, int]

    def indices(self, start: int, stop: int) -> np.ndarray:
        """int64 [n, R, S] into ``[clean pixels, padding, the batch's patch pixels]`` for samples
        ``start:stop``: patch pixels of sample i are rows ``H*W + 1 + i*h*w + ...``."""
        src = self.source
        (height, width), (ph, pw) = src.shape, src.size
        y = self.rows[start:stop, None] + np.arange(self.size[0])  # [n, R]
        x = self.cols[start:stop, None] + np.arange(self.size[1])  # [n, S]
        inside = ((y >= 0) & (y < height))[:, :, None] & ((x >= 0) & (x < width))[:, None, :]
        py, px = y - src.starts[start:stop, :1], x - src.starts[start:stop, 1:]
        in_patch = ((py >= 0) & (py < ph))[:, :, None] & ((px >= 0) & (px < pw))[:, None, :]
        sample = (np.arange(stop - start) * (ph * pw)).reshape(-1, 1, 1)
        patch = height * width + 1 + sample + py[:, :, None] * pw + px[:, None, :]
        clean = y[:, :, None] * width + x[:, None, :]
        return np.where(inside, np.where(in_patch, patch, clean), height * width).astype(np.int64)


@dataclass
class IncrementalPlan:
    """The rewritten graph and what its caller feeds it.

    ``model`` takes :data:`PATCH` float32 [N, C, P, Q] (the perturbed input rectangles), one clean
    input per ``clean`` entry (name -> (tensor, padding value): feed :func:`clean_feeds`), one int64
    index input per ``indices`` entry (feed :meth:`batch_indices`), and the original model's other
    inputs; it returns the original model's outputs. ``macs``: (patched, full) multiply-accumulates per
    sample, the basis of the gain estimate."""

    model: onnx.ModelProto
    region: Region
    clean: dict[str, tuple[str, float]]
    indices: dict[str, Gather] = field(default_factory=dict)
    macs: tuple[float, float] = (0.0, 0.0)
    patched_nodes: int = 0

    @property
    def estimated_ratio(self) -> float:
        """Estimated cost per sample relative to full evaluation (MACs of the layers that remain)."""
        patched, full = self.macs
        return patched / full if full else 1.0

    def batch_indices(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Index inputs for samples ``start:stop`` evaluated as one batch."""
        return {name: read.indices(start, stop) for name, read in self.indices.items()}


def clean_feeds(plan: IncrementalPlan, activations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The clean inputs of ``plan`` from batch-1 activations: [H*W + 1, C], the map's pixels as rows with
    the consuming layer's padding value appended (the one row every out-of-map index points at)."""
    feeds = {}
    for name, (tensor, pad) in plan.clean.items():
        value = np.asarray(activations[tensor])
        flat = value.reshape(value.shape[1], -1).T
        feeds[name] = np.ascontiguousarray(
            np.concatenate([flat, np.full((1, flat.shape[1]), pad, dtype=flat.dtype)], axis=0))
    return feeds


def fit(lo: np.ndarray, hi: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """One fixed-size span per sample that holds [lo, hi] (inclusive) inside [0, limit)."""
    lo = np.clip(lo, 0, limit - 1)
    hi = np.clip(hi, 0, limit - 1)
    size = int(min(limit, max(1, int(np.max(hi - lo + 1)))))
    return np.clip(lo, 0, limit - size).astype(np.int64), size


def input_region(boxes: np.ndarray, shape: tuple[int, int]) -> Region:
    """The input rectangle of each sample from its changed box [K, 4] (row0, row1, col0, col1; end
    exclusive), all of one size."""
    rows, height = fit(boxes[:, 0], boxes[:, 1] - 1, shape[0])
    cols, width = fit(boxes[:, 2], boxes[:, 3] - 1, shape[1])
    return Region(np.stack([rows, cols], axis=1), (height, width), shape)


# ------------------------------------------------------------------------------------ the rewrite
class _Rewriter:
    def __init__(self, model: onnx.ModelProto, image: str, shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
                 region: Region, cover: float):
        self.model, self.image, self.shapes, self.cover = model, image, shapes, cover
        graph = model.graph
        self.inits = {t.name: t for t in graph.initializer}
        self.consts = {n.output[0]: get_attr(n, "value") for n in graph.node if n.op_type == "Constant"}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.patches: dict[str, tuple[str, Region]] = {image: (PATCH + "/model", region)}
        self.full: set[str] = set()  # image-dependent tensors present as full maps (original names)
        self.plan = IncrementalPlan(model, region, {})
        self.count = 0
        self.flat: dict[str, str] = {}
        self.macs_patched = 0.0
        self.macs_full = 0.0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attrs))
        return out

    def constant(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.consts:
            return numpy_helper.to_array(self.consts[name])
        return None

    def map_shape(self, name: str) -> tuple[int, int] | None:
        shape = self.shapes.get(name, (None, None))[0]
        return None if shape is None or len(shape) != 4 else (int(shape[2]), int(shape[3]))

    # -------------------------------------------------------------- patch sources and gathers
    def clean_input(self, tensor: str, pad: float) -> str:
        key = f"{PREFIX}clean/{tensor}/{pad!r}"
        self.plan.clean.setdefault(key, (tensor, pad))
        return key

    def patch_flat(self, tensor: str) -> str:
        """The batch's patches of ``tensor`` as [N * h * w, C]: one contiguous row per pixel to gather."""
        if tensor not in self.flat:
            patch, _ = self.patches[tensor]
            moved = self.op("Transpose", [patch], "nhwc", perm=[0, 2, 3, 1])
            channels = int(self.shapes[tensor][0][1])
            shape = self.constant("pixels", np.array([-1, channels], np.int64))
            self.flat[tensor] = self.op("Reshape", [moved, shape], "flat")
        return self.flat[tensor]

    def gather(self, tensor: str, rows: np.ndarray, cols: np.ndarray, size: tuple[int, int], pad: float,
               hint: str) -> str:
        """[N, C, size] read from ``tensor`` at per-sample origins (rows, cols): patch values inside its
        rectangle, clean values elsewhere in the map, ``pad`` outside it."""
        _, src = self.patches[tensor]
        name = self.fresh(f"index_{hint}")
        self.plan.indices[name] = Gather(src, np.asarray(rows, np.int64), np.asarray(cols, np.int64), size)
        # pixel rows [H*W + 1 + N*h*w, C]: Gather copies C contiguous values per index (per-element
        # gathers along a channel-first axis measured 40x slower)
        source = self.op("Concat", [self.clean_input(tensor, pad), self.patch_flat(tensor)], "source", axis=0)
        taken = self.op("Gather", [source, name], "taken", axis=0)  # [N, R, S, C]
        return self.op("Transpose", [taken], "nchw", perm=[0, 3, 1, 2])

    def regather(self, tensor: str, target: Region, hint: str) -> str:
        patch, src = self.patches[tensor]
        if src.size == target.size and np.array_equal(src.starts, target.starts):
            return patch
        return self.gather(tensor, target.starts[:, 0], target.starts[:, 1], target.size, 0.0, hint)

    def materialize(self, tensor: str) -> None:
        """The full maps of ``tensor`` under its original name, for the layers that run on full maps."""
        if tensor in self.full or tensor not in self.patches:
            return
        _, src = self.patches[tensor]
        zeros = np.zeros(len(src.starts), np.int64)
        full = self.gather(tensor, zeros, zeros, src.shape, 0.0, "full")
        self.nodes.append(helper.make_node("Identity", [full], [tensor], name=self.fresh("paste")))
        self.full.add(tensor)

    # -------------------------------------------------------------- node kinds
    def depends(self, name: str) -> bool:
        return name in self.patches or name in self.full

    def broadcast_const(self, name: str) -> bool:
        """A constant operand that is the same at every pixel (a scalar or per-channel [C, 1, 1])."""
        value = self.value(name)
        if value is None:
            return False
        return value.size == 1 or (value.ndim >= 3 and value.shape[-1] == 1 and value.shape[-2] == 1
                                   and value.ndim <= 4 and (value.ndim < 4 or value.shape[0] == 1))

    def try_patch(self, node: onnx.NodeProto) -> bool:
        if node.domain not in DEFAULT_DOMAINS + (_MS,) or len([o for o in node.output if o]) != 1:
            return False
        out = node.output[0]
        shape = self.map_shape(out)
        if shape is None:
            return False
        live = [i for i in node.input if i and self.depends(i)]
        if any(i in self.full for i in live):
            return False
        op = node.op_type
        if op in _SPATIAL and node.domain in DEFAULT_DOMAINS:
            return self.spatial(node, shape)
        if op in _TWO_MAPS and len(live) >= 2:
            return self.two_maps(node, shape, live)
        if op in _POINTWISE and node.domain in DEFAULT_DOMAINS and len(live) == 1:
            index = list(node.input).index(live[0])
            if index and op not in _TWO_MAPS:
                return False
            others = [i for k, i in enumerate(node.input) if i and k != index]
            if op in ("QuantizeLinear", "DequantizeLinear") and get_attr(node, "axis", 1) != 1:
                return False
            if op in ("BatchNormalization", "QuantizeLinear", "DequantizeLinear", "Clip"):
                ok = all(self.value(i) is not None and self.value(i).ndim <= 1 for i in others)
            else:
                ok = all(self.broadcast_const(i) for i in others)
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                ok = False
            if not ok or self.map_shape(live[0]) != shape:
                return False
            patch, region = self.patches[live[0]]
            self.emit(node, {index: patch}, region)
            return True
        return False

    def emit(self, node: onnx.NodeProto, replace: dict[int, str], region: Region, **attrs) -> None:
        inputs = list(node.input)
        for index, name in replace.items():
            inputs[index] = name
        patch = self.fresh("patch")
        copy = helper.make_node(node.op_type, inputs, [patch], name=self.fresh(node.op_type), domain=node.domain)
        for attribute in node.attribute:
            if attribute.name not in attrs and attribute.name not in ("auto_pad",):
                copy.attribute.append(attribute)
        for key, val in attrs.items():
            copy.attribute.append(helper.make_attribute(key, val))
        self.nodes.append(copy)
        self.patches[node.output[0]] = (patch, region)

    def two_maps(self, node: onnx.NodeProto, shape: tuple[int, int], live: list[str]) -> bool:
        op = node.op_type
        positions = [0, 3] if op in ("QLinearAdd", "QLinearMul") else list(range(len(node.input)))
        if op == "Concat" and get_attr(node, "axis") not in (1, -3):
            return False
        if any(node.input[p] not in live for p in positions if node.input[p]) or \
                any(i in live for k, i in enumerate(node.input) if k not in positions):
            return False
        if any(self.map_shape(i) != shape for i in live):
            return False
        regions = [self.patches[i][1] for i in live]
        lo = np.min([r.starts for r in regions], axis=0)
        hi = np.max([r.starts + np.array(r.size) - 1 for r in regions], axis=0)
        rows, height = fit(lo[:, 0], hi[:, 0], shape[0])
        cols, width = fit(lo[:, 1], hi[:, 1], shape[1])
        target = Region(np.stack([rows, cols], 1), (height, width), shape)
        if target.covers >= self.cover:
            return False
        self.emit(node, {p: self.regather(node.input[p], target, "join") for p in positions if node.input[p]},
                  target)
        return True

    def spatial(self, node: onnx.NodeProto, shape: tuple[int, int]) -> bool:
        op = node.op_type
        source = node.input[0]
        if source not in self.patches or any(self.depends(i) for i in node.input[1:] if i):
            return False
        in_shape = self.map_shape(source)
        if in_shape is None:
            return False
        _, region = self.patches[source]
        if op in ("Conv", "QLinearConv"):
            weight = self.value(node.input[3 if op == "QLinearConv" else 1])
            if weight is None or weight.ndim != 4:
                return False
            kernel = list(weight.shape[2:])
        else:
            kernel = list(get_attr(node, "kernel_shape"))
            if len(node.output) > 1 and node.output[1]:
                return False
        if len(kernel) != 2:
            return False
        strides = list(get_attr(node, "strides", [1, 1]))
        dilations = list(get_attr(node, "dilations", [1, 1]) or [1, 1])
        reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        pads = self.pads(node, in_shape, reach, strides)
        if pads is None:
            return False
        pad_value = 0.0
        if op == "QLinearConv":
            zero = self.value(node.input[2])
            if zero is None or zero.size != 1:
                return False
            pad_value = float(zero.reshape(-1)[0])
        elif op == "MaxPool":
            if get_attr(node, "storage_order", 0):
                return False
            pad_value = -np.inf if self.dtype_is_float(source) else 0.0
        elif op == "AveragePool":
            # a window that reaches past the end padding (ceil_mode) divides by fewer elements
            overflow = any((o - 1) * s - b + e > i + end for o, s, b, e, i, end in
                           zip(shape, strides, pads[:2], reach, in_shape, pads[2:]))
            if overflow or (any(pads) and not get_attr(node, "count_include_pad", 0)):
                return False
        starts, sizes, origins, needs = [], [], [], []
        for axis in range(2):
            a, p, s, e, b = region.starts[:, axis], region.size[axis], strides[axis], reach[axis], pads[axis]
            lo = -(-(a + b - e + 1) // s)  # ceil
            hi = (a + p - 1 + b) // s
            hi = np.maximum(hi, lo)
            begin, size = fit(lo, hi, shape[axis])
            starts.append(begin)
            sizes.append(size)
            origins.append(begin * s - b)
            needs.append((size - 1) * s + e)
        out_region = Region(np.stack(starts, 1), (sizes[0], sizes[1]), shape)
        if out_region.covers >= self.cover:
            return False
        taken = self.gather(source, origins[0], origins[1], (needs[0], needs[1]), pad_value, op)
        attrs = {"pads": [0, 0, 0, 0]}
        if op in ("MaxPool", "AveragePool") and get_attr(node, "ceil_mode", 0):
            attrs["ceil_mode"] = 0
        node_copy = onnx.NodeProto()
        node_copy.CopyFrom(node)
        del node_copy.attribute[:]
        node_copy.attribute.extend(a for a in node.attribute if a.name not in ("pads", "ceil_mode"))
        self.emit(node_copy, {0: taken}, out_region, **attrs)
        if op in ("Conv", "QLinearConv"):
            per_pixel = float(np.prod(weight.shape[1:]) * weight.shape[0])
            self.macs_patched += per_pixel * sizes[0] * sizes[1]
        return True

    def dtype_is_float(self, tensor: str) -> bool:
        kind = self.shapes.get(tensor, (None, None))[1]
        return kind is None or np.issubdtype(np.dtype(kind), np.floating)

    def pads(self, node: onnx.NodeProto, in_shape, reach, strides) -> list[int] | None:
        auto = get_attr(node, "auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", "VALID"):
            pads = list(get_attr(node, "pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
            return pads if len(pads) == 4 else None
        out = [-(-i // s) for i, s in zip(in_shape, strides)]
        total = [max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, reach, in_shape)]
        if auto == "SAME_UPPER":
            return [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
        if auto == "SAME_LOWER":
            return [total[0] - total[0] // 2, total[1] - total[1] // 2, total[0] // 2, total[1] // 2]
        return None

    # -------------------------------------------------------------- the walk
    def run(self) -> IncrementalPlan:
        graph = self.model.graph
        for node in graph.node:
            if not any(self.depends(i) for i in node.input if i):
                self.nodes.append(node)
                self.add_full_macs(node)
                continue
            if self.try_patch(node):
                self.macs_full += self.node_macs(node)
                self.plan.patched_nodes += 1
                continue
            for name in node.input:
                if name in self.patches:
                    self.materialize(name)
            self.nodes.append(node)
            self.full.update(o for o in node.output if o)
            self.add_full_macs(node, tail=True)
        for output in graph.output:
            self.materialize(output.name)
        inputs = [helper.make_tensor_value_info(PATCH, TensorProto.FLOAT, ["N", None, *self.plan.region.size])]
        inputs += [i for i in graph.input if i.name != self.image and i.name not in self.inits]
        inputs += [helper.make_tensor_value_info(name, _elem_type(self.shapes[tensor][1]),
                                                 [None, None]) for name, (tensor, _) in self.plan.clean.items()]
        inputs += [helper.make_tensor_value_info(name, TensorProto.INT64, ["N", None, None])
                   for name in self.plan.indices]
        image = next(i for i in graph.input if i.name == self.image)
        kind = image.type.tensor_type.elem_type
        first = (helper.make_node("Identity", [PATCH], [PATCH + "/model"]) if kind == TensorProto.FLOAT else
                 helper.make_node("Cast", [PATCH], [PATCH + "/model"], to=kind))
        new = helper.make_graph([first] + self.nodes, "blackbox_incremental", inputs, list(graph.output),
                                list(graph.initializer) + self.new_inits)
        new.value_info.extend(v for v in graph.value_info)
        self.plan.model = finish_model(self.model, new)
        self.plan.macs = (self.macs_patched, self.macs_full)
        return self.plan

    def node_macs(self, node: onnx.NodeProto) -> float:
        """Multiply-adds per sample of a weight layer on its full output (0 for other ops)."""
        if node.op_type not in ("Conv", "QLinearConv", "ConvTranspose", "Gemm", "MatMul", "QLinearMatMul"):
            return 0.0
        index = {"QLinearConv": 3, "QLinearMatMul": 3}.get(node.op_type, 1)
        weight = self.value(node.input[index]) if len(node.input) > index else None
        out = self.shapes.get(node.output[0], (None, None))[0]
        if weight is None or out is None:
            return 0.0
        if node.op_type in ("Conv", "QLinearConv", "ConvTranspose"):
            return float(np.prod(out)) * float(np.prod(weight.shape[1:]))
        return float(np.prod(out)) * float(weight.shape[0])

    def add_full_macs(self, node: onnx.NodeProto, tail: bool = False) -> None:
        """Count a layer that runs as in the original graph (``tail``: also in the rewritten one)."""
        macs = self.node_macs(node)
        self.macs_full += macs
        if tail:
            self.macs_patched += macs


def _elem_type(dtype) -> int:
    if dtype is None:
        return TensorProto.FLOAT
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def incremental_graph(model: onnx.ModelProto, image: str, shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
                      boxes: np.ndarray, *, cover: float = COVER) -> IncrementalPlan | None:
    """Rewrite ``model`` for samples that differ from a clean input only inside ``boxes`` [K, 4]
    (row0, row1, col0, col1 of each sample's changed pixels, end exclusive, in the input's NCHW map).

    ``shapes``: ``name -> (shape, NumPy dtype)`` of every tensor in a clean batch-1 forward pass (the
    caller's clean run reports them). Returns None when no layer can run on patches (nothing to gain)."""
    in_shape = shapes.get(image, (None, None))[0]
    if in_shape is None or len(in_shape) != 4:
        return None
    region = input_region(np.asarray(boxes, np.int64), (int(in_shape[2]), int(in_shape[3])))
    plan = _Rewriter(model, image, shapes, region, cover).run()
    return plan if plan.patched_nodes else None
