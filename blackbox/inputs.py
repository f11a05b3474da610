"""Turn what a user hands us (a path, an RGB array, a model-space tensor) into one model-space sample."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageError
from .image_io import as_rgb_array

if TYPE_CHECKING:
    from .model import Model
    from .preprocess import Geometry


@dataclass
class Sample:
    """One input in blackbox's internal layout, plus what is needed to map results back to the image."""

    x: np.ndarray  # float32 [C, H, W], model space
    image: np.ndarray | None  # the original RGB uint8 picture, None for model-space input
    geometry: "Geometry | None"  # how the picture maps onto x, None for model-space input
    source: str  # file path or "array"

    @property
    def model_space(self) -> bool:
        return self.image is None


def to_internal(model: "Model", array: np.ndarray) -> np.ndarray:
    """A float array shaped like one model input (the model's layout) -> float32 [C, H, W]."""
    spec = model.image
    shape = {"NCHW": (spec.channels, spec.height, spec.width), "NHWC": (spec.height, spec.width, spec.channels),
             "NHW": (spec.height, spec.width)}[model.layout]
    array = np.asarray(array)
    if array.shape == (1,) + shape:
        array = array[0]
    if array.shape != shape:
        raise ImageError(f"a float array of shape {array.shape} does not match one model input {shape} "
                         f"({model.layout}); pass a uint8 image or a tensor of that shape")
    array = array.astype(np.float32)
    if model.layout == "NHWC":
        array = array.transpose(2, 0, 1)
    elif model.layout == "NHW":
        array = array[None]
    return np.ascontiguousarray(array)


def from_internal(model: "Model", array: np.ndarray) -> np.ndarray:
    """float32 [C, H, W] (internal) -> shaped like one model input, in the model's own layout."""
    if model.layout == "NHWC":
        return np.ascontiguousarray(array.transpose(1, 2, 0))
    if model.layout == "NHW":
        return array[0]
    return array


def prepare(model: "Model", item: Any) -> Sample:
    """Path or uint8 image -> preprocessed sample; float array -> model-space sample as it is."""
    if isinstance(item, (str, os.PathLike)):
        prepared = model.preprocess(item)
        return Sample(_internal(model, prepared.x), prepared.image, prepared.geometry, os.fspath(item))
    array = np.asarray(item)
    if array.dtype == np.uint8:
        prepared = model.preprocess(as_rgb_array(array))
        return Sample(_internal(model, prepared.x), prepared.image, prepared.geometry, "array")
    if np.issubdtype(array.dtype, np.floating):
        return Sample(to_internal(model, array), None, None, "array")
    raise ImageError(f"cannot use an array of dtype {array.dtype}: pass a path, a uint8 H x W x C image or a "
                     "float tensor shaped like one model input")


def _internal(model: "Model", x: np.ndarray) -> np.ndarray:
    """Preprocess is resolved with layout NCHW, so its output already is internal [C, H, W]."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    return np.ascontiguousarray(x)


def prepare_batch(model: "Model", items: Any) -> list[Sample]:
    """A single item or a list of them."""
    if isinstance(items, (str, os.PathLike)):
        return [prepare(model, items)]
    if isinstance(items, np.ndarray):
        if items.dtype == np.uint8 and items.ndim in (2, 3):
            return [prepare(model, items)]
        if np.issubdtype(items.dtype, np.floating):
            spec_rank = 2 if model.layout == "NHW" else 3
            if items.ndim == spec_rank:
                return [prepare(model, items)]
            return [prepare(model, item) for item in items]
        if items.dtype == np.uint8 and items.ndim == 4:
            return [prepare(model, item) for item in items]
    return [prepare(model, item) for item in items]
