"""From a picture to one model input, and from model-resolution maps back to the picture.

A :class:`Preprocess` is a small frozen recipe (resize/crop, channels, scale, mean/std, layout). Calling
it returns a :class:`Prepared`: the float32 tensor for ONE model input, the decoded RGB picture (for
overlays) and a :class:`Geometry` that maps heat maps between model input and picture, so explanations
are always drawn where the model actually looked.

Conventions:

- Order of operations (torchvision/Caffe order): resize (uint8, like PIL) -> centre crop -> channel
  conversion (gray by luminance, or gray replicated to 3) -> channel order -> ``x * scale`` ->
  ``(x - mean) / std`` -> layout. ``mean``/``std`` are given in ``channel_order``.
- ``interpolation="auto"``: INTER_AREA when the picture shrinks along both axes (anti-aliased, close to
  PIL's bilinear-with-antialias used by torchvision), INTER_LINEAR when it is enlarged along any axis.
- ``resize="crop"`` resizes the shorter side to ``shorter`` (long side ``int(shorter * long / short)``,
  as torchvision) then centre-crops ``size`` (offsets ``round((R - S) / 2)``, as torchvision). When the
  model is not square and the resized picture would not cover it, the scale is raised until it does
  (torchvision would pad with zeros instead).
- Preset "none" means scale 1/255 and nothing else (pixels in 0..1), which is also the default
  ``Preprocess()``; "raw" keeps 0..255.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import ImageError, ParameterError
from .image_io import as_rgb_array, read_image

__all__ = ["PRESETS", "Preprocess", "Prepared", "Geometry"]

PRESETS: dict[str, dict[str, Any]] = {
    # torchvision ImageNet recipe: Resize(256) + CenterCrop(224) (scaled to the model size), ToTensor, Normalize
    "imagenet": dict(
        resize="crop", channel_order="RGB", channels=3, scale=1 / 255,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="linear",
    ),
    # Caffe / onnx-caffe2 models: BGR, 0..255 minus the BGR channel means, shorter side 256 + centre crop
    "caffe": dict(
        resize="crop", interpolation="linear", channel_order="BGR", channels=3, scale=1.0, mean=(104.0, 117.0, 123.0), std=(1.0,),
    ),
    # MNIST as many exported models take it: gray 0..255
    "mnist": dict(resize="exact", channels=1, scale=1.0, mean=(0.0,), std=(1.0,)),
    # MNIST with torchvision Normalize((0.1307,), (0.3081,))
    "mnist-normalized": dict(resize="exact", channels=1, scale=1 / 255, mean=(0.1307,), std=(0.3081,)),
    # CIFAR tutorials: Normalize((0.5,0.5,0.5), (0.5,0.5,0.5))
    "cifar": dict(
        resize="exact", channel_order="RGB", channels=3, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    ),
    # pixels in 0..1, no normalisation (same as Preprocess())
    "none": dict(resize="exact", scale=1 / 255, mean=(0.0,), std=(1.0,)),
    # pixels in 0..255, no normalisation
    "raw": dict(resize="exact", scale=1.0, mean=(0.0,), std=(1.0,)),
}

_RESIZE = ("exact", "crop")
_ORDERS = ("RGB", "BGR")
_LAYOUTS = ("NCHW", "NHWC")
_INTERP = {
    "auto": None,
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def _preset_key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


# ------------------------------------------------------------------------------------------ geometry


def _axis_taps(n_out: int, n_src: int, start: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D resampling weights: output pixel k covers source interval [start + k*step, start + (k+1)*step].

    step > 1 (shrinking): exact box/area average over the covered source pixels, divided by the full
    footprint, so pixels partly outside the source get the covered fraction. step <= 1 (enlarging):
    linear interpolation at the pixel centre with edge clamping; centres outside [0, n_src] get 0.
    Returns (indices, weights), each n_out x T, padded with weight 0.
    """
    k = np.arange(n_out, dtype=np.float64)
    a = start + k * step
    b = a + step
    if step > 1.0:
        taps = int(math.ceil(step)) + 1
        first = np.floor(a).astype(np.int64)
        idx = first[:, None] + np.arange(taps)[None, :]
        overlap = np.minimum(b[:, None], idx + 1.0) - np.maximum(a[:, None], idx.astype(np.float64))
        w = np.clip(overlap, 0.0, None) / step
        valid = (idx >= 0) & (idx < n_src)
        w = np.where(valid, w, 0.0)
        return np.clip(idx, 0, n_src - 1), w
    centre = (a + b) / 2.0
    inside = (centre >= 0.0) & (centre <= n_src)
    s = np.clip(centre - 0.5, 0.0, n_src - 1.0)
    i0 = np.floor(s).astype(np.int64)
    f = s - i0
    i1 = np.minimum(i0 + 1, n_src - 1)
    idx = np.stack([i0, i1], axis=1)
    w = np.stack([1.0 - f, f], axis=1) * inside[:, None]
    return idx, w


