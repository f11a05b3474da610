"""Speed of blackbox's gradient graphs on the CPU, measured side by side in one run (not a test).

(1) backward vs forward. The ResNet-like network of tests/torch_models.py (random weights), exported
    with the TorchScript exporter (opset 17), batch 32. Timed: one ``InferenceSession.run`` of the
    gradient graph exactly as ``GradientEngine`` builds it (image -> scores and d score[target] /
    d image: forward and backward in one graph) against one run of the forward graph as
    ``Model.scores`` builds it (image -> scores). Same ONNX Runtime options (ORT_ENABLE_ALL), same
    intra-op threads, same inputs, runs alternated; the figure is best-of-R gradient time / best-of-R
    forward time (the median of the paired ratios is printed too). PyTorch's own ratio on the same
    network and batch (forward under no_grad vs forward + input gradient) is printed beside it. Because wall-clock time on a shared
    machine is noisy, the same ratio is also printed from ONNX Runtime's profiler: the sum over nodes of
    each node's best kernel time. ``--profile`` adds the per-op-type split of the gradient graph.
(2) integrated gradients, 50 Gauss-Legendre steps, one image: ``blackbox.explain(model, x,
    "integrated_gradients", score="raw")`` (everything: baseline, batched gradient runs, end-point
    scores) against Captum's ``IntegratedGradients(net).attribute(x, target, n_steps=50)`` on the PyTorch
    original with ``torch.set_num_threads(threads)``; alternated, best of R.

    python scripts/bench_gradients.py --sizes 32,224 --threads 2

The timings are wall-clock on a shared machine: compare ratios taken in the same run only. To measure
another version of the differentiator, put its checkout first on PYTHONPATH (the script prints which
``blackbox`` it imported).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the torch model builders

import onnxruntime as ort
import torch
from torch_models import MODELS, LogitsOnly, export_logits

import blackbox
from blackbox.graph.autodiff import build_gradient_model
from blackbox.graph.compose import SCORES, X, forward_graph
from blackbox.runtime import _session_options

TARGET = 3


def session(model, threads: int, profile: str | None = None) -> ort.InferenceSession:
    options = _session_options()  # blackbox's own options (ORT_ENABLE_ALL)
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def alternate(functions: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, calls interleaved so that load changes hit all alike."""
    for fn in functions.values():
        fn()  # warm-up: arenas, thread pools
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def build(size: int):
    torch.manual_seed(0)
    net = MODELS["resnet"][0]().eval()
    proto = export_logits(net, torch.randn(2, 3, size, size), "torchscript")
    model = blackbox.load(proto, device="cpu")
    return LogitsOnly(net).eval(), model


def backward_vs_forward(size: int, batch: int, threads: int, repeats: int, profile: bool) -> None:
    _, model = build(size)
    fwd = forward_graph(model.graph, model.image, model.output, model.constants, score="raw")
    grad = build_gradient_model(fwd, input_name=X, score_name=SCORES)
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    seed = np.zeros((batch, model.num_classes), np.float32)
    seed[:, TARGET] = 1.0
    sf, sg = session(fwd, threads), session(grad.model, threads)
    times = alternate({"forward": lambda: sf.run(None, {X: x}),
                       "gradient": lambda: sg.run(None, {X: x, "seed": seed})}, repeats)
    best_f, best_g = min(times["forward"]), min(times["gradient"])
    ratios = [g / f for f, g in zip(times["forward"], times["gradient"])]
    print(f"(1) ResNet-like {size}x{size}, batch {batch}, {threads} threads, best of {repeats}: "
          f"forward {best_f * 1e3:.2f} ms, forward+backward {best_g * 1e3:.2f} ms -> ratio {best_g / best_f:.2f} "
          f"(median of paired ratios {statistics.median(ratios):.2f}); "
          f"nodes {len(fwd.graph.node)} forward, {len(grad.model.graph.node)} gradient")
    torch_backward_vs_forward(size, x, threads, repeats, best_g)
    kernel_f, _ = kernel_times(fwd, {X: x}, threads, repeats)
    kernel_g, by_op = kernel_times(grad.model, {X: x, "seed": seed}, threads, repeats)
    print(f"    ONNX Runtime profiler, sum over nodes of each node's best kernel time: forward {kernel_f / 1e3:.2f} ms, "
          f"forward+backward {kernel_g / 1e3:.2f} ms -> ratio {kernel_g / kernel_f:.2f}")
    if profile:
        print("    gradient graph kernel time by op: "
              + ", ".join(f"{op} {100 * t / kernel_g:.0f}%" for op, t in by_op.most_common(10)))


