"""``blackbox.explain_many``: batched across images, the same results as ``explain`` one by one, in input
order, streaming, with per-image errors; and the batched gradient/CAM forms share gradient-graph calls."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from conftest import MODELS, real

import blackbox
from blackbox.differentiate import GradientEngine
from blackbox.errors import ImageError, ParameterError
from blackbox.graph.autodiff import PLAIN
from blackbox.inputs import prepare
from blackbox.methods import METHODS

SAMPLES = sorted(str(p) for p in (MODELS / "samples").glob("*.png") if "mask" not in p.name)
TARGETS = [0, 1, None, 3, 2, 1]  # different per image; None: that image's top-1

BATCHED = {  # method -> small parameters that keep the test fast
    "saliency": {}, "gradient_x_input": {}, "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4, "variant": "vargrad"}, "guided_backprop": {}, "deconvnet": {},
    "grad_cam": {}, "grad_cam_pp": {}, "xgrad_cam": {}, "layer_cam": {}, "hires_cam": {},
    "guided_grad_cam": {}, "lrp": {},
}


def assert_same(many, ones) -> None:
    """Explanations equal field by field (arrays to float tolerance)."""
    assert len(many) == len(ones)
    for got, want in zip(many, ones):
        assert (got.method, got.target, got.label, got.source, got.n_evals) == \
            (want.method, want.target, want.label, want.source, want.n_evals)
        assert got.target_score == pytest.approx(want.target_score, rel=1e-4, abs=1e-6)
        assert got.params == want.params and got.notes == want.notes
        for name in ("attributions", "heatmap", "model_heatmap"):
            a, b = getattr(got, name), getattr(want, name)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())), err_msg=name)
        np.testing.assert_array_equal(got.image, want.image)


def one_by_one(model, images, method, targets, **params):
    return [blackbox.explain(model, image, method, target=t, **params) for image, t in zip(images, targets)]


@pytest.fixture
def engine_calls(monkeypatch):
    """Rows of every gradient-graph call (GradientEngine.run), in order."""
    calls: list[int] = []
    original = GradientEngine.run

    def counted(self, x, seed, **kwargs):
        calls.append(len(np.asarray(x).reshape(-1, *np.shape(x)[-3:])))
        return original(self, x, seed, **kwargs)

    monkeypatch.setattr(GradientEngine, "run", counted)
    return calls


# ------------------------------------------------------------------------------------ same results
@pytest.mark.parametrize("method", sorted(BATCHED))
def test_batched_methods_equal_one_by_one(shapes_model, method):
    assert METHODS[method].many is not None
    params = BATCHED[method]
    many = list(blackbox.explain_many(shapes_model, SAMPLES, method, targets=TARGETS, batch_size=4, **params))
    assert_same(many, one_by_one(shapes_model, SAMPLES, method, TARGETS, **params))
    assert [e.source for e in many] == SAMPLES  # input order kept


def test_method_without_batched_form_runs_image_by_image(shapes_model):
    assert METHODS["score_cam"].many is None
    many = list(blackbox.explain_many(shapes_model, SAMPLES[:3], "score_cam", targets=2, batch_size=2))
    assert_same(many, one_by_one(shapes_model, SAMPLES[:3], "score_cam", [2] * 3))


def test_folder_arrays_and_model_space_inputs(shapes_model, tmp_path):
    """A folder is its sorted image files; a stacked uint8 array and model-space arrays work like explain's x."""
    folder = list(blackbox.explain_many(shapes_model, MODELS / "samples", "saliency", batch_size=5))
    assert [e.source for e in folder] == sorted(str(p) for p in (MODELS / "samples").glob("*.png"))
    from blackbox.image_io import read_image

    pictures = np.stack([read_image(p) for p in SAMPLES[:2]])
    tensors = [prepare(shapes_model, p).x for p in SAMPLES[2:4]]
    for given, items in ((pictures, list(pictures)), (tensors, tensors)):
        many = list(blackbox.explain_many(shapes_model, given, "grad_cam", targets=[1, 2]))
        assert_same(many, one_by_one(shapes_model, items, "grad_cam", [1, 2]))


def test_real_model_batched_equals_one_by_one():
    """MobileNetV2-int8 (differentiated through its dequantized copy), different targets per image."""
    model = blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", device="cpu")
    photos = sorted(str(p) for p in real("images").glob("*.jpg"))[:4]
    targets = [None, 281, 3, 500]
    for method, params in (("saliency", {}), ("integrated_gradients", {"n_steps": 3}), ("grad_cam", {})):
        many = list(blackbox.explain_many(model, photos, method, targets=targets, batch_size=3, **params))
        assert_same(many, one_by_one(model, photos, method, targets, **params))


# ------------------------------------------------------------------------------------ shared calls
def test_gradient_calls_carry_several_images(shapes_model, engine_calls):
    list(blackbox.explain_many(shapes_model, SAMPLES, "saliency", targets=TARGETS, batch_size=3))
    assert engine_calls == [3, 3]  # one call per batch of 3 images, each row its own target
    engine_calls.clear()
    list(blackbox.explain_many(shapes_model, SAMPLES, "grad_cam", targets=TARGETS, batch_size=6))
    assert engine_calls == [6]
    engine_calls.clear()
    for path, target in zip(SAMPLES, TARGETS):
        blackbox.explain(shapes_model, path, "saliency", target=target)
    assert engine_calls == [1] * 6


