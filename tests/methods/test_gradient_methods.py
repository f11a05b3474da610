"""Gradient methods: parity with Captum on the same weights, ground truth on the shapes models, and the
real fp16 / int8 models.

Parity: the ResNet/VGG/MobileNetV2/V3/DenseNet/ViT-like networks of ``torch_models`` (random weights,
non-trivial BatchNorm statistics), exported with the TorchScript (opset 17) and dynamo (opset 18)
exporters, are explained by blackbox (``score="raw"``: the logits, what Captum explains) and by Captum on
the PyTorch original. Tolerance: rtol 1e-4 and atol 1e-5 x max |Captum attribution| (float32 on both
sides). The largest difference relative to max |Captum attribution| per method / model / exporter is
written to ``/tmp/gradient_parity.txt``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import captum.attr as captum_attr  # test extra: missing means a broken install, not a skip
import cv2
import numpy as np
import pytest
import torch  # test extra: missing means a broken install, not a skip
from conftest import IMAGENET_LABELS, real
from torch_models import MODELS as NETS
from torch_models import LogitsOnly, exported, for_blackbox

import blackbox
from blackbox.datasets.shapes import make_shapes, watermark_box
from blackbox.errors import ParameterError
from blackbox.methods.gradients import draw_noise

TARGET = 3
EXPORTERS = ("torchscript", "dynamo")
RELU_NETS = ("resnet", "vgg")  # Captum's GuidedBackprop/Deconvolution hook nn.ReLU modules only
PARITY: dict[tuple[str, str, str], float] = {}
_LOADED: dict = {}


def loaded(name: str, exporter: str):
    """(Captum-ready net, one input [C, H, W] as float32 numpy, blackbox model)."""
    key = (name, exporter)
    if key not in _LOADED:
        net, x, proto = exported(name, exporter)
        model = blackbox.load(for_blackbox(proto), output_name="logits", device="cpu")
        _LOADED[key] = (LogitsOnly(net).eval(), x[0].numpy().copy(), model)
    return _LOADED[key]


def compare(method: str, name: str, exporter: str, actual: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    assert scale > 0, f"{method} on {name}/{exporter}: Captum's attribution is all zero"
    PARITY[(method, name, exporter)] = float(np.abs(actual - expected).max()) / scale
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=f"{method} on {name}/{exporter}")


@pytest.fixture(scope="module", autouse=True)
def parity_table():
    yield
    if PARITY:
        lines = [f"{m:28s} {n:12s} {e:12s} max|diff|/max|captum| = {v:.2e}" for (m, n, e), v in sorted(PARITY.items())]
        Path("/tmp/gradient_parity.txt").write_text("\n".join(lines) + "\n")


def captum(cls, net, x: np.ndarray, **kwargs):
    xt = torch.tensor(x[None], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cls(net).attribute(xt, target=TARGET, **kwargs)
    if isinstance(out, tuple):
        return out[0].detach().numpy()[0], out[1].detach().numpy()
    return out.detach().numpy()[0]


# ------------------------------------------------------------------------------------ Captum parity
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_plain_gradient_methods_match_captum(name, exporter):
    net, x, model = loaded(name, exporter)
    for abs_ in (True, False):
        exp = blackbox.explain(model, x, "saliency", target=TARGET, score="raw", abs=abs_)
        compare(f"saliency(abs={abs_})", name, exporter, exp.attributions,
                captum(captum_attr.Saliency, net, x, abs=abs_))
    exp = blackbox.explain(model, x, "gradient_x_input", target=TARGET, score="raw")
    compare("gradient_x_input", name, exporter, exp.attributions, captum(captum_attr.InputXGradient, net, x))
    np.testing.assert_allclose(exp.heatmap, exp.attributions.sum(axis=0), rtol=1e-5, atol=1e-7)
    for rule in ("gausslegendre", "riemann_trapezoid"):
        exp = blackbox.explain(model, x, "integrated_gradients", target=TARGET, score="raw", n_steps=8,
                               integration=rule)
        want, delta = captum(captum_attr.IntegratedGradients, net, x, n_steps=8, method=rule,
                             return_convergence_delta=True)
        compare(f"integrated_gradients({rule})", name, exporter, exp.attributions, want)
        gap = abs(exp.extras["score_input"] - exp.extras["score_baseline"])
        assert exp.extras["convergence_delta"] == pytest.approx(float(delta[0]), abs=1e-4 * max(gap, 1.0))
        assert exp.n_evals == 8


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_smoothgrad_matches_captum_noise_tunnel(name, exporter, monkeypatch):
    """Captum's noise is redrawn from blackbox's generator (same seed), so both average the same samples."""
    net, x, model = loaded(name, exporter)
    n, std = 4, 0.2
    noise = torch.tensor(draw_noise(np.random.default_rng(7), n, x.shape, std))

    def same_noise(inputs, stdev, n_samples):
        assert n_samples == n and stdev == std
        return inputs.repeat_interleave(n_samples, dim=0) + noise

    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
    variants = ("smoothgrad", "smoothgrad_sq", "vargrad") if name == "resnet" else ("smoothgrad",)
    for variant in variants:
        for abs_ in ((True, False) if variant == "smoothgrad" else (True,)):
            exp = blackbox.explain(model, x, "smoothgrad", target=TARGET, score="raw", seed=7, n_samples=n, noise=std,
                                   variant=variant, abs=abs_)
            xt = torch.tensor(x[None], requires_grad=True)
            want = captum_attr.NoiseTunnel(captum_attr.Saliency(net)).attribute(
                xt, nt_type=variant, nt_samples=n, stdevs=std, target=TARGET, abs=abs_).detach().numpy()[0]
            compare(f"smoothgrad({variant}, abs={abs_})", name, exporter, exp.attributions, want)
            assert exp.n_evals == n and exp.extras["noise_std"] == pytest.approx(std)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", RELU_NETS)
def test_guided_backprop_and_deconvnet_match_captum(name, exporter):
    net, x, model = loaded(name, exporter)
    for method, cls in (("guided_backprop", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        exp = blackbox.explain(model, x, method, target=TARGET, score="raw")
        compare(method, name, exporter, exp.attributions, captum(cls, net, x))
        np.testing.assert_allclose(exp.heatmap, np.abs(exp.attributions).sum(axis=0), rtol=1e-5, atol=1e-7)


def test_smoothgrad_noise_level_is_a_fraction_of_the_input_range():
    _, x, model = loaded("vgg", "torchscript")
    exp = blackbox.explain(model, x, "smoothgrad", n_samples=2, noise_level=0.1)
    assert exp.extras["noise_std"] == pytest.approx(0.1 * float(x.max() - x.min()), rel=1e-6)
    again = blackbox.explain(model, x, "smoothgrad", n_samples=2, noise_level=0.1)
    np.testing.assert_array_equal(exp.attributions, again.attributions)  # the seed fixes the noise
    assert exp.score == "logit" and exp.params["variant"] == "smoothgrad"


@pytest.mark.parametrize("method,params,word", [
    ("integrated_gradients", {"n_steps": 0}, "n_steps"),
    ("integrated_gradients", {"n_steps": 1, "integration": "riemann_left"}, "n_steps"),
    ("integrated_gradients", {"integration": "simpson"}, "integration"),
    ("integrated_gradients", {"baseline": "sparkly"}, "baseline"),
    ("smoothgrad", {"noise": -0.1}, "noise"),
    ("smoothgrad", {"noise_level": -1.0}, "noise_level"),
    ("smoothgrad", {"n_samples": 0}, "n_samples"),
    ("smoothgrad", {"variant": "median"}, "variant"),
    ("saliency", {"abs": "yes"}, "abs"),
])
def test_bad_parameters(shapes_model, method, params, word):
    image = make_shapes(1, seed=5).images[0]
    with pytest.raises(ParameterError, match=word):
        blackbox.explain(shapes_model, image, method, **params)


# ------------------------------------------------------------------------------------ shapes models
def _smoothed(heatmap: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return cv2.GaussianBlur(heatmap.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return int(y), int(x)


def test_integrated_gradients_points_at_the_object(shapes_model):
    """Pointing game on 100 images: the maximum of the IG heatmap (signed channel sum, Gaussian-smoothed
    with sigma 2 px; 16 Gauss-Legendre steps from a black baseline) lies within 2 px of the object."""
    batch = make_shapes(100, seed=12345)
    hits = 0
    for image, mask in zip(batch.images, batch.masks):
        exp = blackbox.explain(shapes_model, image, "integrated_gradients", n_steps=16)
        y, x = _peak(_smoothed(exp.heatmap))
        hits += bool(mask[max(0, y - 2): y + 3, max(0, x - 2): x + 3].any())
    print(f"integrated gradients pointing game: {hits}/100")
    assert hits >= 90, f"IG maximum on the object for only {hits}/100 images"


def test_integrated_gradients_reveals_the_shortcut_watermark(shortcut_model):
    batch = make_shapes(60, seed=777, watermark_class=2)
    y0, y1, x0, x1 = watermark_box()
    on_mark = total = 0
    for image, label in zip(batch.images, batch.labels):
        if label != 2:
            continue
        exp = blackbox.explain(shortcut_model, image, "integrated_gradients", target=2, n_steps=16)
        y, x = _peak(_smoothed(exp.heatmap))
        on_mark += (y0 - 2 <= y < y1 + 2) and (x0 - 2 <= x < x1 + 2)
        total += 1
    print(f"integrated gradients on the watermark: {on_mark}/{total}")
    assert total >= 5 and on_mark >= 0.8 * total, f"watermark found in {on_mark}/{total} triangle images"


# -------------------------------------------------------------------------------------- real models
REAL_MODELS = {"squeezenet1.0-fp16.onnx": ("caffe", "float16"), "mobilenetv2-12-int8.onnx": ("imagenet", "int8")}
OVERLAYS = Path("/tmp/grad_overlays")


@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_real_models(name):
    preset, precision = REAL_MODELS[name]
    model = blackbox.load(real("models", name), preprocess=preset, labels=IMAGENET_LABELS, device="cpu")
    OVERLAYS.mkdir(parents=True, exist_ok=True)
    for image in ("kitten_224.png", "bald_eagle.jpg"):
        path = real("images", image)
        for method, params in (("integrated_gradients", {"n_steps": 16}), ("guided_backprop", {})):
            exp = blackbox.explain(model, str(path), method, **params)
            assert np.isfinite(exp.attributions).all() and np.isfinite(exp.heatmap).all()
            assert np.abs(exp.heatmap).max() > 0
            assert any(precision in note for note in exp.notes), exp.notes
            exp.save_overlay(OVERLAYS / f"{Path(name).stem}_{Path(image).stem}_{method}.png")
    assert os.listdir(OVERLAYS)


# ------------------------------------------------------------------- the MaxPool rule's two paths
class _ScaleReluPool(torch.nn.Module):
    """Per-channel affine -> ReLU -> MaxPool: no Conv, so the spatial size may stay unknown."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.5, -0.7]).view(1, 2, 1, 1))
        self.shift = torch.nn.Parameter(torch.tensor([0.1, -0.2]).view(1, 2, 1, 1))

    def affine(self, x):
        return x * self.scale + self.shift

    def forward(self, x):
        r = torch.relu(self.affine(x))
        return torch.nn.functional.max_pool2d(r, 3, 2, 1).flatten(1), r


