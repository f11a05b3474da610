"""Wrap a classifier graph into the graphs blackbox runs: forward, scoring and mask graphs.

Every model-bearing graph takes the image in blackbox's internal layout, float32 [N, C, H, W], and
converts it to what the model wants (layout, dtype) inside ONNX. Perturbation runs chain a mask graph
(small masks in, perturbed images out, on the device) to a scoring graph (model, score head, target
classes):

* ``grid`` masks ``[N, Cm, h, w]`` are resampled with two interpolation matrices,
  ``Ry @ m @ RxT``. Any separable resampling (bilinear, nearest, RISE's shifted crops with one matrix
  pair per mask) is a MatMul, which exists in every opset, so the same wrapper works on opset-7 models
  where ``Resize`` does not exist.
* ``segments`` masks ``[N, M]`` switch superpixels on and off; ``Gather`` with the segment map spreads
  them to pixels.

:func:`perturbation_graph_many` is the grid form for several images at once: the images and baselines
come stacked ``[M, C, H, W]`` and each mask row names its image (``ROWS``), so one engine batch can hold
the masks of several images.

The blend is ``baseline + (x - baseline) * keep``: keep = 1 shows the image, 0 the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from .onnx_utils import OWN_IR_VERSION, const, finish_model, initializer_names

PREFIX = "blackbox/"
SCORES = PREFIX + "scores"
# the wrapper's own inputs carry the prefix so they never collide with a model's tensor names
X, BASELINE, TARGETS = PREFIX + "x", PREFIX + "baseline", PREFIX + "targets"
X_IN = PREFIX + "x_in"  # the unperturbed image fed to the mask graph
MASKS, RY, RXT, SEGMENTS = PREFIX + "masks", PREFIX + "ry", PREFIX + "rxt", PREFIX + "segments"
ROWS = PREFIX + "rows"  # int64 [N]: which of the stacked images each mask row perturbs (the many-image graph)


@dataclass(frozen=True)
class ImageInput:
    """Where the image goes into the model and how it must look there."""

    name: str
    elem_type: int  # onnx TensorProto type of the model input
    layout: str  # "NCHW", "NHWC" or "NHW" (rank 3, one channel)
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class ScoreOutput:
    """The model output that holds class scores, and what its numbers mean."""

    name: str
    elem_type: int
    kind: str  # "logits", "probabilities" or "log_probabilities"


@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0
    scope: str = ""  # the mask graphs' own, so their names never meet the scoring graph's when fused

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{self.scope}{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        out = output or self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def constant(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(const(name, array))
        return name


def _to_model_input(b: _Builder, image: str, spec: ImageInput) -> None:
    """Turn internal float32 [N, C, H, W] into the model's input tensor, named as the model names it."""
    current = image
    if spec.layout == "NHWC":
        current = b.op("Transpose", [current], "nhwc", perm=[0, 2, 3, 1])
    elif spec.layout == "NHW":
        shape = b.constant("nhw_shape", np.array([0, spec.height, spec.width], dtype=np.int64))
        current = b.op("Reshape", [current, shape], "nhw")
    if spec.elem_type == TensorProto.UINT8:
        half = b.constant("half", np.array(0.5, dtype=np.float32))
        lo = b.constant("lo", np.array(0.0, dtype=np.float32))
        hi = b.constant("hi", np.array(255.0, dtype=np.float32))
        current = b.op("Add", [current, half], "round")
        current = b.op("Max", [current, lo], "clip_lo")
        current = b.op("Min", [current, hi], "clip_hi")
    if spec.elem_type == TensorProto.FLOAT:
        if current == image:  # nothing to convert: the wrapper's input feeds the model directly
            b.op("Identity", [current], "input", output=spec.name)
        else:
            b.nodes[-1].output[0] = spec.name
    else:
        b.op("Cast", [current], "input", output=spec.name, to=spec.elem_type)


