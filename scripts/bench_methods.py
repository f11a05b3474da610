"""Side-by-side speed of blackbox's perturbation methods and the reference tools, measured in one run.

Not a test: figures depend on the machine and on what else runs on it. Everything explains the same
picture (the model-resolution RGB picture of ``--image``) for the same class with the same budget of
model evaluations, on CPU, through the same ONNX Runtime build:

* the bare model: pre-built inputs, batch sizes 1, 8, 16, 32, 64 (time per sample; the best is the floor
  every method is compared with: "ratio" = time per evaluation / bare time per sample); and, because a
  shared machine's speed drifts by 10-20% between runs, a paired ratio too: in every round each blackbox
  method right after the bare model at the engine's batch, the median over rounds of the two's ratio;
* blackbox ``rise``, ``lime``, ``kernel_shap`` (whole ``explain`` call: segmentation, fitting included);
* ``lime_image.LimeImageExplainer`` with a classifier_fn on the same ORT model at the best batch size;
* ``shap`` Partition explainer with ``shap.maskers.Image("blur(128,128)")`` and ``shap.KernelExplainer``
  on slic superpixels (the shap notebook's ``mask_image`` way, batched);
* DIANNA's RISE, LIME and KernelSHAP when a Python with ``dianna`` is given (``--dianna-python``, default
  ``$DIANNA_PYTHON``); DIANNA pins a second onnxruntime and pulls tensorflow-free but heavy extras, so it
  is kept out of the project's environment (install it in a throwaway venv that reuses this one's site
  packages: ``pip install --no-deps dianna fastdtw pooch xarray ipython``);
* blackbox ``occlusion`` on an ONNX export of a small ResNet-style CNN against Captum ``Occlusion`` on the
  PyTorch original (same window, stride, baseline 0), with the largest attribution difference;
* RISE plain vs quasi-random (scrambled Sobol) masks on ``models/shapes.onnx``: correlation with a
  16000-mask reference map as the number of masks grows.

Usage: ``python scripts/bench_methods.py [--quick] [--budget 1000] [--image PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
MODEL = REAL / "models" / "mobilenetv2-12-int8.onnx"
IMAGE = REAL / "images" / "kitten_224.png"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def to_model(pictures: np.ndarray) -> np.ndarray:
    """RGB 0..255 [N, H, W, 3] -> ImageNet-normalised NCHW float32 (the 'imagenet' preset at 224x224)."""
    x = (np.asarray(pictures, np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Counted:
    """A classifier function that counts the samples it scores (what each tool really spent)."""

    def __init__(self, session, batch: int, prepare=to_model):
        self.session, self.batch, self.prepare, self.count = session, batch, prepare, 0
        self.name = session.get_inputs()[0].name

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images)
        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            out.append(softmax(self.session.run(None, {self.name: self.prepare(chunk)})[0]))
            self.count += len(chunk)
        return np.concatenate(out)


# --------------------------------------------------------------------------- measurements

def bare_model(session, x: np.ndarray, batches: list[int], n: int) -> dict[int, float]:
    """Seconds per sample to score ``n`` pre-built inputs at each batch size, end to end (the same kind of
    figure as a method's wall time over its budget, so both see the same machine load)."""
    name = session.get_inputs()[0].name
    out = {}
    for batch in batches:
        feed = np.ascontiguousarray(np.repeat(x[None], batch, axis=0))
        session.run(None, {name: feed})
        start = time.perf_counter()
        done = 0
        while done < n:
            take = min(batch, n - done)
            session.run(None, {name: feed[:take]})
            done += take
        out[batch] = (time.perf_counter() - start) / n
    return out


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def run_blackbox(model, picture, target, budget, paired) -> list[tuple[str, float, int, float]]:
    """(name, seconds, evaluations, the bare model's seconds per sample measured right before it)."""
    import blackbox

    rows = []
    for method, params in (("rise", {"n_masks": budget}), ("lime", {"num_samples": budget}),
                           ("kernel_shap", {"n_samples": budget - 2})):
        next_to = paired()
        seconds, exp = timed(lambda: blackbox.explain(model, picture, method, target=target, **params))
        rows.append((f"blackbox {method}", seconds, exp.n_evals, next_to))
    return rows


def run_lime_image(session, picture, target, budget, batch) -> tuple[str, float, int]:
    from lime import lime_image

    f = Counted(session, batch)
    explainer = lime_image.LimeImageExplainer(random_state=0)
    seconds, _ = timed(lambda: explainer.explain_instance(picture, f, labels=(target,), top_labels=None,
                                                          num_samples=budget, batch_size=batch))
    return "lime_image", seconds, f.count


def run_shap_partition(session, picture, target, budget, batch) -> tuple[str, float, int]:
    import shap

    f = Counted(session, batch)
    masker = shap.maskers.Image("blur(128,128)", picture.shape)
    explainer = shap.Explainer(f, masker)
    seconds, _ = timed(lambda: explainer(picture[None].astype(np.float32), max_evals=budget, batch_size=batch,
                                         outputs=[target], silent=True))
    return "shap Partition blur(128,128)", seconds, f.count


def run_shap_kernel(session, picture, target, budget, batch) -> tuple[str, float, int]:
    import shap
    from skimage.segmentation import slic

    segments = slic(picture, n_segments=50, compactness=30, sigma=3, start_label=0)
    n_segments = int(segments.max()) + 1
    background = picture.mean(axis=(0, 1))

    def mask_image(z: np.ndarray) -> np.ndarray:  # the shap notebook's way, one chunk at a time
        out = np.repeat(picture[None].astype(np.float32), len(z), axis=0)
        for i, row in enumerate(z):
            off = np.isin(segments, np.flatnonzero(row == 0))
            out[i][off] = background
        return out

    f = Counted(session, batch, prepare=lambda z: to_model(mask_image(z)))
    explainer = shap.KernelExplainer(lambda z: f(z)[:, [target]], np.zeros((1, n_segments)))
    seconds, _ = timed(lambda: explainer.shap_values(np.ones((1, n_segments)), nsamples=budget - 2, silent=True))
    return "shap KernelExplainer slic(50)", seconds, f.count


DIANNA_SCRIPT = r"""
import json, sys, time, warnings
import numpy as np
warnings.filterwarnings("ignore")
import dianna
import dianna.methods.kernelshap_image as kernelshap_image


def heat_maps(shap_values_list, image_segments):  # DIANNA's own mapping (values[label - 1]), vectorised
    per_class = np.asarray(shap_values_list)[0].T
    return per_class[:, image_segments - 1]


kernelshap_image._create_heatemaps = heat_maps
model, picture_path, target, budget, kshap_budget, batch = sys.argv[1:7]
target, budget, kshap_budget, batch = int(target), int(budget), int(kshap_budget), int(batch)
picture = np.load(picture_path).astype(np.float32)
mean = np.array([0.485, 0.456, 0.406], np.float32); std = np.array([0.229, 0.224, 0.225], np.float32)
x = (picture / 255.0 - mean) / std
nchw = lambda b: np.ascontiguousarray(np.asarray(b, np.float32).transpose(0, 3, 1, 2))
out = {}
t = time.perf_counter()
dianna.explain_image(model, x, method="RISE", labels=[target], n_masks=budget, feature_res=8, p_keep=0.5,
                     preprocess_function=nchw, batch_size=batch)
out["DIANNA RISE"] = (time.perf_counter() - t, budget)
t = time.perf_counter()
dianna.explain_image(model, picture, method="LIME", labels=[target], num_samples=budget, return_masks=False,
                     preprocess_function=lambda b: nchw((np.asarray(b, np.float32) / 255.0 - mean) / std))
out["DIANNA LIME"] = (time.perf_counter() - t, budget)
t = time.perf_counter()
dianna.explain_image(model, np.ascontiguousarray(x.transpose(2, 0, 1)), method="KernelSHAP", labels=[target],
                     nsamples=kshap_budget, n_segments=50, compactness=30, sigma=3, axis_labels={0: "channels"})
out["DIANNA KernelSHAP (see note)"] = (time.perf_counter() - t, kshap_budget + 2)
print("RESULT" + json.dumps(out))
"""


def run_dianna(python: str | None, picture, target, budget, kshap_budget, batch) -> tuple[list, str | None]:
    if not python:
        return [], ("no Python with dianna given (--dianna-python or $DIANNA_PYTHON); dianna is not a project "
                    "dependency (it pulls a second onnxruntime, pandas, xarray, ipython)")
    check = subprocess.run([python, "-c", "import dianna"], capture_output=True, text=True)
    if check.returncode != 0:
        return [], f"{python} cannot import dianna: {check.stderr.strip().splitlines()[-1:]}"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "picture.npy")
        np.save(path, picture)
        done = subprocess.run([python, "-c", DIANNA_SCRIPT, str(MODEL), path, str(target), str(budget),
                               str(kshap_budget), str(batch)], capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        return [], f"dianna run failed: {done.stderr.strip().splitlines()[-1:]}"
    return [(name, seconds, n) for name, (seconds, n) in json.loads(line[6:]).items()], None


# --------------------------------------------------------------------------- occlusion vs Captum

def small_resnet():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), Block(16, 32, 2),
                          Block(32, 64, 2), Block(64, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 10))
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def run_occlusion(size: int, window: int, stride: int) -> list[str]:
    import torch
    from captum.attr import Occlusion

    import blackbox

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    net = small_resnet()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "resnetish.onnx")
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
        model = blackbox.load(path, preprocess="raw", device="cpu")
        target = int(net(x).argmax())
        params = {"window": (3, window, window), "stride": (3, stride, stride), "baseline": 0.0}
        blackbox.explain(model, x[0].numpy(), "occlusion", target=target, **params)
        ours_s, ours = timed(lambda: blackbox.explain(model, x[0].numpy(), "occlusion", target=target, **params))
        occlusion = Occlusion(net)
        kwargs = dict(sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0,
                      target=target, perturbations_per_eval=64)
        with torch.no_grad():
            theirs_s, theirs = timed(lambda: occlusion.attribute(x, **kwargs))
    diff = float(np.abs(np.asarray(ours.attributions) - theirs[0].numpy()).max())
    scale = float(np.abs(theirs.numpy()).max())
    n = ours.n_evals
    return [f"occlusion {size}x{size}, window {window}, stride {stride}: {n} evaluations",
            f"  blackbox occlusion (ONNX Runtime)  {ours_s:8.2f} s  {ours_s / n * 1e3:7.2f} ms/eval",
            f"  Captum Occlusion (PyTorch)         {theirs_s:8.2f} s  {theirs_s / n * 1e3:7.2f} ms/eval"
            f"  -> blackbox {theirs_s / ours_s:.1f}x faster",
            f"  largest attribution difference {diff:.2e} (attributions up to {scale:.2e})"]


