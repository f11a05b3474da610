"""Occlusion end to end against the bare model, full-evaluation path and incremental path side by side.

For each real model (SqueezeNet-fp16, MobileNetV2-int8) at 224 with a 16 px window and stride 8 (730
evaluations): the bare model's time per evaluation at its best batch on pre-built inputs, the whole
``blackbox.explain(..., "occlusion", incremental=False)`` call per evaluation, the same with
``incremental=True``, their ratios to the bare model, and the largest difference between the two maps.
Sessions are warmed by one explanation of another image first (what a second image costs); those cold
first calls (session builds, the incremental plan) are printed too. ``--threads 1`` (default) runs every session on one intra-op thread and
measures process CPU time, which stays meaningful on a busy shared machine; ``--threads 0`` uses ONNX
Runtime's default threads and wall time. Run under the shared lock:
``flock /tmp/bench.lock python scripts/bench_occlusion.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import blackbox
from blackbox import runtime
from blackbox.graph.compose import X, forward_graph
from blackbox.inputs import prepare_batch

CLOCK = time.perf_counter
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
MODELS = {"squeezenet-fp16": "squeezenet1.0-fp16.onnx", "mobilenetv2-int8": "mobilenetv2-12-int8.onnx"}
IMAGES = ("kitten_224.png", "elephant.jpg")


def bare_session(model):
    return runtime.make_session(forward_graph(model.graph, model.image, model.output, dict(model.constants)),
                                model.device)


def bare_per_eval(session, x: np.ndarray, batch: int, samples: int) -> float:
    """Seconds per sample of the model alone (raw outputs) at ``batch``, inputs pre-built."""
    inputs = {X: np.ascontiguousarray(np.repeat(x[None], batch, axis=0))}
    rounds = max(1, samples // batch)
    start = CLOCK()
    for _ in range(rounds):
        session.run(None, inputs)
    return (CLOCK() - start) / (rounds * batch)


def best_batch(session, x: np.ndarray, batches=(1, 4, 8, 16, 32, 64)) -> int:
    for batch in batches:  # warm every shape first
        bare_per_eval(session, x, batch, batch)
    return min(batches, key=lambda batch: min(bare_per_eval(session, x, batch, 128) for _ in range(2)))


def explain_time(model, x: np.ndarray, incremental) -> tuple[float, np.ndarray, int]:
    start = CLOCK()
    exp = blackbox.explain(model, x, "occlusion", window=16, stride=8, incremental=incremental, progress=False)
    return CLOCK() - start, exp.attributions, exp.n_evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: process CPU time; 0: ONNX Runtime's default and wall time)")
    args = parser.parse_args()
    global CLOCK
    if args.threads:
        runtime.set_threads(args.threads)
        if args.threads == 1:
            CLOCK = time.process_time
    print(f"threads {args.threads or 'default'}, {'process CPU' if CLOCK is time.process_time else 'wall'} time")
    print(f"{'model':18} {'bare ms/eval':>12} {'(batch)':>7} {'full ms/eval':>12} {'incr ms/eval':>12} "
          f"{'full/bare':>9} {'incr/bare':>9} {'full/incr':>9} {'max|diff|':>10} {'max|map|':>9} {'cold full s':>11} "
          f"{'cold incr s':>11}")
    for label, file in MODELS.items():
        model = blackbox.load(REAL / "models" / file)
        warm, image = (prepare_batch(model, [REAL / "images" / name])[0].x for name in IMAGES)
        cold = {}
        for mode in (False, True):  # the first call of each path builds its sessions (and the plan)
            start = CLOCK()
            blackbox.explain(model, warm, "occlusion", window=16, stride=8, incremental=mode, progress=False)
            cold[mode] = CLOCK() - start
        session = bare_session(model)
        batch = best_batch(session, image)
        bare, full, incr = [], [], []
        for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits all three alike
            bare.append(bare_per_eval(session, image, batch, 730))
            seconds, full_map, n = explain_time(model, image, False)
            full.append(seconds)
            seconds, incr_map, _ = explain_time(model, image, True)
            incr.append(seconds)
        bare, full, incr = min(bare), min(full), min(incr)
        diff = float(np.abs(full_map - incr_map).max())
        print(f"{label:18} {bare * 1e3:12.3f} {batch:7d} {full / n * 1e3:12.3f} {incr / n * 1e3:12.3f} "
              f"{full / n / bare:9.3f} {incr / n / bare:9.3f} {full / incr:9.3f} {diff:10.2e} "
              f"{float(np.abs(full_map).max()):9.3f} {cold[False]:11.2f} {cold[True]:11.2f}", flush=True)
    print(f"evaluations per explanation: {n} (window 16, stride 8, 224 x 224); times: best of {args.repeats} interleaved rounds")


if __name__ == "__main__":
    main()