def _score_head(b: _Builder, out: ScoreOutput, score: str) -> str:
    """Model output -> float32 [N, K] in the requested score space."""
    flat = b.op("Flatten", [out.name], "flat", axis=1)
    if out.elem_type != TensorProto.FLOAT:
        flat = b.op("Cast", [flat], "flat32", to=TensorProto.FLOAT)
    if score == "raw":
        return flat
    if score == "probability":
        if out.kind == "logits":
            return b.op("Softmax", [flat], "prob", axis=1)
        if out.kind == "log_probabilities":
            return b.op("Exp", [flat], "prob")
        return flat
    if score == "logit":
        if out.kind == "probabilities":
            # + 1e-30 only changes exact zeros (below float32's resolution next to any p > 1e-23) and,
            # unlike Max, broadcasts in every opset (several real models are opset 7)
            tiny = b.constant("tiny", np.array(1e-30, dtype=np.float32))
            return b.op("Log", [b.op("Add", [flat, tiny], "pos")], "logp")
        return flat
    raise ValueError(f"unknown score {score!r}")


def _assemble(model: onnx.ModelProto, b: _Builder, spec: ImageInput, inputs: list, outputs: list,
              constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = model.graph
    inits = initializer_names(g)
    extra = [const(name, np.asarray(value)) for name, value in constants.items()]
    kept_inits = [i for i in g.initializer]
    graph = helper.make_graph(
        nodes=b.nodes[: _pre_count(b, spec)] + list(g.node) + b.nodes[_pre_count(b, spec):],
        name="blackbox_wrapper",
        inputs=inputs,
        outputs=outputs,
        initializer=kept_inits + extra + b.inits,
    )
    del inits
    graph.value_info.extend(g.value_info)
    graph.sparse_initializer.extend(g.sparse_initializer)
    return finish_model(model, graph)


def _pre_count(b: _Builder, spec: ImageInput) -> int:
    """Nodes up to and including the one that produces the model's input come before the model."""
    for i, node in enumerate(b.nodes):
        if spec.name in node.output:
            return i + 1
    raise AssertionError("wrapper lost the model input")


def _image_value(name: str, spec: ImageInput, batch: str = "N") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, spec.channels, spec.height, spec.width])


def forward_graph(model: onnx.ModelProto, spec: ImageInput, out: ScoreOutput,
                  constants: dict[str, np.ndarray] | None = None, score: str = "raw") -> onnx.ModelProto:
    """x float32 [N, C, H, W] -> scores float32 [N, K]."""
    b = _Builder()
    _to_model_input(b, X, spec)
    scores = _score_head(b, out, score)
    b.op("Identity", [scores], "out", output=SCORES)
    outputs = [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["N", None])]
    return _assemble(model, b, spec, [_image_value(X, spec)], outputs, constants or {})


