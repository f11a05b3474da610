"""Occlusion equals a brute-force NumPy occlusion, and exposes the shortcut model's watermark."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from conftest import real
from helpers import conv_classifier

import blackbox
from blackbox.datasets.shapes import make_shapes, watermark_box
from blackbox.errors import ParameterError


def brute_force_occlusion(model, x, target, window, stride, baseline, score):
    """Captum's definition, written out with full-size images and one forward pass per window."""
    c, h, w = x.shape
    wc, wh, ww = window
    sc, sh, sw = stride
    counts = [math.ceil((d - k) / s) + 1 for d, k, s in zip((c, h, w), window, stride)]
    full = model.scores(x[None], score=score)[0, target]
    total = np.zeros_like(x, dtype=np.float64)
    cover = np.zeros_like(x, dtype=np.float64)
    for i in range(counts[0]):
        for j in range(counts[1]):
            for k in range(counts[2]):
                m = np.zeros_like(x)
                m[i * sc: i * sc + wc, j * sh: j * sh + wh, k * sw: k * sw + ww] = 1
                occluded = x * (1 - m) + baseline * m
                diff = full - model.scores(occluded[None], score=score)[0, target]
                total += diff * m
                cover += m
    return total / cover


@pytest.mark.parametrize("window,stride,baseline", [((3, 8, 8), (3, 4, 4), 0.0), ((3, 10, 10), (3, 7, 7), 0.5),
                                                    ((1, 16, 16), (1, 12, 12), 0.0)])
