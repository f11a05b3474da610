"""Time to a converged map: blackbox's perturbation methods against lime, shap and Captum, measured in one run.

Not a test: figures depend on the machine and its load. What a user waits for is a map that has stopped
changing, so each tool is scored by the evaluations and the seconds it needs before its map correlates
>= 0.95 (Pearson, model-input resolution 224 x 224) with a reference map of the SAME tool and settings
made from many more evaluations (``--reference``, default 16,000):

* blackbox ``rise`` (Sobol masks), ``lime`` (quickshift), ``kernel_shap`` (slic 50), at fixed budgets and
  with ``budget="auto"`` (its own stopping rule: the row shows where it stopped and the correlation it
  reached), and ``occlusion`` (window 16, stride 16/8/4/3 against stride 2, the finest within the reference
  budget; occlusion is deterministic, so its schedule is a stride schedule); ``lime`` with
  ``sampling="orthogonal"`` and ``kernel_shap`` with ``sampling="leverage"`` at fixed budgets, scored
  against the default design's reference (they estimate the same map);
* blackbox ``rise`` with plain random masks (scored against the Sobol reference: the same estimate), and
  DIANNA's RISE (``dianna.explain_image(method="RISE")``, grid 7, p_keep 0.5, on the same model through an
  ONNX Runtime session in a Python that has dianna: ``--dianna-python`` or ``$DIANNA_PYTHON``, set up as
  ``bench_methods.py`` says). RISE is a mean over masks, so DIANNA's reference is the mean of runs of 4000
  masks (its masks are materialised at full resolution: 16,000 in one run would need about 19 GB);
* ``lime_image.LimeImageExplainer`` (quickshift; its reference is blackbox ``lime`` with the same seed,
  which draws exactly lime_image's samples: ``tests/methods/test_lime.py`` checks the maps agree);
* ``shap.KernelExplainer`` on the same slic superpixels, mean colour, ``l1_reg=False`` (the notebook's
  ``mask_image`` way, batched) and ``shap.PartitionExplainer`` with ``shap.maskers.Image("blur(128,128)")``;
  each against its own reference;
* Captum ``Lime`` (quickshift superpixels, segment-mean baselines, Captum's default Lasso surrogate and
  kernel), ``KernelShap`` (slic superpixels, mean-colour baseline) and ``Occlusion`` (window 16, baseline
  0, logits), on the same ONNX Runtime session through a torch-callable forward (tensor -> numpy -> ORT ->
  tensor); each against its own reference. The superpixels handed to lime_image, shap Kernel and Captum
  are blackbox's (skimage quickshift and slic with the reference tools' defaults); their segmentation
  time is added to those tools' seconds.

Budgets follow a coarse doubling schedule (``--budgets``), so "evaluations to 0.95" is the first budget
of the schedule that reaches it (within a factor 2 of the exact count); peers stop at ``--peer-max``
(reported as "> max" when they never reach 0.95, the ratio then a lower bound). Seconds are the wall time
of that one run. References are cached under ``$TMPDIR/blackbox-convergence`` keyed by tool, settings,
image, model and budget: the first run computes them (about 20 minutes on two cores), later runs take
about six minutes. Run it alone: ``flock /tmp/bench.lock python scripts/bench_convergence.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
MODEL = REAL / "models" / "mobilenetv2-12-int8.onnx"
IMAGES = ("tabby_cat.jpg", "coyote.jpg")
from bench_methods import log, softmax, to_model  # noqa: E402  (scripts/ is on sys.path)

CACHE = Path(tempfile.gettempdir()) / "blackbox-convergence"
GOAL = 0.95


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


class Scorer:
    """The ORT session as a batched classifier on model-space or picture inputs, counting samples."""

    def __init__(self, session, batch: int):
        self.session, self.batch, self.count = session, batch, 0
        self.name = session.get_inputs()[0].name

    def model_space(self, x: np.ndarray, probabilities: bool = True) -> np.ndarray:
        out = []
        for start in range(0, len(x), self.batch):
            chunk = np.ascontiguousarray(x[start:start + self.batch], np.float32)
            logits = self.session.run(None, {self.name: chunk})[0]
            out.append(softmax(logits) if probabilities else logits)
            self.count += len(chunk)
        return np.concatenate(out)

    def pictures(self, images) -> np.ndarray:
        return self.model_space(to_model(np.asarray(images)))


@dataclass
class Case:
    """One image: the 224 x 224 picture every tool explains, its model-space input and the target."""

    name: str
    picture: np.ndarray
    x: np.ndarray
    target: int
    quickshift: np.ndarray
    slic: np.ndarray
    segmenting: dict  # seconds to compute each segmentation, added to tools that are handed it


@dataclass(frozen=True)
class Tool:
    method: str  # the method family the tool belongs to (ratios compare within it)
    name: str
    settings: str  # what makes two runs comparable (part of the reference's cache key)
    run: Callable[[Case, int, int], tuple[np.ndarray, int]]  # (case, budget, seed) -> (map [H, W], evaluations)
    peer: bool = True
    budgets: tuple[int, ...] | None = None  # its own schedule (occlusion: evaluations of each stride)
    handed: str | None = None  # the segmentation the script computes for it ("quickshift", "slic")
    shares: str | None = None  # the tool whose reference map it is scored against (same quantity, other design)
    chunk: int | None = None  # a mean estimator: its reference is the mean of runs of this many evaluations


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


# --------------------------------------------------------------------------- blackbox

def blackbox_tools(model) -> list[Tool]:
    import blackbox

    def method(name: str, count: str, **params):
        def run(case: Case, budget: int, seed: int, **extra):
            exp = blackbox.explain(model, case.x, name, target=case.target, seed=seed, progress=False,
                                   **{count: budget}, **params, **extra)
            return exp.model_heatmap, exp.n_evals
        return run

    def occlusion(case: Case, budget: int, seed: int):
        stride = OCCLUSION_STRIDES[budget]
        exp = blackbox.explain(model, case.x, "occlusion", target=case.target, window=16, stride=stride,
                               baseline=0, progress=False)
        return exp.model_heatmap, exp.n_evals

    return [Tool("rise", "blackbox rise", "sobol grid 7", method("rise", "n_masks", quasi_random=True), peer=False),
            Tool("rise", "blackbox rise (random)", "random grid 7", method("rise", "n_masks"), peer=False,
                 shares="blackbox rise"),
            Tool("lime", "blackbox lime", "quickshift", method("lime", "num_samples"), peer=False),
            Tool("lime", "blackbox lime (orthogonal)", "quickshift",
                 method("lime", "num_samples", sampling="orthogonal"), peer=False, shares="blackbox lime"),
            Tool("kernel_shap", "blackbox kernel_shap", "slic50 mean", method("kernel_shap", "n_samples"), peer=False),
            Tool("kernel_shap", "blackbox kernel_shap (leverage)", "slic50 mean",
                 method("kernel_shap", "n_samples", sampling="leverage"), peer=False, shares="blackbox kernel_shap"),
            Tool("occlusion", "blackbox occlusion", "w16 b0 logit", occlusion, peer=False,
                 budgets=tuple(OCCLUSION_STRIDES))]


def occlusion_evals(stride: int, size: int = 224, window: int = 16) -> int:
    return (-(-(size - window) // stride) + 1) ** 2


OCCLUSION_STRIDES = {occlusion_evals(s): s for s in (16, 8, 4, 3, 2)}  # evaluations -> stride


def auto_run(model, case: Case, name: str, count: str, maximum: int, seed: int, **params):
    import blackbox

    seconds, exp = timed(lambda: blackbox.explain(model, case.x, name, target=case.target, seed=seed,
                                                  progress=False, budget="auto", **{count: maximum}, **params))
    return exp.model_heatmap, exp.n_evals, seconds


# --------------------------------------------------------------------------- peers

def peer_tools(scorer: Scorer) -> list[Tool]:
    return [Tool("lime", "lime_image", "quickshift", lambda c, b, s: lime_image_run(scorer, c, b, s),
                 handed="quickshift"),
            Tool("lime", "captum Lime", "quickshift", lambda c, b, s: captum_run(scorer, c, b, s, "Lime"),
                 handed="quickshift"),
            Tool("kernel_shap", "shap KernelExplainer", "slic50 mean", lambda c, b, s: shap_kernel_run(scorer, c, b, s),
                 handed="slic"),
            Tool("kernel_shap", "shap Partition", "blur(128,128)", lambda c, b, s: shap_partition_run(scorer, c, b, s)),
            Tool("kernel_shap", "captum KernelShap", "slic50 mean",
                 lambda c, b, s: captum_run(scorer, c, b, s, "KernelShap"), handed="slic"),
            Tool("occlusion", "captum Occlusion", "w16 b0 logit",
                 lambda c, b, s: captum_occlusion_run(scorer, c, b), budgets=tuple(OCCLUSION_STRIDES))]


DIANNA_WORKER = r"""
import json, sys, warnings
import numpy as np
warnings.filterwarnings("ignore")
import dianna
import onnxruntime as ort

