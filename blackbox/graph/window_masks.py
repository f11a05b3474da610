"""The occlusion graph: rectangular windows in, target scores out, all in ONNX.

An occlusion window hides a box of channels x rows x columns, so its mask is an outer product of three
0/1 vectors. Fed as ``HY`` [N, 1|C, H, 1] (rows, times the channels when windows cut channels) and
``HX`` [N, 1, 1, W], the occluded image is ``x + (baseline - x) * HY * HX``: three broadcast
elementwise ops per sample, where the general grid-mask graph spends a MatMul upsampling (MobileNetV2-
int8: 4.7 M multiply-adds per sample at a 28 x 28 cell grid, about 15% of the model) and two blends.
Hidden pixels get ``x + (baseline - x)``, the others ``x`` exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .compose import (
    BASELINE,
    PREFIX,
    X_IN,
    ImageInput,
    ScoreOutput,
    X,
    _fuse,
    scoring_graph,
)
from .onnx_utils import OWN_IR_VERSION, const

HY, HX = PREFIX + "window_rows", PREFIX + "window_cols"


def window_mask_graph(spec: ImageInput) -> onnx.ModelProto:
    """``X_IN``, ``BASELINE`` float32 [1, C, H, W], ``HY``, ``HX`` -> the occluded images ``X``."""
    image = [spec.channels, spec.height, spec.width]
    inputs = [helper.make_tensor_value_info(X_IN, TensorProto.FLOAT, [1, *image]),
              helper.make_tensor_value_info(BASELINE, TensorProto.FLOAT, [1, *image]),
              helper.make_tensor_value_info(HY, TensorProto.FLOAT, ["N", None, spec.height, 1]),
              helper.make_tensor_value_info(HX, TensorProto.FLOAT, ["N", 1, 1, spec.width])]
    shape = PREFIX + "window_image_shape"
    nodes = [helper.make_node("Sub", [BASELINE, X_IN], [PREFIX + "window_diff"]),
             helper.make_node("Mul", [HY, HX], [PREFIX + "window_hidden"]),
             helper.make_node("Mul", [PREFIX + "window_diff", PREFIX + "window_hidden"], [PREFIX + "window_change"]),
             helper.make_node("Add", [X_IN, PREFIX + "window_change"], [PREFIX + "window_blend"]),
             # the static shape, batch copied, keeps ONNX Runtime on its fast int8 convolutions (compose._blend)
             helper.make_node("Reshape", [PREFIX + "window_blend", shape], [X])]
    graph = helper.make_graph(nodes, "blackbox_windows", inputs,
                              [helper.make_tensor_value_info(X, TensorProto.FLOAT, ["N", *image])],
                              [const(shape, np.array([0, *image], np.int64))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="blackbox")
    model.ir_version = OWN_IR_VERSION
    return model


def window_graph(model: onnx.ModelProto, spec: ImageInput, out: ScoreOutput, *, score: str,
                 constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The window mask graph fused with the scoring graph: windows in, ``TARGETS`` scores [N, T] out.
    Its ops (Sub, Mul, Add, Reshape) exist in every opset the models use."""
    return _fuse(window_mask_graph(spec), scoring_graph(model, spec, out, score=score, constants=constants))
