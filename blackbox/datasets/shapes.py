"""Synthetic "shapes" data set: the ground truth behind the project's own example models.

Why it exists: explanation methods are hard to score on natural images because nobody knows which
pixels *should* matter. Here every image holds exactly one object whose true pixels are known (the
mask), so a saliency map can be scored against it (pointing game, mask overlap). An optional
watermark planted on one class gives a model a known shortcut, so a test can check that an
explanation exposes it.

Only numpy and OpenCV are used: the generator ships with the runtime package and must not pull in
PyTorch. Every image is drawn from its own random stream seeded by ``(seed, index)``, so the result
is identical across runs and platforms and a longer batch starts with the same images as a shorter
one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CLASSES",
    "WATERMARK_SIZE",
    "ShapesBatch",
    "add_watermark",
    "make_shapes",
    "watermark_box",
    "watermark_pattern",
]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""Class names in label order (label ``i`` is ``CLASSES[i]``)."""

WATERMARK_SIZE = 6
"""Side of the square watermark in pixels."""

_WATERMARK_MARGIN = 2  # distance of the watermark from the bottom and right borders
_KEEP_OUT = 3  # minimum gap in pixels between an object and the watermark box
_SUPERSAMPLE = 4  # shapes are rasterised at 4x and area-averaged: anti-aliased edges
_SHIFT = 4  # fixed-point bits for OpenCV drawing, so vertices keep sub-pixel precision
_MIN_DIAMETER = 14.0
_MAX_DIAMETER = 30.0
_MIN_CONTRAST = 90.0  # minimum RGB distance between object colour and the background under it
# Circumradius factor per class, so that a square or triangle looks about as big as a circle of the
# same nominal diameter (at equal circumradius they cover far fewer pixels).
_EXTENT = {"circle": 1.0, "square": 1.12, "triangle": 1.12, "star": 1.05}


@dataclass(frozen=True)
class ShapesBatch:
    """A batch of generated images with their ground truth.

    ``images`` uint8 [n, size, size, 3] RGB; ``labels`` int64 [n] indexing :data:`CLASSES`;
    ``masks`` bool [n, size, size], the object's own pixels; ``watermarked`` bool [n], whether the
    watermark was drawn; ``watermark_box`` (y0, y1, x0, x1), half-open, the same for every image.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    watermarked: np.ndarray
    watermark_box: tuple[int, int, int, int]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def watermark_box(size: int = 64) -> tuple[int, int, int, int]:
    """Half-open ``(y0, y1, x0, x1)`` of the watermark: a fixed bottom-right corner spot."""
    end = size - _WATERMARK_MARGIN
    start = end - WATERMARK_SIZE
    return (start, end, start, end)


def watermark_pattern() -> np.ndarray:
    """The watermark as uint8 [6, 6, 3]: a black/white checkerboard of 2-pixel cells.

    A checkerboard was chosen because nothing in the backgrounds (smooth noise, 1-D stripes,
    gradients, soft blobs) produces a 2-D high-frequency, full-contrast pattern, so a network can
    detect it trivially: that is what makes it a tempting shortcut.
    """
    yy, xx = np.mgrid[0:WATERMARK_SIZE, 0:WATERMARK_SIZE]
    on = ((yy // 2 + xx // 2) % 2 == 0).astype(np.uint8) * 255
    return np.repeat(on[:, :, None], 3, axis=2)


def add_watermark(images: np.ndarray) -> np.ndarray:
    """Return a copy of ``images`` (uint8 [n, H, W, 3] or [H, W, 3]) with the watermark drawn."""
    out = np.array(images, dtype=np.uint8, copy=True)
    if out.ndim not in (3, 4) or out.shape[-1] != 3:
        raise ValueError(f"expected [n, H, W, 3] or [H, W, 3] RGB images, got shape {out.shape}")
    if out.shape[-3] != out.shape[-2]:
        raise ValueError(f"expected square images, got {out.shape[-3]}x{out.shape[-2]}")
    y0, y1, x0, x1 = watermark_box(out.shape[-2])
    out[..., y0:y1, x0:x1, :] = watermark_pattern()
    return out


def make_shapes(
    n: int,
    *,
    seed: int,
    size: int = 64,
    watermark_class: int | None = None,
    watermark_prob: float = 1.0,
    watermark_all: bool = False,
) -> ShapesBatch:
    """Generate ``n`` images, each with one shape on a textured background.

    The shape (class drawn uniformly) gets a random position, diameter (14-30 px at size 64, scaled
    with ``size``), rotation and colour; it always keeps clear of the watermark box so that a
    saliency map on the watermark never overlaps the object. Images of ``watermark_class`` carry the
    watermark with probability ``watermark_prob``; ``watermark_all=True`` puts it on every image
    (to test whether a model relies on it).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if watermark_class is not None and not 0 <= watermark_class < len(CLASSES):
        raise ValueError(f"watermark_class must be in [0, {len(CLASSES)}), got {watermark_class}")
    if not 0.0 <= watermark_prob <= 1.0:
        raise ValueError(f"watermark_prob must be in [0, 1], got {watermark_prob}")

    box = watermark_box(size)
    pattern = watermark_pattern()
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    watermarked = np.zeros(n, bool)
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i])
        label = int(rng.integers(len(CLASSES)))
        image, mask = _draw_one(rng, label, size, box)
        # Always consume the draw so the watermark setting never changes the images themselves.
        coin = rng.random()
        if watermark_all or (label == watermark_class and coin < watermark_prob):
            y0, y1, x0, x1 = box
            image[y0:y1, x0:x1] = pattern
            watermarked[i] = True
        images[i], labels[i], masks[i] = image, label, mask
    return ShapesBatch(images, labels, masks, watermarked, box)


