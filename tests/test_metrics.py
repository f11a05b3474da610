"""Metrics: batched deletion/insertion against a per-step reference, localisation, sanity checks, and
infidelity / max-sensitivity against Captum on the same model."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest

import blackbox
from blackbox import metrics
from blackbox.datasets.shapes import make_shapes

from conftest import MODELS, real


def _reference_curve(model, x, heat, target, step, kind, other):
    """The RISE evaluation loop, literally: one forward pass per step on a NumPy-built image."""
    c, h, w = x.shape
    order = np.argsort(-heat.reshape(-1), kind="stable")
    n_steps = math.ceil(h * w / step)
    scores = []
    for k in range(n_steps + 1):
        chosen = order[: k * step]
        image = (x if kind == "deletion" else other).reshape(c, -1).copy()
        image[:, chosen] = (other if kind == "deletion" else x).reshape(c, -1)[:, chosen]
        scores.append(model.scores(image.reshape(1, c, h, w), score="probability")[0, target])
    scores = np.asarray(scores, np.float64)
    fractions = np.minimum(np.arange(n_steps + 1) * step, h * w) / (h * w)
    return fractions, scores, float(np.trapezoid(scores, fractions))


@pytest.mark.parametrize("step", [100, None])
def test_curves_equal_per_step_reference(shapes_model, step):
    sample = blackbox.inputs.prepare(shapes_model, str(MODELS / "samples" / "star.png"))
    heat = blackbox.explain(shapes_model, str(MODELS / "samples" / "star.png"), "occlusion").model_heatmap
    heat = np.round(heat, 1)  # many ties: the ranking must break them the same way (raster order)
    target = 3
    effective = step or round(64 * 64 / 224)
    for kind, other in (("deletion", np.zeros_like(sample.x)), ("insertion", metrics.rise_blur(sample.x))):
        fn = metrics.deletion if kind == "deletion" else metrics.insertion
        curve = fn(shapes_model, sample.x, heat, target, step=step)
        fractions, scores, auc = _reference_curve(shapes_model, sample.x, heat, target, effective, kind, other)
        assert curve.step == effective
        np.testing.assert_allclose(curve.fractions, fractions)
        np.testing.assert_allclose(curve.scores, scores, atol=2e-6)
        assert curve.auc == pytest.approx(auc, abs=1e-6)
        assert curve.fractions[0] == 0 and curve.fractions[-1] == 1


def test_rise_blur_is_the_rise_code_kernel():
    import torch as torch  # test extra: missing means a broken install, not a skip
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(0).normal(size=(3, 20, 24)).astype(np.float32)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    kern = np.zeros((3, 3, 11, 11), np.float32)
    for i in range(3):
        kern[i, i] = gaussian_filter(delta, 5)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x[None]), torch.from_numpy(kern), padding=5)[0].numpy()
    np.testing.assert_allclose(metrics.rise_blur(x), expected, atol=1e-5)


def test_true_mask_beats_random_map(shapes_model):
    """Averaged over generated images, a map that ranks the object first deletes faster and inserts
    faster than a random map. Deletion goes to the blurred image here: deleting a shape to black leaves a
    black silhouette of the same shape, which this model still recognises."""
    batch = make_shapes(12, seed=123)
    rng = np.random.default_rng(0)
    good_del, rand_del, good_ins, rand_ins = [], [], [], []
    for image, label, mask in zip(batch.images, batch.labels, batch.masks):
        mask = mask.astype(np.float32)
        good = mask + cv2.GaussianBlur(mask, (0, 0), 3)  # the object, then its outline and surroundings
        noise = rng.random(mask.shape)
        for heat, dels, ins in ((good, good_del, good_ins), (noise, rand_del, rand_ins)):
            dels.append(metrics.deletion(shapes_model, image, heat, int(label), step=32, baseline="blur").auc)
            ins.append(metrics.insertion(shapes_model, image, heat, int(label), step=32).auc)
    assert np.mean(good_del) < np.mean(rand_del) - 0.05
    assert np.mean(good_ins) > np.mean(rand_ins) + 0.3


def test_curve_accepts_picture_resolution_maps(shapes_model):
    path = str(MODELS / "samples" / "circle.png")
    exp = blackbox.explain(shapes_model, path, "occlusion")
    a = metrics.deletion(shapes_model, path, exp, step=64)
    b = metrics.deletion(shapes_model, path, exp.heatmap, step=64)
    assert a.auc == pytest.approx(b.auc)
    with pytest.raises(blackbox.BlackboxError):
        metrics.deletion(shapes_model, path, np.zeros((5, 5)))
    with pytest.raises(blackbox.BlackboxError):
        metrics.insertion(shapes_model, path, exp, step=0)


def test_pointing_game_cases():
    heat = np.zeros((64, 64))
    heat[10, 10] = 1.0
    box = (20, 20, 30, 30)  # nearest inside pixel (20, 20): distance sqrt(200) = 14.14
    assert metrics.pointing_game(heat, box=box)  # default tolerance 15
    assert not metrics.pointing_game(heat, box=box, tolerance=14)
    assert metrics.pointing_game(heat, box=box, tolerance=math.sqrt(200))
    assert metrics.pointing_game(heat, box=(5, 5, 15, 15), tolerance=0)
    # half-open: row/column 10 is outside (0, 0, 10, 10); the nearest inside pixel (9, 9) is sqrt(2) away
    assert not metrics.pointing_game(heat, box=(0, 0, 10, 10), tolerance=1)
    assert metrics.pointing_game(heat, box=(0, 0, 10, 10), tolerance=1.5)
    assert metrics.pointing_game(heat, box=(0, 0, 11, 10), tolerance=1)
    assert not metrics.pointing_game(heat, box=(30, 30, 30, 40), tolerance=100)  # empty box: a miss
    mask = np.zeros((64, 64), bool)
    mask[10, 40:] = True  # 30 px to the right
    assert not metrics.pointing_game(heat, mask=mask)
    assert metrics.pointing_game(heat, mask=mask, tolerance=30)
    ties = np.zeros((64, 64))
    ties[5, 60] = ties[50, 2] = 1.0  # equal maxima: the first in raster order counts
    assert metrics.pointing_game(ties, box=(0, 56, 8, 64), tolerance=0)
    assert not metrics.pointing_game(ties, box=(48, 0, 56, 8), tolerance=0)
    with pytest.raises(blackbox.BlackboxError):
        metrics.pointing_game(heat, mask=np.zeros((8, 8)))
    assert metrics.saliency_fraction(heat, box=(5, 5, 15, 15)) == 1.0
    assert metrics.saliency_fraction(heat, mask=mask) == 0.0


def test_sanity_cascading_changes_the_map_top_down(shapes_model):
    path = str(MODELS / "samples" / "circle.png")
    layers = metrics.weight_layers(shapes_model.proto)
    node_index = {n.name: i for i, n in enumerate(shapes_model.proto.graph.node)}
    positions = [node_index[layer.name] for layer in layers]
    assert positions == sorted(positions, reverse=True)  # output first
    assert layers[0].op_type == "Gemm" and layers[-1].op_type == "Conv"
    assert {layer.op_type for layer in layers} == {"Gemm", "Conv", "BatchNormalization"}
    steps = metrics.sanity_check(shapes_model, path, "occlusion", mode="cascading", seed=0)
    assert [s.layer for s in steps] == [layer.name for layer in layers]
    assert steps[-1].layers == [layer.name for layer in layers]  # cumulative
    rho = np.array([s.spearman_abs for s in steps])
    assert np.all(rho < 0.9) and rho[-1] < 0.5
    assert all(-1 <= s.ssim <= 1 for s in steps)
    again = metrics.sanity_check(shapes_model, path, "occlusion", mode="independent", layers=2, seed=0)
    assert [s.layers for s in again] == [[layers[0].name], [layers[1].name]]
    assert again[0].spearman_abs == pytest.approx(steps[0].spearman_abs)  # same seed, same first draw


def test_sanity_on_quantized_model():
    path = real("models", "mobilenetv2-12-int8.onnx")
    model = blackbox.load(path, preprocess="imagenet", device="cpu")
    layers = metrics.weight_layers(model.proto)
    assert layers[0].op_type in ("QLinearMatMul", "QLinearConv", "Gemm", "MatMul")
    assert sum(layer.quantized for layer in layers) > 40
    picture = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    steps = metrics.sanity_check(model, picture, "occlusion", layers=1, window=56, stride=56)
    assert len(steps) == 1 and steps[0].layer == layers[0].name


# ------------------------------------------------------------------------------- Captum comparison

@pytest.fixture(scope="module")
def tiny_torch(tmp_path_factory):
    import torch as torch  # test extra: missing means a broken install, not a skip
    pytest.importorskip("captum")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3),
                              torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is legacy: chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 3, 12, 12), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}})
    model = blackbox.load(path, preprocess="none", device="cpu")
    x = np.random.default_rng(1).normal(size=(3, 12, 12)).astype(np.float32)
    return torch, net, model, x


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(tiny_torch, normalize):
    from captum.metrics import infidelity as captum_infidelity

    torch, net, model, x = tiny_torch
    target = 2
    attr = blackbox.explain(model, x, "occlusion", target=target, window=3, stride=1, score="raw").attributions
    noise = np.random.default_rng(5).normal(0, 0.05, size=(10, 3, 12, 12)).astype(np.float32)

    def perturb(inputs):
        drawn = torch.from_numpy(noise)
        return drawn, inputs - drawn

    with torch.no_grad():
        expected = captum_infidelity(net, perturb, torch.from_numpy(x[None]), torch.from_numpy(attr[None]),
                                     target=target, n_perturb_samples=10, normalize=normalize).item()
    ours = metrics.infidelity(model, x, attr, target, perturbations=noise, n_perturb_samples=10,
                              normalize=normalize)
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-9)
    # the default draw is seeded Gaussian noise of std 0.003: deterministic
    a = metrics.infidelity(model, x, attr, target, normalize=normalize)
    assert a == metrics.infidelity(model, x, attr, target, normalize=normalize) and a >= 0


def test_max_sensitivity_matches_captum(tiny_torch):
    from captum.metrics import sensitivity_max

    torch, net, model, x = tiny_torch
    target = 1
    params = dict(window=4, stride=2, baseline=0)
    noise = np.random.default_rng(7).uniform(-0.02, 0.02, size=(10, 3, 12, 12)).astype(np.float32)

    def explanation(inputs):
        batch = inputs[0] if isinstance(inputs, tuple) else inputs
        maps = [blackbox.explain(model, xi.numpy(), "occlusion", target=target, seed=0, **params).attributions
                for xi in batch]
        out = torch.from_numpy(np.stack(maps))
        return (out,) if isinstance(inputs, tuple) else out  # Captum passes and expects tuples here

    def perturb(inputs, radius):
        return inputs + torch.from_numpy(noise)

    expected = sensitivity_max(explanation, torch.from_numpy(x[None]), perturb_func=perturb,
                               n_perturb_samples=10).item()
    ours = metrics.max_sensitivity(model, x, "occlusion", target=target, perturbations=noise, **params)
    assert ours == pytest.approx(expected, rel=1e-5)
    drawn = metrics.max_sensitivity(model, x, "occlusion", target=target, n_perturb_samples=3, **params)
    assert drawn == metrics.max_sensitivity(model, x, "occlusion", target=target, n_perturb_samples=3, **params)
