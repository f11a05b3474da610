"""Layer discovery and forward-only taps (``blackbox.graph.layers``, ``Model.layers/activations``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import IMAGENET_LABELS, real
from helpers import sine_classifier
from onnx import TensorProto, helper, numpy_helper

import blackbox
from blackbox.errors import ParameterError, UnsupportedOpError
from blackbox.graph.layers import discover_layers, with_taps
from blackbox.inputs import prepare


def test_layers_are_listed_in_graph_order_with_per_sample_shapes():
    model = blackbox.load(sine_classifier(), device="cpu")
    layers = model.layers()
    assert [layer.name for layer in layers] == ["conv", "wave", "pooled", "flat", "logits"]
    assert [layer.op_type for layer in layers] == ["Conv", "Sin", "GlobalAveragePool", "Flatten", "Gemm"]
    assert layers[1].shape == (6, 12, 12) and layers[1].kind == "map" and layers[1].spatial
    assert layers[2].shape == (6, 1, 1) and not layers[2].spatial
    assert layers[4].shape == (4,) and layers[4].kind == "vector"
    assert model.default_cam_layer() == "wave"  # the last map that feeds the global pooling


def test_activations_equal_onnxruntime_on_the_original_graph_without_a_gradient_rule():
    proto = sine_classifier()
    model = blackbox.load(proto, device="cpu", batch_size=2)
    x = np.random.default_rng(0).normal(size=(5, 3, 12, 12)).astype(np.float32)
    taps = model.activations(x, ["wave", "conv"])
    reference = ort.InferenceSession(with_taps(proto, ["conv", "wave"]).SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    conv, wave = reference.run(["conv", "wave"], {"x": x})
    np.testing.assert_allclose(taps["conv"], conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(taps["wave"], wave, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(taps["wave"], np.sin(taps["conv"]), rtol=1e-5, atol=1e-5)
    assert taps["wave"].shape == (5, 6, 12, 12)  # three batches of at most two, merged


def test_score_cam_runs_forward_only_where_gradients_cannot():
    model = blackbox.load(sine_classifier(), device="cpu")
    x = np.random.default_rng(1).normal(size=(3, 12, 12)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="Sin"):
        blackbox.explain(model, x, "grad_cam", target=0)
    exp = blackbox.explain(model, x, "score_cam", target=0)
    activations = model.activations(x[None], ["wave"])["wave"][0]
    assert exp.extras["layer"] == "wave" and exp.attributions.shape == activations.shape[1:]
    assert np.isfinite(exp.heatmap).all()


def test_unknown_layer_names_are_one_line_errors():
    model = blackbox.load(sine_classifier(), device="cpu")
    with pytest.raises(ParameterError, match="no layer named 'nope'"):
        model.activations(np.zeros((1, 3, 12, 12), np.float32), ["nope"])


def test_with_graph_keeps_every_choice_and_reads_the_new_weights():
    model = blackbox.load(sine_classifier(), device="cpu", labels=["a", "b", "c", "d"], output_kind="logits")
    changed = onnx.ModelProto()
    changed.CopyFrom(model.proto)
    fc = next(i for i in changed.graph.initializer if i.name == "fc")
    fc.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(fc), "fc"))
    derived = model.with_graph(changed)
    assert derived.labels.names == model.labels.names and derived.preprocess == model.preprocess
    assert derived.output_kind == "logits" and derived.image == model.image and derived.path is None
    x = np.random.default_rng(2).normal(size=(2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(derived.scores(x, score="raw"), -model.scores(x, score="raw"), rtol=1e-5, atol=1e-5)


def test_int8_model_layers_come_from_the_dequantized_float_view():
    model = blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", labels=IMAGENET_LABELS,
                          device="cpu")
    layers = model.layers()
    maps = [layer for layer in layers if layer.spatial]
    assert len(maps) > 20 and all(len(layer.shape) == 3 for layer in maps)
    name = model.default_cam_layer()
    sample = prepare(model, str(real("images", "tabby_cat.jpg")))
    values = model.activations(sample.x[None], [name])[name]
    assert values.dtype == np.float32 and values.shape[1:] == model.layer(name).shape
    assert values.std() > 0  # real activations, not an empty tensor
    assert "int8" in " ".join(model.precision_notes)


def test_int8_layers_carry_the_quantized_models_own_names_and_values():
    """A dequantized copy's tensors are listed under the names of the quantized tensors they stand for, and
    hold exactly those tensors' values: the int8 model's own uint8 tensor, dequantized by hand."""
    path = real("models", "mobilenetv2-12-int8.onnx")
    model = blackbox.load(path, preprocess="imagenet", device="cpu")
    names = [layer.name for layer in model.layers()]
    assert not any(name.startswith("dq/") for name in names)
    first = model.layer("474_quantized")
    assert first.op_type == "QLinearConv" and first.shape == (32, 112, 112) and first.tensor != first.name
    assert model.layer(first.tensor) == first  # the float copy's own name finds it too
    assert model.default_cam_layer() == "627_quantized"
    sample = prepare(model, str(real("images", "flamingo.jpg")))
    ours = model.activations(sample.x[None], ["474_quantized"])["474_quantized"][0]
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    options = ort.SessionOptions()  # the model's own integer arithmetic, also on x86 CPUs without VNNI
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(with_taps_typed(proto, "474_quantized").SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    (quantized,) = session.run(["474_quantized"], {"input": sample.x[None]})
    theirs = (quantized[0].astype(np.float32) - inits["474_zero_point"]) * inits["474_scale"]
    step = float(inits["474_scale"])
    assert np.mean(np.abs(ours - theirs) <= 1e-6) > 0.999  # the same values, up to a rare one-step rounding
    assert np.abs(ours - theirs).max() <= step + 1e-6


def with_taps_typed(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``proto`` that also returns the uint8 tensor ``name``."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    tapped.graph.output.append(helper.make_tensor_value_info(name, TensorProto.UINT8, None))
    return tapped


def test_discover_layers_is_pure():
    proto = sine_classifier()
    before = proto.SerializeToString()
    discover_layers(proto)
    with_taps(proto, ["wave"])
    assert proto.SerializeToString() == before


# ------------------------------------------------------------------------------------------ layouts
def _old_rule(model):
    """The shape-only rule layers used before layouts: every [C, h, w] with h x w > 1 is a map; the CAM
    layer is the last map feeding a pooling/flattening op."""
    reducers = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Flatten", "Reshape",
                "AveragePool", "MaxPool"}
    maps = {layer.tensor: layer.name for layer in model.layers()
            if len(layer.shape) == 3 and all(isinstance(d, int) for d in layer.shape)
            and layer.shape[1] * layer.shape[2] > 1}
    chosen = None
    for node in model.float_graph().graph.node:
        if node.op_type in reducers and node.input and node.input[0] in maps:
            chosen = maps[node.input[0]]
    return list(maps.values()), chosen


@pytest.mark.parametrize("name", ["mobilenetv2-12-int8.onnx", "squeezenet1.0-fp16.onnx", "mnist-cntk.onnx",
                                  "mnist-pytorch.onnx", "cifar10-pytorch.onnx"])
def test_real_cnns_keep_their_maps_and_cam_layer(name):
    """Layouts followed along the data flow find exactly the maps the shape rule found, all NCHW, and
    the same default CAM layer, on the real third-party CNNs."""
    model = blackbox.load(real("models", name), device="cpu")
    maps, chosen = _old_rule(model)
    spatial = [layer for layer in model.layers() if layer.spatial]
    assert [layer.name for layer in spatial] == maps and {layer.layout for layer in spatial} == {"nchw"}
    assert all(layer.grid == layer.shape[1:] and layer.channels == layer.shape[0] for layer in spatial)
    assert model.default_cam_layer() == chosen


def test_a_graph_whose_input_is_not_an_image_reads_4d_tensors_as_nchw():
    """Flattened pixels [N, 432] reshaped inside the graph: the data flow has no image to start from, so
    every [N, C, h, w] tensor reads as NCHW (the shape rule), as before layouts existed."""
    proto = sine_classifier()
    graph = proto.graph
    graph.input[0].CopyFrom(helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", 432]))
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 3, 12, 12], np.int64), "image_shape"))
    graph.node.insert(0, helper.make_node("Reshape", ["flat", "image_shape"], ["x"]))
    layers = {layer.name: layer for layer in discover_layers(proto)}
    assert layers["wave"].layout == "nchw" and layers["wave"].grid == (12, 12)
    assert not layers["pooled"].spatial


def test_readings_of_a_tensor_without_a_layout():
    """Explicit layouts on tensors the data flow did not place: what the shape allows, tokens only where
    exactly one split into extra + h*w fits the image's aspect ratio (or the model's patch grid)."""
    from blackbox.graph.layers import Layer

    attention = Layer("att", "Softmax", (2, 17, 17), 0)
    assert not attention.spatial and attention.reading() is None
    assert set(attention.readings()) == {"nchw", "nhwc"}
    tokens = Layer("t", "MatMul", (17, 8), 0)
    square = tokens.reading("tokens", image=(32, 32))
    assert (square.extra, square.grid) == (1, (4, 4))
    wide = tokens.reading("tokens", image=(16, 64))  # 16 patches of a 1:4 picture: 2 x 8
    assert (wide.extra, wide.grid) == (1, (2, 8))
    assert Layer("t", "MatMul", (18, 8), 0).reading("tokens", image=(16, 64)).extra == 2  # DeiT: two in front
    assert Layer("t", "MatMul", (23, 8), 0).reading("tokens", image=(32, 32)) is None  # 19..23: no square
    assert Layer("t", "MatMul", (23, 8), 0).reading("nchw") is None  # [T, C] is not [C, h, w]
    assert Layer("t", "MatMul", (26, 8), 0).reading("tokens", grid=(4, 6)).extra == 2  # the model's grid wins
    values = np.arange(2 * 17 * 8, dtype=np.float32).reshape(2, 17, 8)
    reading = tokens.reading("tokens", grid=(4, 4))
    maps = reading.maps(values)
    assert maps.shape == (2, 8, 4, 4) and maps[1, 3, 2, 1] == values[1, 1 + 2 * 4 + 1, 3]
    back = reading.unmaps(maps, tokens.shape)
    np.testing.assert_array_equal(back[:, 1:], values[:, 1:])
    assert not back[:, 0].any()


def _torchscript(net, x, batch_axes) -> onnx.ModelProto:
    """TorchScript export at opset 17 (input "input", output "logits"; ``batch_axes`` {0: "N"} or None)."""
    import io
    import warnings

    import torch

    f = io.BytesIO()
    axes = {"input": batch_axes, "logits": batch_axes} if batch_axes else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), f, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes)
    return onnx.load_from_string(f.getvalue())


def test_channel_shuffle_keeps_the_maps_under_a_dynamic_batch():
    """ShuffleNet's shuffle (view to [N, g, C/g, h, w], swap the groups, view back) keeps positions: the
    maps after it stay NCHW, with the sizes TorchScript computes at run time learned by the probe run,
    and the CAM layer is the last map before the global pooling."""
    import torch

    class Shuffle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Conv2d(8, 8, 3, 1, 1, groups=2)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.a(x))
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, -1, h, w)
            y = torch.relu(self.b(y))
            return self.head(y.mean((2, 3)))

    model = blackbox.load(_torchscript(Shuffle(), torch.randn(2, 3, 16, 16), {0: "N"}), device="cpu")
    relus = [layer for layer in model.layers() if layer.op_type == "Relu"]
    assert [(layer.layout, layer.shape) for layer in relus] == [("nchw", (8, 8, 8))] * 2
    reduce = next(node for node in model.float_graph().graph.node if node.op_type == "ReduceMean")
    assert model.default_cam_layer() == relus[-1].name == reduce.input[0]


def test_channels_picked_from_the_input_stay_maps():
    """Inception v3's ``transform_input``: x[:, c] (a Gather on the channel axis), rescaled, unsqueezed and
    concatenated back (here after a first conv): the convolution after it is still an NCHW map."""
    import torch

    class Transformed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 4, 3, 1, 1)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            x = self.stem(x)
            x = torch.cat([(x[:, c] * (0.2 + c) + 0.1).unsqueeze(1) for c in range(3)], 1)
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    model = blackbox.load(_torchscript(Transformed(), torch.randn(1, 3, 8, 8), None), device="cpu")
    relu = next(layer for layer in model.layers() if layer.op_type == "Relu")
    assert (relu.layout, relu.grid) == ("nchw", (8, 8)) and model.default_cam_layer() == relu.name
