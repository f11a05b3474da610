"""Sizes that symbolic shape inference loses are recovered before differentiating (``prepare``), and a
size that really is unknown is named in the error.

The graphs compute their Reshape targets at run time from ``Shape`` (Gather, Div, Mul, Concat), as
TorchScript exports ``x.view(b, g, c // g, h, w)`` with a dynamic batch: ONNX's inference does not
divide, so the Conv after the channel shuffle sees unknown channel and spatial sizes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox.errors import UnsupportedOpError
from blackbox.graph.autodiff import SEED_NAME, build_gradient_model, prepare
from blackbox.graph.onnx_utils import value_types

N = helper.make_node
RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(4, 4, 1, 1)).astype(np.float32)
W2 = RNG.normal(size=(3, 4, 3, 3)).astype(np.float32)


def ints(*values) -> np.ndarray:
    return np.array(values, np.int64)


def _model(nodes, inits, *, x_shape=("N", 4, 6, 6), out=("N", 3)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def shuffle_model(static_targets: bool = False) -> onnx.ModelProto:
    """x -> 1x1 Conv -> channel shuffle (2 groups) -> 3x3 Conv -> spatial mean: y [N, 3]. The shuffle's
    Reshape targets come from Shape(a) (or, ``static_targets``, are constants with -1 for the batch)."""
    nodes = [N("Conv", ["x", "w1"], ["a"])]
    if static_targets:
        nodes += [N("Reshape", ["a", "t5"], ["r5"]), N("Transpose", ["r5"], ["tr"], perm=[0, 2, 1, 3, 4]),
                  N("Reshape", ["tr", "t4"], ["r4"])]
    else:
        nodes += [N("Shape", ["a"], ["s"])]
        for i, name in enumerate("bchw"):
            nodes += [N("Gather", ["s", f"i{i}"], [name], axis=0)]
        nodes += [N("Div", ["c", "two"], ["cg"]),
                  N("Concat", ["b", "two", "cg", "h", "w"], ["t5d"], axis=0),
                  N("Reshape", ["a", "t5d"], ["r5"]), N("Transpose", ["r5"], ["tr"], perm=[0, 2, 1, 3, 4]),
                  N("Concat", ["b", "minus1", "h", "w"], ["t4d"], axis=0),
                  N("Reshape", ["tr", "t4d"], ["r4"])]
    nodes += [N("Conv", ["r4", "w2"], ["c2"], name="conv_after_shuffle", pads=[1, 1, 1, 1]),
              N("ReduceMean", ["c2"], ["y"], axes=[2, 3], keepdims=0)]
    inits = {"w1": W1, "w2": W2, "two": ints(2), "minus1": ints(-1), "t5": ints(-1, 2, 2, 6, 6),
             "t4": ints(-1, 4, 6, 6), **{f"i{i}": ints(i) for i in range(4)}}
    return _model(nodes, inits)


def gradients(model: onnx.ModelProto, x: np.ndarray, target: int = 1) -> np.ndarray:
    built = build_gradient_model(model, input_name="x", score_name="y")
    sess = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = np.zeros((len(x), 3), np.float32)
    seed[:, target] = 1.0
    return sess.run([built.output_names[1]], {"x": x, SEED_NAME: seed})[0]


def test_inference_alone_loses_the_shuffled_sizes():
    """The premise: without recovery the Conv after the shuffle has no spatial sizes."""
    inferred = onnx.shape_inference.infer_shapes(shuffle_model(), data_prop=True)
    dims = value_types(inferred)["r4"][1]
    assert dims is None or not all(isinstance(d, int) for d in dims[1:]), dims


def test_prepare_recovers_fixed_sizes_and_keeps_the_batch_symbolic():
    types = value_types(prepare(shuffle_model(), outputs=["y"]))
    assert types["r5"][1] == ["N", 2, 2, 6, 6]
    assert types["tr"][1] == ["N", 2, 2, 6, 6]
    assert types["r4"][1] == ["N", 4, 6, 6]
    assert types["c2"][1] == ["N", 3, 6, 6]


@pytest.mark.parametrize("batch", [1, 3])
def test_recovered_graph_differentiates_like_its_static_twin_and_finite_differences(batch):
    x = np.random.default_rng(batch).normal(size=(batch, 4, 6, 6))
    got = gradients(shuffle_model(), x.astype(np.float32))
    np.testing.assert_array_equal(got, gradients(shuffle_model(static_targets=True), x.astype(np.float32)))
    # finite differences of the float64 twin (numpy): the shuffle is a fixed channel permutation
    x64 = x.astype(np.float64)
    eps = 1e-6
    for index in [(0, 0, 0, 0), (batch - 1, 3, 2, 5), (0, 1, 5, 3)]:
        plus, minus = x64.copy(), x64.copy()
        plus[index] += eps
        minus[index] -= eps
        fd = (reference_score(plus) - reference_score(minus)) / (2 * eps)
        assert got[index] == pytest.approx(fd, rel=1e-4, abs=1e-6)


def reference_score(x: np.ndarray) -> float:
    """sum over the batch of y[:, 1] of :func:`shuffle_model`, in float64 numpy."""
    a = np.einsum("oc,nchw->nohw", W1[:, :, 0, 0].astype(np.float64), x)
    n, c, h, w = a.shape
    r = a.reshape(n, 2, c // 2, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
    p = np.pad(r, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w2 = W2[1].astype(np.float64)  # output channel 1
    out = sum(np.einsum("c,nchw->nhw", w2[:, i, j], p[:, :, i:i + h, j:j + w]) for i in range(3) for j in range(3))
    return float(out.mean(axis=(1, 2)).sum())


def test_a_size_that_is_a_multiple_of_the_batch_stays_symbolic():
    """[b, c, h, w] -> [b * 2, c / 2, h * w]: the leading size follows the batch (N*2), the rest is fixed;
    the gradient graph runs at any batch (y = per-sample sums of squares, so dy/dx = 2 x)."""
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i0"], ["b"], axis=0),
             N("Gather", ["s", "i1"], ["c"], axis=0), N("Mul", ["b", "two"], ["b2"]),
             N("Div", ["c", "two"], ["c2"]), N("Concat", ["b2", "c2", "minus1"], ["t"], axis=0),
             N("Reshape", ["x", "t"], ["r"]), N("Mul", ["r", "r"], ["sq"]),
             N("ReduceSum", ["sq", "ax"], ["rs"], keepdims=0), N("Reshape", ["rs", "pairs"], ["y"])]
    model = _model(nodes, {"i0": ints(0), "i1": ints(1), "two": ints(2), "minus1": ints(-1), "ax": ints(1, 2),
                           "pairs": ints(-1, 2)}, out=("N", 2))
    types = value_types(prepare(model, outputs=["y", "r"]))
    assert types["r"][1] == ["N*2", 2, 36]
    built = build_gradient_model(model, input_name="x", score_name="y")
    sess = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = np.random.default_rng(batch).normal(size=(batch, 4, 6, 6)).astype(np.float32)
        grad = sess.run([built.output_names[1]], {"x": x, SEED_NAME: np.ones((batch, 2), np.float32)})[0]
        np.testing.assert_allclose(grad, 2 * x, rtol=1e-6)


def test_a_data_dependent_size_is_named_in_the_error():
    """A Slice whose end counts the positive entries (NonZero): no fixed image size determines it."""
    nodes = [N("ReduceMax", ["x"], ["m"], axes=[1, 2, 3], keepdims=0), N("Greater", ["x", "zero"], ["pos"]),
             N("NonZero", ["pos"], ["nz"]), N("Shape", ["nz"], ["snz"]), N("Gather", ["snz", "one"], ["cnt"]),
             N("Min", ["cnt", "six"], ["end"]), N("Slice", ["x", "z", "end", "two"], ["xs"]),
             N("Conv", ["xs", "w2"], ["c2"], name="the_conv"), N("ReduceMean", ["c2"], ["y"], axes=[2, 3], keepdims=0)]
    model = _model(nodes, {"zero": np.array(0.0), "one": ints(1), "six": ints(6), "z": ints(0), "two": ints(2),
                           "w2": W2})
    with pytest.raises(UnsupportedOpError) as err:
        build_gradient_model(model, input_name="x", score_name="y")
    msg = str(err.value)
    assert "the_conv" in msg and "Conv" in msg and "'xs'" in msg and "axis 2" in msg
    assert "unknown after shape inference and could not be recovered" in msg and "occlusion" in msg
    assert "no gradient rule" not in msg and "\n" not in msg


def test_shufflenet_export_has_every_size_after_prepare():
    from arch_conv_models import exported_arch

    _, _, proto = exported_arch("shufflenet", "torchscript")
    m = prepare(proto, outputs=["logits"])
    types = value_types(m)
    lost = {name: d for name, (_, d) in types.items() if d is None or any(not isinstance(e, int) for e in d[1:])}
    assert not lost, f"sizes still unknown after prepare: {sorted(lost)[:5]}"
    reshapes = [n.output[0] for n in m.graph.node if n.op_type == "Reshape"]
    assert reshapes and all(types[r][1][0] == "N" for r in reshapes)