def _resample_axis(m: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Apply taps along one axis, one tap at a time so memory stays at one output-sized array."""
    out = None
    for t in range(idx.shape[1]):
        wt = w[:, t]
        if not np.any(wt):
            continue
        shape = [1] * m.ndim
        shape[axis] = -1
        term = np.take(m, idx[:, t], axis=axis)
        term *= wt.reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    if out is None:
        shape = list(m.shape)
        shape[axis] = idx.shape[0]
        out = np.zeros(shape, dtype=m.dtype)
    return out


@dataclass(frozen=True)
class Geometry:
    """How the original picture (H0 x W0) became the model input (H x W): resize to ``resized_size``,
    then crop ``model_size`` at ``crop_offset`` (top, left). Pixel edges are the coordinates."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]
    model_size: tuple[int, int]

    def _check(self, m: np.ndarray, expect: tuple[int, int], what: str) -> np.ndarray:
        m = np.asarray(m)
        if m.ndim < 2 or tuple(m.shape[:2]) != tuple(expect):
            raise ParameterError(
                f"{what} map has shape {m.shape}, expected {expect[0]} x {expect[1]} (optionally x channels)"
            )
        return m

    def to_image(self, map_hw: np.ndarray) -> np.ndarray:
        """Take a map at model-input resolution back onto the original picture (H0 x W0 [x C]).

        Undoes the crop (picture regions the model never saw get 0) and the resize (linear when
        enlarging, area average when shrinking). A constant map stays exactly constant inside the crop.
        """
        m = self._check(map_hw, self.model_size, "model-resolution")
        out_dtype = np.result_type(m.dtype, np.float32)
        (h0, w0), (rh, rw), (top, left), (h, w) = (
            self.original_size, self.resized_size, self.crop_offset, self.model_size,
        )
        iy, wy = _axis_taps(h0, h, -float(top), rh / h0)
        ix, wx = _axis_taps(w0, w, -float(left), rw / w0)
        # columns first on the small map (h x W0, in float64), then the large output row block by row
        # block, written straight into one array of the result's dtype: the original picture's size costs
        # one copy, never float64 temporaries of it
        narrow = _resample_axis(m.astype(np.float64, copy=False), ix, wx, 1)
        out = np.empty((h0,) + narrow.shape[1:], dtype=out_dtype)
        rows = max(1, (1 << 20) // max(1, narrow[0].size))
        for r in range(0, h0, rows):
            out[r : r + rows] = _resample_axis(narrow, iy[r : r + rows], wy[r : r + rows], 0)
        return out

    def seen(self) -> np.ndarray:
        """Bool H0 x W0: the picture pixels inside the model's crop (what ``to_image`` of a map of ones
        puts above 0.5), computed from the geometry without a float map of the picture's size."""
        (h0, w0), (rh, rw), (top, left), (h, w) = (
            self.original_size, self.resized_size, self.crop_offset, self.model_size,
        )
        rows = self.to_image_axis(h0, h, top, rh) > 0.5
        cols = self.to_image_axis(w0, w, left, rw) > 0.5
        return rows[:, None] & cols[None, :]

    @staticmethod
    def to_image_axis(n0: int, n: int, offset: int, resized: int) -> np.ndarray:
        """One axis of ``to_image`` applied to a map of ones: the fraction of each picture row (column)
        the model saw."""
        idx, weights = _axis_taps(n0, n, -float(offset), resized / n0)
        return weights.sum(axis=1)

    def to_model(self, map_h0w0: np.ndarray) -> np.ndarray:
        """Map a picture-resolution map (mask, heat map) onto the model input (H x W [x C]): the same
        resize and crop the picture went through (area when shrinking, linear when enlarging)."""
        m = self._check(map_h0w0, self.original_size, "picture-resolution")
        out_dtype = np.result_type(m.dtype, np.float32)
        m = m.astype(np.float64, copy=False)
        (h0, w0), (rh, rw), (top, left), (h, w) = (
            self.original_size, self.resized_size, self.crop_offset, self.model_size,
        )
        sy, sx = h0 / rh, w0 / rw
        iy, wy = _axis_taps(h, h0, top * sy, sy)
        ix, wx = _axis_taps(w, w0, left * sx, sx)
        out = _resample_axis(_resample_axis(m, iy, wy, 0), ix, wx, 1)
        return out.astype(out_dtype, copy=False)

    def to_model_box(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Map a picture box (y0, x0, y1, x1), pixel-edge coordinates, into model-input coordinates,
        clipped to the model input (an empty box, y0 == y1 or x0 == x1, when it lies outside the crop)."""
        y0, x0, y1, x1 = (float(v) for v in box)
        (h0, w0), (rh, rw), (top, left), (h, w) = (
            self.original_size, self.resized_size, self.crop_offset, self.model_size,
        )
        fy, fx = rh / h0, rw / w0

        def clip(v: float, hi: int) -> float:
            return min(max(v, 0.0), float(hi))

        return (
            clip(y0 * fy - top, h), clip(x0 * fx - left, w), clip(y1 * fy - top, h), clip(x1 * fx - left, w),
        )

    def to_image_box(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Map a model-input box (y0, x0, y1, x1) back to picture coordinates."""
        y0, x0, y1, x1 = (float(v) for v in box)
        (h0, w0), (rh, rw), (top, left), _ = (
            self.original_size, self.resized_size, self.crop_offset, self.model_size,
        )
        fy, fx = h0 / rh, w0 / rw
        return ((y0 + top) * fy, (x0 + left) * fx, (y1 + top) * fy, (x1 + left) * fx)

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-friendly form, for reports."""
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass
class Prepared:
    """One model input ``x`` (float32, C x H x W or H x W x C), the decoded picture ``image``
    (H0 x W0 x 3 uint8 RGB, gray replicated, for overlays) and the ``geometry`` between them."""

    x: np.ndarray
    image: np.ndarray
    geometry: Geometry
    source: str | None = None


# ---------------------------------------------------------------------------------------- preprocess


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = (value,)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ParameterError(f"{name} must be one or more finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes one model input. ``None`` fields are filled from the model by
    :meth:`resolve`; build one from a preset with :meth:`preset` or from JSON with :meth:`from_dict`."""

    size: tuple[int, int] | None = None
    resize: str = "exact"
    shorter: int | None = None
    channel_order: str = "RGB"
    channels: int | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None
    interpolation: str = "auto"

    def __post_init__(self) -> None:
        """Normalise lists/ints (JSON) to the canonical types and refuse impossible values early."""
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        size = self.size
        if size is not None:
            if isinstance(size, (int, np.integer)):
                size = (int(size), int(size))
            try:
                size = tuple(int(v) for v in size)
            except (TypeError, ValueError):
                raise ParameterError(f"size must be (height, width), got {self.size!r}") from None
            if len(size) != 2 or min(size) < 1:
                raise ParameterError(f"size must be two positive integers (height, width), got {self.size!r}")
            set_("size", size)
        resize = str(self.resize).lower()
        if resize not in _RESIZE:
            raise ParameterError(f"resize must be one of {', '.join(_RESIZE)}, got {self.resize!r}")
        set_("resize", resize)
        if self.shorter is not None:
            if int(self.shorter) < 1:
                raise ParameterError(f"shorter must be a positive integer, got {self.shorter!r}")
            set_("shorter", int(self.shorter))
        order = str(self.channel_order).upper()
        if order not in _ORDERS:
            raise ParameterError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        set_("channel_order", order)
        if self.channels is not None:
            if int(self.channels) not in (1, 3):
                raise ParameterError(
                    f"channels must be 1 (gray) or 3 (colour), got {self.channels!r}"
                )
            set_("channels", int(self.channels))
        scale = float(self.scale)
        if not math.isfinite(scale) or scale == 0.0:
            raise ParameterError(f"scale must be a finite non-zero number, got {self.scale!r}")
        set_("scale", scale)
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if any(s == 0.0 for s in std):
            raise ParameterError(f"std must not contain 0, got {self.std!r}")
        set_("mean", mean)
        set_("std", std)
        if self.layout is not None:
            layout = str(self.layout).upper()
            if layout not in _LAYOUTS:
                raise ParameterError(f"layout must be NCHW or NHWC, got {self.layout!r}")
            set_("layout", layout)
        interp = str(self.interpolation).lower()
        if interp not in _INTERP:
            raise ParameterError(
                f"interpolation must be one of {', '.join(_INTERP)}, got {self.interpolation!r}"
            )
        set_("interpolation", interp)
        n = self.channels
        for name, values in (("mean", mean), ("std", std)):
            if n is not None and len(values) not in (1, n):
                raise ParameterError(
                    f"{name} has {len(values)} values but the input has {n} channel(s); give 1 or {n}"
                )
            if len(values) not in (1, 3):
                raise ParameterError(f"{name} must have 1 or 3 values, got {len(values)}")

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Preprocess":
        """A named recipe from :data:`PRESETS`, with any field overridden by keyword."""
        key = _preset_key(name)
        if key not in PRESETS:
            raise ParameterError(f"unknown preprocess preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[key], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        """Build from a dict of field names (lists accepted), e.g. JSON stored in model metadata.
        A ``"preset"`` key starts from that preset and the other keys override it."""
        if isinstance(d, Preprocess):
            return d
        if not isinstance(d, dict):
            raise ParameterError(f"preprocess must be a dict of settings, got {type(d).__name__}")
        d = dict(d)
        base: dict[str, Any] = {}
        if "preset" in d:
            key = _preset_key(d.pop("preset"))
            if key not in PRESETS:
                raise ParameterError(f"unknown preprocess preset {key!r}; known presets: {', '.join(PRESETS)}")
            base = dict(PRESETS[key])
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ParameterError(
                f"unknown preprocess setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}, preset"
            )
        try:
            return cls(**{**base, **d})
        except TypeError as e:
            raise ParameterError(f"bad preprocess settings: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (tuples as lists); ``from_dict(to_dict())`` gives the same recipe."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def resolve(
        self, *, height: int | None, width: int | None, channels: int | None, layout: str | None
    ) -> "Preprocess":
        """Fill the ``None`` fields from the model input and check the recipe fits it.

        Explicit values win for ``layout`` (the model's layout is only a guess from its shape); an
        explicit ``size`` or ``channels`` that disagrees with a fixed model dimension is an error.
        ``height``/``width`` may be None (dynamic): then ``size`` must be given.
        """
        dyn = lambda v: v is None or (isinstance(v, (int, np.integer)) and v <= 0) or isinstance(v, str)  # noqa: E731
        size = self.size
        if size is None:
            if dyn(height) or dyn(width):
                raise ParameterError(
                    "the model input has a dynamic height/width; give the preprocess a size=(height, width)"
                )
            size = (int(height), int(width))
        else:
            for got, want, name in ((size[0], height, "height"), (size[1], width, "width")):
                if not dyn(want) and int(want) != got:
                    raise ParameterError(
                        f"preprocess size {size[0]}x{size[1]} does not match the model input "
                        f"{height}x{width}; drop size or set it to the model's"
                    )
        n = self.channels
        model_n = None if dyn(channels) else int(channels)
        if model_n is not None and model_n not in (1, 3):
            raise ParameterError(
                f"the model takes {model_n} input channels; blackbox feeds 1 (gray) or 3 (RGB/BGR)"
            )
        if n is None:
            n = model_n if model_n is not None else 3
        elif model_n is not None and model_n != n:
            raise ParameterError(
                f"the preprocess makes {n} channel(s) but the model takes {model_n}; "
                f"use a {'gray (e.g. mnist)' if model_n == 1 else 'colour (e.g. imagenet)'} preset or set channels={model_n}"
            )
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, n):
                raise ParameterError(
                    f"preprocess {name} has {len(values)} values but the model takes {n} channel(s); "
                    f"give 1 or {n} values (or pick a preset for this kind of model)"
                )
        lay = self.layout
        if lay is None:
            lay = str(layout).upper() if layout is not None else "NCHW"
            if lay not in _LAYOUTS:
                raise ParameterError(f"model layout must be NCHW or NHWC, got {layout!r}")
        shorter = self.shorter
        if self.resize == "crop" and shorter is None:
            shorter = _default_shorter(size)
        return replace(self, size=size, channels=n, layout=lay, shorter=shorter)

    # ----------------------------------------------------------------------------------- apply

    def geometry(self, height: int, width: int) -> Geometry:
        """Where a picture of ``height`` x ``width`` lands in the model input."""
        if self.size is None:
            raise ParameterError("preprocess has no size; call resolve() with the model or pass size=(H, W)")
        h, w = self.size
        if self.resize == "exact":
            return Geometry((height, width), (h, w), (0, 0), (h, w))
        target = self.shorter if self.shorter is not None else _default_shorter(self.size)
        short, long_ = min(height, width), max(height, width)
        new_short, new_long = target, int(target * long_ / short)
        rh, rw = (new_short, new_long) if height <= width else (new_long, new_short)
        if rh < h or rw < w:  # would not cover a non-square model input: scale up until it does
            s = max(h / height, w / width)
            rh, rw = max(h, int(math.ceil(height * s - 1e-9))), max(w, int(math.ceil(width * s - 1e-9)))
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        return Geometry((height, width), (rh, rw), (top, left), (h, w))

    def __call__(self, image: np.ndarray | str | os.PathLike) -> Prepared:
        """Decode (if a path), resize/crop, convert and normalise into one float32 model input."""
        source = None
        if isinstance(image, (str, os.PathLike)):
            source = os.fspath(image)
            pixels = read_image(image)
        elif isinstance(image, np.ndarray):
            pixels = as_rgb_array(image)
        else:
            raise ImageError(
                f"expected an image path or an H x W x 3 uint8 array, got {type(image).__name__}"
            )
        h0, w0 = pixels.shape[:2]
        geo = self.geometry(h0, w0)
        display = pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)

        (rh, rw), (top, left), (h, w) = geo.resized_size, geo.crop_offset, geo.model_size
        img = pixels
        if (rh, rw) != (h0, w0):
            flag = _INTERP[self.interpolation]
            if flag is None:
                flag = cv2.INTER_AREA if (rh <= h0 and rw <= w0) else cv2.INTER_LINEAR
            img = cv2.resize(img, (rw, rh), interpolation=flag)
            if img.ndim == 2:
                img = img[:, :, None]
        img = img[top : top + h, left : left + w]

        n = self.channels if self.channels is not None else 3
        if n == 1 and img.shape[2] == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[:, :, None]
        elif n == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if self.channel_order == "BGR" and n == 3:
            img = img[:, :, ::-1]

        x = img.astype(np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if len(mean) not in (1, n) or len(std) not in (1, n):
            raise ParameterError(
                f"preprocess mean/std have {len(mean)}/{len(std)} values but the input has {n} channel(s)"
            )
        x = (x - mean) / std
        if (self.layout or "NCHW") == "NCHW":
            x = x.transpose(2, 0, 1)
        return Prepared(x=np.ascontiguousarray(x, dtype=np.float32), image=display, geometry=geo, source=source)

    def display(self, x: np.ndarray) -> np.ndarray:
        """Show a model-space tensor (one input, optionally with a batch axis of 1) as H x W x 3 uint8
        RGB: undo layout, mean/std, scale and channel order, then clip to 0..255."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        layout = self.layout or "NCHW"
        if a.ndim == 2:
            a = a[:, :, None]
        elif a.ndim == 3:
            if layout == "NCHW":
                a = a.transpose(1, 2, 0)
        else:
            raise ParameterError(f"cannot display a tensor of shape {np.shape(x)}; expected one model input")
        c = a.shape[2]
        if c not in (1, 3):
            raise ParameterError(f"cannot display a tensor with {c} channels (layout {layout}); expected 1 or 3")
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        a = (a * std + mean) / self.scale
        if c == 3 and self.channel_order == "BGR":
            a = a[:, :, ::-1]
        if c == 1:
            a = np.repeat(a, 3, axis=2)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _default_shorter(size: tuple[int, int]) -> int:
    """ImageNet's 256/224 ratio, scaled to the model input."""
    return int(round(min(size) * 256 / 224))
