"""blackbox ``occlusion`` equals Captum's ``Occlusion`` on a small PyTorch CNN exported to ONNX.

Why: occlusion promises Captum's semantics (window over channels, stride, ceil((D - w) / s) + 1
positions per axis with windows cut at the border, mean of score drops over covering windows). The
same network runs in PyTorch for Captum and in ONNX Runtime for blackbox, on the same model-space
input, with ``score="raw"`` (Captum explains the raw forward output), so any difference beyond
float32 rounding is a difference in semantics.
"""

from __future__ import annotations

import warnings

import captum.attr as captum_attr  # test extra: missing means a broken install, not a skip
import numpy as np
import onnx  # test extra: missing means a broken install, not a skip
import pytest
import torch  # test extra: missing means a broken install, not a skip

import blackbox
from blackbox.errors import ParameterError

CLASSES = 5


class SmallCNN(torch.nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-AvgPool(4)-Linear; ``nhwc`` takes [N, H, W, C] and permutes inside.

    He-initialised with a spatial head, so hiding a patch moves the logits by a sizeable fraction of
    their value: the comparison then tests semantics, not float32 cancellation in f(x) - f(occluded).
    """

    def __init__(self, *, size: int, nhwc: bool = False):
        super().__init__()
        self.nhwc = nhwc
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4))
        self.head = torch.nn.Linear(16 * (size // 2 // 4) ** 2, CLASSES)
        for module in self.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                torch.nn.init.zeros_(module.bias)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        return self.head(torch.flatten(self.features(x), 1))


def _export(net: torch.nn.Module, example: torch.Tensor, path) -> blackbox.Model:
    """TorchScript exporter (dynamo=False), opset 17, dynamic batch; IR 8 so any onnxruntime reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    proto = onnx.load(str(path))
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return blackbox.load(path, device="cpu")


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """name -> (torch net, blackbox model, model-space input in the model's layout)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("captum")
    out = {}
    for name, size, nhwc in (("nchw32", 32, False), ("nchw30", 30, False), ("nhwc32", 32, True)):
        net = SmallCNN(size=size, nhwc=nhwc).eval()
        shape = (1, size, size, 3) if nhwc else (1, 3, size, size)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(size + nhwc))
        out[name] = (net, _export(net, x, folder / f"{name}.onnx"), x)
    return out


def _captum(net, x: torch.Tensor, *, window, stride, baseline, target) -> np.ndarray:
    occlusion = captum_attr.Occlusion(net)
    with torch.no_grad():
        attr = occlusion.attribute(x, sliding_window_shapes=window, strides=stride, baselines=baseline,
                                   target=target)
    return attr[0].numpy()


def _atol(net, x: torch.Tensor, expected: np.ndarray) -> float:
    """1e-5 of the attribution scale, or of the logits' scale when larger: an attribution is a difference
    of two float32 scores, so its rounding error follows the scores' magnitude, not the difference's."""
    with torch.no_grad():
        logits = float(net(x).abs().max())
    return 1e-5 * max(float(np.max(np.abs(expected))), logits)


# Windows and strides are in the input's own layout for both: Captum reads them so, and blackbox reads
# them in the layout of its attributions, which is the model's.
CASES = [
    # name, window, stride, baseline
    ("nchw32", (3, 8, 8), (3, 4, 4), 0.0),
    ("nchw32", (3, 8, 8), (3, 4, 4), 0.5),
    ("nchw30", (3, 7, 7), 3, 0.0),  # 7 does not divide 30: windows cut at the border
    ("nchw30", (3, 5, 5), (3, 2, 2), 0.5),
    ("nchw32", (1, 8, 8), (1, 4, 4), 0.0),  # channel window smaller than C
    ("nchw30", (2, 6, 6), (1, 3, 3), 0.25),  # overlapping channel windows
    ("nhwc32", (8, 8, 3), (4, 4, 3), 0.0),
    ("nhwc32", (6, 6, 1), (3, 3, 1), 0.5),
    ("nhwc32", (6, 4, 2), (3, 2, 1), 0.25),  # every axis different: a wrong axis order cannot pass
]


@pytest.mark.parametrize("name, window, stride, baseline", CASES)
def test_occlusion_equals_captum(nets, name, window, stride, baseline):
    net, model, x = nets[name]
    array = x[0].numpy()
    for target in (0, 3):
        expected = _captum(net, x, window=window, stride=stride, baseline=baseline, target=target)
        got = blackbox.explain(model, array, "occlusion", target=target, score="raw", window=window,
                               stride=stride, baseline=baseline).attributions
        assert got.shape == expected.shape
        assert np.max(np.abs(expected)) > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=_atol(net, x, expected))


@pytest.mark.parametrize("name, window, stride, baseline", [CASES[2], CASES[5]])
def test_incremental_occlusion_equals_captum(nets, name, window, stride, baseline):
    """The incremental path (patched convolutions around each window) against Captum's full evaluations."""
    net, model, x = nets[name]
    expected = _captum(net, x, window=window, stride=stride, baseline=baseline, target=2)
    exp = blackbox.explain(model, x[0].numpy(), "occlusion", target=2, score="raw", window=window,
                           stride=stride, baseline=baseline, incremental=True)
    assert exp.extras["incremental"] is True
    np.testing.assert_allclose(exp.attributions, expected, rtol=1e-4, atol=_atol(net, x, expected))


def test_default_baseline_differs_from_captum_only_by_the_baseline(nets):
    """The default baseline is the mean colour, not Captum's 0: with the same array both agree."""
    net, model, x = nets["nchw32"]
    array = x[0].numpy()
    mean = torch.from_numpy(np.broadcast_to(array.mean(axis=(1, 2), keepdims=True), array.shape).copy())[None]
    expected = _captum(net, x, window=(3, 8, 8), stride=(3, 4, 4), baseline=mean, target=1)
    got = blackbox.explain(model, array, "occlusion", target=1, score="raw", window=(3, 8, 8),
                           stride=(3, 4, 4)).attributions
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=_atol(net, x, expected))


@pytest.mark.parametrize("window", [(3, 40, 8), (3, 8, 33), (4, 8, 8), 33])
def test_window_larger_than_input_is_refused(nets, window):
    _, model, x = nets["nchw32"]
    with pytest.raises(ParameterError) as error:
        blackbox.explain(model, x[0].numpy(), "occlusion", score="raw", window=window)
    assert "window" in str(error.value) and "\n" not in str(error.value)
