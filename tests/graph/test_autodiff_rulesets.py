"""Rule sets: one hashable description of a backward pass (rectifier + op overrides).

Checks: equality/hashing (rule sets key the engine's session cache), Lucid's redirected ReLU gradient
against a PyTorch transcription of ``lucid/misc/redirected_relu_grad.py``, and that the graph layer asks
the rule set (a custom rectifier, the MaxPool rule's early mask) rather than knowing method names.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import blackbox
from blackbox.errors import ParameterError
from blackbox.graph.autodiff import (DECONVNET, GUIDED, PLAIN, RECTIFIER_RULESETS, REDIRECTED, Rectifier, RuleSet,
                                     build_gradient_model, lrp_ruleset)
from helpers import conv_classifier, save

F = TensorProto.FLOAT


def _model(nodes, shape, inits=(), opset=17):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", F, shape)],
                              [helper.make_tensor_value_info("y", F, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _grad(model, x, seed, rules):
    gm = build_gradient_model(model, input_name="x", score_name="y", rules=rules)
    sess = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([gm.grad_name], {"x": x, gm.seed_name: seed})[0]


# ---------------------------------------------------------------------------------- identity, cache
def test_rule_sets_compare_and_hash_by_content():
    assert RuleSet("guided", GUIDED.rectifier) == GUIDED and hash(RuleSet("guided", GUIDED.rectifier)) == hash(GUIDED)
    assert len({PLAIN, GUIDED, DECONVNET, REDIRECTED}) == 4
    assert lrp_ruleset("epsilon", epsilon=1e-6) is lrp_ruleset("epsilon", epsilon=1e-6)
    assert lrp_ruleset("epsilon", epsilon=1e-6, alpha=2.0, beta=1.0) == lrp_ruleset("epsilon", epsilon=1e-6)
    assert lrp_ruleset("epsilon", epsilon=1e-6) != lrp_ruleset("epsilon", epsilon=1e-3)
    assert lrp_ruleset("alpha_beta", alpha=2.0, beta=1.0) != lrp_ruleset("alpha_beta", alpha=1.0, beta=0.0)

    def one(ctx, node, grads):
        return [grads[0]]

    def two(ctx, node, grads):
        return [grads[0]]

    a = PLAIN.with_overrides("x", {"Relu": one, "Sigmoid": two})
    b = PLAIN.with_overrides("x", {"Sigmoid": two, "Relu": one})
    assert a == b and hash(a) == hash(b)  # override order does not matter
    assert a.rules()["Relu"] is one and PLAIN.rules()["Relu"] is not one


def test_build_refuses_a_mode_string():
    with pytest.raises(ParameterError, match="RuleSet"):
        build_gradient_model(_model([helper.make_node("Relu", ["x"], ["y"])], [1, 3]), input_name="x",
                             score_name="y", rules="guided")


def test_engine_caches_one_session_per_rule_set(tmp_path):
    model = blackbox.load(str(save(conv_classifier(), tmp_path / "tiny.onnx")))
    engine = model.gradients
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    seed = engine.one_hot(1)
    runs = [engine.run(x, seed, score="raw", rules=lrp_ruleset("epsilon", epsilon=1e-6)) for _ in range(2)]
    assert len(engine._runners) == 1
    np.testing.assert_array_equal(runs[0].grad, runs[1].grad)
    engine.run(x, seed, score="raw", rules=lrp_ruleset("epsilon", epsilon=1e-3))
    engine.run(x, seed, score="raw", rules=GUIDED)
    engine.run(x, seed, score="raw", rules=RuleSet("guided", GUIDED.rectifier))  # equal: cached
    assert len(engine._runners) == 3


# ------------------------------------------------------------------------------- redirected ReLU
class _LucidRedirectedRelu(torch.autograd.Function):
    """``redirected_relu_grad`` / ``redirected_relu6_grad`` of Lucid, transcribed from TensorFlow. Its
    ``grad`` is that of a loss Lucid minimises (the negated objective)."""

    @staticmethod
    def forward(ctx, x, upper):
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper) if upper is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        blocked = x < 0 if ctx.upper is None else (x < 0) | (x > ctx.upper)
        relu_grad = torch.where(blocked, torch.zeros_like(grad), grad)
        wrong_way = (x < 0) & (grad > 0)
        if ctx.upper is not None:
            wrong_way |= (x > ctx.upper) & (grad < 0)
        redirected = torch.where(wrong_way, torch.zeros_like(grad), grad)
        passing = relu_grad.reshape(len(x), -1).norm(dim=1) > 0
        mask = passing.reshape(-1, *[1] * (x.dim() - 1))
        return torch.where(mask, relu_grad, redirected), None


def _lucid_gradient(x, seed, upper=None, pool=False):
    """d sum(y * seed) / dx under Lucid's override (its loss is -sum(y * seed))."""
    xt = torch.tensor(x, requires_grad=True)
    y = _LucidRedirectedRelu.apply(xt, upper)
    if pool:
        y = torch.nn.functional.max_pool2d(y, 2)
    (-(y * torch.tensor(seed)).sum()).backward()
    return -xt.grad.numpy()


