"""LRP: parity with Captum's LRP, conservation, the alpha-beta formula on signed inputs and biases, and
parameter checks."""

from __future__ import annotations

import io
import warnings

import captum.attr as captum_attr  # test extra: missing means a broken install, not a skip
import numpy as np
import onnx
import pytest
import torch  # test extra: missing means a broken install, not a skip
from captum.attr._utils.custom_modules import Addition_Module
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
from onnx import TensorProto, helper, numpy_helper

import blackbox
from blackbox.errors import ParameterError

nn = torch.nn

K = 5


class LrpNet(nn.Module):
    """Conv/ReLU/MaxPool/BatchNorm/residual Add/AvgPool/Linear, one module per use (Captum needs that).

    Every Conv/Linear reads a non-negative tensor (ReLU output, pooled ReLU, or an input in [0, 1]), so
    Captum's Alpha1_Beta0 (which clamps weights, assuming non-negative inputs) is the true rule."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2)
        self.bn, self.relu2 = nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.relu3 = nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.add, self.relu4, self.pool2 = Addition_Module(), nn.ReLU(), nn.AvgPool2d(2)
        self.fc1, self.relu5, self.fc2 = nn.Linear(8 * 4 * 4, 16, bias=bias), nn.ReLU(), nn.Linear(16, K, bias=bias)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.normal_(0, 0.1)
            self.bn.running_mean.normal_(0, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        y = self.relu2(self.bn(self.pool1(self.relu1(self.conv1(x)))))
        y = self.relu4(self.add(y, self.conv3(self.relu3(self.conv2(y)))))
        y = torch.flatten(self.pool2(y), 1)
        return self.fc2(self.relu5(self.fc1(y)))


class BiasFreeNet(nn.Module):
    """No biases, no BatchNorm (its shift is a bias): LRP-epsilon must conserve relevance."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, K, bias=False)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 3, 2, 1)  # overlapping windows
        y = torch.relu(y + self.conv3(torch.relu(self.conv2(y))))
        y = nn.functional.avg_pool2d(y, 2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def export(net: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), f, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def build(net_cls, seed: int, **kw):
    torch.manual_seed(seed)
    net = net_cls(**kw).eval()
    x = torch.rand(3, 3, 16, 16)  # in [0, 1]: non-negative, like pixels
    return net, x, blackbox.load(export(net, x), device="cpu")


def close(actual, expected, rtol=1e-4):
    expected = np.asarray(expected, np.float64)
    atol = 1e-6 * float(np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)
    big = np.abs(expected) >= max(1e-3 * np.abs(expected).max(), 1e-30)  # where relative error means something
    if not big.any():
        return 0.0
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)[big] / np.abs(expected)[big]))


def captum_lrp(net, x, target: int, rules) -> np.ndarray:
    for module, rule in rules.items():
        module.rule = rule  # Captum removes the rules (and restores the weights) when it is done
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = captum_attr.LRP(net).attribute(x.clone(), target=target)
    return out.detach().numpy()


@pytest.fixture(scope="module")
def biased():
    return build(LrpNet, 0, bias=True)


@pytest.fixture(scope="module")
def bias_free():
    return build(LrpNet, 1, bias=False)


# --------------------------------------------------------------------------------------- Captum
@pytest.mark.parametrize("epsilon", [1e-9, 0.25])
def test_epsilon_rule_matches_captum(biased, epsilon):
    """Captum's default rules are EpsilonRule on every Conv/Linear/pool/BatchNorm/Addition layer."""
    net, x, model = biased
    layers = [m for m in net.modules() if type(m) in (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d,
                                                      nn.BatchNorm2d, Addition_Module)]
    worst = 0.0
    for i, target in enumerate((0, 3, 4)):
        expected = captum_lrp(net, x[i:i + 1], target, {m: EpsilonRule(epsilon=epsilon) for m in layers})[0]
        e = blackbox.explain(model, x[i].numpy(), "lrp", target=target, epsilon=epsilon)
        assert e.attributions.shape == (3, 16, 16) and e.score == "raw"
        worst = max(worst, close(e.attributions, expected))
    print(f"epsilon={epsilon}: max relative difference to Captum {worst:.2e}")


