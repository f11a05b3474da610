"""Control flow (If/Loop) on the input -> score path is refused, never differentiated as zero.

The dependence of an ``If``'s outputs on ``x`` can lie entirely in its branches' outer-scope reads (its
only explicit input is the condition); the walk must count those reads, else the score looks constant
in ``x`` and gradient methods return an all-zero map with exit 0. Control flow on an integer side path
(shape arithmetic) does not carry gradients and must keep working.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import blackbox
from blackbox.cli import main
from blackbox.errors import ModelError, UnsupportedOpError
from blackbox.graph.autodiff import build_gradient_model
from conftest import MODELS
from helpers import save

F = TensorProto.FLOAT
STAR = str(MODELS / "samples" / "star.png")


def _front(rng):
    """pixels [N, 3, 16, 16] -> Conv -> Relu "r" [N, 4, 16, 16], and the condition "c" = sum(pixels) > 0."""
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.float32(0), "zero")]
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["r"]),
             helper.make_node("ReduceSum", ["pixels"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["c"])]
    return nodes, inits


def _model(nodes, inits, head_input: str, rng, channels: int = 4, pool: str = "ReduceMean"):
    inits = inits + [numpy_helper.from_array(rng.normal(size=(4, channels)).astype(np.float32), "fc")]
    attrs = {"axes": [2, 3], "keepdims": 1} if pool == "ReduceMean" else {}
    nodes = nodes + [helper.make_node(pool, [head_input], ["g"], **attrs),
                     helper.make_node("Flatten", ["g"], ["f"]),
                     helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "cf", [helper.make_tensor_value_info("pixels", F, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", F, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _branch(name: str, op: str, source: str, out_type=F):
    """A branch graph with no inputs that reads ``source`` from the outer scope."""
    return helper.make_graph([helper.make_node(op, [source], [f"{name}_out"])], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", out_type, None)])


def if_on_path_model():
    """logits depend on x only through an If whose branches read the outer-scope "r"."""
    rng = np.random.default_rng(0)
    nodes, inits = _front(rng)
    nodes.append(helper.make_node("If", ["c"], ["b"], then_branch=_branch("then", "Sigmoid", "r"),
                                  else_branch=_branch("else", "Neg", "r")))
    return _model(nodes, inits, "b", rng)


def loop_on_path_model():
    """logits depend on x only through a Loop body that reads the outer-scope "r". Shape inference
    loses the rank of the Loop's output, so the GlobalAveragePool rule after it could not run: the
    refusal must name the Loop (the first node without a rule, in forward order), not that rule."""
    rng = np.random.default_rng(1)
    nodes, inits = _front(rng)
    inits += [numpy_helper.from_array(np.array(2, np.int64), "trips"),
              numpy_helper.from_array(np.array(True), "go")]
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "r"], ["acc_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", F, None)])
    inits.append(numpy_helper.from_array(np.zeros((1, 4, 16, 16), np.float32), "acc0"))
    nodes.append(helper.make_node("Loop", ["trips", "go", "acc0"], ["summed"], body=body))
    return _model(nodes, inits, "summed", rng, pool="GlobalAveragePool")


def if_on_shape_path_model():
    """An If computes the target shape of a Reshape (int64, from the outer-scope Shape(r)): it is on no
    gradient path, and the gradient is that of the rest of the graph."""
    rng = np.random.default_rng(2)
    nodes, inits = _front(rng)
    # a smooth front that ONNX Runtime also runs in float64 (no Conv), for exact central differences
    nodes[:2] = [helper.make_node("Mul", ["pixels", "w"], ["scaled"]),
                 helper.make_node("Sigmoid", ["scaled"], ["r"])]
    inits[0] = numpy_helper.from_array(rng.normal(size=(1, 3, 1, 1)).astype(np.float32), "w")
    nodes.append(helper.make_node("Shape", ["r"], ["shape"]))
    nodes.append(helper.make_node("If", ["c"], ["target"],
                                  then_branch=_branch("then", "Identity", "shape", TensorProto.INT64),
                                  else_branch=_branch("else", "Identity", "shape", TensorProto.INT64)))
    nodes.append(helper.make_node("Tanh", ["r"], ["t"]))
    nodes.append(helper.make_node("Reshape", ["t", "target"], ["reshaped"]))
    return _model(nodes, inits, "reshaped", rng, channels=3)


def _image(seed=3):
    return np.random.default_rng(seed).uniform(-1, 1, (3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("build,op", [(if_on_path_model, "If"), (loop_on_path_model, "Loop")])
def test_control_flow_on_the_path_is_refused(build, op, tmp_path):
    model = build()
    x = _image()
    # the forward graph runs: the refusal is about gradients, not a broken model
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.isfinite(sess.run(None, {"pixels": x[None]})[0]).all()
    with pytest.raises(UnsupportedOpError) as err:
        build_gradient_model(model, input_name="pixels", score_name="logits")
    msg = str(err.value)
    assert f"op {op} " in msg and "control flow" in msg and "occlusion" in msg and "\n" not in msg
    loaded = blackbox.load(str(save(model, tmp_path / "cf.onnx")))
    with pytest.raises(UnsupportedOpError, match=op):
        blackbox.explain(loaded, x, "saliency")
    # model-agnostic methods still work on it
    assert np.abs(blackbox.explain(loaded, x, "occlusion", window=8, stride=8).model_heatmap).max() > 0


def test_control_flow_cli_exits_2_with_one_line(tmp_path, capsys):
    path = save(if_on_path_model(), tmp_path / "if.onnx")
    out = tmp_path / "out"
    code = main(["explain", str(path), STAR, "--method", "saliency", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "If" in err[0] and "model-agnostic" in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_if_on_an_integer_side_path_matches_finite_differences(tmp_path):
    model = if_on_shape_path_model()
    x = _image(4)[None].astype(np.float32)
    gm = build_gradient_model(model, input_name="pixels", score_name="logits")
    seed = np.random.default_rng(5).standard_normal((1, 4)).astype(np.float32)
    grad = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [gm.grad_name], {"pixels": x, gm.seed_name: seed})[0]
    # float64 copy of the forward model for central differences
    fwd = model.__class__()
    fwd.CopyFrom(model)
    for t in fwd.graph.initializer:
        if t.data_type == F:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(fwd.graph.input) + list(fwd.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    sess = ort.InferenceSession(fwd.SerializeToString(), providers=["CPUExecutionProvider"])

    def objective(v):
        return float((sess.run(None, {"pixels": v})[0] * seed).sum())

    x64, eps = x.astype(np.float64), 1e-6
    num = np.zeros_like(x64)
    for i in np.ndindex(x64.shape):
        plus, minus = x64.copy(), x64.copy()
        plus[i] += eps
        minus[i] -= eps
        num[i] = (objective(plus) - objective(minus)) / (2 * eps)
    assert np.abs(num).max() > 1e-3  # a real gradient, not zeros
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-4 * np.abs(num).max())
    loaded = blackbox.load(str(save(model, tmp_path / "side.onnx")))
    sal = blackbox.explain(loaded, x[0], "saliency", target=0)
    assert np.abs(sal.model_heatmap).max() > 0


def test_dequantize_refuses_a_subgraph_reading_a_quantized_tensor():
    """The float copy renames quantized activations; a branch reading one by its old name would break."""
    from blackbox.graph.precision import dequantize

    inits = [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "zp"),
             numpy_helper.from_array(np.float32(0), "zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["qb"], then_branch=_branch("then", "Identity", "q", TensorProto.UINT8),
                              else_branch=_branch("else", "Identity", "q", TensorProto.UINT8)),
             helper.make_node("DequantizeLinear", ["qb", "s", "zp"], ["y"])]
    graph = helper.make_graph(nodes, "qif", [helper.make_tensor_value_info("x", F, [1, 4])],
                              [helper.make_tensor_value_info("y", F, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # a valid model
    with pytest.raises(ModelError, match="subgraph reads a quantized tensor"):
        dequantize(model)
