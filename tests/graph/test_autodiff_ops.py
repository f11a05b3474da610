"""Per-op checks of the ONNX differentiator against central finite differences.

Each case is a tiny ONNX model. The gradient model is run with ONNX Runtime and its
d sum(y * seed) / d x is compared with central differences of the forward model (also run with ONNX
Runtime). Models are float64 where ONNX Runtime's CPU kernels support the op in double (the tolerance
is then tight); otherwise float32, with eps/tolerances stated per case. Piecewise-linear ops are
tested on inputs kept away from their kinks (and with larger eps: they are exactly linear there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox.errors import UnsupportedOpError
from blackbox.graph.autodiff import PLAIN, RECTIFIER_RULESETS, build_gradient_model

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE
NP = {F32: np.float32, F64: np.float64}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def make(nodes, inputs, inits=None, *, opset=17, out="y", dtype=F32, ir=8):
    """A model from nodes; ``inputs``: name -> shape (dtype ``dtype``), ``inits``: name -> array."""
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(out, dtype, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


@dataclass
class Case:
    model: onnx.ModelProto
    feeds: dict
    wrt: tuple = ("x",)
    eps: float = 1e-6
    rtol: float = 1e-6
    atol: float = 1e-8  # relative to max |gradient|
    extra: dict = field(default_factory=dict)


def fd_check(case: Case, score="y"):
    fwd = session(case.model)
    base = fwd.run([score], case.feeds)[0]
    rng = np.random.default_rng(7)
    seed = rng.standard_normal(base.shape).astype(base.dtype)
    for wrt in case.wrt:
        gm = build_gradient_model(case.model, input_name=wrt, score_name=score, **case.extra)
        sess = session(gm.model)
        feeds = dict(case.feeds)
        feeds[gm.seed_name] = seed
        y, grad = sess.run([gm.score_name, gm.grad_name], feeds)
        np.testing.assert_allclose(y, base, rtol=1e-5, atol=1e-6)
        x = case.feeds[wrt]
        num = np.zeros(x.size, dtype=np.float64)
        for i in range(x.size):
            vals = []
            for sgn in (1, -1):
                xp = x.copy().reshape(-1)
                xp[i] += sgn * case.eps
                f = dict(case.feeds)
                f[wrt] = xp.reshape(x.shape)
                vals.append(np.sum(fwd.run([score], f)[0].astype(np.float64) * seed))
            num[i] = (vals[0] - vals[1]) / (2 * case.eps)
        num = num.reshape(x.shape)
        assert grad.shape == x.shape
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(grad, num, rtol=case.rtol, atol=case.atol * scale,
                                   err_msg=f"gradient w.r.t. {wrt}")


def rnd(shape, dtype=np.float32, seed=0, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)


def away(x, kinks, gap=0.1):
    """Move entries of x at least ``gap`` away from each kink."""
    x = x.copy()
    for k in kinks:
        close = np.abs(x - k) < gap
        x[close] = k + np.where(x[close] >= k, gap, -gap) * 1.5
    return x


def distinct(shape, seed=0, step=0.05):
    """Distinct values (a shuffled arithmetic sequence): max/argmax stable under small eps."""
    n = int(np.prod(shape))
    v = (np.arange(n) - n / 2) * step
    return np.random.default_rng(seed).permutation(v).reshape(shape).astype(np.float32)


N = helper.make_node

# ------------------------------------------------------------------------------------- convolution
LIN = dict(eps=0.5, rtol=2e-4, atol=2e-5)  # linear ops in float32: FD is exact up to rounding


def conv_case(xshape, wshape, opset=17, **attrs):
    w = rnd(wshape, seed=1)
    b = rnd(wshape[:1], seed=2)
    m = make([N("Conv", ["x", "w", "b"], ["y"], **attrs)], {"x": xshape}, {"w": w, "b": b}, opset=opset)
    return Case(m, {"x": rnd(xshape)}, **LIN)


CONV_CASES = {
    "basic": lambda: conv_case([2, 3, 6, 6], [4, 3, 3, 3], pads=[1, 1, 1, 1]),
    "stride2_even": lambda: conv_case([1, 2, 8, 8], [3, 2, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "stride2_odd": lambda: conv_case([1, 2, 7, 7], [3, 2, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "stride2_k2_odd_nopad": lambda: conv_case([1, 2, 7, 9], [3, 2, 2, 2], strides=[2, 2]),
    "asym_pads": lambda: conv_case([1, 2, 6, 5], [2, 2, 3, 2], pads=[0, 1, 2, 0]),
    "dilation_stride": lambda: conv_case([1, 2, 9, 8], [2, 2, 3, 3], dilations=[2, 2], strides=[2, 2],
                                         pads=[1, 2, 1, 0]),
    "rect_stride": lambda: conv_case([1, 1, 7, 6], [2, 1, 3, 2], strides=[3, 1], pads=[1, 0, 1, 1]),
    "grouped": lambda: conv_case([1, 4, 6, 6], [6, 2, 3, 3], group=2, pads=[1, 1, 1, 1], strides=[2, 2]),
    "depthwise": lambda: conv_case([2, 3, 7, 7], [3, 1, 3, 3], group=3, pads=[1, 1, 1, 1], strides=[2, 2]),
    "depthwise_mult": lambda: conv_case([1, 2, 5, 5], [4, 1, 3, 3], group=2, pads=[1, 1, 1, 1]),
    "conv1d": lambda: conv_case([2, 2, 9], [3, 2, 3], strides=[2], pads=[1, 0]),
    "conv3d": lambda: conv_case([1, 1, 4, 5, 4], [2, 1, 2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 1, 0, 0, 0]),
    "same_upper_s2": lambda: conv_case([1, 2, 8, 7], [2, 2, 3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower_s2": lambda: conv_case([1, 2, 8, 7], [2, 2, 4, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    "valid": lambda: conv_case([1, 2, 7, 7], [2, 2, 3, 3], strides=[2, 2], auto_pad="VALID"),
    "opset11": lambda: conv_case([1, 2, 8, 8], [3, 2, 3, 3], opset=11, strides=[2, 2], pads=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv(name):
    fd_check(CONV_CASES[name]())


def convt_case(xshape, wshape, **attrs):
    m = make([N("ConvTranspose", ["x", "w"], ["y"], **attrs)], {"x": xshape}, {"w": rnd(wshape, seed=3)})
    return Case(m, {"x": rnd(xshape)}, **LIN)


CONVT_CASES = {
    "basic": lambda: convt_case([1, 2, 4, 4], [2, 3, 3, 3]),
    "stride2_pads_outpad": lambda: convt_case([1, 2, 4, 5], [2, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                              output_padding=[1, 0]),
    "group_dilation": lambda: convt_case([1, 4, 3, 4], [4, 1, 3, 2], group=2, dilations=[2, 1], strides=[1, 2]),
    "output_shape": lambda: convt_case([1, 2, 4, 4], [2, 2, 3, 3], strides=[2, 2], output_shape=[9, 8]),
    "same_upper": lambda: convt_case([1, 2, 3, 4], [2, 2, 3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("name", sorted(CONVT_CASES))
def test_conv_transpose(name):
    fd_check(CONVT_CASES[name]())


# ----------------------------------------------------------------------------------------- pooling
def pool_case(op, xshape, opset=17, x=None, **attrs):
    m = make([N(op, ["x"], ["y"], **attrs)], {"x": xshape}, opset=opset)
    if op in ("MaxPool", "GlobalMaxPool"):
        return Case(m, {"x": distinct(xshape) if x is None else x}, eps=1e-3, rtol=1e-3, atol=1e-4)
    return Case(m, {"x": rnd(xshape)}, **LIN)


POOL_CASES = {
    "max_k3s2p1_overlap": lambda: pool_case("MaxPool", [1, 2, 7, 7], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "max_k3s2_even": lambda: pool_case("MaxPool", [2, 1, 8, 8], kernel_shape=[3, 3], strides=[2, 2]),
    "max_ceil": lambda: pool_case("MaxPool", [1, 2, 8, 7], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "max_ceil_pads": lambda: pool_case("MaxPool", [1, 1, 6, 6], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "max_dilation": lambda: pool_case("MaxPool", [1, 2, 8, 8], kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2]),
    "max_asym_pads": lambda: pool_case("MaxPool", [1, 1, 6, 7], kernel_shape=[3, 2], pads=[0, 1, 2, 0], strides=[2, 1]),
    "max_same_upper": lambda: pool_case("MaxPool", [1, 1, 7, 6], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "max_1d": lambda: pool_case("MaxPool", [2, 2, 9], kernel_shape=[3], strides=[2]),
    "max_opset11": lambda: pool_case("MaxPool", [1, 2, 7, 7], opset=11, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avg_basic": lambda: pool_case("AveragePool", [1, 2, 6, 6], kernel_shape=[2, 2], strides=[2, 2]),
    "avg_pad_exclude": lambda: pool_case("AveragePool", [1, 2, 7, 7], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avg_pad_include": lambda: pool_case("AveragePool", [1, 2, 7, 7], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    "avg_ceil_exclude": lambda: pool_case("AveragePool", [1, 2, 8, 7], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avg_ceil_include_pads": lambda: pool_case("AveragePool", [1, 1, 8, 7], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
    "avg_asym_pads": lambda: pool_case("AveragePool", [1, 1, 6, 7], kernel_shape=[3, 2], pads=[0, 1, 2, 0], strides=[2, 1], count_include_pad=1),
    "avg_dilation_opset19": lambda: pool_case("AveragePool", [1, 1, 8, 8], opset=19, kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 1], pads=[1, 0, 0, 1]),
    "avg_same_lower": lambda: pool_case("AveragePool", [1, 2, 7, 6], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    "avg_1d_include": lambda: pool_case("AveragePool", [2, 1, 9], kernel_shape=[4], strides=[3], pads=[2, 1], count_include_pad=1),
    "avg_opset11_ceil": lambda: pool_case("AveragePool", [1, 2, 7, 7], opset=11, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "gap": lambda: pool_case("GlobalAveragePool", [2, 3, 5, 4]),
    "gmp": lambda: pool_case("GlobalMaxPool", [2, 3, 5, 4]),
}


@pytest.mark.parametrize("name", sorted(POOL_CASES))
def test_pool(name):
    fd_check(POOL_CASES[name]())


@pytest.mark.parametrize("kind", ["maxpool", "global"])
def test_max_pool_ties_first_index_like_torch(kind):
    import torch as torch  # test extra: missing means a broken install, not a skip
    x = np.zeros([2, 2, 6, 6], np.float32)
    x[0, 0, 2:5, 1:4] = 1.0  # plateaus: ties inside windows
    x[1, 1] = np.round(rnd([6, 6], seed=3) * 2) / 2  # many repeated values
    if kind == "maxpool":
        attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        node = N("MaxPool", ["x"], ["y"], **attrs)
    else:
        node = N("GlobalMaxPool", ["x"], ["y"])
    m = make([node], {"x": list(x.shape)})
    gm = build_gradient_model(m, input_name="x", score_name="y")
    sess = session(gm.model)
    y = session(m).run(None, {"x": x})[0]
    seed = rnd(y.shape, seed=5)
    grad = sess.run([gm.grad_name], {"x": x, gm.seed_name: seed})[0]
    xt = torch.tensor(x, requires_grad=True)
    if kind == "maxpool":
        yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    else:
        yt = torch.nn.functional.adaptive_max_pool2d(xt, 1)
    (yt * torch.tensor(seed)).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------- activations
def act_case(op, kinks=(), dtype=F32, opset=17, lo=-3, hi=3, shape=(2, 3, 4), inits=None, ins=None, **attrs):
    ins = ins or ["x"]
    m = make([N(op, ins, ["y"], **attrs)], {"x": list(shape)}, inits, opset=opset, dtype=dtype)
    x = away(rnd(shape, NP[dtype], lo=lo, hi=hi), kinks)
    if dtype == F64:
        return Case(m, {"x": x})
    return Case(m, {"x": x}, eps=1e-3, rtol=2e-3, atol=2e-4)


ACT_CASES = {
    "relu": lambda: act_case("Relu", [0.0], dtype=F64),
    "leaky_relu": lambda: act_case("LeakyRelu", [0.0], alpha=0.1),
    "prelu": lambda: act_case("PRelu", [0.0], inits={"s": rnd([3, 1], seed=4)}, ins=["x", "s"]),
    "clip_relu6": lambda: act_case("Clip", [0.0, 6.0], lo=-3, hi=9, inits={"lo": np.float32(0), "hi": np.float32(6)}, ins=["x", "lo", "hi"]),
    "clip_min_only": lambda: act_case("Clip", [-0.5], inits={"lo": np.float32(-0.5)}, ins=["x", "lo"]),
    "clip_opset6_attrs": lambda: act_case("Clip", [-1.0, 1.0], opset=6, min=-1.0, max=1.0),
    "sigmoid": lambda: act_case("Sigmoid", dtype=F64),
    "tanh": lambda: act_case("Tanh", dtype=F64),
    "hard_sigmoid": lambda: act_case("HardSigmoid", [-2.5, 2.5], lo=-4, hi=4),
    "hard_sigmoid_torch": lambda: act_case("HardSigmoid", [-3.0, 3.0], lo=-5, hi=5, alpha=1 / 6, beta=0.5),
    "hard_swish": lambda: act_case("HardSwish", [-3.0, 3.0], lo=-5, hi=5),
    "erf": lambda: act_case("Erf"),
    "gelu_opset20": lambda: act_case("Gelu", opset=20),
    "gelu_tanh_opset20": lambda: act_case("Gelu", opset=20, approximate="tanh"),
    "elu": lambda: act_case("Elu", [0.0], alpha=0.7),
    "softplus": lambda: act_case("Softplus"),
    "exp": lambda: act_case("Exp", dtype=F64),
    "log": lambda: act_case("Log", dtype=F64, lo=0.2, hi=3),
    "sqrt": lambda: act_case("Sqrt", dtype=F64, lo=0.2, hi=3),
    "reciprocal": lambda: act_case("Reciprocal", dtype=F64, lo=0.5, hi=3),
    "abs": lambda: act_case("Abs", [0.0], dtype=F64),
    "neg": lambda: act_case("Neg", dtype=F64),
    "softmax_axis1_opset11": lambda: act_case("Softmax", dtype=F64, opset=11, axis=1),
    "softmax_axis1_opset13": lambda: act_case("Softmax", dtype=F64, opset=13, axis=1),
    "softmax_default_opset11": lambda: act_case("Softmax", dtype=F64, opset=11),
    "softmax_last_opset21": lambda: act_case("Softmax", dtype=F64, opset=21),
    "logsoftmax_axis0_opset11": lambda: act_case("LogSoftmax", dtype=F64, opset=11, axis=0),
    "logsoftmax_axis1_opset13": lambda: act_case("LogSoftmax", dtype=F64, opset=13, axis=1),
    "logsoftmax_default_opset18": lambda: act_case("LogSoftmax", dtype=F64, opset=18),
}


@pytest.mark.parametrize("name", sorted(ACT_CASES))
def test_activation(name):
    fd_check(ACT_CASES[name]())


@pytest.mark.parametrize("op", ["Relu", "Clip"])
def test_relu_modes(op):
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 2.0, 7.0]], np.float32)
    seed = np.array([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0]], np.float32)
    if op == "Relu":
        m = make([N("Relu", ["x"], ["y"])], {"x": [1, 6]})
        mask = x > 0
    else:
        m = make([N("Clip", ["x", "lo", "hi"], ["y"])], {"x": [1, 6]},
                 {"lo": np.float32(0), "hi": np.float32(6)})
        mask = (x > 0) & (x < 6)
    want = {
        "plain": np.where(mask, seed, 0),
        "guided": np.where(mask, np.maximum(seed, 0), 0),
        "deconvnet": np.maximum(seed, 0),
    }
    for mode, expected in want.items():
        gm = build_gradient_model(m, input_name="x", score_name="y", rules=RECTIFIER_RULESETS[mode])
        grad = session(gm.model).run([gm.grad_name], {"x": x, gm.seed_name: seed})[0]
        np.testing.assert_array_equal(grad, expected, err_msg=mode)


# --------------------------------------------------------------------------- elementwise, broadcasting
def binary_case(op, second="reduced", dtype=F64, opset=17):
    """y = op(x, t) with t = f(x) broadcast against x, so both operand rules are exercised."""
    nodes = [N("ReduceSum", ["x", "ax"], ["r"], keepdims=1), N("Exp", ["r"], ["t"]),
             N(op, ["x", "t"] if second == "reduced" else ["t", "x"], ["y"])]
    m = make(nodes, {"x": [2, 3, 4]}, {"ax": np.array([2], np.int64)}, dtype=dtype, opset=opset)
    x = rnd([2, 3, 4], NP[dtype], lo=0.3, hi=1.0) if op == "Pow" else rnd([2, 3, 4], NP[dtype])
    return Case(m, {"x": x}, rtol=1e-5, atol=1e-7)


def two_input_case(nodes, shapes, dtype=F64, opset=17, inits=None, **kw):
    feeds = {n: rnd(s, NP[dtype], seed=i) for i, (n, s) in enumerate(shapes.items())}
    m = make(nodes, shapes, inits, dtype=dtype, opset=opset)
    return Case(m, feeds, wrt=tuple(shapes), **kw)


ELEM_CASES = {
    **{f"{op}_{side}": (lambda op=op, side=side: binary_case(op, side))
       for op in ("Add", "Sub", "Mul", "Div", "Pow") for side in ("reduced", "first")},
    "add_inputs_bcast": lambda: two_input_case([N("Add", ["a", "b"], ["y"])], {"a": [2, 1, 4], "b": [3, 1]}),
    "mul_inputs_bcast": lambda: two_input_case([N("Mul", ["a", "b"], ["y"])], {"a": [4], "b": [2, 3, 4]}),
    "mul_dynamic_batch": lambda: Case(
        make([N("Mul", ["a", "b"], ["y"])], {"a": ["N", 3], "b": ["M", 1]}, dtype=F64),
        {"a": rnd([4, 3], np.float64), "b": rnd([1, 1], np.float64, seed=2)}, wrt=("a", "b")),
    "pow_const_exp": lambda: Case(make([N("Pow", ["x", "p"], ["y"])], {"x": [2, 3]}, {"p": np.array(3.0)}, dtype=F64),
                                  {"x": rnd([2, 3], np.float64)}),
    "pow_const_half": lambda: Case(make([N("Pow", ["x", "p"], ["y"])], {"x": [2, 3]}, {"p": np.array(0.5, np.float32)}),
                                   {"x": rnd([2, 3], lo=0.5, hi=2)}, eps=1e-3, rtol=1e-3, atol=1e-4),
    "square_mul_self": lambda: Case(make([N("Mul", ["x", "x"], ["y"])], {"x": [2, 3]}, dtype=F64),
                                    {"x": rnd([2, 3], np.float64)}),
    "sum_mean": lambda: two_input_case([N("Sum", ["a", "b", "a"], ["s"]), N("Mean", ["s", "b"], ["y"])],
                                       {"a": [2, 3], "b": [3]}, dtype=F32, **LIN),
    "max_bcast": lambda: two_input_case([N("Max", ["a", "b"], ["y"])], {"a": [2, 3], "b": [3]}),
    "min_bcast": lambda: two_input_case([N("Min", ["a", "b"], ["y"])], {"a": [3], "b": [2, 3]}),
    "where": lambda: two_input_case([N("Greater", ["a", "b"], ["c"]), N("Where", ["c", "a", "b"], ["y"])],
                                    {"a": [2, 3], "b": [3]}),
    "cast_roundtrip": lambda: Case(make([N("Cast", ["x"], ["d"], to=F64), N("Mul", ["d", "d"], ["e"]),
                                         N("Cast", ["e"], ["y"], to=F32)], {"x": [2, 3]}),
                                   {"x": rnd([2, 3])}, eps=1e-3, rtol=1e-3, atol=1e-4),
}


@pytest.mark.parametrize("name", sorted(ELEM_CASES))
def test_elementwise(name):
    fd_check(ELEM_CASES[name]())


# ----------------------------------------------------------------------------------- linear algebra
LINALG_CASES = {
    "gemm_plain": lambda: two_input_case([N("Gemm", ["a", "b", "c"], ["y"])], {"a": [3, 4], "b": [4, 5], "c": [5]}),
    "gemm_transA_alpha": lambda: two_input_case([N("Gemm", ["a", "b", "c"], ["y"], transA=1, alpha=0.7, beta=1.3)],
                                                {"a": [4, 3], "b": [4, 5], "c": [1, 5]}),
    "gemm_transB": lambda: two_input_case([N("Gemm", ["a", "b", "c"], ["y"], transB=1, beta=0.5)],
                                          {"a": [3, 4], "b": [5, 4], "c": [3, 1]}),
    "gemm_transAB_noc": lambda: two_input_case([N("Gemm", ["a", "b"], ["y"], transA=1, transB=1, alpha=2.0)],
                                               {"a": [4, 3], "b": [5, 4]}),
    "gemm_opset11": lambda: two_input_case([N("Gemm", ["a", "b", "c"], ["y"], transB=1)],
                                           {"a": [3, 4], "b": [5, 4], "c": [5]}, opset=11),
    "matmul_2d": lambda: two_input_case([N("MatMul", ["a", "b"], ["y"])], {"a": [3, 4], "b": [4, 2]}),
    "matmul_batched_bcast": lambda: two_input_case([N("MatMul", ["a", "b"], ["y"])], {"a": [2, 1, 3, 4], "b": [5, 4, 2]}),
    "matmul_weight_2d": lambda: two_input_case([N("MatMul", ["a", "b"], ["y"])], {"a": [2, 3, 4], "b": [4, 2]}),
    "matmul_vec_left": lambda: two_input_case([N("MatMul", ["a", "b"], ["y"])], {"a": [4], "b": [2, 4, 3]}),
    "matmul_vec_right": lambda: two_input_case([N("MatMul", ["a", "b"], ["y"])], {"a": [2, 3, 4], "b": [4]}),
    "matmul_vec_vec": lambda: two_input_case([N("MatMul", ["a", "b"], ["y"])], {"a": [4], "b": [4]}),
    "matmul_dynamic_batch": lambda: Case(
        make([N("MatMul", ["a", "b"], ["y"])], {"a": ["N", 3, 4], "b": ["M", 4, 2]}, dtype=F64),
        {"a": rnd([2, 3, 4], np.float64), "b": rnd([1, 4, 2], np.float64, seed=1)}, wrt=("a", "b")),
    "matmul_self_transpose": lambda: Case(
        make([N("Transpose", ["x"], ["t"], perm=[0, 2, 1]), N("MatMul", ["x", "t"], ["y"])], {"x": [2, 3, 4]}, dtype=F64),
        {"x": rnd([2, 3, 4], np.float64)}),
}


@pytest.mark.parametrize("name", sorted(LINALG_CASES))
def test_linalg(name):
    fd_check(LINALG_CASES[name]())


# ------------------------------------------------------------------------------ normalization, reduce
def bn_case(opset, shape=(2, 3, 4, 4)):
    c = shape[1]
    inits = {"s": rnd([c], seed=1, lo=0.5, hi=2), "b": rnd([c], seed=2), "m": rnd([c], seed=3),
             "v": rnd([c], seed=4, lo=0.2, hi=2)}
    m = make([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
             {"x": list(shape)}, inits, opset=opset)
    return Case(m, {"x": rnd(shape)}, **LIN)


def ln_case(axis, opset=17, shape=(2, 3, 4)):
    norm = list(shape[axis:])
    inits = {"s": rnd(norm, np.float64, seed=1), "b": rnd(norm, np.float64, seed=2)}
    m = make([N("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-5)],
             {"x": list(shape)}, inits, opset=opset, dtype=F64)
    return Case(m, {"x": rnd(shape, np.float64)}, rtol=1e-5, atol=1e-7)


def reduce_case(op, axes, keepdims, opset, dtype=F64):
    ins, inits, attrs = ["x"], {}, {"keepdims": keepdims}
    as_input = (op == "ReduceSum" and opset >= 13) or opset >= 18
    if axes is not None and as_input:
        ins.append("ax")
        inits["ax"] = np.array(axes, np.int64)
    elif axes is not None:
        attrs["axes"] = axes
    m = make([N(op, ins, ["y"], **attrs)], {"x": [2, 3, 4]}, inits, opset=opset, dtype=dtype)
    x = distinct([2, 3, 4]).astype(NP[dtype]) if op in ("ReduceMax", "ReduceMin") else rnd([2, 3, 4], NP[dtype])
    eps = 1e-4 if op in ("ReduceMax", "ReduceMin") else 1e-6
    return Case(m, {"x": x}, eps=eps, rtol=1e-5, atol=1e-7)


NORM_CASES = {
    "bn_opset9": lambda: bn_case(9),
    "bn_opset15": lambda: bn_case(15),
    "bn_rank2": lambda: bn_case(15, shape=(3, 4)),
    "ln_last": lambda: ln_case(-1),
    "ln_axis1": lambda: ln_case(1),
    "ln_opset21": lambda: ln_case(2, opset=21),
    "reducesum_opset11_attr": lambda: reduce_case("ReduceSum", [1], 0, 11),
    "reducesum_opset13_input": lambda: reduce_case("ReduceSum", [0, 2], 1, 13),
    "reducesum_all": lambda: reduce_case("ReduceSum", None, 0, 13),
    "reducemean_opset13_attr": lambda: reduce_case("ReduceMean", [-1], 0, 13),
    "reducemean_opset18_input": lambda: reduce_case("ReduceMean", [1, 2], 1, 18),
    "reducemax_opset13": lambda: reduce_case("ReduceMax", [2], 0, 13),
    "reducemax_opset18": lambda: reduce_case("ReduceMax", [0, 1], 1, 18),
    "reducemin_opset18_all": lambda: reduce_case("ReduceMin", None, 0, 18),
}


@pytest.mark.parametrize("name", sorted(NORM_CASES))
def test_normalization_reduce(name):
    fd_check(NORM_CASES[name]())


def test_reduce_max_ties_split_evenly():
    x = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    m = make([N("ReduceMax", ["x"], ["y"], axes=[1], keepdims=0)], {"x": [1, 4]}, opset=13)
    gm = build_gradient_model(m, input_name="x", score_name="y")
    grad = session(gm.model).run([gm.grad_name], {"x": x, gm.seed_name: np.ones([1], np.float32)})[0]
    np.testing.assert_array_equal(grad, [[0, 0.5, 0.5, 0]])


# ---------------------------------------------------------------------------------------- shape ops
def shape_case(nodes, xshape, inits=None, opset=17, dtype=F64):
    m = make(nodes, {"x": list(xshape)}, inits, opset=opset, dtype=dtype)
    x = rnd(xshape, NP[dtype])
    if dtype == F64:
        return Case(m, {"x": x})
    return Case(m, {"x": x}, eps=1e-3, rtol=2e-3, atol=2e-4)


I64 = lambda v: np.array(v, np.int64)  # noqa: E731

SHAPE_CASES = {
    "flatten": lambda: shape_case([N("Flatten", ["x"], ["f"], axis=2), N("Mul", ["f", "f"], ["y"])], [2, 3, 2, 2]),
    "reshape": lambda: shape_case([N("Reshape", ["x", "s"], ["r"]), N("Softmax", ["r"], ["y"])], [2, 3, 4], {"s": I64([2, -1, 3])}),
    "squeeze_unsqueeze_13": lambda: shape_case([N("Unsqueeze", ["x", "a"], ["u"]), N("Sigmoid", ["u"], ["v"]),
                                                N("Squeeze", ["v", "a"], ["y"])], [2, 3], {"a": I64([1, 3])}),
    "squeeze_unsqueeze_11": lambda: shape_case([N("Unsqueeze", ["x"], ["u"], axes=[0]), N("Sigmoid", ["u"], ["v"]),
                                                N("Squeeze", ["v"], ["y"], axes=[0])], [2, 3], opset=11),
    "transpose": lambda: shape_case([N("Transpose", ["x"], ["t"], perm=[2, 0, 1]), N("Softmax", ["t"], ["y"])], [2, 3, 4]),
    "transpose_default": lambda: shape_case([N("Transpose", ["x"], ["t"]), N("Softmax", ["t"], ["y"])], [2, 3, 4]),
    "concat": lambda: shape_case([N("Sigmoid", ["x"], ["s"]), N("Concat", ["x", "c", "s"], ["k"], axis=1),
                                  N("Softmax", ["k"], ["y"], axis=1)], [2, 3], {"c": rnd([2, 2], np.float64)}),
    "split": lambda: shape_case([N("Split", ["x", "sp"], ["a", "b", "c"], axis=1), N("Mul", ["a", "c"], ["y"])],
                                [2, 5], {"sp": I64([2, 1, 2])}),
    "split_opset11_attr": lambda: shape_case([N("Split", ["x"], ["a", "b"], axis=0, split=[1, 2]), N("Sigmoid", ["b"], ["y"])],
                                             [3, 2], opset=11),
    "split_opset18_num": lambda: shape_case([N("Split", ["x"], ["a", "b"], axis=1, num_outputs=2), N("Mul", ["a", "b"], ["y"])],
                                            [2, 4], opset=18),
    "slice_basic": lambda: shape_case([N("Slice", ["x", "st", "en", "ax"], ["s"]), N("Sigmoid", ["s"], ["y"])],
                                      [3, 6], {"st": I64([1, -4]), "en": I64([100, -1]), "ax": I64([0, 1])}),
    "slice_steps": lambda: shape_case([N("Slice", ["x", "st", "en", "ax", "sp"], ["s"]), N("Sigmoid", ["s"], ["y"])],
                                      [3, 7], {"st": I64([-1, 1]), "en": I64([-100, 7]), "ax": I64([0, 1]), "sp": I64([-1, 2])}),
    "slice_opset9_attrs": lambda: shape_case([N("Slice", ["x"], ["s"], starts=[1], ends=[3], axes=[1]), N("Sigmoid", ["s"], ["y"])],
                                             [2, 4], opset=9),
    "pad_constant": lambda: shape_case([N("Pad", ["x", "p"], ["q"]), N("Softmax", ["q"], ["y"])], [2, 3], {"p": I64([1, 0, 0, 2])}),
    "pad_negative": lambda: shape_case([N("Pad", ["x", "p"], ["q"]), N("Softmax", ["q"], ["y"])], [3, 4], {"p": I64([1, -1, -1, 2])}),
    "pad_axes_opset18": lambda: shape_case([N("Pad", ["x", "p", "", "a"], ["q"]), N("Softmax", ["q"], ["y"])], [2, 3, 2],
                                           {"p": I64([2, 1]), "a": I64([1])}, opset=18),
    "pad_opset2_attr": lambda: shape_case([N("Pad", ["x"], ["q"], pads=[0, 1, 1, 0]), N("Softmax", ["q"], ["y"])], [2, 3], opset=10,
                                          dtype=F32),  # the opset 10->11 converter writes a float pad value
    "gather_dups_negative": lambda: shape_case([N("Gather", ["x", "i"], ["g"], axis=1), N("Sigmoid", ["g"], ["y"])],
                                               [2, 4, 3], {"i": I64([[0, -1], [0, 2]])}),
    "gather_scalar_axis0": lambda: shape_case([N("Gather", ["x", "i"], ["g"], axis=0), N("Softmax", ["g"], ["y"])],
                                              [3, 4], {"i": I64(1)}),
    "gather_elements": lambda: shape_case([N("GatherElements", ["x", "i"], ["g"], axis=1), N("Sigmoid", ["g"], ["y"])],
                                          [2, 3], {"i": I64([[0, 0, 2, 1], [2, -1, 0, 0]])}),
    "expand": lambda: shape_case([N("Expand", ["x", "s"], ["e"]), N("Sigmoid", ["e"], ["y"])], [3, 1], {"s": I64([2, 3, 4])}),
    "tile": lambda: shape_case([N("Tile", ["x", "r"], ["t"]), N("Sigmoid", ["t"], ["y"])], [2, 3], {"r": I64([2, 3])}),
    "identity_dropout_opset12": lambda: shape_case([N("Identity", ["x"], ["i"]), N("Dropout", ["i", "r"], ["d", "mask"]),
                                                    N("Sigmoid", ["d"], ["y"])], [2, 3], {"r": np.array(0.5, np.float64)}, opset=12),
    "dropout_opset7": lambda: shape_case([N("Dropout", ["x"], ["d"], ratio=0.3), N("Sigmoid", ["d"], ["y"])], [2, 3], opset=7, dtype=F32),
    "shape_chain_dynamic": lambda: Case(
        make([N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "zero"], ["n"]), N("Unsqueeze", ["n", "ax0"], ["n1"]),
              N("Concat", ["n1", "minus1"], ["target"], axis=0), N("Reshape", ["x", "target"], ["r"]),
              N("Softmax", ["r"], ["y"])], {"x": ["N", 2, 3]},
             {"zero": I64(0), "ax0": I64([0]), "minus1": I64([-1])}, dtype=F64),
        {"x": rnd([3, 2, 3], np.float64)}),
}


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_shape_ops(name):
    fd_check(SHAPE_CASES[name]())


# ------------------------------------------------------------------------------- opsets, whole chains
@pytest.mark.parametrize("opset", [11, 12, 13, 15, 17, 18, 19, 20, 21])
def test_small_cnn_across_opsets(opset):
    """Conv -> BN -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax in one graph, per opset."""
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        N("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
        N("Relu", ["n"], ["r"]),
        N("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        N("Flatten", ["p"], ["f"]),
        N("Gemm", ["f", "fw", "fb"], ["l"], transB=1),
        N("Softmax", ["l"], ["y"], axis=1),
    ]
    inits = {"w": rnd([3, 2, 3, 3], seed=1), "b": rnd([3], seed=2), "s": rnd([3], seed=3, lo=0.5, hi=1.5),
             "bb": rnd([3], seed=4), "m": rnd([3], seed=5), "v": rnd([3], seed=6, lo=0.5, hi=1.5),
             "fw": rnd([4, 12], seed=7), "fb": rnd([4], seed=8)}
    m = make(nodes, {"x": ["N", 2, 7, 7]}, inits, opset=opset)
    x = rnd([2, 2, 7, 7], seed=9)
    fd_check(Case(m, {"x": x}, eps=1e-3, rtol=5e-3, atol=5e-4))


def test_dynamic_batch_and_taps():
    nodes = [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
             N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("MatMul", ["f", "fw"], ["y"])]
    m = make(nodes, {"x": ["batch", 2, 5, 5]}, {"w": rnd([3, 2, 3, 3], seed=1), "fw": rnd([3, 4], seed=2)})
    gm = build_gradient_model(m, input_name="x", score_name="y", taps=["r", "c"])
    assert gm.output_names == ("y", "x__grad", "r", "r__grad", "c", "c__grad")
    seed_dims = [d.dim_param or d.dim_value for d in gm.model.graph.input[-1].type.tensor_type.shape.dim]
    assert seed_dims == ["batch", 4]
    sess = session(gm.model)
    for n in (1, 3):
        x = rnd([n, 2, 5, 5], seed=n)
        seed = rnd([n, 4], seed=10 + n)
        outs = dict(zip(gm.output_names, sess.run(list(gm.output_names), {"x": x, "seed": seed})))
        # tap gradients by hand: y = mean_hw(relu(c)) @ fw
        g_r = np.broadcast_to((seed @ rnd([3, 4], seed=2).T)[:, :, None, None] / 25.0, outs["r"].shape)
        np.testing.assert_allclose(outs["r__grad"], g_r, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(outs["c__grad"], g_r * (outs["c"] > 0), rtol=1e-5, atol=1e-7)
        # per-sample runs agree with the batched run
        for i in range(n):
            one = sess.run([gm.grad_name], {"x": x[i:i + 1], "seed": seed[i:i + 1]})[0]
            np.testing.assert_allclose(one, outs["x__grad"][i:i + 1], rtol=1e-5, atol=1e-7)


def test_rule_override():
    def relu_passthrough(ctx, node, grads):
        return [grads[0]]

    m = make([N("Relu", ["x"], ["y"])], {"x": [1, 3]})
    gm = build_gradient_model(m, input_name="x", score_name="y",
                              rules=PLAIN.with_overrides("relu-passthrough", {"Relu": relu_passthrough}))
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    grad = session(gm.model).run([gm.grad_name], {"x": x, "seed": np.ones([1, 3], np.float32)})[0]
    np.testing.assert_array_equal(grad, np.ones([1, 3]))


def test_unsupported_op_names_op_and_node():
    m = make([N("Sigmoid", ["x"], ["s"]), N("TopK", ["s", "k"], ["v", "i"], name="the_topk", axis=1),
              N("Relu", ["v"], ["y"])], {"x": [2, 5]}, {"k": I64([2])})
    with pytest.raises(UnsupportedOpError) as err:
        build_gradient_model(m, input_name="x", score_name="y")
    msg = str(err.value)
    assert "TopK" in msg and "the_topk" in msg and "occlusion" in msg and "\n" not in msg


def test_unsupported_op_off_path_is_fine():
    # Einsum only touches constants; integer side branches never need rules either.
    m = make([N("Einsum", ["a", "b"], ["e"], equation="ij,jk->ik"), N("MatMul", ["x", "e"], ["m"]),
              N("ArgMax", ["m"], ["am"], axis=1), N("Sigmoid", ["m"], ["y"])], {"x": [2, 3]},
             {"a": rnd([3, 3], seed=1), "b": rnd([3, 2], seed=2)})
    fd_check(Case(m, {"x": away(rnd([2, 3]), [0.0])}, eps=1e-3, rtol=2e-3, atol=2e-4))


def test_local_functions_are_inlined():
    fn = helper.make_function(
        "custom", "Swishy", ["a"], ["b"],
        [N("Sigmoid", ["a"], ["s"]), N("Mul", ["a", "s"], ["b"])],
        opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph([N("Swishy", ["x"], ["y"], domain="custom")], "g",
                              [helper.make_tensor_value_info("x", F64, [2, 3])],
                              [helper.make_tensor_value_info("y", F64, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("custom", 1)],
                          functions=[fn], ir_version=8)
    fd_check(Case(m, {"x": rnd([2, 3], np.float64)}))


def test_weights_listed_as_inputs():
    """IR < 4 style: initializers also appear as graph inputs; they are constants, not inputs."""
    m = make([N("MatMul", ["x", "w"], ["m"]), N("Tanh", ["m"], ["y"])], {"x": [2, 3]},
             {"w": rnd([3, 4], np.float64)}, dtype=F64)
    m.graph.input.append(helper.make_tensor_value_info("w", F64, [3, 4]))
    gm = build_gradient_model(m, input_name="x", score_name="y")
    assert gm.input_names == ("x", "seed")
    fd_check(Case(m, {"x": rnd([2, 3], np.float64)}))
