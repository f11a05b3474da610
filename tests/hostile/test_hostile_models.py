"""Hostile and broken ONNX files through ``blackbox info``: each one line, exit 2, bounded memory.

Every model is built here with onnx.helper (or is a few crafted bytes); the promise is the harness's:
exit 2, one line naming the problem, no traceback, nothing written, and a 3 GiB address-space limit so
a file that declares a gigantic input cannot make the probe allocate it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from harness import assert_user_error, run_cli, snapshot
from helpers import conv_classifier, save

import blackbox
from blackbox.errors import ModelError, ParameterError


def _graph_model(nodes, inputs, outputs, inits=(), opset=13, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 8
    return model


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def custom_domain():
    m = conv_classifier()
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.domain, relu.op_type = "com.evil", "EvilRelu"
    m.opset_import.append(helper.make_opsetid("com.evil", 1))
    return m


def opset_30():
    m = conv_classifier()
    m.opset_import[0].version = 30
    return m


def huge_input():
    """1x3x100000x100000 declared: a probe at that size would allocate 120 GB."""
    m = conv_classifier()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 100000
    return m


def image_output():
    """An identity-like model: its output is an image [N, 3, 16, 16], not class scores."""
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    return _graph_model([helper.make_node("Conv", ["x", "w"], ["y"])], [_vi("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                        [_vi("y", TensorProto.FLOAT, ["N", 3, 16, 16])], [w])


def one_class():
    m = conv_classifier(classes=1)
    return m


def no_image_input():
    return _graph_model([helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT)],
                        [_vi("ids", TensorProto.INT64, ["N", 10])], [_vi("f", TensorProto.FLOAT, ["N", 10])])


def two_image_inputs():
    return _graph_model([helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Flatten", ["s"], ["y"])],
                        [_vi("a", TensorProto.FLOAT, ["N", 3, 8, 8]), _vi("b", TensorProto.FLOAT, ["N", 3, 8, 8])],
                        [_vi("y", TensorProto.FLOAT, ["N", 192])])


def no_float_output():
    return _graph_model([helper.make_node("ArgMax", ["x"], ["k"], axis=1)], [_vi("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                        [_vi("k", TensorProto.INT64, ["N", 1, 8, 8])])


def ambiguous_layout():
    m = conv_classifier()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value, dims[3].dim_value = 5, 5, 5
    return m


def seven_channels():
    return conv_classifier(channels=7, layout="NCHW")


def rank5_input():
    return _graph_model([helper.make_node("Flatten", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, ["N", 3, 4, 8, 8])],
                        [_vi("y", TensorProto.FLOAT, ["N", 768])])


def dynamic_size():
    m = conv_classifier()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear(), dims[3].Clear()
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return m


def unknown_default_op():
    m = conv_classifier()
    next(n for n in m.graph.node if n.op_type == "Relu").op_type = "NoSuchOp"
    return m


def dangling_input():
    m = conv_classifier()
    next(n for n in m.graph.node if n.op_type == "Relu").input[0] = "nowhere"
    return m


def another_input():
    return _graph_model([helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("GlobalAveragePool", ["m"], ["g"]),
                         helper.make_node("Flatten", ["g"], ["y"])],
                        [_vi("x", TensorProto.FLOAT, ["N", 3, 8, 8]), _vi("k", TensorProto.INT64, [1])],
                        [_vi("y", TensorProto.FLOAT, ["N", 3])])


def fails_at_run():
    """Reshape to a size the image cannot have: ONNX Runtime fails on the probe, not at load."""
    shape = numpy_helper.from_array(np.array([-1, 7, 11], np.int64), "shape")
    return _graph_model([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                         helper.make_node("ReduceMean", ["r"], ["y"], axes=[2], keepdims=0)],
                        [_vi("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [_vi("y", TensorProto.FLOAT, ["N", 7])], [shape])


def ir_version_99():
    m = conv_classifier()
    m.ir_version = 99
    return m


def type_mismatch():
    """Gemm of float activations with float64 weights: the checker lets it pass, ONNX Runtime refuses."""
    m = conv_classifier()
    fc = next(i for i in m.graph.initializer if i.name == "fc")
    fc.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc).astype(np.float64), "fc"))
    return m


def zero_size():
    m = conv_classifier()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0
    return m


BUILT = {
    "custom-domain": (custom_domain, ["custom domain", "com.evil"]),
    "opset-30": (opset_30, ["opset 30"]),
    "huge-declared-input": (huge_input, ["100000"]),
    "image-output": (image_output, ["image", "--output"]),
    "one-class": (one_class, ["class scores"]),
    "no-image-input": (no_image_input, ["no image input"]),
    "two-image-inputs": (two_image_inputs, ["--input"]),
    "no-float-output": (no_float_output, ["no float output"]),
    "ambiguous-layout": (ambiguous_layout, ["--layout"]),
    "seven-channels": (seven_channels, ["NCHW or NHWC"]),
    "rank-5-input": (rank5_input, ["no image input"]),
    "dynamic-size-no-preset": (dynamic_size, ["height/width"]),
    "unknown-default-op": (unknown_default_op, ["NoSuchOp"]),
    "dangling-input": (dangling_input, ["nowhere"]),
    "another-input-not-given": (another_input, ["'k'"]),
    "fails-at-run": (fails_at_run, ["onnxruntime"]),
    "ir-version-99": (ir_version_99, ["ir_version 99"]),
    "type-mismatch": (type_mismatch, ["onnxruntime"]),
    "zero-size-input": (zero_size, ["empty"]),
}


def _raw_save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("case", sorted(BUILT))
def test_built_model_is_refused_in_one_line(tmp_path, case):
    build, mentions = BUILT[case]
    path = _raw_save(build(), tmp_path / f"{case}.onnx")
    before = snapshot(tmp_path)
    assert_user_error(run_cli(["info", path], cwd=tmp_path), mentions=mentions, before=before, folders=[tmp_path])


def _truncated(tmp_path):
    data = save(conv_classifier(), tmp_path / "full.onnx").read_bytes()
    (tmp_path / "full.onnx").unlink()
    return data[: len(data) // 2]


CRAFTED = {
    "empty-file": (lambda tmp: b"", ["empty (0 bytes)"]),
    "garbage": (lambda tmp: bytes(range(256)) * 40, ["not an ONNX model"]),
    "truncated": (_truncated, ["not an ONNX model"]),
    "png-renamed": (lambda tmp: (MODELS / "samples" / "star.png").read_bytes(),
                    ["not an ONNX model"]),
    "no-graph": (lambda tmp: onnx.ModelProto(ir_version=8).SerializeToString(), ["no graph"]),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_bytes_are_refused_in_one_line(tmp_path, case):
    make, mentions = CRAFTED[case]
    data = make(tmp_path)
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(data)
    before = snapshot(tmp_path)
    assert_user_error(run_cli(["info", path], cwd=tmp_path), mentions=mentions, before=before, folders=[tmp_path])


def _external(tmp_path: Path, location: str) -> Path:
    m = conv_classifier()
    fc = next(i for i in m.graph.initializer if i.name == "fc")
    fc.ClearField("float_data"), fc.ClearField("raw_data")
    fc.data_location = TensorProto.EXTERNAL
    fc.external_data.add(key="location", value=location)
    return _raw_save(m, tmp_path / "external.onnx")


@pytest.mark.parametrize("location,mentions", [("../../etc/passwd", ["outside"]), ("/etc/passwd", ["outside"]),
                                               ("missing.bin", ["not found"])])
def test_external_data_outside_or_missing(tmp_path, location, mentions):
    path = _external(tmp_path, location)
    before = snapshot(tmp_path)
    assert_user_error(run_cli(["info", path], cwd=tmp_path), mentions=mentions, before=before, folders=[tmp_path])


@pytest.mark.parametrize("args,mentions", [(["--input", "nosuch"], ["nosuch"]), (["--output", "nosuch"], ["nosuch"])])
def test_names_the_model_does_not_have(tmp_path, args, mentions):
    path = save(conv_classifier(), tmp_path / "ok.onnx")
    before = snapshot(tmp_path)
    assert_user_error(run_cli(["info", path, *args], cwd=tmp_path), mentions=mentions, before=before,
                      folders=[tmp_path])


def test_model_path_is_a_folder_or_missing(tmp_path):
    for target, word in ((tmp_path, "is a folder"), (tmp_path / "nope.onnx", "not found")):
        before = snapshot(tmp_path)
        assert_user_error(run_cli(["info", target], cwd=tmp_path), mentions=[word], before=before, folders=[tmp_path])


def test_huge_input_is_refused_before_any_allocation(tmp_path):
    """With 1 GiB of address space the CLI cannot even try to build a 120 GB probe: the refusal comes
    from reading the declared shape, not from an allocation failure."""
    path = _raw_save(huge_input(), tmp_path / "huge.onnx")
    outcome = run_cli(["info", path], cwd=tmp_path, memory_limit=3 << 30)
    assert_user_error(outcome, mentions=["values per sample"])


# ---------------------------------------------------------------------------------- the Python API

@pytest.mark.parametrize("size", [0, -4, 2.5, True])
def test_load_refuses_a_batch_size_that_is_not_positive(tmp_path, size):
    path = save(conv_classifier(), tmp_path / "ok.onnx")
    with pytest.raises(ParameterError, match="batch size"):
        blackbox.load(path, device="cpu", batch_size=size)


def test_in_memory_models_get_the_same_checks():
    with pytest.raises(ModelError, match="custom domain"):
        blackbox.load(custom_domain(), device="cpu")
    with pytest.raises(ModelError, match="image or a feature map"):
        blackbox.load(image_output(), device="cpu")


def test_guessed_preprocessing_is_flagged(tmp_path):
    path = save(conv_classifier(), tmp_path / "ok.onnx")
    assert blackbox.load(path, device="cpu").preprocess_guessed
    assert not blackbox.load(path, device="cpu", preprocess="imagenet").preprocess_guessed
