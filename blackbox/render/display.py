"""How a map is prepared for a figure: sign, outlier clipping, display smoothing, colour map and mode.

The semantics are Captum's ``visualize_image_attr`` (so a Captum user reads our figures the same way):
``sign`` keeps the positive, negative or absolute part (or all of a signed map), and ``clip`` is
Captum's ``outlier_perc``: the largest |values| that together hold ``clip`` percent of the total |mass|
are saturated, and the smallest of them sets the scale (``_cumulative_sum_threshold``). Unlike Captum,
the numbers stay in the map's own units, so a colour bar can show real attribution values.

One addition, for non-negative maps whose minimum sits well above zero (RISE and score maps live in
[0.87, 1] x max): the colour scale starts at the map's minimum instead of 0, the min-max display
pytorch-grad-cam uses for CAMs; on maps whose minimum is 0 this is exactly Captum's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError

SIGNS = ("positive", "negative", "absolute", "all")
MODES = ("heat", "blend", "masked", "alpha")  # Captum: heat_map, blended_heat_map, masked_image, alpha_scaling
DEFAULT_CLIP = 2.0  # Captum's outlier_perc default
SIGNED_COLORMAP = "RdBu_r"  # diverging, white at 0: blue against the class, red for it
UNSIGNED_COLORMAP = "inferno"  # sequential, perceptually even: dark = nothing, bright = most
NEGATIVE_COLORMAP = "Blues"  # sign=negative: the strength of the evidence against the class

# Methods whose maps are per-pixel gradients or relevances. Their raw maps are salt-and-pepper speckle
# (neighbouring pixels flip sign), which reads as noise at figure size; a light Gaussian blur of about one
# percent of the model input's side (2 px at 224) shows where the attribution mass is, as pytorch-grad-cam
# users do with guided maps and Captum users with absolute, channel-summed maps. CAMs, occlusion and the
# other perturbation maps are smooth already and are never blurred.
PIXEL_METHODS = frozenset({"saliency", "gradient_x_input", "integrated_gradients", "smoothgrad",
                           "guided_backprop", "deconvnet", "lrp", "guided_grad_cam"})
SMOOTH_FRACTION = 1 / 112


@dataclass(frozen=True)
class Options:
    """Checked figure options (None: the per-map default, chosen in :func:`scale`)."""

    sign: str | None = None
    clip: float = DEFAULT_CLIP
    mode: str = "blend"
    alpha: float = 0.5
    colormap: str | None = None


def check_options(*, sign: str | None = None, clip: float = DEFAULT_CLIP, mode: str = "blend",
                  alpha: float = 0.5, colormap: str | None = None) -> Options:
    """The options, or one ParameterError line naming what is accepted."""
    if sign is not None and sign not in SIGNS:
        raise ParameterError(f"sign {sign!r} is not valid; use one of {', '.join(SIGNS)}")
    if mode not in MODES:
        raise ParameterError(f"mode {mode!r} is not valid; use one of {', '.join(MODES)}")
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.number)) or not math.isfinite(clip) \
            or not 0 <= clip < 100:
        raise ParameterError(f"clip {clip!r} is not valid; give the outlier percentile, a number >= 0 and < 100")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not math.isfinite(alpha) \
            or not 0 <= alpha <= 1:
        raise ParameterError(f"alpha {alpha!r} is not valid; give a number from 0 to 1")
    if colormap is not None:
        check_colormap(colormap)
    if mode in ("masked", "alpha") and sign == "all":
        raise ParameterError(f"mode {mode} cannot show both signs at once; pass sign positive, negative or absolute")
    return Options(sign=sign, clip=float(clip), mode=mode, alpha=float(alpha), colormap=colormap)


def check_colormap(name: str):
    """The matplotlib colour map called ``name``, or one ParameterError line."""
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except (KeyError, TypeError, ValueError):
        shown = ", ".join(n for n in ("inferno", "viridis", "magma", "jet", "turbo", "RdBu_r", "coolwarm", "bwr"))
        raise ParameterError(f"unknown colormap {name!r}: use a matplotlib colour map name such as {shown}") from None


def is_signed(values: np.ndarray) -> bool:
    """Whether a map has negative values that matter (not float dust around zero)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return False
    return bool(finite.min() < -1e-12 * max(1.0, float(np.abs(finite).max())))


def default_sign(values: np.ndarray, mode: str, *, pixel: bool = False) -> str:
    """all for signed maps (positive in the masked and alpha modes, which show one sign); positive for
    non-negative maps; absolute for per-pixel gradient maps (``pixel``), whose signs flip from one pixel
    to the next, so where the magnitude lies is what can be read (Captum's own default sign)."""
    if pixel and is_signed(values):
        return "absolute"
    return "all" if is_signed(values) and mode not in ("masked", "alpha") else "positive"


def apply_sign(values: np.ndarray, sign: str) -> np.ndarray:
    """Captum's sign filter: keep the positive part, the negative part, |values|, or all."""
    if sign == "positive":
        return np.maximum(values, 0)
    if sign == "negative":
        return np.minimum(values, 0)
    if sign == "absolute":
        return np.abs(values)
    return values