def test_alpha1_beta0_rule_matches_captum(bias_free):
    net, x, model = bias_free
    rules = {m: Alpha1_Beta0_Rule() for m in net.modules() if type(m) in (nn.Conv2d, nn.Linear)}
    rules.update({m: EpsilonRule(epsilon=1e-9) for m in net.modules()
                  if type(m) in (nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d, Addition_Module)})
    worst = 0.0
    for i, target in enumerate((1, 2, 4)):
        expected = captum_lrp(net, x[i:i + 1], target, rules)[0]
        e = blackbox.explain(model, x[i].numpy(), "lrp", target=target, rule="alpha_beta", epsilon=1e-9)
        worst = max(worst, close(e.attributions, expected))
    print(f"alpha1-beta0: max relative difference to Captum {worst:.2e}")


# ---------------------------------------------------------------------------------- conservation
def test_epsilon_rule_conserves_relevance_without_biases():
    net, x, model = build(BiasFreeNet, 2)
    x = x * 2 - 1  # signed inputs: conservation does not need non-negative ones
    logits = net(x).detach().numpy()
    for i in range(3):
        target = int(np.argmax(logits[i]))
        e = blackbox.explain(model, x[i].numpy(), "lrp", target=target)
        total = float(e.attributions.astype(np.float64).sum())
        assert abs(total - logits[i, target]) <= 1e-4 * abs(logits[i, target]), (total, logits[i, target])
        assert e.extras["relevance_sum"] == pytest.approx(total, rel=1e-6)
        np.testing.assert_allclose(e.heatmap, e.attributions.sum(0), rtol=1e-5, atol=1e-7)


def test_alpha1_beta0_conserves_relevance_without_biases():
    """Conv/Linear inputs are non-negative; the residual Add still hands signed relevance to the conv
    branch (its output is signed), so only the total is checked."""
    net, x, model = build(BiasFreeNet, 3)
    logits = net(x).detach().numpy()
    for i in range(3):
        target = int(np.argmax(logits[i]))
        if logits[i, target] <= 0:
            continue
        e = blackbox.explain(model, x[i].numpy(), "lrp", target=target, rule="alpha_beta")
        assert float(e.attributions.sum()) == pytest.approx(float(logits[i, target]), rel=1e-4)


