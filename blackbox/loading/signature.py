"""Step 2 of loading: read the graph's signature — which input is the image, in which layout and size,
which output holds the class scores, what the other inputs are set to, how pixels are prepared.

Pure functions of the graph and the user's choices; no ONNX Runtime here.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import ModelError, ParameterError
from ..graph.compose import ImageInput
from ..graph.onnx_utils import FLOAT_TYPES, dims, elem_type, np_dtype, real_inputs, type_name
from ..preprocess import Preprocess

IMAGE_TYPES = FLOAT_TYPES + (TensorProto.UINT8,)
LAYOUTS = ("NCHW", "NHWC", "NHW")
GUESSED_PREPROCESS = "none (no preset given: exact resize, pixels / 255)"


def find_image_input(model: onnx.ModelProto, input_name: str | None) -> onnx.ValueInfoProto:
    inputs = real_inputs(model.graph)
    if input_name is not None:
        for value in inputs:
            if value.name == input_name:
                return value
        raise ModelError(f"the model has no input named {input_name!r}; its inputs are "
                         f"{', '.join(repr(v.name) for v in inputs)}")
    candidates = [v for v in inputs if elem_type(v) in IMAGE_TYPES and len(dims(v)) in (3, 4)]
    if not candidates:
        described = ", ".join(f"{v.name} {type_name(elem_type(v))}{dims(v)}" for v in inputs) or "none"
        raise ModelError(f"no image input found (need a float or uint8 tensor of rank 3 or 4); inputs: {described}")
    if len(candidates) > 1:
        names = ", ".join(repr(v.name) for v in candidates)
        raise ModelError(f"several inputs could be the image ({names}); name one with input_name= (CLI: --input)")
    return candidates[0]


def constant_inputs(model: onnx.ModelProto, image_name: str,
                    given: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Values for the model's inputs other than the image (the user must give every one)."""
    given = dict(given or {})
    values = {}
    for value in real_inputs(model.graph):
        if value.name == image_name:
            continue
        if value.name not in given:
            raise ModelError(f"the model has another input {value.name!r} {dims(value)}; "
                             "give its value with inputs={...}")
        try:
            values[value.name] = np.asarray(given[value.name], dtype=np_dtype(elem_type(value)))
        except (TypeError, ValueError) as error:
            raise ParameterError(f"inputs[{value.name!r}] cannot be made {type_name(elem_type(value))}: {error}") from None
    unknown = set(given) - set(values) - {image_name}
    if unknown:
        raise ParameterError(f"inputs= names {sorted(unknown)} which the model does not have")
    return values


def layout_of(shape: list, override: str | None) -> str:
    """NCHW when dim 1 looks like channels, NHWC when the last does; rank 3 is one-channel NHW."""
    if override:
        layout = str(override).upper()
        if layout not in LAYOUTS:
            raise ParameterError(f"unknown layout {override!r}: use NCHW, NHWC or NHW")
        if (layout == "NHW") != (len(shape) == 3):
            raise ParameterError(f"layout {layout} does not fit an input of rank {len(shape)} {shape}")
        return layout
    if len(shape) == 3:
        return "NHW"
    channel_like = (1, 3, 4)
    first, last = shape[1] in channel_like, shape[3] in channel_like
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    raise ModelError(f"cannot tell whether input shape {shape} is NCHW or NHWC; pass layout= (CLI: --layout)")


def image_spec(value: onnx.ValueInfoProto, layout: str, preprocess: Preprocess | None) -> ImageInput:
    shape = dims(value)
    if layout == "NHW":
        channels, height, width = 1, shape[1], shape[2]
    elif layout == "NCHW":
        channels, height, width = shape[1], shape[2], shape[3]
    else:
        height, width, channels = shape[1], shape[2], shape[3]
    if not isinstance(height, int) or not isinstance(width, int):
        if preprocess is None or preprocess.size is None:
            raise ModelError(f"input {value.name!r} has no fixed height/width {shape}; give a Preprocess with a size")
        height, width = preprocess.size
    if not isinstance(channels, int):
        raise ModelError(f"input {value.name!r} has no fixed channel count {shape}; pass layout= and fix the model")
    if channels not in (1, 3, 4):
        raise ModelError(f"input {value.name!r} has {channels} channels; blackbox explains 1-, 3- or 4-channel images")
    if height < 1 or width < 1:
        raise ModelError(f"input {value.name!r} declares an empty image {shape}")
    return ImageInput(value.name, elem_type(value), layout, channels, height, width)


def find_output(model: onnx.ModelProto, output_name: str | None) -> onnx.ValueInfoProto:
    outputs = list(model.graph.output)
    if output_name is not None:
        for value in outputs:
            if value.name == output_name:
                if elem_type(value) not in FLOAT_TYPES:
                    raise ModelError(f"output {output_name!r} is {type_name(elem_type(value))}, not float scores")
                return value
        raise ModelError(f"the model has no output named {output_name!r}; its outputs are "
                         f"{', '.join(repr(o.name) for o in outputs)}")
    candidates = [o for o in outputs if elem_type(o) in FLOAT_TYPES]
    if not candidates:
        described = ", ".join(f"{o.name} {type_name(elem_type(o))}" for o in outputs)
        raise ModelError(f"no float output that could hold class scores; outputs: {described}")

    def per_sample_size(value):
        rest = dims(value)[1:]
        return int(np.prod(rest)) if rest and all(isinstance(d, int) for d in rest) else None

    shaped = [o for o in candidates if (per_sample_size(o) or 2) > 1 and len(dims(o)) >= 2]
    return (shaped or candidates)[0]


def resolve_preprocess(given: Preprocess | str | dict | None,
                       model: onnx.ModelProto) -> tuple[Preprocess | None, str, bool]:
    """(recipe or None, where it came from, guessed?). The model's metadata speaks when the user does not."""
    if isinstance(given, Preprocess):
        return given, "user", False
    if isinstance(given, str):
        return Preprocess.preset(given), given, False
    if isinstance(given, dict):
        return Preprocess.from_dict(given), "user", False
    if given is not None:
        raise ParameterError("preprocess must be a Preprocess, a preset name or a dict")
    meta = json_metadata(model, "blackbox.preprocess")
    if meta:
        return Preprocess.from_dict(meta), "model metadata", False
    return None, GUESSED_PREPROCESS, True


def json_metadata(model: onnx.ModelProto, key: str) -> dict | None:
    for prop in model.metadata_props:
        if prop.key == key:
            try:
                value = json.loads(prop.value)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None