def mask_graph(spec: ImageInput, *, mode: str, per_mask: tuple[bool, bool] = (False, False)) -> onnx.ModelProto:
    """Small keep-masks in, the blended images out: float32 [N, C, H, W] named ``X``.

    Inputs: ``MASKS``; ``RY`` [H, h] or [N, 1, H, h] and ``RXT`` [w, W] or [N, 1, w, W] (grid mode) or
    ``SEGMENTS`` int64 [C, H, W] (segments mode); ``X_IN`` and ``BASELINE`` float32 [1, C, H, W].
    Masks have one channel (shared by every channel: the upsampling runs once, the blend broadcasts)
    or C channels. ``per_mask`` says whether ``RY`` / ``RXT`` come one per mask (rank 4) or shared
    (rank 2): declared ranks let ONNX Runtime follow the batch dimension into the model (see
    :func:`_blend`). :func:`perturbation_graph` fuses it with the scoring graph: one session run per batch
    (two chained sessions measured 1.9x the bare MobileNetV2-int8 with two threads, fused 1.2-1.3x).
    """
    b = _Builder(scope="mask/")
    H, W = spec.height, spec.width
    inputs = [_image_value(X_IN, spec, batch=1), _image_value(BASELINE, spec, batch=1)]
    if mode == "grid":
        grid_inputs, keep = _grid_keep(b, spec, per_mask)
        inputs += grid_inputs
    elif mode == "segments":
        inputs += [
            helper.make_tensor_value_info(MASKS, TensorProto.FLOAT, ["N", "M"]),
            helper.make_tensor_value_info(SEGMENTS, TensorProto.INT64, ["Cs", H, W]),
        ]
        # Gather along axis 1 copies one float per pixel (MobileNetV2-int8: 6% of the model); along axis 0
        # of the transposed masks it copies a row of N floats per pixel: 3.5x faster, the same numbers
        by_segment = b.op("Transpose", [MASKS], "masks_by_segment", perm=[1, 0])
        gathered = b.op("Gather", [by_segment, SEGMENTS], "keep_last", axis=0)  # [Cs, H, W, N]
        keep = b.op("Transpose", [gathered], "keep", perm=[3, 0, 1, 2])
    else:
        raise ValueError(f"unknown mask mode {mode!r}")
    diff = b.op("Sub", [X_IN, BASELINE], "diff")
    _blend(b, spec, diff, BASELINE, keep)
    return _mask_model(b, spec, inputs)


def _grid_keep(b: _Builder, spec: ImageInput, per_mask: tuple[bool, bool]) -> tuple[list, str]:
    """The grid-mask inputs and the full-size keep mask ``RY @ MASKS @ RXT``; ``per_mask`` (rows, columns):
    one matrix per mask row ([N, 1, H, h] / [N, 1, w, W]) or one for all ([H, h] / [w, W])."""
    rows_shape = ["N", 1, spec.height, "h"] if per_mask[0] else [spec.height, "h"]
    cols_shape = ["N", 1, "w", spec.width] if per_mask[1] else ["w", spec.width]
    inputs = [
        helper.make_tensor_value_info(MASKS, TensorProto.FLOAT, ["N", "Cm", "h", "w"]),
        helper.make_tensor_value_info(RY, TensorProto.FLOAT, rows_shape),
        helper.make_tensor_value_info(RXT, TensorProto.FLOAT, cols_shape),
    ]
    rows = b.op("MatMul", [RY, MASKS], "rows")
    return inputs, b.op("MatMul", [rows, RXT], "keep")


def _blend(b: _Builder, spec: ImageInput, diff: str, baseline: str, keep: str) -> None:
    """``baseline + diff * keep`` reshaped to the static image shape, named ``X``."""
    scaled = b.op("Mul", [diff, keep], "scaled")
    blended = b.op("Add", [baseline, scaled], "blended")
    # a Reshape to the static shape: without it the model input's shape is unknown to ONNX Runtime, which
    # then skips its fast int8 convolutions (MobileNetV2-int8 ran 2.8x slower). The batch dimension is
    # copied (0), not inferred (-1), so it stays the symbolic N of the masks: with an unnamed batch ONNX
    # Runtime cannot prove a model's Shape -> Gather -> Reshape chains static and keeps them (MobileNetV2-
    # int8: an extra Transpose and DequantizeLinear per sample, 4% of the model)
    shape = b.constant("image_shape", np.array([0, spec.channels, spec.height, spec.width], dtype=np.int64))
    b.op("Reshape", [blended, shape], "image", output=X)