# --------------------------------------------------------------------------- RISE: plain vs quasi-random

def run_rise_convergence(n_images: int, counts: list[int], reference_masks: int, seeds: int) -> list[str]:
    import blackbox
    from blackbox.datasets.shapes import make_shapes

    model = blackbox.load(ROOT / "models" / "shapes.onnx", device="cpu")
    images = make_shapes(n_images, seed=12345).images
    table = {("plain", n): [] for n in counts} | {("sobol", n): [] for n in counts}
    for image in images:
        reference = blackbox.explain(model, image, "rise", n_masks=reference_masks, seed=999).model_heatmap.ravel()
        for n in counts:
            for seed in range(seeds):
                for kind in ("plain", "sobol"):
                    heat = blackbox.explain(model, image, "rise", n_masks=n, seed=seed,
                                            quasi_random=kind == "sobol").model_heatmap.ravel()
                    table[(kind, n)].append(np.corrcoef(heat, reference)[0, 1])
    lines = [f"RISE on models/shapes.onnx: correlation with a {reference_masks}-mask map (mean of {n_images} images"
             f" x {seeds} seeds)", f"  {'masks':>6}  {'plain':>7}  {'sobol':>7}"]
    for n in counts:
        lines.append(f"  {n:>6}  {np.mean(table[('plain', n)]):7.4f}  {np.mean(table[('sobol', n)]):7.4f}")
    target = np.mean(table[("plain", counts[-1])])
    reached = [n for n in counts if np.mean(table[("sobol", n)]) >= target]
    if reached:
        lines.append(f"  sobol reaches plain's {counts[-1]}-mask correlation ({target:.4f}) with {reached[0]} masks "
                     f"({counts[-1] / reached[0]:.1f}x fewer)")
    else:
        lines.append(f"  sobol does not reach plain's {counts[-1]}-mask correlation within {counts[-1]} masks")
    return lines


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets: a smoke run of every part")
    parser.add_argument("--budget", type=int, help="model evaluations per explanation (default 1000, quick 128)")
    parser.add_argument("--image", default=str(IMAGE), help="picture to explain (default kitten_224.png)")
    parser.add_argument("--dianna-python", default=os.environ.get("DIANNA_PYTHON"),
                        help="a Python interpreter that can import dianna (default $DIANNA_PYTHON)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds, fastest kept (default 2, quick 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["peers", "dianna", "occlusion", "rise"],
                        help="parts to leave out")
    args = parser.parse_args(argv)
    if not MODEL.exists():
        print(f"model not found: {MODEL} (expected ../shared/real beside the repo)")
        return 1
    import onnxruntime as ort

    import blackbox
    from blackbox.inputs import prepare

    budget = args.budget or (128 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 2)
    batches = [1, 8, 16, 32, 64]
    options = ort.SessionOptions()  # the bare model and the peers: blackbox's int8 precision (blackbox.runtime)
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    probe = blackbox.load(MODEL, preprocess="imagenet", device="cpu")
    sample = prepare(probe, args.image)
    picture = probe.preprocess.display(sample.x)  # what every tool explains: the 224x224 RGB picture
    target = int(np.argmax(probe.scores(sample.x)[0]))
    x = to_model(picture[None])[0]
    log("choosing the bare model's best batch size ...")
    passes = [bare_model(session, x, batches, min(budget, 256)) for _ in range(2)]
    first = {b: min(p[b] for p in passes) for b in batches}
    best_batch = min(first, key=first.get)
    model = blackbox.load(MODEL, preprocess="imagenet", device="cpu", batch_size=best_batch)
    for method in ("rise", "lime", "kernel_shap"):  # sessions built and warm before timing
        blackbox.explain(model, picture, method, target=target, **{"rise": {"n_masks": 8}, "lime": {"num_samples": 8},
                                                                   "kernel_shap": {"n_samples": 64}}[method])

    # rounds interleave every tool with the bare model; each keeps its fastest round
    best: dict[str, tuple[float, int]] = {}
    paired: dict[str, list[float]] = {}  # per round: a method's time per evaluation / the bare model's just before
    bare: dict[int, float] = {}
    notes: list[str] = []

    def keep(rows):
        for name, seconds, n in rows:
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, n)

    for r in range(rounds):
        log(f"round {r + 1}/{rounds}: bare model ...")
        for batch, per in bare_model(session, x, batches, budget).items():
            bare[batch] = min(per, bare.get(batch, np.inf))
        log("  blackbox ...")
        rows = run_blackbox(model, picture, target, budget, paired=lambda: bare_model(session, x, [best_batch],
                                                                                        budget)[best_batch])
        keep([(name, seconds, n) for name, seconds, n, _ in rows])
        for name, seconds, n, next_to in rows:
            paired.setdefault(name, []).append(seconds / max(n, 1) / next_to)
        if "peers" not in args.skip:
            for runner in (run_lime_image, run_shap_partition, run_shap_kernel):
                log(f"  {runner.__name__} ...")
                keep([runner(session, picture, target, budget, best_batch)])
        if "dianna" not in args.skip and (r == 0):
            log("  dianna ...")
            found, why = run_dianna(args.dianna_python, picture, target, budget, 10 if args.quick else 50, best_batch)
            keep(found)
            if why:
                notes.append(f"DIANNA skipped: {why}")
            else:
                notes.append("DIANNA (one round) KernelSHAP is a lower bound: its heat-map step loops over every "
                             "pixel for each of the 1000 classes (about 2.5 s per class here, ~40 min), so the "
                             "script swaps in a vectorised equivalent; its LARS fits for all 1000 classes stay in. "
                             "Its budget is smaller (time per evaluation is what compares).")
    floor_batch = min(bare, key=bare.get)
    floor = bare[floor_batch]
    print(f"model {MODEL.name}, picture {Path(args.image).name}, target class {target}, budget {budget} "
          f"evaluations, CPU ({os.cpu_count()} cores), onnxruntime {ort.__version__}, {rounds} round(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"bare model, {budget} pre-built inputs (ms per sample): " +
          ", ".join(f"batch {b}: {t * 1e3:.2f}" for b, t in bare.items()) +
          f"; best batch {floor_batch} (blackbox and the peers ran at batch {best_batch})")
    print(f"{'method':<34} {'seconds':>8} {'evals':>6} {'ms/eval':>8} {'x bare':>7}")
    for name, (seconds, n) in best.items():
        per = seconds / max(n, 1)
        print(f"{name:<34} {seconds:8.2f} {n:6d} {per * 1e3:8.2f} {per / floor:7.2f}")
    print("paired (each round: the method / the bare model at batch %d measured just before it; median [min-max] "
          "over %d rounds): " % (best_batch, rounds) + "; ".join(
              f"{name} {np.median(r):.3f} [{min(r):.3f}-{max(r):.3f}]" for name, r in paired.items()))
    pairs = {"blackbox rise": ["DIANNA RISE"], "blackbox lime": ["lime_image", "DIANNA LIME"],
             "blackbox kernel_shap": ["shap KernelExplainer slic(50)", "shap Partition blur(128,128)",
                                      "DIANNA KernelSHAP (see note)"]}
    for ours, peers in pairs.items():
        found = [(name, best[name][0] / best[name][1]) for name in peers if name in best]
        if ours in best and found:
            mine = best[ours][0] / best[ours][1]
            print(f"{ours} per evaluation is faster than " + ", ".join(f"{name} {per / mine:.1f}x" for name, per in found))
    for note in notes:
        print(note)
    if "occlusion" not in args.skip:
        log("occlusion ...")
        print("\n".join(run_occlusion(64 if args.quick else 128, 16, 8 if args.quick else 4)))
    if "rise" not in args.skip:
        log("rise convergence ...")
        if args.quick:
            lines = run_rise_convergence(2, [125, 250, 500], 2000, 1)
        else:
            lines = run_rise_convergence(5, [250, 500, 1000, 2000, 4000], 16000, 2)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
