"""The perturbation graph equals the same blending done in NumPy, for every mask mode and score space."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import blackbox
from blackbox.baselines import blur, make_baseline
from blackbox.errors import NumericalError
from blackbox.inputs import prepare
from blackbox.masks import block_matrix, linear_matrix, upsample
from blackbox.datasets.shapes import make_shapes
from helpers import conv_classifier, save


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sample(shapes_model):
    image = make_shapes(1, seed=7).images[0]
    return prepare(shapes_model, image)


def numpy_scores(model, x, baseline, keep, targets, score):
    blended = baseline[None] + (x[None] - baseline[None]) * keep
    return model.scores(blended.astype(np.float32), score=score)[:, targets]


@pytest.mark.parametrize("score", ["probability", "logit", "raw"])
def test_grid_masks_equal_numpy_blending(shapes_model, sample, score):
    rng = np.random.default_rng(0)
    masks = rng.random((10, 1, 8, 8)).astype(np.float32)
    ry, rx = linear_matrix(8, 64), linear_matrix(8, 64)
    base = make_baseline(shapes_model, sample, "blur")
    got = shapes_model.score_masks(sample.x, masks, baseline=base, targets=[0, 3], score=score, ry=ry, rx=rx)
    want = numpy_scores(shapes_model, sample.x, base, upsample(masks, ry, rx), [0, 3], score)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_linear_matrix_matches_opencv_resize():
    import cv2

    small = np.random.default_rng(3).random((7, 5)).astype(np.float32)
    ours = linear_matrix(7, 30) @ small @ linear_matrix(5, 22).T
    theirs = cv2.resize(small, (22, 30), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_per_mask_matrices_and_channel_masks(shapes_model, sample):
    rng = np.random.default_rng(1)
    masks = (rng.random((6, 3, 5, 5)) < 0.5).astype(np.float32)
    ry = np.stack([linear_matrix(5, 64, scale=72 / 5, offset=o)[None] for o in range(6)])  # [6, 1, 64, 5]
    rx = np.stack([linear_matrix(5, 64, scale=72 / 5, offset=5 - o)[None] for o in range(6)])
    base = np.zeros_like(sample.x)
    got = shapes_model.score_masks(sample.x, masks, baseline=base, targets=[1], score="raw", ry=ry, rx=rx)
    keep = np.stack([ry[i, 0] @ masks[i] @ rx[i, 0].T for i in range(6)])
    want = numpy_scores(shapes_model, sample.x, base, keep, [1], "raw")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_segment_masks_equal_numpy_blending(shapes_model, sample):
    rng = np.random.default_rng(2)
    segments = (np.arange(64)[:, None] // 16 * 4 + np.arange(64)[None, :] // 16).astype(np.int64)  # 16 blocks
    z = (rng.random((9, 16)) < 0.5).astype(np.float32)
    base = make_baseline(shapes_model, sample, "mean")
    got = shapes_model.score_masks(sample.x, z, baseline=base, targets=[2], score="probability", segments=segments)
    keep = z[:, segments][:, None]
    want = numpy_scores(shapes_model, sample.x, base, keep, [2], "probability")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_score_spaces_follow_the_output_kind(tmp_path):
    logits_model = blackbox.load(save(conv_classifier(), tmp_path / "l.onnx"), device="cpu")
    probs_model = blackbox.load(save(conv_classifier(final="softmax"), tmp_path / "p.onnx"), device="cpu")
    assert (logits_model.output_kind, probs_model.output_kind) == ("logits", "probabilities")
    x = np.random.default_rng(0).random((3, 3, 16, 16)).astype(np.float32)
    raw = logits_model.scores(x, score="raw")
    np.testing.assert_allclose(logits_model.scores(x, score="probability"), softmax(raw), rtol=1e-5)
    np.testing.assert_allclose(probs_model.scores(x, score="probability"), softmax(raw), rtol=1e-5)
    # the logit of a probability model is its log-probability: equal to the logits up to a per-row shift
    logp = probs_model.scores(x, score="logit")
    np.testing.assert_allclose(logp - logp[:, :1], raw - raw[:, :1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout,in_type", [("NHWC", TensorProto.FLOAT), ("NCHW", TensorProto.UINT8),
                                            ("NCHW", TensorProto.FLOAT16)])
def test_layouts_and_input_types(tmp_path, layout, in_type):
    reference = blackbox.load(save(conv_classifier(), tmp_path / "ref.onnx"), preprocess="raw", device="cpu")
    model = blackbox.load(save(conv_classifier(layout=layout, in_type=in_type), tmp_path / "m.onnx"),
                          preprocess="raw", device="cpu")
    assert model.layout == layout
    image = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tol = 1e-2 if in_type == TensorProto.FLOAT16 else 1e-4
    np.testing.assert_allclose(model.predict(image), reference.predict(image), rtol=tol, atol=tol)
    sample = prepare(model, image)
    masks = np.random.default_rng(5).random((4, 1, 4, 4)).astype(np.float32)
    ry = rx = block_matrix(4, 16, 4)
    got = model.score_masks(sample.x, masks, baseline=np.zeros_like(sample.x), targets=[0, 1], score="raw", ry=ry, rx=rx)
    keep = upsample(masks, ry, rx)
    blended = sample.x[None] * keep
    if in_type == TensorProto.UINT8:  # the graph rounds and clips to the uint8 the model takes
        blended = np.clip(np.floor(blended + 0.5), 0, 255)
    want = reference.scores(blended.astype(np.float32), score="raw")[:, :2]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_baselines(shapes_model, sample):
    x = sample.x
    assert np.all(make_baseline(shapes_model, sample, "zeros") == 0)
    np.testing.assert_allclose(make_baseline(shapes_model, sample, 0.25), 0.25)
    mean = make_baseline(shapes_model, sample, "mean")
    np.testing.assert_allclose(mean[:, 0, 0], x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(make_baseline(shapes_model, sample, "white"), 1.0, rtol=1e-6)  # RGB/255 model
    np.testing.assert_allclose(make_baseline(shapes_model, sample, (255, 0, 0))[:, 5, 5], [1, 0, 0], atol=1e-6)
    blurred = make_baseline(shapes_model, sample, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    np.testing.assert_allclose(blur(x, 2.0).mean(), x.mean(), rtol=0.02)


def test_batches_halve_on_out_of_memory(shapes_model, sample, monkeypatch):
    runner = shapes_model._perturb_runner("grid", "raw")
    original_run, original_size = runner.session.run_with_iobinding, runner.batch_size
    calls = []

    def flaky(binding, *args, **kwargs):
        calls.append(runner.batch_size)
        if runner.batch_size > 4:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for tensor")
        return original_run(binding, *args, **kwargs)

    monkeypatch.setattr(runner.session, "run_with_iobinding", flaky)
    masks = np.random.default_rng(6).random((21, 1, 4, 4)).astype(np.float32)
    ry = rx = block_matrix(4, 64, 16)
    try:
        got = shapes_model.score_masks(sample.x, masks, baseline=np.zeros_like(sample.x), targets=[0],
                                       score="raw", ry=ry, rx=rx)
    finally:
        runner.batch_size = original_size
    assert got.shape == (21, 1) and calls[0] > 4 and runner is not None
    want = numpy_scores(shapes_model, sample.x, np.zeros_like(sample.x), upsample(masks, ry, rx), [0], "raw")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_nan_scores_are_reported_not_averaged(tmp_path):
    model = blackbox.load(save(conv_classifier(final="nan_when_dark"), tmp_path / "nan.onnx"), device="cpu")
    bright = np.full((16, 16, 3), 200, np.uint8)
    assert np.all(np.isfinite(model.predict(bright)))
    with pytest.raises(NumericalError, match="NaN or infinite scores for 1 of 1"):
        model.predict(np.full((16, 16, 3), 10, np.uint8))
    # one window covering the whole image turns it black: that evaluation is NaN and must be reported
    with pytest.raises(NumericalError, match="perturbed inputs"):
        blackbox.explain(model, bright, "occlusion", window=16, stride=16, baseline="black")


def test_a_model_whose_input_is_named_like_the_wrappers(tmp_path):
    """The wrapper's own tensors are prefixed, so a model input called 'x' or 'baseline' still loads."""
    model = blackbox.load(save(conv_classifier(input_name="x"), tmp_path / "x.onnx"), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    exp = blackbox.explain(model, image, "occlusion", window=8, stride=4)
    grads = model.gradients.run(prepare(model, image).x, model.gradients.one_hot(0), score="raw")
    assert np.isfinite(exp.heatmap).all() and grads.grad.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("mode, per_mask", [("grid", (False, False)), ("grid", (True, True)),
                                            ("segments", (False, False)), ("grid_many", (True, True))])
def test_fused_graphs_name_nodes_once_and_keep_the_batch_symbol(shapes_model, mode, per_mask):
    """Mask and scoring graphs fused: every node name unique (ONNX Runtime refuses duplicates), and the
    model input's batch dimension is the masks' symbolic N, which lets ONNX Runtime fold a model's
    Shape -> Reshape chains (an unnamed batch kept them: 4% of MobileNetV2-int8)."""
    import onnx

    from blackbox.graph.compose import perturbation_graph, perturbation_graph_many

    m = shapes_model
    if mode == "grid_many":
        graph = perturbation_graph_many(m.graph, m.image, m.output, score="probability",
                                        constants=dict(m.constants), per_mask=per_mask)
    else:
        graph = perturbation_graph(m.graph, m.image, m.output, mode=mode, score="probability",
                                   constants=dict(m.constants), per_mask=per_mask)
    names = [n.name for n in graph.graph.node if n.name]
    assert len(names) == len(set(names))
    inferred = onnx.shape_inference.infer_shapes(graph)
    shapes = {v.name: v.type.tensor_type.shape for v in inferred.graph.value_info}
    batch = shapes[m.image.name].dim[0]
    assert batch.dim_param == "N", batch


def test_binary_segment_masks_select_past_the_input_quantizer(tmp_path):
    """0/1 segment masks (LIME, KernelSHAP) select pixels: Where(keep, q(x), q(baseline)) after the int8
    model's input QuantizeLinear, which then runs on the image and the baseline once per call, not on every
    sample. Scores equal the model's on the selected pictures; soft masks keep the blend."""
    from detectors import concept_image, detector_model, quantized

    from blackbox.graph.compose import X_IN, perturbation_graph
    from blackbox.segmentation import grid_segments

    model = blackbox.load(save(quantized(detector_model(), tmp_path), tmp_path / "q.onnx"), device="cpu")
    image, _ = concept_image("red", box=(8, 20, 8, 20))
    sample = prepare(model, image)
    x, base = sample.x, make_baseline(model, sample, "blur")
    segments = grid_segments(32, 32, 4)
    masks = np.random.default_rng(0).integers(0, 2, (37, 16)).astype(np.float32)
    fast = model.score_masks(x, masks, baseline=base, targets=[0, 1], segments=segments)
    pictures = np.where(masks[:, segments][:, None] > 0, x[None], base[None]).astype(np.float32)
    assert np.allclose(fast, model.scores(pictures)[:, [0, 1]], rtol=0, atol=1e-6)
    assert ("segments_binary", "probability", (False, False)) in model._perturb_runners

    graph = perturbation_graph(model.graph, model.image, model.output, mode="segments_binary",
                               score="probability", constants=dict(model.constants)).graph
    mask_nodes = [n for n in graph.node if n.name.startswith("blackbox/mask/")]
    assert [n.op_type for n in mask_nodes].count("QuantizeLinear") == 2  # image and baseline, [1, C, H, W]
    assert {"Where"} <= {n.op_type for n in mask_nodes} and not {"Mul", "Add"} & {n.op_type for n in mask_nodes}
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and not n.name.startswith("blackbox/mask/")
                and n.input[0] == model.image.name]  # the model's own input quantizer is gone
    assert X_IN in [i.name for i in graph.input]

    soft = masks.copy()
    soft[0] = 0.5
    blended = model.score_masks(x, soft, baseline=base, targets=[0, 1], segments=segments)
    assert ("segments", "probability", (False, False)) in model._perturb_runners
    assert np.allclose(blended[1:], fast[1:], atol=1e-5)


def test_binary_segment_masks_on_an_opset_without_where():
    """Where needs opset 9: an opset-7 model (the real SqueezeNet-fp16) keeps the blend, same scores."""
    from conftest import real

    from blackbox.graph.compose import perturbation_graph
    from blackbox.segmentation import grid_segments

    model = blackbox.load(real("models", "squeezenet1.0-fp16.onnx"), preprocess="imagenet", device="cpu")
    graph = perturbation_graph(model.graph, model.image, model.output, mode="segments_binary",
                               score="probability", constants=dict(model.constants))
    assert "Where" not in {n.op_type for n in graph.graph.node}
    x = prepare(model, real("images", "coyote.jpg")).x
    segments = grid_segments(x.shape[1], x.shape[2], 4)
    masks = np.random.default_rng(2).integers(0, 2, (6, 16)).astype(np.float32)
    base = np.zeros_like(x)
    pictures = np.where(masks[:, segments][:, None] > 0, x[None], base[None]).astype(np.float32)
    assert np.allclose(model.score_masks(x, masks, baseline=base, targets=[272], segments=segments),
                       model.scores(pictures)[:, [272]], atol=1e-6)
