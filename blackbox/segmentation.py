"""Superpixels for the feature-based methods (LIME, KernelSHAP).

Segments are computed on the picture the model actually sees (the model-space input shown as RGB
uint8 at model resolution), so every feature is a set of model-input pixels and the perturbation graph
can switch it with one ``Gather``. Labels are always consecutive int64 ``0 .. M-1`` in [H, W].

Defaults follow the reference tools: quickshift as ``lime_image`` (kernel_size=4, max_dist=200,
ratio=0.2); slic as shap's image KernelExplainer notebook (n_segments=50, compactness=30, sigma=3);
felzenszwalb as scikit-image's gallery (scale=100, sigma=0.5, min_size=50, since its own defaults give
hundreds of specks); "grid" splits the image into ``cells x cells`` near-equal blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import ParameterError

if TYPE_CHECKING:
    from .methods.base import Context

SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb", "grid")
DEFAULTS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 50, "compactness": 30, "sigma": 3, "start_label": 0},
    "felzenszwalb": {"scale": 100, "sigma": 0.5, "min_size": 50},
    "grid": {"cells": 8},
}


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive int64 labels 0..M-1, keeping the order of the original label values."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.reshape(np.shape(labels)).astype(np.int64)


def grid_segments(height: int, width: int, cells=8) -> np.ndarray:
    """``cells`` (int or (rows, cols)) near-equal rectangular blocks, numbered row by row."""
    rows, cols = (cells, cells) if np.isscalar(cells) else tuple(cells)
    rows, cols = int(rows), int(cols)
    if rows < 1 or cols < 1 or rows > height or cols > width:
        raise ParameterError(f"grid segmentation cells must be between 1 and the image size {height}x{width}, "
                             f"got {cells!r}")
    ys = np.arange(height) * rows // height
    xs = np.arange(width) * cols // width
    return (ys[:, None] * cols + xs[None, :]).astype(np.int64)


def segment(picture: np.ndarray, segmentation: str | np.ndarray | Callable = "quickshift", *,
            params: dict[str, Any] | None = None) -> np.ndarray:
    """Segment an RGB uint8 picture [H, W, 3] into superpixels (int64 [H, W], labels 0..M-1).

    ``segmentation``: one of :data:`SEGMENTATIONS`, an integer label array [H, W] (used as given, relabelled
    to 0..M-1), or a callable ``picture -> labels``. ``params`` override the algorithm's defaults
    (:data:`DEFAULTS`) and go to the scikit-image function as keywords.
    """
    height, width = picture.shape[:2]
    if callable(segmentation) and not isinstance(segmentation, str):
        labels = np.asarray(segmentation(picture))
        return _check_labels(labels, height, width, "the segmentation function's result")
    if not isinstance(segmentation, str):
        return _check_labels(np.asarray(segmentation), height, width, "segmentation")
    name = segmentation.strip().lower()
    if name not in SEGMENTATIONS:
        raise ParameterError(f"unknown segmentation {segmentation!r}: use one of {', '.join(SEGMENTATIONS)}, "
                             "an integer label array or a function")
    if params is not None and not isinstance(params, dict):
        raise ParameterError(f"segmentation_params must be a dict, got {params!r}")
    options = {**DEFAULTS[name], **(params or {})}
    if name == "grid":
        unknown = set(options) - {"cells"}
        if unknown:
            raise ParameterError(f"segmentation_params {sorted(unknown)} do not apply to the grid (it takes 'cells')")
        return grid_segments(height, width, options["cells"])
    from skimage import segmentation as skseg

    function = {"quickshift": skseg.quickshift, "slic": skseg.slic, "felzenszwalb": skseg.felzenszwalb}[name]
    try:
        labels = function(picture, **options)
    except TypeError as error:
        raise ParameterError(f"segmentation_params for {name}: {error}") from None
    return relabel(labels)


def _check_labels(labels: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    if labels.shape != (height, width):
        raise ParameterError(f"{what} has shape {labels.shape}; it must be [H, W] = ({height}, {width}), the model "
                             "input's size (segments live at model resolution)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ParameterError(f"{what} must hold integer labels, not {labels.dtype}")
    return relabel(labels)


def superpixels(ctx: "Context", segmentation: str | np.ndarray | Callable, params: dict[str, Any] | None) -> np.ndarray:
    """Segments of the explained input at model resolution (see :func:`segment`)."""
    picture = ctx.model.preprocess.display(ctx.x)
    return segment(picture, segmentation, params=params)


def segment_means(x: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """[C, H, W]: every pixel replaced by its segment's mean value per channel (lime's hide_color=None).

    Preprocessing is affine per channel, so the mean in model space is the preprocessed mean colour."""
    channels = x.shape[0]
    count = np.bincount(segments.ravel()).astype(np.float64)
    out = np.empty_like(x, dtype=np.float32)
    for c in range(channels):
        sums = np.bincount(segments.ravel(), weights=x[c].ravel().astype(np.float64))
        out[c] = (sums / np.maximum(count, 1))[segments]
    return out
