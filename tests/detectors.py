"""A hand-set network whose units have known meanings, for the feature-visualisation tests.

Input: RGB pixels in [0, 1] (preprocess: /255, no mean or std), ``SIZE`` x ``SIZE``, NCHW.

* ``colour`` [3, S, S]: 1x1 convolution + ReLU; unit c fires on pure colour c (red, green, blue):
  weight 1 on channel c and -1/2 on the other two, bias 0.05, so red (1, 0, 0) gives 1.05 on unit 0
  and a negative (cut) response on the others; grey gives a faint 0.05 everywhere (a unit that is
  just on, as most units of a trained network are somewhere).
* ``stripes`` [2, S, S]: an 8 x 8 convolution of the grey level + ReLU; unit 0 fires on horizontal
  stripes of period 4 px (rows alternate), unit 1 on vertical stripes; flat images give 0.
* ``features`` = Concat(colour, stripes) [5, S, S] -> GlobalAveragePool -> Flatten -> ``logits`` [5]:
  class k is the mean response of unit k (identity read-out), so class ``red`` is the red detector.

``CONCEPTS`` names what each unit detects; :func:`concept_image` draws a picture with a known concept
in a known place. :func:`detector_model` builds the graph in float32 or float16, :func:`quantized`
makes an int8 QDQ copy with ONNX Runtime's own static quantizer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 32
PERIOD = 4
CONCEPTS = ("red", "green", "blue", "horizontal", "vertical")
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def stripe_kernels() -> np.ndarray:
    """[2, 3, 8, 8]: cos(2 pi y / PERIOD) (horizontal stripes) and its transpose, on the grey level."""
    wave = np.cos(2 * np.pi * np.arange(8) / PERIOD)  # 1, 0, -1, 0, 1, 0, -1, 0: zero mean
    horizontal = np.repeat(wave[:, None], 8, axis=1) / 8.0
    kernels = np.stack([horizontal, horizontal.T])[:, None] / 3.0
    return np.repeat(kernels, 3, axis=1).astype(np.float32)


def detector_model(dtype: int = TensorProto.FLOAT, batch: int | str = "N") -> onnx.ModelProto:
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    colour = (1.5 * np.eye(3) - 0.5)[:, :, None, None]
    inits = [numpy_helper.from_array(colour.astype(np_type), "colour_w"),
             numpy_helper.from_array(np.full(3, 0.05, np_type), "colour_b"),
             numpy_helper.from_array(stripe_kernels().astype(np_type), "stripes_w"),
             numpy_helper.from_array(np.zeros(2, np_type), "stripes_b"),
             numpy_helper.from_array(np.eye(5, dtype=np_type), "readout")]
    nodes = [helper.make_node("Conv", ["pixels", "colour_w", "colour_b"], ["colour_conv"]),
             helper.make_node("Relu", ["colour_conv"], ["colour"]),
             helper.make_node("Conv", ["pixels", "stripes_w", "stripes_b"], ["stripes_conv"],
                              pads=[3, 3, 4, 4]),
             helper.make_node("Relu", ["stripes_conv"], ["stripes"]),
             helper.make_node("Concat", ["colour", "stripes"], ["features"], axis=1),
             helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "readout"], ["logits"])]
    graph = helper.make_graph(nodes, "detectors",
                              [helper.make_tensor_value_info("pixels", dtype, [batch, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", dtype, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.metadata_props.add(key="blackbox.preprocess", value='{"scale": 0.00392156862745098}')
    return model


def concept_image(concept: str, *, rng: np.random.Generator | None = None, box: tuple[int, int, int, int] | None = None,
                  background: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 SIZE x SIZE x 3 image, bool mask): grey background with ``concept`` inside ``box``
    (y0, y1, x0, x1; random when None)."""
    rng = rng or np.random.default_rng(0)
    if box is None:
        h, w = rng.integers(10, 17, size=2)
        y0, x0 = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
        box = (int(y0), int(y0 + h), int(x0), int(x0 + w))
    y0, y1, x0, x1 = box
    image = np.full((SIZE, SIZE, 3), background, np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = True
    if concept in COLOURS:
        image[mask] = COLOURS[concept]
    else:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        phase = yy if concept == "horizontal" else xx
        stripes = np.where((phase % PERIOD) < PERIOD // 2, 255, 0).astype(np.uint8)
        image[mask] = stripes[mask][:, None]
    return image, mask


def quantized(model: onnx.ModelProto, tmp_path, *, samples: int = 16) -> onnx.ModelProto:
    """An int8 QDQ copy by ONNX Runtime's static quantizer, calibrated on concept images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(1)
    full = (0, SIZE, 0, SIZE)  # whole-image concepts set the activation ranges' upper ends
    images = [concept_image(CONCEPTS[i % 5], rng=rng, box=full if i < 10 else None)[0] for i in range(samples)]
    batch = [(im.astype(np.float32) / 255).transpose(2, 0, 1)[None] for im in images]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batch)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"pixels": item}

    source, target = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(source))
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out = onnx.load(str(target))
    out.ir_version = min(out.ir_version, 8)
    return out