def _mask_model(b: _Builder, spec: ImageInput, inputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, "blackbox_masks", inputs, [_image_value(X, spec)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="blackbox")
    model.ir_version = OWN_IR_VERSION
    return model


def mask_graph_many(spec: ImageInput, per_mask: tuple[bool, bool] = (False, False)) -> onnx.ModelProto:
    """The grid mask graph for several images: ``X_IN`` and ``BASELINE`` float32 [M, C, H, W] stacked,
    ``ROWS`` int64 [N] the image of each mask row, ``MASKS``/``RY``/``RXT`` as in :func:`mask_graph`.

    Why Gather rather than per-row images fed from Python: the M images cross into ONNX Runtime once per
    call, not once per row, and Python never builds full-size perturbed images. ``x - baseline`` is taken
    once per image, then both are gathered per row: the same float operations, in the same order, as the
    one-image graph, so a row's blended image is bit-identical to what :func:`mask_graph` makes of it.
    Gather (axis 0) exists in every opset, like the other ops here.
    """
    b = _Builder(scope="mask/")
    inputs = [_image_value(X_IN, spec, batch="M"), _image_value(BASELINE, spec, batch="M"),
              helper.make_tensor_value_info(ROWS, TensorProto.INT64, ["N"])]
    grid_inputs, keep = _grid_keep(b, spec, per_mask)
    inputs += grid_inputs
    diff = b.op("Sub", [X_IN, BASELINE], "diff")
    diff_rows = b.op("Gather", [diff, ROWS], "diff_rows", axis=0)
    baseline_rows = b.op("Gather", [BASELINE, ROWS], "baseline_rows", axis=0)
    _blend(b, spec, diff_rows, baseline_rows, keep)
    return _mask_model(b, spec, inputs)


def scoring_graph(model: onnx.ModelProto, spec: ImageInput, out: ScoreOutput, *, score: str,
                  constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x float32 [N, C, H, W] and ``TARGETS`` int64 [T] -> the targets' scores [N, T] float32."""
    b = _Builder()
    _to_model_input(b, X, spec)
    scores = _score_head(b, out, score)
    b.op("Gather", [scores, TARGETS], "target_scores", output=SCORES, axis=1)
    inputs = [_image_value(X, spec), helper.make_tensor_value_info(TARGETS, TensorProto.INT64, ["T"])]
    outputs = [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["N", "T"])]
    return _assemble(model, b, spec, inputs, outputs, constants or {})



def perturbation_graph(model: onnx.ModelProto, spec: ImageInput, out: ScoreOutput, *, mode: str, score: str,
                       constants: dict[str, np.ndarray] | None = None,
                       per_mask: tuple[bool, bool] = (False, False)) -> onnx.ModelProto:
    """The mask graph and the scoring graph fused into one: masks in, target scores out. Every op the
    mask part uses (MatMul, Sub, Mul, Add, Gather, Reshape, Where) exists in every opset the models use.
    ``mode`` "segments_binary": segment masks that are all 0 or 1 (:func:`selection_graph`)."""
    scoring = scoring_graph(model, spec, out, score=score, constants=constants)
    if mode == "segments_binary":
        if _opset(scoring) >= 9:  # Where
            return selection_graph(spec, scoring)
        mode = "segments"
    return _fuse(mask_graph(spec, mode=mode, per_mask=per_mask), scoring)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


_PER_ELEMENT = ("Identity", "Cast", "QuantizeLinear")  # ops that map each input element on its own


def _per_element_chain(graph: onnx.GraphProto, start: str) -> list[onnx.NodeProto]:
    """The nodes from ``start`` on that act on each element alone (Identity, Cast, QuantizeLinear with
    constant scales), while each tensor has that one consumer: how the model's input reaches its first
    real layer (an int8 model quantizes it, an fp16 model casts it)."""
    constant = initializer_names(graph) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    chain, current = [], start
    while current not in outputs and len(users.get(current, [])) == 1:
        node = users[current][0]
        if node.op_type not in _PER_ELEMENT or list(node.input).count(current) != 1 or node.input[0] != current:
            break
        if any(name and name not in constant for name in node.input[1:]):
            break
        chain.append(node)
        current = node.output[0]
    return chain


def selection_graph(spec: ImageInput, scoring: onnx.ModelProto) -> onnx.ModelProto:
    """Segment masks of 0s and 1s fused with ``scoring``: each pixel *is* the image's or the baseline's,
    so the blend is a selection, ``Where(keep, x, baseline)``, and it commutes with whatever acts on each
    element before the model's first layer. That chain (an int8 model's QuantizeLinear, an fp16 model's
    Cast) runs once on the image and once on the baseline instead of once per sample, and the selection
    runs on its output: one pass over uint8 data per sample instead of a float multiply, an add and a
    quantization (MobileNetV2-int8, ONNX Runtime's profiler: the mask part 0.19 -> 0.07 ms per sample
    beside the model's 2.2-2.5 ms). Scores equal the blend's for such masks, up to the last bit of
    ``baseline + (x - baseline) * 1``, which is not always x.
    """
    g = scoring.graph
    chain = _per_element_chain(g, X)
    b = _Builder(scope="mask/")
    inputs = [_image_value(X_IN, spec, batch=1), _image_value(BASELINE, spec, batch=1),
              helper.make_tensor_value_info(MASKS, TensorProto.FLOAT, ["N", "M"]),
              helper.make_tensor_value_info(SEGMENTS, TensorProto.INT64, ["Cs", spec.height, spec.width])]
    on = b.op("Cast", [MASKS], "on", to=TensorProto.BOOL)
    by_segment = b.op("Transpose", [on], "on_by_segment", perm=[1, 0])  # see mask_graph: gather rows of N
    gathered = b.op("Gather", [by_segment, SEGMENTS], "keep_last", axis=0)
    keep = b.op("Transpose", [gathered], "keep", perm=[3, 0, 1, 2])
    ends = []
    for source, tag in ((X_IN, "image"), (BASELINE, "baseline")):
        current = source
        for node in chain:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[0] = current
            copy.output[0] = current = b.name(f"{tag}_{node.op_type.lower()}")
            copy.name = b.name(node.op_type)
            b.nodes.append(copy)
        ends.append(current)
    chosen = b.op("Where", [keep, ends[0], ends[1]], "chosen")
    # the static image shape, batch copied from the masks (see _blend)
    shape = b.constant("image_shape", np.array([0, spec.channels, spec.height, spec.width], dtype=np.int64))
    b.op("Reshape", [chosen, shape], "selected", output=chain[-1].output[0] if chain else X)
    gone = {id(node) for node in chain}
    dropped = {node.output[0] for node in chain[:-1]}
    graph = helper.make_graph(b.nodes + [n for n in g.node if id(n) not in gone], "blackbox_perturbation",
                              inputs + [i for i in g.input if i.name != X], list(g.output),
                              b.inits + list(g.initializer))
    graph.value_info.extend(v for v in g.value_info if v.name not in dropped)
    graph.sparse_initializer.extend(g.sparse_initializer)
    return finish_model(scoring, graph)


def perturbation_graph_many(model: onnx.ModelProto, spec: ImageInput, out: ScoreOutput, *, score: str,
                            constants: dict[str, np.ndarray] | None = None,
                            per_mask: tuple[bool, bool] = (False, False)) -> onnx.ModelProto:
    """:func:`mask_graph_many` fused with the scoring graph: stacked images, per-row image index and grid
    masks in, the ``TARGETS`` scores [N, T] of every row out."""
    return _fuse(mask_graph_many(spec, per_mask), scoring_graph(model, spec, out, score=score, constants=constants))


def _fuse(masks: onnx.ModelProto, scoring: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: the mask graph's ``X`` feeds the scoring graph."""
    g = scoring.graph
    graph = helper.make_graph(list(masks.graph.node) + list(g.node), "blackbox_perturbation",
                              list(masks.graph.input) + [i for i in g.input if i.name != X], list(g.output),
                              list(masks.graph.initializer) + list(g.initializer))
    graph.value_info.extend(g.value_info)
    graph.sparse_initializer.extend(g.sparse_initializer)
    return finish_model(scoring, graph)
