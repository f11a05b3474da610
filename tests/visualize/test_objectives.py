"""Objectives and their gradient graphs: values against numpy, gradients against finite differences and
PyTorch autograd, and the class term's choice of tensor (pre-softmax logits, int8 head)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import blackbox
from blackbox.errors import ParameterError
from blackbox.visualize import objectives as O
from blackbox.visualize.engine import gradients_for, objective_graph, unit_gradients
from detectors import SIZE, detector_model, quantized, stripe_kernels


@pytest.fixture(scope="module")
def detectors():
    return blackbox.load(detector_model(), device="cpu")


def torch_detectors(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The detector network in PyTorch (same weights), for autograd references."""
    colour_w = torch.tensor((1.5 * np.eye(3) - 0.5)[:, :, None, None], dtype=torch.float64)
    colour = torch.relu(torch.nn.functional.conv2d(x, colour_w) + 0.05)
    stripes_conv = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (3, 4, 3, 4)),
                                              torch.tensor(stripe_kernels(), dtype=torch.float64))
    stripes = torch.relu(stripes_conv)
    features = torch.cat([colour, stripes], 1)
    return {"colour": colour, "stripes": stripes, "features": features, "logits": features.mean((2, 3))}


def lucent_diversity(layer_t: torch.Tensor) -> torch.Tensor:
    """Lucent's objectives.diversity: minus the summed pairwise Gram cosine similarity / batch."""
    batch, channels = layer_t.shape[:2]
    flat = layer_t.view(batch, channels, -1)
    grams = torch.nn.functional.normalize(torch.matmul(flat, flat.transpose(1, 2)), p=2, dim=(1, 2))
    return -sum(sum((grams[i] * grams[j]).sum() for j in range(batch) if j != i) for i in range(batch)) / batch


def torch_objective(name: str, x: torch.Tensor, target: np.ndarray) -> torch.Tensor:
    t = torch_detectors(x)
    if name == "class":
        return t["logits"][:, 3].sum()
    if name == "channel":
        return t["colour"][:, 1].mean((1, 2)).sum()
    if name == "neuron":
        return t["stripes"][:, 0, SIZE // 2, SIZE // 2].sum()
    if name == "dream":
        return (t["features"] ** 2).mean((1, 2, 3)).sum()
    if name == "inversion":
        a0 = torch.tensor(target, dtype=torch.float64)
        return (-((t["features"] - a0) ** 2).sum((1, 2, 3)) / (a0 ** 2).sum()).sum()
    if name == "diversity":
        # Lucent's value (minus the similarity): Lucent subtracts it from a loss, we add it to an objective
        return lucent_diversity(t["features"])
    if name == "direction":
        v = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5], dtype=torch.float64)
        return (t["features"] * v[None, :, None, None]).sum(1).mean((1, 2)).sum()
    raise AssertionError(name)


def ours(name: str, target: np.ndarray) -> O.Objective:
    return {"class": O.class_score(3), "channel": O.channel("colour", 1), "neuron": O.neuron("stripes", 0),
            "dream": O.dream("features"), "inversion": O.inversion("features", target),
            "diversity": O.diversity("features", 3),
            "direction": O.direction("features", [1.0, 0.0, -1.0, 2.0, 0.5])}[name]


NAMES = ["class", "channel", "neuron", "dream", "inversion", "diversity", "direction"]


