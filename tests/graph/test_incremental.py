"""The incremental rewrite equals full evaluation: hand-made graphs for every op, stride and padding case
it knows, boxes at the borders and corners, and a prefix cut by an op it does not know."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox.graph.incremental import PATCH, clean_feeds, incremental_graph

RNG = np.random.default_rng(0)


def _model(nodes, inits, channels=3, size=(33, 31), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _w(*shape) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _clean(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of one clean forward pass (what the runner's clean pass reports)."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    names = [o for n in model.graph.node for o in n.output if o and o != "y"]
    tapped.graph.output.extend(helper.make_value_info(name, onnx.TypeProto()) for name in names)
    values = _session(tapped).run(["y", *names], {"x": x})
    return {"x": x, "y": values[0], **dict(zip(names, values[1:]))}


# a window at each corner, at each border, inside, and one cut by the border (box ends past the map
# only as occlusion's last window does: the box itself is clipped)
BOXES = np.array([[0, 8, 0, 8], [25, 33, 23, 31], [0, 8, 23, 31], [25, 33, 0, 8], [12, 20, 5, 13],
                  [3, 11, 17, 25], [29, 33, 27, 31], [16, 24, 0, 8]])


def check(model: onnx.ModelProto, boxes=BOXES, cover: float = 0.8, splits=(3,)) -> object:
    """Build the plan, run it on images changed inside the boxes, in batches split at ``splits``, and
    compare with the original model on the full images."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = RNG.normal(0, 1, (1, *shape)).astype(np.float32)
    clean = _clean(model, x)
    plan = incremental_graph(model, "x", {k: (v.shape, v.dtype) for k, v in clean.items()}, boxes, cover=cover)
    assert plan is not None
    images = np.repeat(x, len(boxes), axis=0)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        images[k, :, r0:r1, c0:c1] = RNG.normal(0, 2, (shape[0], r1 - r0, c1 - c0))
    (ph, pw), starts = plan.region.size, plan.region.starts
    patches = np.stack([images[k, :, r:r + ph, c:c + pw] for k, (r, c) in enumerate(starts)])
    want = _session(model).run(["y"], {"x": images})[0]
    session = _session(plan.model)
    fixed = clean_feeds(plan, clean)
    got = []
    for start, stop in zip((0, *splits), (*splits, len(boxes))):
        feeds = {**fixed, PATCH: patches[start:stop], **plan.batch_indices(start, stop)}
        got.append(session.run(["y"], feeds)[0])
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    return plan


def _head(feature: str, nodes: list) -> list:
    return nodes + [helper.make_node("GlobalAveragePool", [feature], ["g"]),
                    helper.make_node("Flatten", ["g"], ["y"], axis=1)]


def test_convolutions_strides_pads_dilation():
    nodes = _head("c4", [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["c3", "w4"], ["c4"], kernel_shape=[3, 2], strides=[1, 2], auto_pad="SAME_UPPER"),
    ])
    inits = {"w1": _w(6, 3, 3, 3), "b1": _w(6), "w2": _w(8, 6, 3, 3), "w3": _w(8, 8, 3, 3), "w4": _w(5, 8, 3, 2),
             "lo": np.float32(-0.5), "hi": np.float32(1.0)}
    plan = check(_model(nodes, inits), cover=1.01)
    assert plan.patched_nodes == 6  # every layer up to the global pool ran on patches


