"""Overlays: colour scales follow what the model saw, signed maps keep their sign."""

from __future__ import annotations

import numpy as np

from blackbox.render import colorize, normalise, overlay


def test_unsigned_maps_are_min_max_scaled():
    h = np.linspace(0.8, 1.0, 100).reshape(10, 10)
    norm, signed = normalise(h, percentile=100)
    assert not signed and norm.min() == 0 and norm.max() == 1


def test_signed_maps_keep_zero_in_the_middle():
    h = np.zeros((4, 4))
    h[0, 0], h[3, 3] = -2.0, 1.0
    norm, signed = normalise(h, percentile=100)
    assert signed and norm[0, 0] == -1 and norm[3, 3] == 0.5 and norm[1, 1] == 0


def test_unseen_pixels_neither_set_the_scale_nor_get_colour():
    image = np.full((8, 8, 3), 100, np.uint8)
    h = np.full((8, 8), 5.0)
    h[:, :4] = np.linspace(1, 2, 32).reshape(8, 4)
    seen = np.zeros((8, 8), bool)
    seen[:, :4] = True
    out = overlay(image, h, seen=seen, min_size=8)
    assert np.all(out[:, 4:] == 100)  # outside the crop: the picture untouched
    norm, _ = normalise(h, seen=seen, percentile=100)
    assert norm[seen].min() == 0 and norm[seen].max() == 1


def test_spiky_maps_are_clipped_at_a_percentile():
    h = np.ones((20, 20))
    h[0, 0] = 1000.0
    norm, _ = normalise(np.where(np.arange(400).reshape(20, 20) % 2 == 0, h, 0.0))
    assert norm.max() == 1.0 and (norm == 1.0).sum() > 1


def test_colorize_returns_rgb():
    rgb = colorize(np.linspace(0, 1, 16).reshape(4, 4))
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[3, 3, 0] > rgb[3, 3, 2] and rgb[0, 0, 2] > rgb[0, 0, 0]  # jet: high red, low blue