def test_integrated_gradients_packs_steps_of_several_images(shapes_model, engine_calls):
    rows = shapes_model.gradients._runner("logit", (), PLAIN).batch_size
    n_steps, size = 8, 3
    list(blackbox.explain_many(shapes_model, SAMPLES, "integrated_gradients", batch_size=size, n_steps=n_steps))
    per_batch = [min(rows, size * n_steps - start) for start in range(0, size * n_steps, rows)]
    assert engine_calls == per_batch * 2
    assert max(engine_calls) > n_steps  # some calls hold steps of more than one image
    assert len(engine_calls) < len(SAMPLES)  # one by one: one call per image at least


# ------------------------------------------------------------------------------------ streaming
class Recording:
    """An iterator over images that records how many were pulled."""

    def __init__(self, items):
        self.items, self.pulled = list(items), 0

    def __iter__(self):
        for item in self.items:
            self.pulled += 1
            yield item


@pytest.mark.parametrize("prefetch", [True, False])
def test_generator_input_is_pulled_lazily(shapes_model, prefetch):
    source = Recording(SAMPLES * 2)
    stream = blackbox.explain_many(shapes_model, iter(source), "saliency", batch_size=2, prefetch=prefetch)
    assert source.pulled == 0  # nothing read before the first result is asked for
    first = next(stream)
    assert first.source == SAMPLES[0]
    assert source.pulled <= (4 if prefetch else 2)  # the batch evaluated (and the one being prepared)
    rest = list(stream)
    assert source.pulled == 12 and [e.source for e in [first, *rest]] == SAMPLES * 2


# ------------------------------------------------------------------------------------ errors
def test_errors_return_keeps_the_other_images(shapes_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    images = [SAMPLES[0], str(broken), SAMPLES[1], str(tmp_path / "missing.png"), SAMPLES[2]]
    out = list(blackbox.explain_many(shapes_model, images, "grad_cam", batch_size=2, errors="return"))
    assert isinstance(out[1], ImageError) and isinstance(out[3], Exception)
    good = [out[0], out[2], out[4]]
    assert_same(good, one_by_one(shapes_model, SAMPLES[:3], "grad_cam", [None] * 3))


def test_errors_raise_at_that_image_after_the_ones_before(shapes_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    stream = blackbox.explain_many(shapes_model, [SAMPLES[0], SAMPLES[1], str(broken), SAMPLES[2]], "saliency")
    assert [next(stream).source, next(stream).source] == SAMPLES[:2]
    with pytest.raises(ImageError):
        next(stream)


def test_a_method_failure_on_one_image_stays_with_it(shapes_model, monkeypatch):
    """The batched call fails; it is retried image by image, so only the culprit carries the error."""
    spec = METHODS["saliency"]
    original = spec.function

    @functools.wraps(original)  # keeps the signature: the same parameters and defaults
    def picky(ctx, **params):
        if ctx.target == 3:
            raise RuntimeError("this image fails")
        return original(ctx, **params)

    def failing_many(contexts, **params):
        raise RuntimeError("batched call failed")

    monkeypatch.setitem(METHODS, "saliency", dataclasses.replace(spec, function=picky, many=failing_many))
    out = list(blackbox.explain_many(shapes_model, SAMPLES[:3], "saliency", targets=[1, 3, 2], errors="return"))
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "this image fails"
    assert_same([out[0], out[2]], one_by_one(shapes_model, [SAMPLES[0], SAMPLES[2]], "saliency", [1, 2]))


def never_pulled():
    raise AssertionError("an image was read before the request was checked")
    yield  # pragma: no cover


@pytest.mark.parametrize("method, params, words", [
    ("no_such_method", {}, "unknown method"),
    ("integrated_gradients", {"n_steps": 0}, "n_steps"),
    ("saliency", {"bogus": 1}, "bogus"),
    ("integrated_gradients", {"n_steps": 10 ** 8}, "limit"),
])
def test_bad_requests_fail_before_any_work(shapes_model, engine_calls, method, params, words):
    with pytest.raises(ParameterError, match=words):
        blackbox.explain_many(shapes_model, never_pulled(), method, **params)
    with pytest.raises(ParameterError, match="errors"):
        blackbox.explain_many(shapes_model, never_pulled(), "saliency", errors="ignore")
    with pytest.raises(ParameterError, match="batch_size"):
        blackbox.explain_many(shapes_model, never_pulled(), "saliency", batch_size=0)
    assert engine_calls == []


def test_targets_length_mismatch_is_one_line(shapes_model):
    with pytest.raises(ParameterError) as caught:
        blackbox.explain_many(shapes_model, SAMPLES, "saliency", targets=[0, 1])
    assert "\n" not in str(caught.value) and "2 entries for 6 images" in str(caught.value)
    # an input of unknown length: found out when the images run out (or outnumber the targets)
    for targets in ([0, 1], [0] * 8):
        with pytest.raises(ParameterError, match="targets has"):
            list(blackbox.explain_many(shapes_model, iter(SAMPLES), "saliency", targets=targets, batch_size=4))


def test_empty_or_missing_inputs_are_refused(shapes_model, tmp_path):
    with pytest.raises(ImageError, match="empty"):
        blackbox.explain_many(shapes_model, [], "saliency")
    with pytest.raises(ImageError, match="holds no images"):
        blackbox.explain_many(shapes_model, tmp_path, "saliency")
    with pytest.raises(ImageError, match="does not exist"):
        blackbox.explain_many(shapes_model, tmp_path / "nowhere", "saliency")


def test_explain_many_is_exported():
    assert "explain_many" in blackbox.__all__ and blackbox.explain_many.__module__ == "blackbox.many"