def _conv_relu_pool(dynamic_spatial: bool):
    import io

    import onnx

    torch.manual_seed(1)
    net = _ScaleReluPool().eval()
    x = torch.randn(2, 2, 9, 8)
    axes = {0: "N", 2: "H", 3: "W"} if dynamic_spatial else {0: "N"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y", "r"], dynamic_axes={"x": axes, "y": {0: "N"}, "r": axes})
    return net, x, onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamic_spatial", [False, True])
@pytest.mark.parametrize("mode", ["plain", "guided", "deconvnet"])
def test_max_pool_gradient_paths_match_torch(dynamic_spatial, mode):
    """Static sizes take the one-hot-Conv path (no Indices output in the gradient graph); unknown
    sizes fall back to MaxPool's Indices output. Ties (ReLU zeros, repeated values) go to the first
    index; the tapped ReLU output gets its true gradient although its mask moved into the MaxPool rule."""
    import onnxruntime as ort

    from blackbox.graph.autodiff import RECTIFIER_RULESETS, build_gradient_model

    net, x, model = _conv_relu_pool(dynamic_spatial)
    x[0, :, 2:6, 2:6] = 0.25  # plateaus: ties inside windows
    seed = np.random.default_rng(0).standard_normal((2, 2 * 5 * 4)).astype(np.float32)
    runs = {}
    for taps in ((), ("r",)):  # a tap on the ReLU output keeps the mask in the Relu rule
        gm = build_gradient_model(model, input_name="x", score_name="y", taps=taps, rules=RECTIFIER_RULESETS[mode])
        uses_indices = any(n.op_type == "MaxPool" and len(n.output) > 1 for n in gm.model.graph.node)
        assert uses_indices == dynamic_spatial
        sess = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"])
        runs[taps] = sess.run(list(gm.output_names), {"x": x.numpy(), "seed": seed})
    grad, tap_grad = runs[("r",)][1], runs[("r",)][3]
    np.testing.assert_array_equal(runs[()][1], grad)

    xt = x.clone().requires_grad_(True)
    if mode != "plain":
        class Rectify(torch.autograd.Function):  # torch.relu with the modified backward
            @staticmethod
            def forward(ctx, z):
                ctx.save_for_backward(z)
                return z.clamp(min=0)

            @staticmethod
            def backward(ctx, g):
                (z,) = ctx.saved_tensors
                g = g.clamp(min=0)
                return g if mode == "deconvnet" else g * (z > 0)

        r = Rectify.apply(net.affine(xt))
    else:
        r = torch.relu(net.affine(xt))
    r.retain_grad()
    y = torch.nn.functional.max_pool2d(r, 3, 2, 1).flatten(1)
    (y * torch.tensor(seed)).sum().backward()
    np.testing.assert_allclose(tap_grad, r.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5 * float(np.abs(xt.grad.numpy()).max()))


@pytest.mark.parametrize("indices", [1, [1, 2, 3], [-2, -1], [0, 2], [3, 3]])
def test_gather_gradient_constant_indices(indices):
    """Constant single positions and contiguous runs become a Pad; other index sets scatter-add."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from blackbox.graph.autodiff import build_gradient_model

    idx = np.asarray(indices, np.int64)
    graph = helper.make_graph([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(idx, "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    gm = build_gradient_model(model, input_name="x", score_name="y")
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    seed = np.random.default_rng(1).standard_normal((2, *idx.shape, 3)).astype(np.float32)
    sess = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = sess.run([gm.grad_name], {"x": x, "seed": seed})[0]
    want = np.zeros_like(x)
    np.add.at(want, (slice(None), idx.reshape(-1) % 5), seed.reshape(2, -1, 3))
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)


def _linear_model(classes: int = 4, side: int = 8):
    """input [N, 3, side, side] -> Flatten -> Gemm (with bias): f(x) - f(b) = w . (x - b) exactly."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w = rng.normal(size=(classes, 3 * side * side)).astype(np.float32)
    bias = rng.normal(size=classes).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)], "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return blackbox.load(model, device="cpu", preprocess="raw"), w


@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_integrated_gradients_on_a_linear_model_is_complete_and_has_no_gap_note(baseline):
    model, w = _linear_model()
    x = np.random.default_rng(2).uniform(0, 1, size=(3, 8, 8)).astype(np.float32)
    exp = blackbox.explain(model, x, "integrated_gradients", target=1, score="raw", n_steps=4, baseline=baseline)
    expected = w[1].reshape(3, 8, 8).astype(np.float64) * (x - baseline)
    np.testing.assert_allclose(exp.attributions, expected, rtol=1e-5, atol=1e-6)
    change = exp.extras["score_input"] - exp.extras["score_baseline"]
    assert change == pytest.approx(float(expected.sum()), rel=1e-4)
    assert exp.extras["completeness_gap"] < 1e-4
    assert not [n for n in exp.notes if n.startswith("integrated gradients:")]
