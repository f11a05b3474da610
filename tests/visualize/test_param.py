"""Parametrisations, transforms and display space: each map's backward is the exact adjoint of its
forward (checked by directional finite differences and inner products), and the inverses invert."""

from __future__ import annotations

import numpy as np
import pytest

import blackbox
from blackbox.errors import ParameterError
from blackbox.visualize import param as P
from blackbox.visualize import regularizers as R
from blackbox.visualize.space import DisplaySpace
from blackbox.visualize.transforms import NONE, STANDARD, resolve, sample
from detectors import detector_model


@pytest.mark.parametrize("kind", P.PARAMS)
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (6, 5)])
def test_parametrisation_backward_is_the_derivative_of_forward(kind, size):
    rng = np.random.default_rng(0)
    p = P.make(kind, 2, 3, *size, seed=1)
    if kind != "rgb":
        p.params = p.params * 100  # away from the linear regime of the sigmoid
    base = p.params.copy()
    g = rng.normal(size=p.image().shape)
    grad = p.backward(g)
    d = rng.normal(size=base.shape)
    eps = 1e-6
    p.params = base + eps * d
    up = (p.image() * g).sum()
    p.params = base - eps * d
    down = (p.image() * g).sum()
    assert (up - down) / (2 * eps) == pytest.approx(float((grad * d).sum()), rel=1e-6)


@pytest.mark.parametrize("kind", P.PARAMS)
def test_set_image_inverts_image(kind):
    picture = np.random.default_rng(2).uniform(0.05, 0.95, (1, 3, 10, 12))
    p = P.make(kind, 1, 3, 10, 12)
    p.set_image(picture)
    np.testing.assert_allclose(p.image(), picture, atol=1e-9)


def test_fourier_parametrisation_whitens_the_spectrum():
    """A unit step on every variable moves low frequencies more: the 1/f scale of Lucid's fft_image."""
    p = P.make("fft", 1, 3, 32, 32)
    assert p.scale[0, 0] == pytest.approx(32.0) and p.scale[0, 1] == pytest.approx(32.0)
    assert p.scale[16, 16] == pytest.approx(1 / np.sqrt(0.5))
    np.testing.assert_allclose(np.linalg.norm(P.COLOUR, axis=0).max(), 1.0)


def test_one_channel_models_are_not_colour_decorrelated():
    p = P.make("fft", 1, 1, 8, 8)
    assert not p.decorrelate and p.image().shape == (1, 1, 8, 8)


def test_unknown_param_is_a_one_line_error():
    with pytest.raises(ParameterError, match="unknown param 'wavelet'"):
        P.make("wavelet", 1, 3, 8, 8)


def test_warp_backward_is_the_adjoint_and_identity_is_exact():
    rng = np.random.default_rng(3)
    image = rng.uniform(size=(3, 20, 24))
    assert np.abs(sample(NONE, (20, 24), (20, 24), rng).forward(image) - image).max() == 0
    warp = sample(STANDARD, (20, 24), (40, 30), rng)
    out = warp.forward(image)
    g = rng.normal(size=out.shape)
    constant = (0.5 * warp.fill.reshape(40, 30)[None] * g).sum()
    assert (out * g).sum() - constant == pytest.approx(float((image * warp.backward(g)).sum()), rel=1e-10)
    assert out.min() >= 0 and out.max() <= 1  # a convex combination of pixels and grey


def test_standard_transforms_are_lucents():
    assert STANDARD.pad == 12 and STANDARD.jitter == 8
    assert min(STANDARD.scales) == pytest.approx(0.9) and max(STANDARD.scales) == pytest.approx(1.1)
    assert min(STANDARD.angles) == -10 and max(STANDARD.angles) == 10 and STANDARD.angles.count(0) == 6
    assert resolve({"jitter": 4, "rotate": 5}).jitter == 4
    with pytest.raises(ParameterError, match="unknown transform setting 'shear'"):
        resolve({"shear": 1})
    with pytest.raises(ParameterError, match="unknown transforms"):
        resolve("lucent")


def test_display_space_round_trips_and_its_backward_is_the_chain_rule():
    model = blackbox.load(detector_model(), device="cpu",
                          preprocess={"channel_order": "BGR", "scale": 1.0, "mean": [104, 117, 123]})
    space = DisplaySpace(model)
    image = np.random.default_rng(4).uniform(size=(2, 3, 32, 32))
    x = space.to_model(image)
    np.testing.assert_allclose(x[:, 0], image[:, 2] * 255 - 104, rtol=1e-5)  # BGR: model channel 0 is blue
    np.testing.assert_allclose(space.to_display(x), image, atol=1e-5)
    g = np.random.default_rng(5).normal(size=x.shape)
    d = np.random.default_rng(6).normal(size=image.shape)
    eps = 1e-3
    numeric = ((space.to_model(image + eps * d).astype(np.float64) - space.to_model(image - eps * d)) * g).sum() / (2 * eps)
    assert numeric == pytest.approx(float((space.backward(g) * d).sum()), rel=1e-3)


@pytest.mark.parametrize("name", ["tv", "alpha", "l2"])
def test_priors_gradients_match_finite_differences(name):
    rng = np.random.default_rng(7)
    image = rng.uniform(size=(2, 3, 9, 11))
    fn = R.PRIORS[name]
    value, grad = fn(image)
    d = rng.normal(size=image.shape)
    eps = 1e-6
    numeric = (fn(image + eps * d)[0].sum() - fn(image - eps * d)[0].sum()) / (2 * eps)
    assert numeric == pytest.approx(float((grad * d).sum()), rel=1e-5)
    assert value.shape == (2,)


def test_regularizer_settings_are_checked():
    assert R.resolve("classic")["blur_every"] == 4
    with pytest.raises(ParameterError, match="unknown regularizer 'l1'"):
        R.resolve({"l1": 1.0})
