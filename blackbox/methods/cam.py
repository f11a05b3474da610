"""Class activation maps: Grad-CAM and its variants, guided Grad-CAM and Score-CAM.

One gradient pass taps a spatial layer ``A`` [K, h, w] (default: the last spatial activation before
global pooling) and its gradient ``G = d score / d A``. As in pytorch-grad-cam's ``BaseCAM``, every
variant only chooses **weights** broadcastable to ``A`` and the map is ``relu(sum_k weights_k * A_k)``:

* ``grad_cam`` (Selvaraju et al. 2017): spatial mean of ``G``;
* ``grad_cam_pp`` (Chattopadhyay et al. 2018): ``sum_ij alpha * relu(G)``, ``alpha = G^2 / (2 G^2 +
  sum_ij(A) G^3)``, 0 where the denominator is 0 (pytorch-grad-cam adds 1e-6 to the denominator
  instead, which makes its result depend on the gradients' scale; here it is exact);
* ``xgrad_cam`` (Fu et al. 2020): ``sum_ij(G * A) / (sum_ij(A) + 1e-7)`` (pytorch-grad-cam's eps);
* ``layer_cam`` (Jiang et al. 2021): ``relu(G)`` element-wise;
* ``hires_cam`` (Draelos & Carin 2020): ``G`` element-wise.

Defaults and conventions:

* Score: ``logit`` — the raw output for logit models, which is what pytorch-grad-cam explains; for
  models that output probabilities it is the log-probability (the softmax saturates gradients).
* ``attributions`` is the raw CAM at the layer's resolution (float32 [h, w]), **not** min-max
  normalised; pytorch-grad-cam's ``scale_cam_image`` is ``(cam - min) / (max - min)`` at layer
  resolution, then ``cv2.resize``. That map is affine and commutes with bilinear upsampling, so
  applying it to ``heatmap`` *with the layer-resolution min and max* gives pytorch-grad-cam's picture
  exactly (the upsampled map's own extremes differ: half-pixel centres miss the low-res centres).
  ``heatmap`` is the raw CAM upsampled bilinearly (half-pixel centres, as ``cv2.resize`` and
  ``F.interpolate(align_corners=False)``) to the model input.
* ``layer`` and ``layout`` (:data:`LAYER_DOC`): ``layer`` names a tensor of the (float) graph;
  ``[l.name for l in model.layers() if l.spatial]`` lists them.
  ``layout`` says how its values read as maps [K, h, w] (``graph.layout``): NCHW maps as they are,
  channel-last maps [h, w, K] transposed, tokens [extra + h*w, K] with the class/distillation tokens
  dropped and the patches reshaped to the grid — pytorch-grad-cam's ``reshape_transform`` for ViT and
  Swin, applied to activations and gradients alike. "auto" takes the layout the data flow gives.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError
from ..graph.autodiff import GUIDED
from ..graph.layers import image_size, patch_grid
from ..graph.layout import LAYOUTS, Reading
from ..masks import linear_matrix
from .base import Context, Param, Result, batched, register

_XGRAD_EPS = 1e-7  # pytorch-grad-cam's XGradCAM stabiliser on sum(A)


# ------------------------------------------------------------------------------------- shared steps
LAYER_LAYOUTS = ("auto", *LAYOUTS)
_LAYOUT_PARAM = {"layout": Param(choices=LAYER_LAYOUTS)}


@dataclass(frozen=True)
class CamLayer:
    """The layer a CAM reads and how its values read as maps [K, h, w]."""

    name: str
    reading: Reading


def resolve_layer(model, layer: str | None, layout: str = "auto") -> CamLayer:
    """The CAM layer: ``layer`` (default: the model's default CAM layer) read in ``layout`` ("auto": the
    layout the data flow gave it; "nchw", "nhwc", "tokens": as the user says, where the shape allows)."""
    if layout not in LAYER_LAYOUTS:
        raise ParameterError(f"layout must be one of {', '.join(LAYER_LAYOUTS)}, got {layout!r}")
    name = model.default_cam_layer() if layer is None else layer
    names = {entry.name for entry in model.layers()} | {entry.tensor for entry in model.layers()}
    if name not in names:
        spatial = [entry.name for entry in model.layers() if entry.spatial]
        last = ", ".join(repr(n) for n in spatial[-5:])
        raise ParameterError(f"layer {name!r} is not a layer of the model; {len(spatial)} spatial candidates (maps "
                             f"[C, H, W] or [H, W, C], tokens [extra + H*W, C]), the last ones: {last} (default: "
                             f"{model.default_cam_layer()!r})")
    entry = model.layer(name)
    hints = {"image": image_size(model.float_graph()), "grid": patch_grid(model.layers())}
    reading = entry.reading(layout, **hints)
    if reading is None:
        possible = list(entry.readings(**hints))
        found = f"layout {layout!r} does not fit it" if layout != "auto" else "its layout is not spatial"
        advice = f"possible layouts: {', '.join(possible)}" if possible else \
            "no spatial reading fits (nchw [C, H, W], nhwc [H, W, C] or tokens [extra + H*W, C], H x W > 1)"
        raise ParameterError(f"layer {entry.name!r} of shape {list(entry.shape)} ({entry.layout}): {found}; {advice} "
                             f"(default layer: {model.default_cam_layer()!r})")
    return CamLayer(entry.name, reading)


def layer_gradients(ctx: Context, layer: CamLayer) -> tuple[np.ndarray, np.ndarray]:
    """One backward pass: (activations [K, h, w], gradients [K, h, w]) in float64 for the target's score."""
    return layer_gradients_many([ctx], layer)[0]