def torch_backward_vs_forward(size: int, x: np.ndarray, threads: int, repeats: int, ours: float) -> None:
    """The same ratio for PyTorch on the same network and inputs: forward under no_grad against forward
    plus the input gradient of score[target] (parameters frozen: the least work autograd can do)."""
    net, _ = build(size)
    net.requires_grad_(False)
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)

    def forward():
        with torch.no_grad():
            net(xt)

    def gradient():
        xi = xt.clone().requires_grad_(True)
        net(xi)[:, TARGET].sum().backward()

    times = alternate({"forward": forward, "gradient": gradient}, repeats)
    best_f, best_g = min(times["forward"]), min(times["gradient"])
    print(f"    PyTorch on the same network and batch: forward {best_f * 1e3:.2f} ms, forward+backward "
          f"{best_g * 1e3:.2f} ms -> ratio {best_g / best_f:.2f}; blackbox's forward+backward / PyTorch's "
          f"{ours / best_g:.2f}")


def kernel_times(model, feeds: dict, threads: int, repeats: int) -> tuple[float, collections.Counter]:
    """Sum over nodes of each node's best kernel time (microseconds) from ONNX Runtime's profiler, and
    the same split by op type: less sensitive to a loaded machine than wall-clock time."""
    with tempfile.TemporaryDirectory() as tmp:
        sp = session(model, threads, profile=os.path.join(tmp, "run"))
        for _ in range(repeats + 1):
            sp.run(None, feeds)
        with open(sp.end_profiling()) as handle:
            events = json.load(handle)
    per_node = collections.defaultdict(list)
    op_of = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event["dur"])
            op_of[event["name"]] = event["args"]["op_name"]
    by_op = collections.Counter()
    for name, durations in per_node.items():
        by_op[op_of[name]] += min(durations)
    return float(sum(by_op.values())), by_op


def integrated_gradients(size: int, threads: int, repeats: int) -> None:
    from captum.attr import IntegratedGradients

    net, model = build(size)
    torch.set_num_threads(threads)
    x = np.random.default_rng(1).normal(size=(3, size, size)).astype(np.float32)
    xt = torch.tensor(x[None])
    ig = IntegratedGradients(net)
    ours = lambda: blackbox.explain(model, x, "integrated_gradients", target=TARGET, score="raw", n_steps=50)
    theirs = lambda: ig.attribute(xt, target=TARGET, n_steps=50)
    check = np.abs(ours().attributions - theirs().detach().numpy()[0]).max()
    times = alternate({"blackbox": ours, "captum": theirs}, repeats)
    best_b, best_c = min(times["blackbox"]), min(times["captum"])
    print(f"(2) integrated gradients, 50 steps, ResNet-like {size}x{size}, {threads} threads, best of {repeats}: "
          f"blackbox {best_b * 1e3:.1f} ms, Captum {best_c * 1e3:.1f} ms -> blackbox / Captum {best_b / best_c:.2f} "
          f"(max |difference| {check:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32,224", help="input sizes (the builder's own is 32)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--ig-repeats", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-ig", action="store_true")
    args = parser.parse_args()
    print(f"blackbox from {Path(blackbox.__file__).parent}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    for size in (int(s) for s in args.sizes.split(",")):
        backward_vs_forward(size, args.batch, args.threads, args.repeats, args.profile)
        if not args.skip_ig:
            integrated_gradients(size, args.threads, args.ig_repeats)


if __name__ == "__main__":
    main()