# ------------------------------------------------------------------- alpha-beta, signed, with bias
def _one_layer_model(kind: str, w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    """input [N, 2, 3, 3] -> Flatten -> (Gemm | MatMul + Add | 3x3 Conv + Flatten) -> logits [N, K]."""
    nodes, inits = [], [numpy_helper.from_array(b, "b")]
    if kind == "conv":
        inits.append(numpy_helper.from_array(w.reshape(K, 2, 3, 3), "w"))
        nodes += [helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[3, 3]),
                  helper.make_node("Flatten", ["c"], ["logits"])]
    else:
        nodes.append(helper.make_node("Flatten", ["input"], ["flat"]))
        if kind == "gemm":
            inits.append(numpy_helper.from_array(w, "w"))
            nodes.append(helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "w"))
            nodes += [helper.make_node("MatMul", ["flat", "w"], ["mm"]),
                      helper.make_node("Add", ["mm", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 3, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kind", ["gemm", "matmul", "conv"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (2.0, 1.0)])
def test_alpha_beta_formula_on_signed_inputs_with_bias(kind, alpha, beta):
    """R_i = z_t (alpha (a_i w_i)+ / z+ - beta (a_i w_i)- / z-), z+- = sum (a_i w_i)+- + b+-; MatMul's bias
    is a separate Add (epsilon rule there: it keeps z_t * mm/z of the relevance)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, 18)).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    model = blackbox.load(_one_layer_model(kind, w, b), device="cpu")
    x = rng.normal(size=(2, 3, 3)).astype(np.float32)
    a = x.reshape(-1).astype(np.float64)
    for target in range(K):
        contrib = a * w[target]
        z = contrib.sum() + b[target]
        bias = 0.0 if kind == "matmul" else float(b[target])
        relevance = contrib.sum() if kind == "matmul" else z  # the Add keeps mm / z of R = z
        zp = contrib.clip(min=0).sum() + max(bias, 0.0)
        zn = contrib.clip(max=0).sum() + min(bias, 0.0)
        expected = relevance * (alpha * contrib.clip(min=0) / zp - beta * contrib.clip(max=0) / zn)
        e = blackbox.explain(model, x, "lrp", target=target, rule="alpha_beta", alpha=alpha, beta=beta, epsilon=0)
        np.testing.assert_allclose(e.attributions.reshape(-1), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


# ------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("params,word", [({"rule": "gamma"}, "rule"), ({"epsilon": -1e-3}, "epsilon"),
                                         ({"epsilon": float("nan")}, "epsilon"),
                                         ({"rule": "alpha_beta", "alpha": 2.0, "beta": 0.0}, "alpha - beta"),
                                         ({"rule": "alpha_beta", "alpha": 1.0, "beta": -1.0}, "beta")])
def test_bad_parameters_name_the_parameter(params, word):
    model = blackbox.load(_one_layer_model("gemm", np.ones((K, 18), np.float32), np.zeros(K, np.float32)),
                          device="cpu")
    with pytest.raises(ParameterError, match=word):
        blackbox.explain(model, np.ones((2, 3, 3), np.float32), "lrp", target=0, **params)


# ---------------------------------------------------------------------------------- conservation note
def _lrp_notes(e) -> list[str]:
    return [n for n in e.notes if n.startswith("lrp:")]


def test_conservation_gap_of_a_biased_layer_is_a_note_with_the_figures():
    """One Gemm with bias, epsilon rule: the pixels receive sum(a_i w_i) of R = z = sum(a_i w_i) + b, so
    the gap is exactly |b| / |z|: a large bias gets a note, no bias none."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(K, 18)).astype(np.float32)
    x = rng.normal(size=(2, 3, 3)).astype(np.float32)
    contrib = float(x.reshape(-1).astype(np.float64) @ w[0].astype(np.float64))
    b = np.zeros(K, np.float32)
    b[0] = np.float32(2.0 * abs(contrib) + 1.0)  # the bias carries most of the score
    e = blackbox.explain(blackbox.load(_one_layer_model("gemm", w, b), device="cpu"), x, "lrp", target=0, epsilon=0)
    z = contrib + float(b[0])
    assert e.extras["score"] == pytest.approx(z, rel=1e-5)
    assert e.extras["relevance_sum"] == pytest.approx(contrib, rel=1e-4, abs=1e-5)
    assert e.extras["conservation_gap"] == pytest.approx(abs(b[0]) / abs(z), rel=1e-4)
    (note,) = _lrp_notes(e)
    assert f"{e.extras['relevance_sum']:.4g}" in note and f"{e.extras['score']:.4g}" in note
    assert f"{100 * e.extras['conservation_gap']:.0f}%" in note
    e = blackbox.explain(blackbox.load(_one_layer_model("gemm", w, np.zeros(K, np.float32)), device="cpu"), x, "lrp",
                         target=0, epsilon=0)
    assert e.extras["conservation_gap"] < 1e-5 and _lrp_notes(e) == []


def test_conserving_network_has_no_conservation_note():
    net, x, model = build(BiasFreeNet, 2)
    target = int(np.argmax(net(x[:1]).detach().numpy()[0]))
    e = blackbox.explain(model, x[0].numpy(), "lrp", target=target)
    assert e.extras["conservation_gap"] < 1e-4 and _lrp_notes(e) == []
