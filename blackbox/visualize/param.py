"""Image parametrisations: free variables -> images in display space ([0, 1], [n, c, h, w]).

After Lucid/Lucent (``param/spatial.py``, ``param/color.py``):

* ``fft``: the image is the inverse real FFT of a spectrum scaled by 1/frequency (natural images'
  spectrum), divided by Lucid's magic 4, colour-decorrelated with the ImageNet colour-correlation
  square root, then squashed by a sigmoid. Gradient steps in this basis are whitened: low frequencies
  and luminance no longer dominate, so the optimum is a picture rather than high-frequency noise.
* ``pixels``: one variable per pixel and channel, decorrelated and squashed the same way.
* ``rgb``: the pixels themselves, kept inside [0, 1] by clipping after every step (the classic
  regularised variants: L2 decay, blur and clipping act on this image directly).

Each parametrisation maps forward (:meth:`image`), back (:meth:`backward`: the gradient with respect
to the variables, given the gradient with respect to the image) and can be set from a picture
(:meth:`set_image`), which starts an optimisation from a photo and re-projects after a blur.
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import ParameterError

PARAMS = ("fft", "pixels", "rgb")
# Lucid's colour correlation square root (ImageNet), normalised by its largest column norm
_CORRELATION = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR = _CORRELATION / np.max(np.linalg.norm(_CORRELATION, axis=0))
_MAGIC = 4.0  # Lucid: "increasing this seems to reduce saturation"
_SD = 0.01  # Lucid's initial standard deviation of the variables


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


class Parametrisation(abc.ABC):
    """Variables ``self.params`` (float64) and the map to a display-space image [n, c, h, w]."""

    params: np.ndarray

    def __init__(self, n: int, channels: int, height: int, width: int, rng: np.random.Generator,
                 decorrelate: bool = True):
        self.shape = (n, channels, height, width)
        self.decorrelate = decorrelate and channels == 3

    @abc.abstractmethod
    def image(self) -> np.ndarray:
        """The display-space images [n, c, h, w] in [0, 1] the variables stand for."""

    @abc.abstractmethod
    def backward(self, grad_image: np.ndarray) -> np.ndarray:
        """d objective / d variables, from d objective / d image (of the last :meth:`image`)."""

    @abc.abstractmethod
    def set_image(self, image: np.ndarray) -> None:
        """Variables that give ``image`` back (start from a picture; re-project after a blur)."""

    def after_step(self) -> None:
        """Projection after an optimiser step (only ``rgb`` needs one)."""

    # colour: [n, 3, h, w] mixed by the 3 x 3 matrix over the channel axis
    def _colour(self, t: np.ndarray) -> np.ndarray:
        return np.einsum("ij,njhw->nihw", COLOUR, t) if self.decorrelate else t

    def _colour_t(self, g: np.ndarray) -> np.ndarray:
        return np.einsum("ij,nihw->njhw", COLOUR, g) if self.decorrelate else g

    def _colour_inv(self, t: np.ndarray) -> np.ndarray:
        return np.einsum("ij,njhw->nihw", np.linalg.inv(COLOUR), t) if self.decorrelate else t


class PixelParam(Parametrisation):
    """Lucent's ``pixel_image`` with ``decorrelate=True``: sigmoid(colour(params))."""

    def __init__(self, n, channels, height, width, rng, decorrelate=True):
        super().__init__(n, channels, height, width, rng, decorrelate)
        self.params = rng.standard_normal(self.shape) * _SD
        self._out = None

    def image(self) -> np.ndarray:
        self._out = _sigmoid(self._colour(self.params))
        return self._out

    def backward(self, grad_image: np.ndarray) -> np.ndarray:
        s = self._out
        return self._colour_t(grad_image * s * (1 - s))

    def set_image(self, image: np.ndarray) -> None:
        self.params = self._colour_inv(_logit(np.asarray(image, np.float64)))


class FourierParam(Parametrisation):
    """Lucent's ``fft_image`` (decay power 1) + decorrelation + sigmoid. ``params``: the half spectrum's
    real and imaginary parts [n, c, h, w // 2 + 1, 2]; the transform is the orthonormal inverse rfft2."""

    def __init__(self, n, channels, height, width, rng, decorrelate=True):
        super().__init__(n, channels, height, width, rng, decorrelate)
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        self.scale = 1.0 / np.maximum(freqs, 1.0 / max(width, height))
        self.params = rng.standard_normal(self.shape[:2] + freqs.shape + (2,)) * _SD
        # the adjoint of irfft2 counts the columns that stand for two conjugate frequencies twice
        self.count = np.full(freqs.shape[1], 2.0)
        self.count[0] = 1.0
        if width % 2 == 0:
            self.count[-1] = 1.0
        self._out = None

    def _spatial(self) -> np.ndarray:
        spectrum = (self.params[..., 0] + 1j * self.params[..., 1]) * self.scale
        return np.fft.irfft2(spectrum, s=self.shape[2:], norm="ortho") / _MAGIC

    def image(self) -> np.ndarray:
        self._out = _sigmoid(self._colour(self._spatial()))
        return self._out

    def backward(self, grad_image: np.ndarray) -> np.ndarray:
        s = self._out
        g = self._colour_t(grad_image * s * (1 - s)) / _MAGIC
        spectrum = np.fft.rfft2(g, norm="ortho") * self.count * self.scale
        return np.stack([spectrum.real, spectrum.imag], axis=-1)

    def set_image(self, image: np.ndarray) -> None:
        spatial = self._colour_inv(_logit(np.asarray(image, np.float64))) * _MAGIC
        spectrum = np.fft.rfft2(spatial, norm="ortho") / self.scale
        self.params = np.stack([spectrum.real, spectrum.imag], axis=-1)


class RGBParam(Parametrisation):
    """The display-space pixels themselves, clipped to [0, 1] after each step; starts mid-grey with a
    little noise (pytorch-cnn-visualizations starts from uniform noise; grey keeps the colours honest)."""

    def __init__(self, n, channels, height, width, rng, decorrelate=False):
        super().__init__(n, channels, height, width, rng, decorrelate=False)
        self.params = np.clip(0.5 + rng.standard_normal(self.shape) * 0.05, 0, 1)

    def image(self) -> np.ndarray:
        return self.params

    def backward(self, grad_image: np.ndarray) -> np.ndarray:
        return grad_image

    def set_image(self, image: np.ndarray) -> None:
        self.params = np.clip(np.asarray(image, np.float64), 0, 1).copy()

    def after_step(self) -> None:
        np.clip(self.params, 0, 1, out=self.params)


_KINDS = {"fft": FourierParam, "pixels": PixelParam, "rgb": RGBParam}


def make(kind: str, n: int, channels: int, height: int, width: int, seed: int = 0) -> Parametrisation:
    if kind not in _KINDS:
        raise ParameterError(f"unknown param {kind!r}: use one of {', '.join(PARAMS)}")
    return _KINDS[kind](n, channels, height, width, np.random.default_rng(seed))


__all__ = ["COLOUR", "PARAMS", "FourierParam", "Parametrisation", "PixelParam", "RGBParam", "make"]