def _draw_one(
    rng: np.random.Generator, label: int, size: int, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Compose one image: background, then the anti-aliased shape, then mild sensor noise."""
    background = _background(rng, size)
    scale = size / 64.0
    diameter = rng.uniform(_MIN_DIAMETER, _MAX_DIAMETER) * scale
    radius = diameter / 2.0 * _EXTENT[CLASSES[label]]
    cy, cx = _place(rng, radius, size, box)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    alpha = _rasterise(label, cx, cy, radius, angle, size)
    mask = alpha >= 0.5

    under = background[mask].mean(axis=0)
    colour = rng.uniform(0.0, 255.0, 3)
    for _ in range(30):
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0.0, 255.0, 3)
    else:  # background under the shape is mid-grey-ish everywhere: push away from it
        colour = np.where(under < 128.0, 255.0, 0.0)

    shaded = colour[None, None, :] * (1.0 + _smooth_noise(rng, size, sigma=4.0)[..., None] * 0.12)
    image = background * (1.0 - alpha[..., None]) + shaded * alpha[..., None]
    image += rng.normal(0.0, 3.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _place(
    rng: np.random.Generator, radius: float, size: int, box: tuple[int, int, int, int]
) -> tuple[float, float]:
    """Centre for a shape of circumradius ``radius``: fully inside, clear of the watermark box."""
    y0, y1, x0, x1 = box
    lo, hi = radius + 1.0, size - 1.0 - radius
    while True:
        cy, cx = rng.uniform(lo, hi, 2)
        # Distance from the centre to the box (treated as the continuous square [y0, y1] x [x0, x1]).
        dy = max(y0 - cy, 0.0, cy - y1)
        dx = max(x0 - cx, 0.0, cx - x1)
        if np.hypot(dy, dx) >= radius + _KEEP_OUT:
            return float(cy), float(cx)


def _vertices(label: int, radius: float, angle: float) -> np.ndarray:
    """Polygon vertices (x, y) around the origin; the circle is a fine polygon."""
    name = CLASSES[label]
    if name == "circle":
        count, radii = 64, np.full(64, radius)
    elif name == "square":
        count, radii = 4, np.full(4, radius)
    elif name == "triangle":
        count, radii = 3, np.full(3, radius)
    elif name == "star":
        count, radii = 10, np.where(np.arange(10) % 2 == 0, radius, radius * 0.42)
    else:  # pragma: no cover - guarded by the label draw
        raise ValueError(f"unknown class {label}")
    theta = angle + 2.0 * np.pi * np.arange(count) / count
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _rasterise(label: int, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Coverage (alpha in [0, 1], float32 [size, size]) of the shape, by 4x supersampling."""
    big = size * _SUPERSAMPLE
    canvas = np.zeros((big, big), np.uint8)
    points = _vertices(label, radius, angle) + np.array([cx, cy])
    # Pixel centres sit at +0.5; scale to the supersampled grid in fixed point.
    fixed = np.rint((points * _SUPERSAMPLE - 0.5) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation."""
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return noise / max(float(noise.std()), 1e-6)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float [size, size, 3] texture: a base colour plus a random mix of four components.

    The mix (smooth noise, stripes, a gradient, soft blobs) makes the background vary from image to
    image, so the object cannot be found by a fixed colour threshold and explanations have clutter
    to ignore. Blobs are blurred so they never look like a crisp circle.
    """
    image = np.empty((size, size, 3), np.float32)
    image[:] = rng.uniform(40.0, 215.0, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    use = rng.random(4) < 0.55
    if not use.any():
        use[rng.integers(4)] = True
    noise_on, stripes_on, gradient_on, blobs_on = (bool(u) for u in use)

    if gradient_on:
        theta = rng.uniform(0.0, 2.0 * np.pi)
        ramp = (np.cos(theta) * (xx - size / 2) + np.sin(theta) * (yy - size / 2)) / (size / 2)
        image += ramp[..., None] * rng.uniform(-60.0, 60.0, 3)
    if stripes_on:
        theta = rng.uniform(0.0, np.pi)
        period = rng.uniform(5.0, 16.0) * size / 64.0
        phase = rng.uniform(0.0, 2.0 * np.pi)
        wave = np.sin(2.0 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period + phase)
        image += wave[..., None] * rng.uniform(-35.0, 35.0, 3)
    if blobs_on:
        layer = np.zeros_like(image)
        for _ in range(int(rng.integers(2, 6))):
            centre = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
            axes = (float(rng.uniform(4, 16) * size / 64.0), float(rng.uniform(4, 16) * size / 64.0))
            tint = tuple(float(v) for v in rng.uniform(-60.0, 60.0, 3))
            cv2.ellipse(layer, (centre, axes, float(rng.uniform(0, 180))), tint, thickness=-1)
        image += cv2.GaussianBlur(layer, (0, 0), sigmaX=rng.uniform(2.5, 5.0) * size / 64.0)
    if noise_on:
        sigma = rng.uniform(0.0, 2.0)
        amplitude = rng.uniform(5.0, 22.0)
        for c in range(3):
            channel = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
            if sigma > 0.3:
                channel = cv2.GaussianBlur(channel, (0, 0), sigmaX=sigma)
                channel /= max(float(channel.std()), 1e-6)
            image[..., c] += channel * amplitude
    return np.clip(image, 0.0, 255.0)