def cumulative_threshold(magnitudes: np.ndarray, clip: float) -> float:
    """The smallest of the largest |values| that together hold ``clip`` percent of the total |mass|
    (Captum's ``_cumulative_sum_threshold(values, 100 - clip)``)."""
    ordered = np.sort(np.asarray(magnitudes, dtype=np.float64).ravel())
    if not ordered.size:
        return 0.0
    sums = np.cumsum(ordered)
    index = int(np.searchsorted(sums, sums[-1] * 0.01 * (100.0 - clip), side="left"))
    return float(ordered[min(index, ordered.size - 1)])


@dataclass(frozen=True)
class Scaled:
    """A map ready to draw: ``values`` in the map's units, clipped to [vmin, vmax]; ``norm`` in [0, 1]
    (Captum's normalised attribution: |value| / threshold for one sign, value / threshold in [-1, 1]
    for sign all); the colour map and sign used."""

    values: np.ndarray
    norm: np.ndarray
    vmin: float
    vmax: float
    sign: str
    colormap: str


def blur_sigma(model_side: int, picture_side: int) -> float:
    """The display blur for a pixel map: about one percent of the model input's side, in picture pixels."""
    return max(1.0, model_side * SMOOTH_FRACTION) * picture_side / max(1, model_side)


def prepare(heatmap: np.ndarray, sign: str, sigma: float = 0.0) -> np.ndarray:
    """The sign filter, then (``sigma`` > 0) the display blur: blurring after the sign keeps the mass of
    a speckled map where it is instead of cancelling neighbouring signs."""
    values = apply_sign(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), sign)
    if sigma > 0:
        import cv2

        values = cv2.GaussianBlur(values, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return values


def display_map(method: str, heatmap: np.ndarray, model_side: int) -> tuple[np.ndarray, str | None]:
    """(the map as a plain overlay should show it, what was done to it or None). Per-pixel gradient and
    relevance maps become |map| blurred like the figures' (:func:`blur_sigma`); other maps are as they are.
    The report's overlays and colour bars use this, so its IG and LRP maps are not invisible speckle."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if method not in PIXEL_METHODS:
        return heatmap, None
    sigma = blur_sigma(model_side, max(heatmap.shape[:2]))
    shown = prepare(heatmap, "absolute", sigma).astype(np.float32)
    return shown, f"|map| blurred \u03c3={sigma:.1f} px"


def choose_sign(heatmap: np.ndarray, options: Options, *, pixel: bool = False) -> str:
    """The sign asked for, or this map's default; refused when the mode cannot show it."""
    sign = options.sign or default_sign(np.asarray(heatmap), options.mode, pixel=pixel)
    if options.mode in ("masked", "alpha") and sign == "all":
        raise ParameterError(f"mode {options.mode} cannot show both signs at once; pass sign positive, "
                             "negative or absolute")
    return sign


def scale(heatmap: np.ndarray, options: Options, *, sign: str | None = None, sigma: float = 0.0,
          limit: float | None = None, floor: float | None = None) -> Scaled:
    """Sign, (blur,) clip and scale one map. ``sign``: as chosen by :func:`choose_sign` (default: chosen
    here); ``sigma``: display blur in pixels; ``limit``/``floor``: a shared scale (grids), else the map's own."""
    sign = sign or choose_sign(heatmap, options)
    kept = prepare(heatmap, sign, sigma)
    low, top = own_range(kept.ravel(), sign, options.clip)
    top = top if limit is None else limit
    low = low if floor is None else floor
    colormap = options.colormap or (SIGNED_COLORMAP if sign == "all" else
                                    NEGATIVE_COLORMAP + "_r" if sign == "negative" else UNSIGNED_COLORMAP)
    if sign == "all":
        vmin, vmax = -top, top
    elif sign == "negative":
        vmin, vmax = -top, -low
    else:
        vmin, vmax = low, top
    span = top - low
    clipped = np.clip(kept, vmin, vmax) if top > 0 else np.zeros_like(kept)
    if top <= 0 or span <= 0:
        norm = np.zeros_like(kept)
    elif sign == "all":
        norm = clipped / top
    elif sign == "negative":
        norm = (-clipped - low) / span
    else:
        norm = (clipped - low) / span
    return Scaled(values=clipped.astype(np.float32), norm=norm.astype(np.float32), vmin=float(vmin),
                  vmax=float(vmax), sign=sign, colormap=colormap)


def own_range(kept: np.ndarray, sign: str, clip: float) -> tuple[float, float]:
    """(floor, threshold) of a map after :func:`prepare`: the threshold is Captum's outlier threshold of
    the magnitudes; the floor is 0, or the minimum of a positive map that sits above 0 (min-max)."""
    kept = np.asarray(kept, dtype=np.float64)
    top = cumulative_threshold(np.abs(kept), clip)
    low = 0.0
    if sign == "positive" and kept.size and float(kept.min()) > 0:
        low = float(kept.min())
        if top <= low:
            low = 0.0
    return low, top
