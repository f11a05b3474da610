"""Whole-network parity of the ONNX differentiator with torch autograd.

Small networks of the common families (ResNet, VGG, MobileNetV2/V3, DenseNet, ViT) with random
weights and non-trivial BatchNorm statistics are exported with the TorchScript exporter (opset 17) and
the dynamo exporter (opset 18). For a batch of 3 with different targets (one-hot seeds), the gradient
model's d logit[target] / d x and the gradient at a tapped intermediate activation (what Grad-CAM
needs) must match torch autograd.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import torch as torch  # test extra: missing means a broken install, not a skip
nn = torch.nn
F = torch.nn.functional

from blackbox.errors import UnsupportedOpError  # noqa: E402
from conftest import real  # noqa: E402
from blackbox.graph.autodiff import RECTIFIER_RULESETS, build_gradient_model, prepare  # noqa: E402

from torch_models import K, MODELS, exported  # noqa: E402

TARGETS = [1, 4, 7]


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    # the int8 model's own integer arithmetic, also on x86 CPUs without VNNI (blackbox.runtime sets it too)
    so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def torch_grads(net, x, seed, relu_hook=None):
    handles = []
    if relu_hook is not None:
        handles = [m.register_full_backward_hook(relu_hook) for m in net.modules()
                   if isinstance(m, nn.ReLU)]
    xt = x.clone().requires_grad_(True)
    logits, feat = net(xt)
    feat.retain_grad()
    (logits * seed).sum().backward()
    for h in handles:
        h.remove()
    return logits.detach().numpy(), xt.grad.numpy(), feat.detach().numpy(), feat.grad.numpy()


def close(actual, expected, rtol=1e-4, atol_rel=1e-5, what=""):
    atol = atol_rel * float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def one_hot(targets):
    seed = np.zeros([len(targets), K], np.float32)
    seed[np.arange(len(targets)), targets] = 1.0
    return seed


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_torch(name, exporter):
    net, x, model = exported(name, exporter)
    gm = build_gradient_model(model, input_name="x", score_name="logits", taps=["feat"])
    sess = session(gm.model)
    seed = one_hot(TARGETS)
    out = dict(zip(gm.output_names, sess.run(list(gm.output_names), {"x": x.numpy(), "seed": seed})))
    logits, gx, feat, gfeat = torch_grads(net, x, torch.tensor(seed))
    close(out["logits"], logits, what="logits")
    close(out["x__grad"], gx, what="input gradient")
    close(out[gm.tap_value_names[0]], feat, what="tap value")
    close(out["feat__grad"], gfeat, what="tap gradient")
    # the batch stays dynamic: one sample alone gives its row of the batched result
    one = sess.run([gm.grad_name], {"x": x.numpy()[1:2], "seed": seed[1:2]})[0]
    close(one, gx[1:2], what="single sample")


def _guided(module, grad_in, grad_out):
    return (F.relu(grad_in[0]),)


def _deconv(module, grad_in, grad_out):
    return (F.relu(grad_out[0]),)


@pytest.mark.parametrize("mode,hook", [("guided", _guided), ("deconvnet", _deconv)])
def test_guided_backprop_and_deconvnet_match_torch_hooks(mode, hook):
    net, x, model = exported("resnet", "torchscript")
    gm = build_gradient_model(model, input_name="x", score_name="logits", rules=RECTIFIER_RULESETS[mode])
    seed = one_hot(TARGETS)
    grad = session(gm.model).run([gm.grad_name], {"x": x.numpy(), "seed": seed})[0]
    _, expected, _, _ = torch_grads(net, x, torch.tensor(seed), relu_hook=hook)
    close(grad, expected, what=mode)
    plain = session(build_gradient_model(model, input_name="x", score_name="logits").model)
    assert not np.allclose(plain.run(["x__grad"], {"x": x.numpy(), "seed": seed})[0], grad)


class EinsumNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.w = nn.Parameter(torch.randn(4, K))

    def forward(self, x):
        y = F.relu(self.conv(x)).mean((2, 3))
        return torch.einsum("nc,ck->nk", y, self.w)


def test_op_without_rule_raises_unsupported():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = export_simple(EinsumNet().eval(), x)
    einsum = [n for n in model.graph.node if n.op_type == "Einsum"]
    assert einsum, "expected the exporter to emit Einsum"
    with pytest.raises(UnsupportedOpError) as err:
        build_gradient_model(model, input_name="x", score_name="y")
    msg = str(err.value)
    assert "Einsum" in msg and einsum[0].name in msg and "kernel_shap" in msg
    assert "\n" not in msg


def export_simple(net, x):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


# ------------------------------------------------------------------------- precision (fp16, int8)


def _smooth_images(n, size=224, seed=0):
    """Fixed smooth random images, ImageNet-normalised (NCHW float32)."""
    rng = np.random.default_rng(seed)
    low = torch.tensor(rng.uniform(0, 1, (n, 3, 7, 7)), dtype=torch.float32)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((img - mean) / std).numpy()


def _cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_dequantize_synthetic_int8(fmt, tmp_path):
    """ORT-quantized ResNet-like (per-channel int8 weights, uint8 activations), both formats."""
    import onnxruntime.quantization as quant  # test extra: missing means a broken install, not a skip
    from blackbox.graph.precision import dequantize

    net, x, model = exported("resnet", "torchscript")
    onnx.save(model, str(tmp_path / "f.onnx"))

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                            for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    import logging
    logging.getLogger().setLevel(logging.ERROR)
    quant.quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                          quant_format=getattr(quant.QuantFormat, fmt), per_channel=True,
                          activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8)
    q = onnx.load(str(tmp_path / "q.onnx"))
    f = dequantize(q)
    assert not any(n.op_type.startswith("QLinear") or n.op_type in ("QGemm", "QuantizeLinear",
                                                                     "DequantizeLinear")
                   for n in f.graph.node)
    xs = x.numpy()
    yq = session(q).run(["logits"], {"x": xs})[0]
    yf = session(f).run(["logits"], {"x": xs})[0]
    np.testing.assert_allclose(yf, yq, atol=1e-5)  # fake quantization reproduces the int8 model
    gm = build_gradient_model(f, input_name="x", score_name="logits", taps=["feat"])
    seed = one_hot(TARGETS)
    out = session(gm.model).run([gm.score_name, gm.grad_name], {"x": xs, "seed": seed})
    np.testing.assert_allclose(out[0], yq, atol=1e-5)
    # straight-through gradients of the int8 model track the float model's gradients
    _, gx, _, _ = torch_grads(net, x, torch.tensor(seed))
    assert np.isfinite(out[1]).all()
    assert _cosine(out[1], gx) > 0.8


def test_dequantize_real_mobilenetv2_int8():
    from blackbox.graph.precision import dequantize

    path = str(real("models", "mobilenetv2-12-int8.onnx"))
    q = onnx.load(path)
    x = np.concatenate([_smooth_images(4), np.random.default_rng(1).standard_normal(
        (2, 3, 224, 224)).astype(np.float32)])
    yq = session(q).run(None, {"input": x})[0]
    f = dequantize(q)
    yf = session(f).run(None, {"input": x})[0]
    diff = np.abs(yf - yq).max()
    print(f"mobilenetv2-12-int8: max |logit diff| {diff:.3f}, top-1 {yq.argmax(1)} vs {yf.argmax(1)}")
    np.testing.assert_array_equal(yf.argmax(1), yq.argmax(1))
    assert diff < 3.0  # measured 1.76 (about 11 output quantization steps of 0.16)
    gm = build_gradient_model(f, input_name="input", score_name="output")
    seed = np.zeros((2, 1000), np.float32)
    seed[0, yq[0].argmax()] = seed[1, yq[1].argmax()] = 1
    score, grad = session(gm.model).run([gm.score_name, gm.grad_name], {"input": x[:2], "seed": seed})
    np.testing.assert_allclose(score, yf[:2], rtol=1e-5, atol=1e-5)
    assert grad.shape == (2, 3, 224, 224) and np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_to_float32_real_squeezenet_fp16():
    from blackbox.graph.precision import to_float32

    path = str(real("models", "squeezenet1.0-fp16.onnx"))
    m16 = onnx.load(path)
    f = to_float32(m16)
    x = _smooth_images(1)
    y16 = session(m16).run(None, {"data_0": x.astype(np.float16)})[0].astype(np.float32)
    y32 = session(f).run(None, {"data_0": x})[0]
    assert y32.dtype == np.float32 and y32.shape == (1, 1000, 1, 1)
    np.testing.assert_allclose(y32, y16, atol=2e-3)
    gm = build_gradient_model(f, input_name="data_0", score_name="softmaxout_1")
    seed = np.zeros((1, 1000, 1, 1), np.float32)
    seed[0, y32.argmax()] = 1
    sess = session(gm.model)
    score, grad = sess.run([gm.score_name, gm.grad_name], {"data_0": x, "seed": seed})
    np.testing.assert_allclose(score, y32, rtol=1e-6, atol=1e-7)
    # Reference: the same (prepared) graph interpreted op by op in torch, float64, autograd.
    # Finite differences are useless here (ReLU/MaxPool kinks everywhere at small scales).
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = _torch_interpret(prepare(f, outputs=["softmaxout_1"]), xt)
    np.testing.assert_allclose(yt.detach().numpy(), y32, atol=1e-6)
    (yt * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    ref = xt.grad.numpy()
    assert _cosine(grad, ref) > 0.9999
    # float32 vs float64 flips a handful of near-tie MaxPool / near-zero ReLU decisions
    off = np.abs(grad - ref) > 1e-3 * np.abs(ref).max()
    assert off.mean() < 5e-3


def _torch_interpret(model, x):
    """Evaluate a plain CNN graph (the ops SqueezeNet uses) with torch ops, for autograd."""
    from onnx import helper, numpy_helper

    def attr(node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    env = {}
    for t in model.graph.initializer:
        v = numpy_helper.to_array(t)
        env[t.name] = torch.tensor(v.astype(np.float64) if v.dtype == np.float32 else v)
    env[model.graph.input[0].name] = x
    for n in model.graph.node:
        i = [env[k] if k else None for k in n.input]
        op = n.op_type
        if op in ("Conv", "MaxPool"):
            pads = attr(n, "pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:], "symmetric pads only"
        if op == "Conv":
            y = F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, attr(n, "strides", [1, 1]), pads[:2],
                         attr(n, "dilations", [1, 1]), attr(n, "group", 1))
        elif op == "Relu":
            y = F.relu(i[0])
        elif op == "MaxPool":
            y = F.max_pool2d(i[0], attr(n, "kernel_shape"), attr(n, "strides"), pads[:2],
                             ceil_mode=bool(attr(n, "ceil_mode", 0)))
        elif op == "Concat":
            y = torch.cat(i, attr(n, "axis"))
        elif op == "Identity":
            y = i[0]
        elif op == "GlobalAveragePool":
            y = i[0].mean((2, 3), keepdim=True)
        elif op == "Shape":
            y = torch.tensor(i[0].shape)
        elif op == "Flatten":
            y = i[0].flatten(attr(n, "axis", 1))
        elif op == "Softmax":
            y = torch.softmax(i[0], attr(n, "axis", -1))
        elif op == "Reshape":
            y = i[0].reshape(tuple(int(v) for v in i[1]))
        else:
            raise NotImplementedError(op)
        env[n.output[0]] = y
    return env[model.graph.output[0].name]


def test_dequantize_conv_integer():
    """QuantizeLinear -> ConvInteger -> Cast -> Mul(scale): the int32 accumulator path."""
    from onnx import TensorProto, helper, numpy_helper

    from blackbox.graph.precision import dequantize

    rng = np.random.default_rng(0)
    w = rng.integers(0, 255, (4, 2, 3, 3)).astype(np.uint8)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "s": np.float32(0.02), "zp": np.uint8(128), "w": w, "wzp": np.uint8(120),
        "scale": np.float32(0.02 * 0.01)}.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("ConvInteger", ["xq", "w", "zp", "wzp"], ["acc"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    q = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.uniform(-3, 3, (2, 2, 5, 5)).astype(np.float32)
    f = dequantize(q)
    np.testing.assert_allclose(session(f).run(None, {"x": x})[0], session(q).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
    gm = build_gradient_model(f, input_name="x", score_name="y")
    grad = session(gm.model).run([gm.grad_name], {"x": x, "seed": np.ones((2, 4, 5, 5), np.float32)})[0]
    # straight-through: the gradient of the float conv with the dequantized weights, zero where the
    # input quantizer clips
    xt = torch.tensor(x, requires_grad=True)
    wf = torch.tensor((w.astype(np.float32) - 120) * 0.01)
    lo, hi = 0.02 * (0 - 128), 0.02 * (255 - 128)
    yt = F.conv2d(xt, wf, padding=1)
    yt.sum().backward()
    expected = xt.grad.numpy() * ((x > lo) & (x < hi))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)