def test_equals_brute_force(shapes_model, window, stride, baseline):
    image = make_shapes(1, seed=3).images[0]
    x = image.transpose(2, 0, 1).astype(np.float32) / 255.0  # the model's preprocessing: RGB / 255
    exp = blackbox.explain(shapes_model, x, "occlusion", window=window, stride=stride, baseline=baseline,
                           score="raw")
    want = brute_force_occlusion(shapes_model, x, exp.target, window, stride, baseline, "raw")
    np.testing.assert_allclose(exp.attributions, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert exp.n_evals == 1 + np.prod([math.ceil((d - k) / s) + 1 for d, k, s in zip(x.shape, window, stride)])


def test_defaults_suit_a_user_who_gives_none(shapes_model):
    exp = blackbox.explain(shapes_model, make_shapes(1, seed=4).images[0], "occlusion")
    assert exp.extras["window"] == [3, 8, 8] and exp.extras["stride"] == [3, 4, 4]
    assert exp.heatmap.shape == (64, 64) and exp.params["baseline"] == "mean"


def test_points_at_the_object(shapes_model):
    batch = make_shapes(40, seed=12345)
    hits = 0
    for image, mask in zip(batch.images, batch.masks):
        exp = blackbox.explain(shapes_model, image, "occlusion")
        y, x = np.unravel_index(np.argmax(exp.heatmap), exp.heatmap.shape)
        hits += bool(mask[max(0, y - 2): y + 3, max(0, x - 2): x + 3].any())
    assert hits >= 36, f"occlusion maximum on the object for only {hits}/40 images"


def test_reveals_the_shortcut_watermark(shortcut_model):
    batch = make_shapes(60, seed=777, watermark_class=2)
    y0, y1, x0, x1 = watermark_box()
    on_mark = total = 0
    for image, label in zip(batch.images, batch.labels):
        if label != 2:
            continue
        exp = blackbox.explain(shortcut_model, image, "occlusion", target=2)
        y, x = np.unravel_index(np.argmax(exp.heatmap), exp.heatmap.shape)
        on_mark += (y0 - 2 <= y < y1 + 2) and (x0 - 2 <= x < x1 + 2)
        total += 1
    assert total >= 5 and on_mark == total, f"watermark found in {on_mark}/{total} triangle images"


@pytest.mark.parametrize("params,word", [({"window": 65}, "window"), ({"window": 8, "stride": 9}, "stride"),
                                         ({"window": (3, 8, 8, 8)}, "window"), ({"stride": 0}, "stride"),
                                         ({"baseline": "sparkly"}, "baseline")])
def test_bad_parameters(shapes_model, params, word):
    image = make_shapes(1, seed=5).images[0]
    with pytest.raises(ParameterError, match=word):
        blackbox.explain(shapes_model, image, "occlusion", **params)


# ----------------------------------------------------------------------------- incremental inference
class ResidualConcatNet(torch.nn.Module):
    """A stride-2 stem, a ceil_mode pool, a depthwise residual block and a two-branch concat (SqueezeNet's
    fire module): every pattern the incremental rewrite must stitch, as the TorchScript exporter writes it."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6(), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                                   nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.squeeze, self.e1, self.e3 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 6, 1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(12, 4)
        with torch.no_grad():  # He-initialised: hiding a window moves the logits well above float32 noise
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.2)
                    module.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.block(y)
        s = torch.relu(self.squeeze(y))
        y = torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def residual_concat_model():
    torch.manual_seed(0)
    net = ResidualConcatNet().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 63, 63),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = 8
    return blackbox.load(proto, device="cpu", preprocess="raw")


@pytest.mark.parametrize("window,stride", [(8, 4), (11, 7), ((5, 9), (3, 5))])
def test_incremental_equals_full_evaluation_on_a_residual_concat_net(residual_concat_model, window, stride):
    x = np.random.default_rng(1).random((3, 63, 63), dtype=np.float32)
    runs = {mode: blackbox.explain(residual_concat_model, x, "occlusion", target=1, score="raw", window=window,
                                   stride=stride, baseline=0.0, incremental=mode) for mode in (True, False)}
    assert runs[True].extras["incremental"] and not runs[False].extras["incremental"]
    want = runs[False].attributions
    logits = float(np.abs(residual_concat_model.scores(x, score="raw")).max())
    assert np.abs(want).max() > 1e-3 * logits
    # an attribution is a difference of two float32 scores: its rounding follows the scores' scale
    np.testing.assert_allclose(runs[True].attributions, want, rtol=1e-4, atol=1e-6 * logits)


@pytest.mark.parametrize("layout,used", [("NHWC", False), ("NCHW", True)])
def test_incremental_only_where_the_rewrite_applies(layout, used):
    """Channel-last models run the whole model per window even when asked (the rewrite reads NCHW maps);
    the attributions are those of full evaluation either way."""
    model = blackbox.load(conv_classifier(layout=layout, size=24), device="cpu", preprocess="raw")
    internal = np.random.default_rng(3).random((3, 24, 24), dtype=np.float32)
    x = internal.transpose(1, 2, 0) if layout == "NHWC" else internal  # the model's own layout
    runs = [blackbox.explain(model, x, "occlusion", target=0, score="raw", window=6, stride=3,
                             incremental=mode) for mode in (True, False)]
    assert runs[0].extras["incremental"] is used and runs[1].extras["incremental"] is False
    # an attribution is a difference of two float32 scores, so its rounding follows the scores' scale (a
    # patch's convolution may sum in another order than the full map's: a few ulps of the logits)
    logits = float(np.abs(model.scores(internal, score="raw")).max())
    assert np.abs(runs[1].attributions).max() > 1e-3 * logits
    np.testing.assert_allclose(runs[0].attributions, runs[1].attributions, rtol=1e-4, atol=1e-6 * logits)


@pytest.mark.parametrize("name,preset,atol", [
    ("mobilenetv2-12-int8.onnx", "imagenet", 1e-5),  # integer arithmetic: the same numbers exactly
    # float16 activations: the patched layers round like the full ones, up to an ulp of a float16
    # probability (5e-4 near 1) in the log-probability the default score takes
    ("squeezenet1.0-fp16.onnx", "caffe", 3e-3)])
def test_incremental_equals_full_evaluation_on_real_models(name, preset, atol):
    model = blackbox.load(real("models", name), preprocess=preset, device="cpu")
    image = str(real("images", "kitten_224.png"))
    runs = {mode: blackbox.explain(model, image, "occlusion", window=48, stride=44, incremental=mode)
            for mode in (True, False)}
    assert runs[True].extras["incremental"] and runs[True].n_evals == runs[False].n_evals == 26
    want = runs[False].attributions
    assert np.abs(want).max() > 0.05  # the kitten's windows move the score: a real comparison
    np.testing.assert_allclose(runs[True].attributions, want, rtol=0, atol=atol)


def test_a_failing_rewrite_falls_back_to_full_evaluation_unless_forced(residual_concat_model, monkeypatch):
    """"auto" is an optimisation: if the rewrite breaks on some graph, occlusion still answers, in full."""
    import blackbox.incremental

    def broken(*args, **kwargs):
        raise RuntimeError("rewrite failed")

    x = np.random.default_rng(2).random((3, 63, 63), dtype=np.float32)
    want = blackbox.explain(residual_concat_model, x, "occlusion", target=0, window=9, stride=9, incremental=False)
    monkeypatch.setattr(blackbox.incremental, "incremental_graph", broken)
    monkeypatch.setattr(blackbox.incremental, "_CACHE", type(blackbox.incremental._CACHE)())
    got = blackbox.explain(residual_concat_model, x, "occlusion", target=0, window=9, stride=9)
    assert got.extras["incremental"] is False
    np.testing.assert_array_equal(got.attributions, want.attributions)
    with pytest.raises(RuntimeError, match="rewrite failed"):
        blackbox.explain(residual_concat_model, x, "occlusion", target=0, window=9, stride=9, incremental=True)


@pytest.mark.parametrize("path", ["one", "many"])
def test_memory_follows_the_windows_not_the_pixel_grid(path):
    """Window 16 / stride 3 share no divisor, so the cells are single pixels: at 160 x 160 dense window
    masks would be 2401 x 160 x 160 floats (246 MB, and twice that as float64 for the average). The plan
    keeps each window as its per-axis factors; what is allocated follows the windows and one chunk."""
    import tracemalloc

    model = blackbox.load(conv_classifier(size=160), device="cpu", preprocess="raw")
    images = np.random.default_rng(5).random((1, 3, 160, 160), dtype=np.float32)
    params = dict(target=1, score="raw", window=16, stride=3, baseline=0.0, incremental=False)
    tracemalloc.start()
    try:
        if path == "one":
            runs = [blackbox.explain(model, images[0], "occlusion", **params)]
        else:
            runs = list(blackbox.explain_many(model, [images[0]], "occlusion", targets=1, score="raw", window=16,
                                              stride=3, baseline=0.0, incremental=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert runs[0].n_evals == 49 * 49 + 1
    assert peak < 100e6, f"{peak / 1e6:.0f} MB"
    # and the map is still the mean drop over the windows covering each pixel (spot check: a corner pixel,
    # covered by one window only, and a centre pixel, covered by 36)
    full = model.scores(images[0][None], score="raw")[0, 1]
    corner = images[0].copy()
    corner[:, :16, :16] = 0.0
    centre = [images[0].copy() for _ in range(36)]
    for k, (i, j) in enumerate((i, j) for i in range(32, 38) for j in range(32, 38)):
        centre[k][:, 3 * i:3 * i + 16, 3 * j:3 * j + 16] = 0.0
    drops = full - model.scores(np.stack([corner] + centre), score="raw")[:, 1]
    scale = float(np.abs(runs[0].attributions).max())
    np.testing.assert_allclose(runs[0].attributions[0, 0, 0], drops[0], atol=1e-4 * scale)
    np.testing.assert_allclose(runs[0].attributions[0, 111, 111], drops[1:].mean(), atol=1e-4 * scale)