def test_pools_ceil_mode_and_padding():
    nodes = _head("p3", [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"]),
        helper.make_node("Neg", ["s1"], ["n1"]),  # all negative: a zero in place of -inf padding would show
        helper.make_node("MaxPool", ["n1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("MaxPool", ["p2"], ["p3"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1]),
    ])
    plan = check(_model(nodes, {"w1": _w(4, 3, 3, 3)}), cover=1.01)
    assert plan.patched_nodes == 6


def test_depthwise_batchnorm_residual_and_concat_branches():
    c = 6
    nodes = _head("out", [
        helper.make_node("Conv", ["x", "w0"], ["s"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["s", "gamma", "b", "m", "v"], ["bn"]),
        helper.make_node("Conv", ["bn", "dw"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Conv", ["d", "pw"], ["p"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["bn", "p"], ["res"]),  # residual: the two inputs' rectangles differ
        helper.make_node("Mul", ["scale", "res"], ["sc"]),  # a per-channel constant, first operand
        helper.make_node("Conv", ["sc", "e1"], ["b1"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["sc", "e3"], ["b3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["b1", "b3"], ["cat"], axis=1),  # a fire module's branches
        helper.make_node("Sigmoid", ["cat"], ["out"]),
    ])
    inits = {"w0": _w(c, 3, 3, 3), "gamma": np.abs(_w(c)) + 0.5, "b": _w(c), "m": _w(c), "v": np.abs(_w(c)) + 0.5,
             "dw": _w(c, 1, 3, 3), "pw": _w(c, c, 1, 1), "scale": _w(1, c, 1, 1), "e1": _w(4, c, 1, 1),
             "e3": _w(4, c, 3, 3)}
    plan = check(_model(nodes, inits), cover=1.01, splits=(1, 5))
    assert plan.patched_nodes == 10


def test_default_cover_ends_the_prefix_on_a_large_rectangle_and_stays_exact():
    nodes = _head("c3", [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], kernel_shape=[5, 5], strides=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
    ])
    plan = check(_model(nodes, {"w1": _w(4, 3, 5, 5), "w2": _w(4, 4, 5, 5), "w3": _w(4, 4, 5, 5)}), cover=0.3)
    assert 1 <= plan.patched_nodes < 3  # the later layers ran on pasted full maps
    assert 0 < plan.estimated_ratio < 1


def test_an_unknown_op_ends_the_prefix_there():
    nodes = _head("c2", [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("LpNormalization", ["c1"], ["n1"], axis=1),  # not known to the rewrite
        helper.make_node("Conv", ["n1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ])
    plan = check(_model(nodes, {"w1": _w(4, 3, 3, 3), "w2": _w(4, 4, 3, 3)}), cover=1.01)
    assert plan.patched_nodes == 1


def test_no_spatial_prefix_means_no_plan():
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    model = _model(nodes, {"w": _w(3 * 33 * 31, 4)})
    x = RNG.normal(0, 1, (1, 3, 33, 31)).astype(np.float32)
    clean = _clean(model, x)
    assert incremental_graph(model, "x", {k: (v.shape, v.dtype) for k, v in clean.items()}, BOXES) is None


@pytest.mark.parametrize("opset", [7, 13])
def test_float16_graph_in_an_old_opset(opset):
    """SqueezeNet-fp16 is opset 7: the rewrite's own ops (Gather, Concat, Transpose, Reshape, Cast)
    exist there, and the patch input is cast to the model's float16."""
    nodes = [helper.make_node("Conv", ["x16", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p1"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x16", TensorProto.FLOAT16, ["N", 3, 33, 31])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
                              [numpy_helper.from_array(_w(4, 3, 3, 3).astype(np.float16), "w1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    x = RNG.normal(0, 1, (1, 3, 33, 31)).astype(np.float16)
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    tapped.graph.output.extend(helper.make_value_info(n, onnx.TypeProto()) for n in ("c1", "r1", "p1"))
    values = _session(tapped).run(["c1", "r1", "p1"], {"x16": x})
    clean = {"x16": x, **dict(zip(("c1", "r1", "p1"), values))}
    plan = incremental_graph(model, "x16", {k: (v.shape, v.dtype) for k, v in clean.items()}, BOXES, cover=1.01)
    images = np.repeat(x, len(BOXES), axis=0)
    for k, (r0, r1, c0, c1) in enumerate(BOXES):
        images[k, :, r0:r1, c0:c1] = 0
    (ph, pw), starts = plan.region.size, plan.region.starts
    patches = np.stack([images[k, :, r:r + ph, c:c + pw] for k, (r, c) in enumerate(starts)]).astype(np.float32)
    got = _session(plan.model).run(["y"], {**clean_feeds(plan, clean), PATCH: patches,
                                           **plan.batch_indices(0, len(BOXES))})[0]
    want = _session(model).run(["y"], {"x16": images})[0]
    assert plan.patched_nodes == 3
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