@pytest.mark.parametrize("name", NAMES)
def test_objective_values_and_gradients_equal_pytorch_autograd(detectors, name):
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (3, 3, SIZE, SIZE)).astype(np.float32)
    target = rng.uniform(0, 0.5, (5, SIZE, SIZE)).astype(np.float32)
    step = gradients_for(detectors, ours(name, target))(x)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    value = torch_objective(name, xt, target)
    value.backward()
    np.testing.assert_allclose(step.values.sum(), value.item(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(step.grad, xt.grad.numpy(), rtol=1e-3, atol=1e-6 * np.abs(xt.grad.numpy()).max())


@pytest.mark.parametrize("name", ["dream", "diversity", "inversion"])
def test_nonlinear_objectives_match_finite_differences(detectors, name):
    rng = np.random.default_rng(5)
    x = rng.uniform(0.2, 0.8, (3, 3, SIZE, SIZE)).astype(np.float32)
    target = rng.uniform(0, 0.5, (5, SIZE, SIZE)).astype(np.float32)
    engine = gradients_for(detectors, ours(name, target))
    grad = engine(x).grad.astype(np.float64)
    direction = rng.normal(size=x.shape).astype(np.float32)
    eps = 1e-3
    numeric = (engine(x + eps * direction).values.sum() - engine(x - eps * direction).values.sum()) / (2 * eps)
    # a sanity check in float32 across ReLU kinks; the exact comparison is the autograd test above
    assert numeric == pytest.approx(float((grad * direction).sum()), rel=5e-2, abs=1e-5)


def test_objectives_compose_linearly(detectors):
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    a, b = O.channel("stripes", 1), O.dream("features")
    combined = gradients_for(detectors, a - 2.5 * b)(x)
    va, vb = gradients_for(detectors, a)(x), gradients_for(detectors, b)(x)
    np.testing.assert_allclose(combined.values, va.values - 2.5 * vb.values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(combined.grad, va.grad - 2.5 * vb.grad, rtol=1e-4, atol=1e-7)


def test_the_gradient_graph_only_runs_what_the_objective_reads(detectors):
    graph = objective_graph(detectors, O.channel("colour", 0))
    ops = {node.op_type for node in graph.graph.node}
    assert "Gemm" not in ops and "GlobalAveragePool" not in ops  # the read-out after `colour` is cut


def test_unit_gradients_are_a_vector_jacobian_product(detectors):
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    weights = rng.normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (torch_detectors(xt)["colour"] * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(unit_gradients(detectors, x, "colour", weights), xt.grad.numpy(), rtol=1e-4, atol=1e-6)


def softmax_model() -> onnx.ModelProto:
    """Conv -> GAP -> Flatten -> Softmax: a model that outputs probabilities (as SqueezeNet does)."""
    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "soft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_class_logit_of_a_probability_model_is_read_before_the_softmax():
    model = blackbox.load(softmax_model(), device="cpu")
    assert model.output_kind == "probabilities"
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    values = gradients_for(model, O.class_score(2))(x).values
    logits = model.activations(x, ["logits"])["logits"]
    np.testing.assert_allclose(values, logits[:, 2], rtol=1e-5)  # the logit itself, not log p
    assert O.class_note(model, O.class_score(2)) == ["the class term reads the logits before the model's final "
                                                     "Softmax ('logits')"]
    log_p = gradients_for(model, O.class_score(2, "probability"))(x).values
    np.testing.assert_allclose(log_p, model.scores(x)[:, 2], rtol=1e-5)


def test_int8_class_term_is_the_log_odds_of_the_recomputed_head(tmp_path):
    model = blackbox.load(quantized(detector_model(), tmp_path), device="cpu")
    objective = O.class_score(0)
    notes = O.class_note(model, objective)
    assert notes and "log-odds" in notes[0]
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    values = gradients_for(model, objective)(x).values
    p = model.scores(x, score="probability")[:, 0]  # the real int8 model: the recomputed head agrees closely
    np.testing.assert_allclose(values, np.log(p / (1 - p)), atol=0.05)


def test_bad_objective_arguments_are_one_line_errors(detectors):
    for objective, text in [(O.channel("colour", 3), "channel 3 is out of range"),
                            (O.neuron("stripes", 0, y=40), "outside layer"),
                            (O.direction("features", [1, 2]), "has 2 values"),
                            (O.channel("colur", 0), "close names: 'colour'")]:
        with pytest.raises(ParameterError, match=text) as error:
            gradients_for(detectors, objective)
        assert "\n" not in str(error.value)