model, batch = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.add_session_config_entry("session.x64quantprecision", "1")  # as blackbox.runtime: exact int8
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name


def probabilities(x):  # the bench's own scorer: the same ORT session options, softmax of the logits
    z = session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


nchw = lambda b: np.ascontiguousarray(np.asarray(b, np.float32).transpose(0, 3, 1, 2))
for line in sys.stdin:
    job = json.loads(line)
    np.random.seed(job["seed"])  # DIANNA draws its masks with numpy's global generator
    heat = dianna.explain_image(probabilities, np.load(job["x"]), method="RISE", labels=[job["target"]],
                                n_masks=job["budget"], feature_res=job["grid"], p_keep=0.5,
                                preprocess_function=nchw, batch_size=batch, axis_labels={2: "channels"})[0]
    np.save(job["out"], np.asarray(heat, np.float64))
    print("DONE", flush=True)
"""


class DiannaRise:
    """DIANNA's RISE in its own Python (it pins a second onnxruntime, so it is not a project dependency): one
    long-lived worker process holding an ONNX Runtime session of the same model, fed one job per run."""

    GRID = 7  # blackbox rise's grid (DIANNA's default feature_res is 8)

    def __init__(self, python: str, batch: int):
        import subprocess

        self.folder = tempfile.mkdtemp(prefix="dianna-")
        self.process = subprocess.Popen([python, "-c", DIANNA_WORKER, str(MODEL), str(batch)], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def run(self, case: Case, budget: int, seed: int):
        x, out = os.path.join(self.folder, "x.npy"), os.path.join(self.folder, "map.npy")
        np.save(x, np.ascontiguousarray(case.x.transpose(1, 2, 0)))  # HWC: DIANNA masks channels-last data
        self.process.stdin.write(json.dumps({"x": x, "out": out, "target": case.target, "budget": budget,
                                             "seed": seed, "grid": self.GRID}) + "\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "DONE":
            raise RuntimeError(f"the DIANNA worker stopped (exit {self.process.poll()})")
        return np.load(out), budget


def dianna_tools(python: str | None, batch: int) -> list[Tool]:
    """DIANNA RISE when a Python that imports dianna is given; else none (with a line saying why)."""
    import subprocess

    if not python:
        log("no DIANNA RISE: give a Python with dianna (--dianna-python or $DIANNA_PYTHON; see bench_methods.py)")
        return []
    check = subprocess.run([python, "-c", "import dianna"], capture_output=True, text=True)
    if check.returncode != 0:
        log(f"no DIANNA RISE: {python} cannot import dianna")
        return []
    worker = DiannaRise(python, batch)
    return [Tool("rise", "DIANNA RISE", f"random grid {DiannaRise.GRID} p0.5", worker.run, chunk=4000)]


def lime_image_run(scorer: Scorer, case: Case, budget: int, seed: int):
    from lime import lime_image

    scorer.count = 0
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    exp = explainer.explain_instance(case.picture, scorer.pictures, labels=(case.target,), top_labels=None,
                                     num_samples=budget, batch_size=scorer.batch,
                                     segmentation_fn=lambda picture: case.quickshift)
    weights = np.zeros(int(exp.segments.max()) + 1)
    for segment, weight in exp.local_exp[case.target]:
        weights[segment] = weight
    return weights[exp.segments], scorer.count


def shap_kernel_run(scorer: Scorer, case: Case, budget: int, seed: int):
    import shap

    segments = case.slic
    n_segments = int(segments.max()) + 1
    background = case.picture.reshape(-1, 3).mean(axis=0)

    def value(z: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(z), scorer.batch):
            rows = z[start:start + scorer.batch]
            images = np.repeat(case.picture[None].astype(np.float32), len(rows), axis=0)
            for i, row in enumerate(rows):
                images[i][np.isin(segments, np.flatnonzero(row == 0))] = background
            out.append(scorer.pictures(images)[:, [case.target]])
        return np.concatenate(out)

    np.random.seed(seed)  # KernelExplainer samples with numpy's global generator
    scorer.count = 0
    explainer = shap.KernelExplainer(value, np.zeros((1, n_segments)))
    values = explainer.shap_values(np.ones((1, n_segments)), nsamples=max(budget - 2, n_segments + 1),
                                   l1_reg=False, silent=True)
    phi = np.asarray(values).reshape(-1)[:n_segments]
    return phi[segments], scorer.count


def shap_partition_run(scorer: Scorer, case: Case, budget: int, seed: int):
    import shap

    scorer.count = 0
    masker = shap.maskers.Image("blur(128,128)", case.picture.shape)
    explainer = shap.Explainer(scorer.pictures, masker, seed=seed)
    values = explainer(case.picture[None].astype(np.float32), max_evals=budget, batch_size=scorer.batch,
                       outputs=[case.target], silent=True)
    return np.asarray(values.values)[0, :, :, :, 0].sum(axis=-1), scorer.count


def torch_forward(scorer: Scorer, probabilities: bool):
    """A torch-callable forward over the ORT session (Captum perturbs tensors; ORT scores them)."""
    import torch

    def forward(x):
        return torch.from_numpy(scorer.model_space(x.detach().cpu().numpy(), probabilities))

    return forward


def captum_run(scorer: Scorer, case: Case, budget: int, seed: int, kind: str):
    import torch
    from captum.attr import KernelShap, Lime

    from blackbox.segmentation import segment_means

    torch.manual_seed(seed)
    scorer.count = 0
    x = torch.from_numpy(case.x[None])
    if kind == "Lime":  # lime's superpixels and hide colour (segment means), Captum's own surrogate
        segments = case.quickshift
        baseline = torch.from_numpy(segment_means(case.x, segments)[None])
        explainer = Lime(torch_forward(scorer, True))
    else:
        segments = case.slic
        baseline = torch.from_numpy(to_model(np.broadcast_to(case.picture.reshape(-1, 3).mean(axis=0),
                                                             case.picture.shape)[None]))
        explainer = KernelShap(torch_forward(scorer, True))
    mask = torch.from_numpy(np.asarray(segments, np.int64))[None, None].expand(1, 3, *segments.shape)
    attributions = explainer.attribute(x, baselines=baseline, target=case.target, feature_mask=mask,
                                       n_samples=budget, perturbations_per_eval=scorer.batch)
    return attributions[0, 0].numpy(), scorer.count


def captum_occlusion_run(scorer: Scorer, case: Case, budget: int):
    import torch
    from captum.attr import Occlusion

    scorer.count = 0
    stride = OCCLUSION_STRIDES[budget]
    attributions = Occlusion(torch_forward(scorer, False)).attribute(
        torch.from_numpy(case.x[None]), sliding_window_shapes=(3, 16, 16), strides=(3, stride, stride), baselines=0,
        target=case.target, perturbations_per_eval=scorer.batch)
    return attributions[0].sum(0).numpy(), scorer.count


# --------------------------------------------------------------------------- references and schedules

def reference(tool: Tool, case: Case, evals: int, model_sha: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    key = [tool.name, tool.settings, case.name, case.target, model_sha, evals]
    key = json.dumps(key if tool.peer else key + ["model-space input"])
    path = CACHE / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npy")
    if path.exists():
        return np.load(path)
    log(f"    reference {tool.name} ({evals} evaluations) ...")
    seconds, heatmap = timed(compute)
    log(f"    ... {seconds:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(heatmap, np.float64))
    return np.asarray(heatmap, np.float64)


def reference_map(tool: Tool, case: Case, evals: int, model_sha: str, blackbox_lime: Tool,
                  peer_evals: int, tools: dict[str, Tool]) -> np.ndarray:
    if tool.shares:  # another design of the same estimate: the default design's reference
        tool = tools[tool.shares]
    if tool.budgets:  # occlusion: the finest stride within the reference budget
        finest = max(b for b in tool.budgets if b <= evals)
        return reference(tool, case, finest, model_sha, lambda: tool.run(case, finest, 1)[0])
    if tool.chunk and evals > tool.chunk:  # the mean of independent runs is the estimate of all their masks
        runs = -(-evals // tool.chunk)
        return reference(tool, case, runs * tool.chunk, model_sha, lambda: np.mean(
            [tool.run(case, tool.chunk, 1000 + i)[0] for i in range(runs)], axis=0))
    if tool.name == "lime_image":  # blackbox lime with seed s draws lime_image(random_state=s)'s samples
        return reference(blackbox_lime, case, evals, model_sha, lambda: blackbox_lime.run(case, evals, 1)[0])
    if tool.peer:
        evals = peer_evals
    return reference(tool, case, evals, model_sha, lambda: tool.run(case, evals, 1)[0])


def walk(tool: Tool, case: Case, ref: np.ndarray, budgets: list[int], cap: int, ref_evals: int) -> dict:
    """Runs along the schedule until the map correlates >= GOAL with the reference (seed 0; the
    reference used seed 1). Only budgets below the reference's count: a deterministic tool (shap
    Partition, occlusion) at the reference's own count would match it trivially."""
    schedule = [b for b in (tool.budgets or budgets) if b <= cap]
    if tool.budgets:
        ref_evals = max(b for b in tool.budgets if b <= ref_evals)
    schedule = [b for b in schedule if b < ref_evals]
    if schedule:  # untimed warm-up at the first budget: sessions, fused graphs, imports (every tool alike)
        tool.run(case, schedule[0], 2)
    last = {}
    for budget in schedule:
        seconds, (heatmap, evals) = timed(lambda budget=budget: tool.run(case, budget, 0))
        seconds += case.segmenting.get(tool.handed, 0.0)
        r = correlation(heatmap, ref)
        last = {"evals": int(evals), "seconds": seconds, "r": r, "reached": r >= GOAL}
        log(f"    {tool.name:<24} budget {budget:6d}: r = {r:.3f} ({seconds:.1f} s)")
        if r >= GOAL:
            return last
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=16000, help="evaluations of each reference map")
    parser.add_argument("--budgets", type=int, nargs="+", default=[125, 250, 500, 1000, 2000, 4000, 8000])
    parser.add_argument("--peer-reference", type=int, help="evaluations of a peer's own reference map (default: "
                        "--reference; the slow peers take about 0.07-0.14 s per evaluation here)")
    parser.add_argument("--reference-for", nargs="*", default=[], metavar="TOOL=N",
                        help='a peer\'s own reference size, e.g. "captum Lime=2000" (the slowest peer)')
    parser.add_argument("--peer-max", type=int, default=4000, help="largest budget a peer is run at")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help="photos in ../shared/real/images")
    parser.add_argument("--batch", type=int, default=32, help="engine batch of every tool")
    parser.add_argument("--references-only", action="store_true",
                        help="compute the missing reference maps into the cache and stop (untimed: no lock needed)")
    parser.add_argument("--only", nargs="*", default=[], help="method families to run (rise lime kernel_shap occlusion)")
    parser.add_argument("--dianna-python", default=os.environ.get("DIANNA_PYTHON"),
                        help="a Python that imports dianna, for the DIANNA RISE peer (default $DIANNA_PYTHON)")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    import blackbox
    from blackbox.inputs import prepare
    from blackbox.segmentation import segment

    options = ort.SessionOptions()  # the peers' session: blackbox's int8 precision (see blackbox.runtime)
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    scorer = Scorer(session, args.batch)
    model = blackbox.load(MODEL, preprocess="imagenet", device="cpu", batch_size=args.batch)
    model_sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()[:16]
    ours = blackbox_tools(model)
    tools = ours + peer_tools(scorer)
    if args.only:
        tools = [t for t in tools if t.method in args.only]
    if not args.only or "rise" in args.only:
        tools += dianna_tools(args.dianna_python, args.batch)
    autos = {"rise": ("n_masks", {"quasi_random": True}), "lime": ("num_samples", {}),
             "kernel_shap": ("n_samples", {})}
    rows: dict[tuple[str, str], list[dict]] = {}
    started = time.perf_counter()
    for image in args.images:
        sample = prepare(model, REAL / "images" / image)
        picture = model.preprocess.display(sample.x)
        target = int(np.argmax(model.scores(sample.x)[0]))
        x = to_model(picture[None])[0]  # every tool explains this input (blackbox gets it in model space)
        seen = model.preprocess.display(x)  # what blackbox segments: the same picture
        assert np.array_equal(seen, picture)
        quick_s, quick = timed(lambda seen=seen: segment(seen, "quickshift"))
        slic_s, slic = timed(lambda seen=seen: segment(seen, "slic"))
        case = Case(image, picture, x, target, quick, slic, {"quickshift": quick_s, "slic": slic_s})
        log(f"{image}: class {target} ({model.label(target)})")
        for tool in tools:
            own = dict(item.rsplit("=", 1) for item in args.reference_for)
            # a mean estimator's reference is built from bounded runs, so it affords the full --reference
            peer_reference = int(own.get(tool.name, args.reference if tool.chunk else
                                         args.peer_reference or args.reference))
            named = {t.name: t for t in ours}
            ref = reference_map(tool, case, args.reference, model_sha, named["blackbox lime"], peer_reference, named)
            if args.references_only:
                continue
            cap = args.peer_max if tool.peer else max(args.budgets)
            # occlusion's reference is the finest stride within --reference for both tools
            ref_evals = args.reference if not tool.peer or tool.name == "lime_image" or tool.budgets else peer_reference
            rows.setdefault((tool.method, tool.name), []).append(walk(tool, case, ref, args.budgets, cap, ref_evals))
            if not tool.peer and tool.method in autos and tool.name == f"blackbox {tool.method}":
                count, params = autos[tool.method]
                heatmap, evals, seconds = auto_run(model, case, tool.method, count, args.reference, 0, **params)
                r = correlation(heatmap, ref)
                log(f"    {tool.name + ' auto':<24} stopped at {evals}: r = {r:.3f} ({seconds:.1f} s)")
                rows.setdefault((tool.method, tool.name + " (auto)"), []).append(
                    {"evals": evals, "seconds": seconds, "r": r, "reached": r >= GOAL})
    if args.references_only:
        return 0
    print(f"model {MODEL.name}, images {', '.join(args.images)}, reference {args.reference} evaluations per tool "
          f"({args.peer_reference or args.reference} for peers with their own; {' '.join(args.reference_for)}), "
          f"goal r >= {GOAL}, batch {args.batch}, {os.cpu_count()} CPU cores, onnxruntime {ort.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}, {time.perf_counter() - started:.0f} s")
    print(f"{'method':<12} {'tool':<32} {'evals to 0.95':>14} {'s to 0.95':>10} {'r':>6} {'fastest peer/us':>16}")
    for method in ("rise", "lime", "kernel_shap", "occlusion"):
        group = {name: found for (m, name), found in rows.items() if m == method}
        if not group:
            continue

        def mean_seconds(found):
            return float(np.mean([f["seconds"] for f in found]))

        peers = {n: f for n, f in group.items() if not n.startswith("blackbox")}
        reached = {n: f for n, f in peers.items() if all(x["reached"] for x in f)}
        fastest = min((mean_seconds(f) for f in reached.values()), default=None)
        slowest_cap = max((mean_seconds(f) for f in peers.values()), default=None)
        for name, found in group.items():
            ok = all(x["reached"] for x in found)
            evals = "/".join(str(x["evals"]) for x in found) + ("" if ok else " (>)")
            seconds = mean_seconds(found)
            ratio = ""
            if name.startswith("blackbox") and ok:
                if fastest is not None:
                    ratio = f"{fastest / seconds:.1f}x"
                elif slowest_cap is not None:
                    ratio = f">{max(mean_seconds(f) for f in peers.values()) / seconds:.1f}x (no peer)"
            r = min(x["r"] for x in found)
            print(f"{method:<12} {name:<32} {evals:>14} {seconds:10.2f} {r:6.3f} {ratio:>16}")
    print("evals: per image; seconds: mean over the images of the run that first reached 0.95 (or the last "
          "run, marked (>), when none did); r: the lowest correlation of those runs; ratio: mean seconds of the "
          "fastest peer that reached 0.95 on every image over blackbox's (> 1: blackbox is faster; '(no peer)': "
          "no peer reached 0.95, so the slowest peer's last run over blackbox's, a lower bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
