"""Data-set throughput of blackbox on real photos: one by one, batched across images, the report on the local
engine and on Ray, and a plain Captum loop, side by side in one run.

Not a test: figures depend on the machine and on what else runs on it; compare ratios taken in the same run
only. Every column explains the same photos (``../shared/real/images``: the ``.jpg``/``.png`` files without
``digit_*``) with the same methods and parameters on ``mobilenetv2-12-int8.onnx`` (``preprocess="imagenet"``,
ImageNet synset labels), each image for its top-1 class, on CPU:

* one by one: ``blackbox.explain(model, path, method, **params)`` per image (what the report did before);
* batched: ``blackbox.explain_many(model, paths, method, **params)`` (images share gradient-graph and
  forward calls; the next batch is decoded while one is evaluated);
* the report end to end: ``blackbox.report.run_report(model, paths, ReportConfig(out=tmp, methods=[...],
  params=..., metrics=[]))``: every image x method, PNG/NPZ/JSON records, results.csv/json/parquet, summary,
  findings and page; ``metrics=[]`` (no deletion/insertion, which would cost more model calls than some
  methods) unless ``--metrics default`` (the report's defaults, deletion and insertion). Engines:
  ``local``, and ``ray`` with 1 and 2 workers on the same cores. Ray "cold" lets the engine start and stop
  its own local Ray instance (Ray start included); Ray "warm" first starts the instance the way the engine
  does and runs a small warm-up report, then times the run; the engine still starts its actors (one
  process per worker, the model loaded and its sessions built there) inside every run: that cost is
  in both Ray figures;
* Captum on the plain-torch MobileNetV2 of ``scripts/bench_visualize.py`` (torchvision's architecture, random
  weights, batch-norm statistics from random batches, eval mode): ``IntegratedGradients`` with the same
  ``n_steps`` and Gauss-Legendre points (Captum's default, and blackbox's) and ``LayerGradCam`` on the last
  conv block (``features[-1]``, what blackbox's grad_cam taps by default), one image per call in a loop
  (the plain Captum way), and for context a batch of images per call with one target per image. The input
  is prepared by blackbox (same decode and resize) inside the timed loop, as ``blackbox.explain`` does.

Same intra-op threads for ONNX Runtime (``blackbox.runtime.set_threads``) and torch (``torch.set_num_threads``),
``--threads`` (default: the CPUs this process may use); Ray actors get the engine's share of the cluster's
CPUs each (2 CPUs: 1 worker x 2 threads, or 2 workers x 1 thread). Before timing, every method runs once
one by one and once batched (sessions built, arenas warm), and a small report runs on each engine
(first-use imports and page code). One timed pass per column, in the order printed.

Targets from the issue: batched gradient methods (grad_cam, integrated_gradients) at least 3x the one-by-one
throughput; the Ray engine on the same cores within 1.15x of the local engine's time (warm).

Usage: ``python scripts/bench_report.py [--limit N] [--threads N] [--metrics none|default] [--skip ray captum]``
(about ten minutes on two cores, most of it the five report runs).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench_visualize: torch's threads do not spin

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
MODEL = REAL / "models" / "mobilenetv2-12-int8.onnx"
LABELS = REAL / "labels" / "imagenet-synsets.txt"
IMAGES = REAL / "images"
METHODS = ("occlusion", "grad_cam", "integrated_gradients", "rise")
GRADIENT = ("grad_cam", "integrated_gradients")
PARAMS = {"occlusion": {"window": 32, "stride": 16}, "grad_cam": {}, "integrated_gradients": {"n_steps": 16},
          "rise": {"n_masks": 500}}
BATCHED_TARGET = 3.0
RAY_TARGET = 1.15
CAPTUM_BATCH = 4  # images per Captum call in the batched Captum column (IG: 4 x n_steps rows)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def photos(limit: int | None) -> list[str]:
    found = sorted(str(p) for p in IMAGES.iterdir()
                   if p.suffix.lower() in (".jpg", ".png") and not p.name.startswith("digit_"))
    return found[:limit] if limit else found


def load_bench_visualize():
    """scripts/bench_visualize.py as a module (its plain-torch MobileNetV2 and torch_model)."""
    spec = importlib.util.spec_from_file_location("bench_visualize", ROOT / "scripts" / "bench_visualize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_visualize"] = module
    spec.loader.exec_module(module)
    return module


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(threads: int, paths: list[str], metrics_text: str) -> list[str]:
    import onnxruntime as ort

    import blackbox

    cpu = load_bench_visualize().cpu_name()
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    params = "; ".join(f"{m} {', '.join(f'{k}={v}' for k, v in PARAMS[m].items()) or 'defaults'}" for m in METHODS)
    return [
        "Data-set throughput: images x methods per second, one by one vs batched vs the report (local, Ray) vs Captum",
        (f"{cpu}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {threads} intra-op threads for ONNX "
         f"Runtime and torch (no spinning: OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), load average "
         f"{os.getloadavg()[0]:.1f}"),
        (f"onnxruntime {ort.__version__}, torch {version('torch')}, captum {version('captum')}, ray {version('ray')}, "
         f"numpy {np.__version__}; blackbox {getattr(blackbox, '__version__', '?')} at {commit}"
         f"{' + uncommitted changes' if dirty else ''}"),
        f"model {MODEL.name} (preprocess imagenet), {len(paths)} photos from {IMAGES} (no digit_*), top-1 target each",
        f"parameters: {params}; report metrics: {metrics_text}",
    ]


# --------------------------------------------------------------------------- blackbox columns

def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def warm_up(model, paths: list[str]) -> None:
    import blackbox

    for method in METHODS:
        blackbox.explain(model, paths[0], method, **PARAMS[method])
        list(blackbox.explain_many(model, paths[:2], method, **PARAMS[method]))


def one_by_one(model, paths: list[str], method: str) -> float:
    import blackbox

    def go():
        for path in paths:
            blackbox.explain(model, path, method, **PARAMS[method])

    return timed(go)


def batched(model, paths: list[str], method: str) -> float:
    import blackbox

    def go():
        for result in blackbox.explain_many(model, paths, method, **PARAMS[method]):
            if isinstance(result, Exception):
                raise result

    return timed(go)


def report(model, paths: list[str], metrics, engine: str, workers: int | None = None,
           methods=METHODS) -> tuple[float, dict]:
    from blackbox.report import run_report
    from blackbox.report.run import ReportConfig

    folder = tempfile.mkdtemp(prefix="bench-report-")
    try:
        config = ReportConfig(out=folder, methods=list(methods), params={m: dict(PARAMS[m]) for m in methods},
                              metrics=metrics, engine=engine, workers=workers)
        start = time.perf_counter()
        summary = run_report(model, paths, config, progress=False)
        seconds = time.perf_counter() - start
        if summary.failed:
            bad = next(r for r in summary.records if r.get("status") != "ok")
            raise RuntimeError(f"report ({engine}) had {summary.failed} failed records, e.g. {bad.get('error')}")
        return seconds, dict(summary.engine)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ray_columns(model, paths: list[str], metrics, worker_counts: list[int]) -> dict[str, float]:
    """{'ray N cold': s, 'ray N warm': s}: cold lets the engine start/stop Ray; warm reuses an instance
    started here the way the engine starts one, after a small warm-up report."""
    import ray

    from blackbox.report.engines import ray as ray_engine
    from blackbox.report.run import ReportConfig

    out: dict[str, float] = {}
    if ray.is_initialized():
        ray.shutdown()
    for n in worker_counts:
        log(f"report, ray engine, {n} worker(s), cold (the engine starts Ray) ...")
        out[f"ray {n} cold"], facts = report(model, paths, metrics, "ray", n)
        log(f"  {out[f'ray {n} cold']:.1f} s, {facts}")
    log("starting a local Ray instance the way the engine does ...")
    start = time.perf_counter()
    ray_engine._connect(ReportConfig(out="", methods=[]))  # the engine's own init (loopback, no dashboard)
    log(f"  Ray up in {time.perf_counter() - start:.1f} s")
    try:
        for n in worker_counts:
            log(f"report, ray engine, {n} worker(s), warm-up run (2 images, grad_cam) ...")
            report(model, paths[:2], metrics, "ray", n, methods=("grad_cam",))
            log(f"report, ray engine, {n} worker(s), warm ...")
            out[f"ray {n} warm"], facts = report(model, paths, metrics, "ray", n)
            log(f"  {out[f'ray {n} warm']:.1f} s, {facts}")
    finally:
        ray.shutdown()
    return out


# --------------------------------------------------------------------------- Captum

def captum_columns(model, paths: list[str], threads: int) -> dict[str, dict[str, float]]:
    """{'loop': {method: s}, 'batched': {method: s}} for the gradient methods."""
    import torch
    from captum.attr import IntegratedGradients, LayerGradCam

    from blackbox.inputs import prepare

    torch.set_num_threads(threads)
    net = load_bench_visualize().torch_model("mobilenet_v2")
    for p in net.parameters():
        p.requires_grad_(False)
    ig = IntegratedGradients(net)
    cam = LayerGradCam(net, net.features[-1])
    n_steps = PARAMS["integrated_gradients"]["n_steps"]

    def inputs(chunk: list[str]) -> tuple[torch.Tensor, list[int]]:
        x = torch.from_numpy(np.stack([prepare(model, path).x for path in chunk]))
        with torch.no_grad():
            targets = net(x).argmax(dim=1).tolist()  # top-1, as blackbox explains (one forward)
        return x, targets

    def run(method: str, chunk: list[str]):
        x, targets = inputs(chunk)
        if method == "integrated_gradients":
            return ig.attribute(x, baselines=0.0, target=targets, n_steps=n_steps, method="gausslegendre")
        return cam.attribute(x, target=targets)

    for method in GRADIENT:  # warm-up
        run(method, paths[:1])
        run(method, paths[:CAPTUM_BATCH])
    out: dict[str, dict[str, float]] = {"loop": {}, "batched": {}}
    for method in GRADIENT:
        log(f"captum {method}, one image per call ...")
        out["loop"][method] = timed(lambda m=method: [run(m, [p]) for p in paths])
        log(f"captum {method}, {CAPTUM_BATCH} images per call ...")
        out["batched"][method] = timed(lambda m=method: [run(m, paths[i:i + CAPTUM_BATCH])
                                                for i in range(0, len(paths), CAPTUM_BATCH)])
    return out


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="intra-op threads for ONNX Runtime and torch (default: CPUs available)")
    parser.add_argument("--limit", type=int, help="use the first N photos only (a smoke run)")
    parser.add_argument("--metrics", choices=["none", "default"], default="none",
                        help="report metrics: none (metrics=[], default) or the report's defaults")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts (default 1 2)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["report", "ray", "captum"], help="parts to leave out")
    args = parser.parse_args(argv)
    if not MODEL.exists():
        print(f"model not found: {MODEL} (expected ../shared/real beside the repo)")
        return 1

    import blackbox
    from blackbox import runtime

    runtime.set_threads(args.threads)
    paths = photos(args.limit)
    metrics = [] if args.metrics == "none" else None
    metrics_text = ("none (metrics=[]: explanations, files, results and page only)" if metrics == [] else
                    "the report's defaults (metrics=None: deletion, insertion)")
    lines = header(args.threads, paths, metrics_text)
    model = blackbox.load(MODEL, preprocess="imagenet", labels=LABELS, device="cpu")
    lines.append(f"engine batch size {model.batch_size()}; explain_many batches of "
                 f"{min(64, max(2, 2 * (model.batch_size() // 2)))} images (its default)")
    log("\n".join(lines))
    log("warm-up ...")
    warm_up(model, paths)

    single: dict[str, float] = {}
    many: dict[str, float] = {}
    for method in METHODS:
        log(f"{method}: one by one ...")
        single[method] = one_by_one(model, paths, method)
        log(f"{method}: batched ...")
        many[method] = batched(model, paths, method)
        log(f"  {single[method]:.2f} s vs {many[method]:.2f} s")
    reports: dict[str, float] = {}
    notes: list[str] = []
    if "report" not in args.skip:
        log("report, local engine, warm-up run (2 images, grad_cam) ...")
        report(model, paths[:2], metrics, "local", methods=("grad_cam",))
        log("report, local engine ...")
        reports["local"], facts = report(model, paths, metrics, "local")
        log(f"  {reports['local']:.1f} s, {facts}")
    if "ray" not in args.skip:
        try:
            import ray  # noqa: F401
        except ImportError:
            notes.append('Ray columns skipped: ray is not installed (pip install "blackbox-explain[ray]")')
        else:
            reports |= ray_columns(model, paths, metrics, args.workers)
    captum = {"loop": {}, "batched": {}}
    if "captum" not in args.skip:
        try:
            captum = captum_columns(model, paths, args.threads)
        except ImportError as error:
            notes.append(f"Captum columns skipped: {error}")

    n = len(paths)
    print("\n".join(lines))
    print()

    def rate(seconds: float | None, count: int) -> str:
        return f"{count / seconds:9.2f}" if seconds else f"{'n/a':>9}"

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:7.2f}x" if a and b else f"{'n/a':>8}"

    cols = (f"{'method':22} {'1-by-1':>9} {'batched':>9} {'batched/1-by-1':>15} {'Captum loop':>12} "
            f"{'Captum x' + str(CAPTUM_BATCH):>10} {'blackbox batched/Captum loop':>29}")
    print(f"images per second ({n} photos, one timed pass each):")
    print(cols)
    print("-" * len(cols))
    for method in METHODS:
        loop, cb = captum["loop"].get(method), captum["batched"].get(method)
        print(f"{method:22} {rate(single[method], n)} {rate(many[method], n)} {ratio(single[method], many[method]):>15} "
              f"{rate(loop, n):>12} {rate(cb, n):>10} {ratio(loop, many[method]):>29}")
    total_single, total_many = sum(single.values()), sum(many.values())
    print(f"{'all 4 (images x methods)':22} {rate(total_single, n * len(METHODS))} {rate(total_many, n * len(METHODS))} "
          f"{ratio(total_single, total_many):>15}")
    print("Captum: plain-torch MobileNetV2 (float32, random weights) vs blackbox on the int8 ONNX file (gradients "
          "through its dequantized float copy): similar cost, not the same model")

    if reports:
        print()
        keys = ["local"] + [k for w in args.workers for k in (f"ray {w} warm", f"ray {w} cold")]
        keys = [k for k in keys if k in reports]
        print(f"the report end to end, all 4 methods ({n * len(METHODS)} records), images x methods per second:")
        cols = f"{'engine':14} {'seconds':>8} {'rate':>9} {'time / local':>13}"
        print(cols)
        print("-" * len(cols))
        for key in keys:
            print(f"{key:14} {reports[key]:8.1f} {rate(reports[key], n * len(METHODS))} "
                  f"{ratio(reports[key], reports.get('local')):>13}")
        print(f"{'(explain_many)':14} {total_many:8.1f} {rate(total_many, n * len(METHODS))} "
              f"{ratio(total_many, reports.get('local')):>13}   the batched column above: the methods alone")
        print("ray N warm: Ray already running (started as the engine starts it, a warm-up report run first); "
              "the run still starts N actors\nand loads the model in each. ray N cold: the engine starts and stops "
              "its own local Ray instance inside the run.")

    print()
    print("targets (issue 10):")
    for method in GRADIENT:
        r = single[method] / many[method]
        print(f"  batched {method} >= {BATCHED_TARGET:g}x one by one: {r:.2f}x -> "
              f"{'met' if r >= BATCHED_TARGET else 'NOT met'} on this machine")
    for w in args.workers:
        for kind in ("warm", "cold"):
            key = f"ray {w} {kind}"
            if key in reports and "local" in reports:
                r = reports[key] / reports["local"]
                print(f"  Ray {w} worker(s) ({kind}) within {RAY_TARGET:g}x of the local engine: {r:.2f}x -> "
                      f"{'met' if r <= RAY_TARGET else 'NOT met'}" + ("" if kind == "warm" else " (cold: Ray start "
                                                                        "included; the target is read warm)"))
    if any(single[m] / many[m] < BATCHED_TARGET for m in GRADIENT):
        print(f"  batching across images gives {', '.join(f'{m} {single[m] / many[m]:.2f}x' for m in GRADIENT)} here: "
              f"on {os.cpu_count()} CPU cores a gradient pass costs about linearly in its rows, so stacking images "
              "saves only\n  per-call overhead; the 3x is for hardware where one row leaves the device idle "
              "(many cores, a GPU), not measured here")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