def _seeds(contexts: Sequence[Context]) -> np.ndarray:
    """One one-hot row per image, at its own target (images of one batch explain different classes)."""
    seed = np.zeros((len(contexts), contexts[0].model.num_classes), np.float32)
    seed[np.arange(len(contexts)), [ctx.target for ctx in contexts]] = 1.0
    return seed


def _inputs(contexts: Sequence[Context]) -> np.ndarray:
    return np.stack([ctx.x for ctx in contexts])


def layer_gradients_many(contexts: Sequence[Context], layer: CamLayer) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`layer_gradients` of several images in one gradient-graph call (each row its own target).
    Values and gradients are read as maps the same way (pytorch-grad-cam's ``reshape_transform``)."""
    out = contexts[0].model.gradients.run(_inputs(contexts), _seeds(contexts), score=contexts[0].score,
                                          taps=(layer.name,))
    value, grad = (layer.reading.maps(a).astype(np.float64) for a in out.taps[layer.name])
    return [(value[i], grad[i]) for i in range(len(contexts))]


def _layer_extras(layer: CamLayer, maps: np.ndarray) -> dict:
    return {"layer": layer.name, "layer_shape": list(maps.shape), "layout": layer.reading.layout}


def upsample_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (half-pixel) upsampling of a [h, w] map to [height, width]."""
    ry = linear_matrix(cam.shape[0], height).astype(np.float64)
    rx = linear_matrix(cam.shape[1], width).astype(np.float64)
    return ry @ cam @ rx.T


# ----------------------------------------------------------------------------------------- variants
class BaseCAM(abc.ABC):
    """``relu(sum_k weights(A, G)_k * A_k)``; subclasses override :meth:`weights` only."""

    name = "cam"

    @abc.abstractmethod
    def weights(self, activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """Weights broadcastable to ``activations`` [K, h, w]: [K, 1, 1] per channel or [K, h, w]."""

    def cam(self, activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return np.maximum((self.weights(activations, grads) * activations).sum(axis=0), 0.0)


class GradCAM(BaseCAM):
    name = "grad_cam"

    def weights(self, activations, grads):
        return grads.mean(axis=(1, 2), keepdims=True)


class GradCAMPlusPlus(BaseCAM):
    name = "grad_cam_pp"

    def weights(self, activations, grads):
        g2 = grads * grads
        den = 2.0 * g2 + activations.sum(axis=(1, 2), keepdims=True) * g2 * grads
        alpha = np.divide(g2, den, out=np.zeros_like(g2), where=den != 0)
        return (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2), keepdims=True)


class XGradCAM(BaseCAM):
    name = "xgrad_cam"

    def weights(self, activations, grads):
        total = activations.sum(axis=(1, 2), keepdims=True)
        return (grads * activations).sum(axis=(1, 2), keepdims=True) / (total + _XGRAD_EPS)


class LayerCAM(BaseCAM):
    name = "layer_cam"

    def weights(self, activations, grads):
        return np.maximum(grads, 0.0)


class HiResCAM(BaseCAM):
    name = "hires_cam"

    def weights(self, activations, grads):
        return grads


def _cam_results(contexts: Sequence[Context], variant: BaseCAM, layer: str | None, layout: str) -> list[Result]:
    """A CAM variant for several images: one tapped gradient call, then per-image arithmetic."""
    chosen = resolve_layer(contexts[0].model, layer, layout)
    results = []
    for ctx, (activations, grads) in zip(contexts, layer_gradients_many(contexts, chosen)):
        cam = variant.cam(activations, grads)
        _, height, width = ctx.shape
        results.append(Result(attributions=cam.astype(np.float32),
                              heatmap=upsample_map(cam, height, width).astype(np.float32), n_evals=1,
                              pixel_attributions=False, notes=list(ctx.model.gradients.notes),
                              extras=_layer_extras(chosen, activations)))
    return results


def _cam_result(ctx: Context, variant: BaseCAM, layer: str | None, layout: str) -> Result:
    return _cam_results([ctx], variant, layer, layout)[0]


_SUMMARY = ("{} on a spatial layer (default: the last map before global pooling; transformers: the last "
            "block's first LayerNorm); raw map at layer resolution")
LAYER_DOC = """``layer``: tensor name (default None: the last spatial map before global pooling; for ViT/Swin-style
    models the last block's first LayerNorm). ``layout``: how the layer's values read as maps: "auto"
    (as the data flow tells), "nchw" ([C, H, W]), "nhwc" ([H, W, C], channel-last) or "tokens"
    ([extra + H*W, C]: leading class/distillation tokens dropped, the rest reshaped to the patch grid,
    as pytorch-grad-cam's ``reshape_transform``)."""


@register("grad_cam", default_score="logit", kind="gradient", params=_LAYOUT_PARAM,
          summary=_SUMMARY.format("Grad-CAM: channels weighted by mean gradient"))
def grad_cam(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """``layer`` and ``layout``: see :data:`LAYER_DOC`."""
    return _cam_result(ctx, GradCAM(), layer, layout)


@batched("grad_cam")
def grad_cam_many(contexts: Sequence[Context], *, layer: str | None = None, layout: str = "auto") -> list[Result]:
    """grad_cam of several images in one gradient-graph call."""
    return _cam_results(contexts, GradCAM(), layer, layout)


@register("grad_cam_pp", default_score="logit", kind="gradient", params=_LAYOUT_PARAM,
          summary=_SUMMARY.format("Grad-CAM++: channels weighted by alpha-weighted positive gradients"))
def grad_cam_pp(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """``layer`` and ``layout``: see :data:`LAYER_DOC`."""
    return _cam_result(ctx, GradCAMPlusPlus(), layer, layout)


@batched("grad_cam_pp")
def grad_cam_pp_many(contexts: Sequence[Context], *, layer: str | None = None, layout: str = "auto") -> list[Result]:
    """grad_cam_pp of several images in one gradient-graph call."""
    return _cam_results(contexts, GradCAMPlusPlus(), layer, layout)


@register("xgrad_cam", default_score="logit", kind="gradient", params=_LAYOUT_PARAM,
          summary=_SUMMARY.format("XGrad-CAM: channels weighted by activation-normalised gradients"))
def xgrad_cam(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """``layer`` and ``layout``: see :data:`LAYER_DOC`."""
    return _cam_result(ctx, XGradCAM(), layer, layout)


@batched("xgrad_cam")
def xgrad_cam_many(contexts: Sequence[Context], *, layer: str | None = None, layout: str = "auto") -> list[Result]:
    """xgrad_cam of several images in one gradient-graph call."""
    return _cam_results(contexts, XGradCAM(), layer, layout)


@register("layer_cam", default_score="logit", kind="gradient", params=_LAYOUT_PARAM,
          summary=_SUMMARY.format("LayerCAM: activations weighted element-wise by positive gradients"))
def layer_cam(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """``layer`` and ``layout``: see :data:`LAYER_DOC`."""
    return _cam_result(ctx, LayerCAM(), layer, layout)


@batched("layer_cam")
def layer_cam_many(contexts: Sequence[Context], *, layer: str | None = None, layout: str = "auto") -> list[Result]:
    """layer_cam of several images in one gradient-graph call."""
    return _cam_results(contexts, LayerCAM(), layer, layout)


@register("hires_cam", default_score="logit", kind="gradient", params=_LAYOUT_PARAM,
          summary=_SUMMARY.format("HiResCAM: activations weighted element-wise by gradients"))
def hires_cam(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """``layer`` and ``layout``: see :data:`LAYER_DOC`."""
    return _cam_result(ctx, HiResCAM(), layer, layout)


@batched("hires_cam")
def hires_cam_many(contexts: Sequence[Context], *, layer: str | None = None, layout: str = "auto") -> list[Result]:
    """hires_cam of several images in one gradient-graph call."""
    return _cam_results(contexts, HiResCAM(), layer, layout)


@register("guided_grad_cam", default_score="logit", kind="gradient", params=_LAYOUT_PARAM,
          summary="guided backprop times the upsampled Grad-CAM map (pixel attributions)")
def guided_grad_cam(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """Selvaraju et al.: the guided-backprop input gradient times the raw Grad-CAM map upsampled to
    the input (pytorch-grad-cam's example multiplies by the min-max normalised map instead, which
    differs where the CAM's minimum is not 0). ``layer`` and ``layout`` as for ``grad_cam``. The heatmap
    is the sum of |attribution| over channels: guided backprop's per-channel signs mostly encode colour."""
    return guided_grad_cam_many([ctx], layer=layer, layout=layout)[0]


@batched("guided_grad_cam")
def guided_grad_cam_many(contexts: Sequence[Context], *, layer: str | None = None,
                         layout: str = "auto") -> list[Result]:
    """Guided Grad-CAM of several images: one tapped call for the maps, one guided call for the pixels."""
    model = contexts[0].model
    chosen = resolve_layer(model, layer, layout)
    tapped = layer_gradients_many(contexts, chosen)
    engine = model.gradients
    guided = engine.run(_inputs(contexts), _seeds(contexts), score=contexts[0].score, rules=GUIDED).grad
    results = []
    for i, ctx in enumerate(contexts):
        cam = GradCAM().cam(*tapped[i])
        _, height, width = ctx.shape
        up = upsample_map(cam, height, width)
        attributions = guided[i].astype(np.float64) * up[None]
        results.append(Result(attributions=attributions.astype(np.float32),
                              heatmap=np.abs(attributions).sum(axis=0).astype(np.float32), n_evals=2,
                              pixel_attributions=True, notes=list(engine.notes),
                              extras={"layer": chosen.name, "layout": chosen.reading.layout,
                                      "cam": cam.astype(np.float32)}))
    return results


# ----------------------------------------------------------------------------------------- Score-CAM
def _upsampled_range(activations: np.ndarray, ry: np.ndarray, rx: np.ndarray, chunk: int = 64):
    """Per-channel (min, max) of the bilinearly upsampled maps, in chunks (never all K full maps).

    Needed because bilinear upsampling with half-pixel centres does not reproduce the low-res
    extremes: for an even scale factor no output pixel centre falls on an input pixel centre, so the
    upsampled maximum is a blend with the neighbours.
    """
    lows, highs = [], []
    for start in range(0, len(activations), chunk):
        up = ry @ activations[start:start + chunk] @ rx.T
        lows.append(up.min(axis=(1, 2)))
        highs.append(up.max(axis=(1, 2)))
    return np.concatenate(lows), np.concatenate(highs)


@register("score_cam", default_score="probability", kind="activation", params=_LAYOUT_PARAM,
          summary="Score-CAM: channels weighted by the score of the input masked by each activation map")
def score_cam(ctx: Context, *, layer: str | None = None, layout: str = "auto") -> Result:
    """Wang et al. 2020, as their reference code: each activation map ``A_k`` of ``layer`` is upsampled
    to the input, min-max normalised to [0, 1] and used as a keep-mask over a zero baseline (``x * m``
    in model space); its weight is the target's score for that input (default: softmax probability),
    and the map is ``relu(sum_k w_k A_k)``. Constant maps are skipped (weight 0), as in the reference
    code. (pytorch-grad-cam instead softmaxes the raw target scores across channels.) Forward passes
    only (the activations come from one tapped pass), all batched through the perturbation engine:
    the low-res maps are the masks and the bilinear upsampling happens in the graph. ``layer`` and
    ``layout`` as for ``grad_cam`` (token layers: the patch tokens reshaped to maps, then upsampled)."""
    chosen = resolve_layer(ctx.model, layer, layout)
    tapped = ctx.model.activations(ctx.x[None], [chosen.name])[chosen.name]  # forward only
    activations = chosen.reading.maps(tapped)[0].astype(np.float64)
    _, height, width = ctx.shape
    ry = linear_matrix(activations.shape[1], height).astype(np.float64)
    rx = linear_matrix(activations.shape[2], width).astype(np.float64)
    low, high = _upsampled_range(activations, ry, rx)
    # Normalising is affine and each interpolation row sums to 1, so normalising the low-res map with
    # the upsampled map's min/max equals normalising the upsampled map.
    live = np.flatnonzero(high > low)
    masks = (activations[live] - low[live, None, None]) / (high - low)[live, None, None]
    weights = np.zeros(len(activations))
    if len(live):
        with ctx.bar(len(live), "score_cam") as bar:
            scores = ctx.model.score_masks(ctx.x, masks[:, None].astype(np.float32), baseline=np.zeros_like(ctx.x),
                                           targets=[ctx.target], score=ctx.score, ry=ry.astype(np.float32),
                                           rx=rx.astype(np.float32), progress=bar.update)
        weights[live] = scores[:, 0]
    cam = np.maximum(np.einsum("k,khw->hw", weights, activations), 0.0)
    return Result(attributions=cam.astype(np.float32), heatmap=upsample_map(cam, height, width).astype(np.float32),
                  n_evals=len(live) + 1, pixel_attributions=False, notes=ctx.model.precision_notes,
                  extras={**_layer_extras(chosen, activations), "channel_weights": weights.astype(np.float32),
                          "constant_maps": int(len(weights) - len(live))})
