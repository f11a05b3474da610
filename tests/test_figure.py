"""Figures: panels, titles, a colour bar in the map's own units, the crop outline, grids with one scale per
method, and sign / clip / mode checked numerically against Captum's ``visualize_image_attr``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from captum.attr._utils import visualization as captum_vis
from matplotlib.patches import Rectangle

import blackbox
from blackbox.errors import ParameterError
from blackbox.explanation import Explanation
from blackbox.render import figure
from blackbox.render.display import check_options, cumulative_threshold, scale
from conftest import IMAGENET_LABELS, MODELS, real

STAR = MODELS / "samples" / "star.png"
CAPTUM_SIGN = {"positive": "positive", "negative": "negative", "absolute": "absolute_value", "all": "all"}


def _explanation(heatmap: np.ndarray, image: np.ndarray, *, method: str = "occlusion", target: int = 1,
                 label: str = "dog", seen: np.ndarray | None = None, source: str = "array") -> Explanation:
    """An Explanation around a given map (the figure code only reads these fields)."""
    return Explanation(method=method, target=target, label=label, target_score=2.5, score="logit",
                       attributions=heatmap[None], heatmap=heatmap.astype(np.float32),
                       model_heatmap=heatmap.astype(np.float32), image=image, params={}, n_evals=1, seconds=0.0,
                       source=source, seen=seen)


def _signed_map(seed: int = 0, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_t(2, size=(size, size)) * 0.3  # heavy tails: clipping matters


def _picture(seed: int = 1, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _panel(fig, title: str):
    """The axes whose title starts with ``title``."""
    return next(ax for ax in fig.axes if ax.get_title().startswith(title))


@pytest.fixture(scope="module")
def star_exp(shapes_model):
    return blackbox.explain(shapes_model, STAR, "occlusion")


def test_one_explanation_is_original_map_and_overlay_with_a_titled_real_unit_colour_bar(star_exp):
    fig = star_exp.figure()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3  # original, map, overlay (colour bars are axes of their own)
    assert [ax.get_title() for ax in panels] == ["original", "attribution map", "overlay (alpha 0.5)"]
    title = fig._suptitle.get_text()
    assert "occlusion" in title and "star (3)" in title and f"logit {star_exp.target_score:.4g}" in title
    # the 64 px star is shown whole (no crop, no resize): the map panel is the heatmap clipped at Captum's
    # 2 % outlier threshold of |values|, and the colour bar spans exactly that range, in logit units
    threshold = cumulative_threshold(np.abs(star_exp.heatmap), 2.0)
    heat = panels[1].images[0]
    assert heat.get_clim() == pytest.approx((-threshold, threshold))
    np.testing.assert_allclose(heat.get_array(), np.clip(star_exp.heatmap, -threshold, threshold), rtol=1e-6)
    assert heat.colorbar is not None and heat.colorbar.vmax == pytest.approx(threshold)
    assert "logit" in heat.colorbar.ax.get_xlabel()
    assert threshold == pytest.approx(captum_vis._cumulative_sum_threshold(np.abs(star_exp.heatmap), 98.0))


def test_heat_mode_drops_the_overlay_panel(star_exp):
    fig = star_exp.figure(mode="heat")
    assert len([ax for ax in fig.axes if ax.images]) == 2


def test_a_centre_cropped_photo_shows_the_crop_outlined_and_the_outside_dimmed(tmp_path):
    model = blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet",
                          labels=IMAGENET_LABELS, device="cpu")
    exp = blackbox.explain(model, real("images", "tabby_cat.jpg"), "grad_cam")
    assert exp.seen is not None and not exp.seen.all()  # imagenet: shorter side 256, centre crop 224
    fig = exp.figure()
    original = fig.axes[0]
    boxes = [p for p in original.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 1 and "crop" in boxes[0].get_label()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and "centre crop" in legends[0].get_texts()[0].get_text()
    shown = np.asarray(original.images[0].get_array()).astype(int)
    x, y, w, h = (round(v) for v in (*boxes[0].get_xy(), boxes[0].get_width(), boxes[0].get_height()))
    photo = cv2.resize(exp.image, shown.shape[1::-1], interpolation=cv2.INTER_AREA).astype(int)
    inner = (slice(y + 1, y + h - 1), slice(x + 1, x + w - 1))
    np.testing.assert_array_equal(shown[inner], photo[inner])  # the crop itself untouched
    left, right = (slice(None), slice(0, max(1, x - 1))), (slice(None), slice(x + w + 1, None))
    for side in (left, right):  # outside: dimmed
        assert shown[side].mean() < 0.6 * photo[side].mean()
    # the map and overlay panels show what the model saw: the crop's aspect (square)
    heat = _panel(fig, "attribution map").images[0]
    assert abs(heat.get_array().shape[0] - heat.get_array().shape[1]) <= 2
    assert "tabby (281)" in fig._suptitle.get_text()
    png = exp.save_figure(tmp_path / "tabby.png")
    assert cv2.imread(str(png)) is not None and [p.name for p in tmp_path.iterdir()] == ["tabby.png"]


@pytest.mark.parametrize("sign", sorted(CAPTUM_SIGN))
@pytest.mark.parametrize("clip", [0.0, 2.0, 10.0])
def test_sign_and_clip_match_captums_normalisation(sign, clip):
    attr = _signed_map()
    ours = scale(attr, check_options(sign=sign, clip=clip, mode="heat"))
    want = captum_vis._normalize_attr(attr, CAPTUM_SIGN[sign], outlier_perc=clip)
    np.testing.assert_allclose(ours.norm, want, atol=1e-6)
    kept = {"positive": np.maximum(attr, 0), "negative": np.minimum(attr, 0), "absolute": attr, "all": attr}[sign]
    threshold = captum_vis._cumulative_sum_threshold(np.abs(kept), 100 - clip)
    assert max(abs(ours.vmin), abs(ours.vmax)) == pytest.approx(threshold)  # real units: the threshold itself


@pytest.mark.parametrize("mode,captum_mode", [("masked", "masked_image"), ("alpha", "alpha_scaling")])
@pytest.mark.parametrize("sign", ["positive", "absolute", "negative"])
def test_masked_and_alpha_modes_draw_captums_pixels(mode, captum_mode, sign):
    attr, picture = _signed_map(), _picture()
    fig = figure(_explanation(attr, picture), mode=mode, sign=sign)
    drawn = _panel(fig, ("masked", "alpha")).images[0].get_array()
    _, ax = captum_vis.visualize_image_attr(attr, picture, method=captum_mode, sign=CAPTUM_SIGN[sign],
                                            outlier_perc=2, use_pyplot=False)
    np.testing.assert_array_equal(np.asarray(drawn), np.asarray(ax.images[0].get_array()))


@pytest.mark.parametrize("sign", ["all", "positive", "absolute"])
def test_blend_mode_is_captums_blended_heat_map_in_real_units(sign):
    attr, picture = _signed_map(), _picture()
    fig = figure(_explanation(attr, picture), mode="blend", sign=sign, alpha=0.4)
    ours = _panel(fig, "overlay").images
    _, ax = captum_vis.visualize_image_attr(attr, picture, method="blended_heat_map", sign=CAPTUM_SIGN[sign],
                                            outlier_perc=2, alpha_overlay=0.4, use_pyplot=False)
    theirs = ax.images
    np.testing.assert_allclose(ours[0].get_array(), theirs[0].get_array())  # the gray picture
    (lo, hi), (clo, chi) = ours[1].get_clim(), theirs[1].get_clim()
    np.testing.assert_allclose((np.asarray(ours[1].get_array()) - lo) / (hi - lo),
                               (np.asarray(theirs[1].get_array()) - clo) / (chi - clo), atol=1e-6)
    assert ours[1].get_alpha() == theirs[1].get_alpha() == 0.4


def test_default_colour_maps_one_per_kind_of_map():
    picture = _picture()
    signed = figure(_explanation(_signed_map(), picture)).axes[1].images[0]
    positive = np.maximum(_signed_map(), 0)
    unsigned = figure(_explanation(positive, picture)).axes[1].images[0]
    assert signed.get_cmap().name == "RdBu_r" and signed.get_clim()[0] == -signed.get_clim()[1]
    assert unsigned.get_cmap().name == "inferno" and unsigned.get_clim()[0] == 0  # Captum's scale from 0
    # a non-negative map far above 0 (RISE-like) is shown min-max: its colour scale starts at its minimum
    lifted = figure(_explanation(10.0 + positive, picture)).axes[1].images[0]
    assert lifted.get_clim()[0] == pytest.approx(10.0)
    custom = figure(_explanation(_signed_map(), picture), colormap="coolwarm").axes[1].images[0]
    assert custom.get_cmap().name == "coolwarm"


def test_pixel_gradient_maps_are_shown_as_blurred_magnitudes():
    """Per-pixel maps flip sign from pixel to pixel: the figure shows |value| blurred (and says so)."""
    attr = _signed_map(size=224)
    fig = figure(_explanation(attr, _picture(size=224), method="integrated_gradients"))
    heat = fig.axes[1].images[0]
    label = heat.colorbar.ax.get_xlabel()
    assert "sign absolute" in label and "blurred" in label
    shown = np.asarray(heat.get_array())
    assert shown.min() >= 0 and np.abs(np.diff(shown, axis=1)).mean() < 0.5 * np.abs(np.diff(np.abs(attr), axis=1)).mean()


def test_a_grid_shares_one_colour_scale_per_method():
    picture = _picture()
    strong, weak = _signed_map(0), 0.1 * _signed_map(1)
    exps = [_explanation(strong, picture, target=1, label="dog"), _explanation(weak, picture, target=2, label="cat"),
            _explanation(np.maximum(weak, 0), picture, method="grad_cam", target=2, label="cat")]
    exps[1].image = exps[2].image = exps[0].image  # one picture: one row
    fig = figure(exps)
    cells = {ax.get_title(): ax.images[-1] for ax in fig.axes if ax.images and "original" not in ax.get_title()}
    assert len(cells) == 3 and len([ax for ax in fig.axes if ax.images]) == 4  # original + 3 columns
    occlusion = [im for title, im in cells.items() if title.startswith("occlusion")]
    assert occlusion[0].get_clim() == occlusion[1].get_clim()
    own = cumulative_threshold(np.abs(strong), 2.0)
    assert occlusion[0].get_clim() == pytest.approx((-own, own))  # the larger of the two maps' thresholds
    cam = cells["grad_cam\ncat (2) · logit 2.5"]
    assert cam.get_clim() != occlusion[0].get_clim() and cam.get_clim()[0] == 0


def test_several_images_make_rows(star_exp, shapes_model):
    other = blackbox.explain(shapes_model, MODELS / "samples" / "circle.png", "occlusion")
    fig = figure([star_exp, other])
    originals = [ax for ax in fig.axes if ax.get_title().endswith("original")]
    assert [ax.get_title().split("\n")[0] for ax in originals] == ["star.png", "circle.png"]


@pytest.mark.parametrize("options,words", [
    ({"sign": "up"}, ["sign", "positive"]), ({"mode": "sparkle"}, ["mode", "blend"]),
    ({"clip": 100}, ["clip"]), ({"clip": float("nan")}, ["clip"]), ({"alpha": 1.5}, ["alpha"]),
    ({"alpha": True}, ["alpha"]), ({"colormap": "rainbowz"}, ["rainbowz"]),
    ({"mode": "masked", "sign": "all"}, ["masked", "sign"]),
])
def test_bad_options_are_one_line_parameter_errors(star_exp, options, words):
    with pytest.raises(ParameterError) as error:
        star_exp.figure(**options)
    assert "\n" not in str(error.value) and all(w in str(error.value) for w in words)


def test_masked_mode_on_a_signed_map_defaults_to_its_positive_part():
    attr = _signed_map()
    fig = figure(_explanation(attr, _picture()), mode="masked")
    drawn = fig.axes[2].images[0].get_array()
    _, ax = captum_vis.visualize_image_attr(attr, _picture(), method="masked_image", sign="positive",
                                            outlier_perc=2, use_pyplot=False)
    np.testing.assert_array_equal(np.asarray(drawn), np.asarray(ax.images[0].get_array()))


def test_notes_are_printed_under_the_figure():
    exp = _explanation(_signed_map(), _picture())
    exp.notes = ["int8 model: gradients are those of a dequantized float copy"]
    fig = exp.figure()
    assert "int8 model" in fig._supxlabel.get_text()