def _inputs(shape, seed):
    """Sample 0 entirely off (negative); sample 1 mixed; no exact zeros (where conventions differ)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 2.0, shape).astype(np.float32) * rng.choice([-1.0, 1.0], shape).astype(np.float32)
    x[0] = -np.abs(x[0])
    return x


def test_redirected_relu_matches_lucid():
    x = _inputs((2, 3, 4, 4), 0)
    seed = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    got = _grad(_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 3, 4, 4]), x, seed, REDIRECTED)
    np.testing.assert_array_equal(got, _lucid_gradient(x, seed))
    # sample 0 (all off) passes exactly the gradient that would turn units on; sample 1 is plain
    np.testing.assert_array_equal(got[0], np.maximum(seed[0], 0))
    np.testing.assert_array_equal(got[1], np.where(x[1] > 0, seed[1], 0))
    assert (got[0] != 0).any()
    plain = _grad(_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 3, 4, 4]), x, seed, PLAIN)
    assert not plain[0].any()  # what redirection is for: the plain gradient is all zero there


def test_redirected_relu6_matches_lucid():
    x = _inputs((2, 3, 4, 4), 2) * 5.0  # below 0, inside, and above 6
    x[0] = np.where(np.arange(x[0].size).reshape(x[0].shape) % 2 == 0, -np.abs(x[0]), 6.5 + np.abs(x[0]))
    seed = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    m = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], ["N", 3, 4, 4],
               [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")])
    got = _grad(m, x, seed, REDIRECTED)
    np.testing.assert_array_equal(got, _lucid_gradient(x, seed, upper=6.0))
    above = x[0] > 6
    np.testing.assert_array_equal(got[0], np.where(above, np.minimum(seed[0], 0), np.maximum(seed[0], 0)))


def test_redirected_relu_before_max_pool_is_not_premasked():
    """The MaxPool rule may apply Relu's mask early only for rectifiers that allow it (masks_only); the
    redirected one looks at gradients of off units, so MaxPool(Relu) must match Lucid too."""
    x = _inputs((2, 2, 6, 6), 4)
    seed = np.random.default_rng(5).standard_normal((2, 2, 3, 3)).astype(np.float32)
    m = _model([helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [2, 2, 6, 6])
    got = _grad(m, x, seed, REDIRECTED)
    np.testing.assert_allclose(got, _lucid_gradient(x, seed, pool=True), rtol=0, atol=0)
    assert (got[0] != 0).any()


# ----------------------------------------------------------------------------- behaviour, not names
def test_a_custom_rectifier_is_used_by_relu_clip_and_the_max_pool_shortcut():
    """A rule set with a new rectifier needs no change in the graph layer: Relu, ReLU6-style Clip and
    the MaxPool(Relu) shortcut all defer to it."""

    def doubled(ctx, node, g, on, below):
        g2 = ctx.emit("Mul", [g, ctx.scalar(2.0, node.input[0])])
        return g2 if on is None else ctx.emit("Where", [on, g2, ctx.scalar(0.0, node.input[0])])

    twice = RuleSet("twice", Rectifier("twice", doubled, masks_only=True))
    x = _inputs((2, 2, 6, 6), 6)
    seed = np.random.default_rng(7).standard_normal((2, 2, 3, 3)).astype(np.float32)
    pool = _model([helper.make_node("Relu", ["x"], ["r"]),
                   helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [2, 2, 6, 6])
    np.testing.assert_allclose(_grad(pool, x, seed, twice), 2 * _grad(pool, x, seed, PLAIN), rtol=0, atol=0)
    relu6 = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [2, 2, 6, 6],
                   [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(1), "hi")])
    seed6 = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(_grad(relu6, x, seed6, twice), 2 * _grad(relu6, x, seed6, PLAIN), rtol=0, atol=0)
    assert set(RECTIFIER_RULESETS) == {"plain", "guided", "deconvnet", "redirected"}
