"""Engine overhead: time per evaluation through blackbox's perturbation graph vs the bare model.

Bare model: the ONNX file in its own ONNX Runtime session, fed pre-built inputs (no blending, no
masks), at its best batch size. blackbox: ``Model.score_masks`` with small grid masks (what RISE and
occlusion send), which upsamples, blends, runs the model and picks the target score inside one graph.
Both are measured in the same run, alternating, and the ratio is printed.

    python scripts/bench_engine.py ../shared/real/models/mobilenetv2-12-int8.onnx --preset imagenet
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import onnxruntime as ort

import blackbox
from blackbox.masks import linear_matrix
from blackbox.runtime import _session_options


CLOCK = time.perf_counter


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=256, help="evaluations per timed round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both sessions; 1 measures process CPU time, which stays "
                             "meaningful on a busy machine (default: ONNX Runtime's default and wall time)")
    args = parser.parse_args()
    global CLOCK
    if args.threads:
        blackbox.runtime.set_threads(args.threads)
        if args.threads == 1:
            CLOCK = time.process_time

    model = blackbox.load(args.model, preprocess=args.preset, device=args.device)
    spec = model.image
    raw = model.proto
    in_shape = {"NCHW": (spec.channels, spec.height, spec.width), "NHWC": (spec.height, spec.width, spec.channels),
                "NHW": (spec.height, spec.width)}[model.layout]
    dtype = ort_dtype = np.float16 if spec.elem_type == 10 else np.float32
    del ort_dtype
    bare = ort.InferenceSession(model.graph.SerializeToString(), _session_options(), providers=model.device.providers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(spec.channels, spec.height, spec.width)).astype(np.float32)
    baseline = np.zeros_like(x)
    masks = (rng.random((args.n, 1, 7, 7)) < 0.5).astype(np.float32)
    ry, rx = linear_matrix(7, spec.height), linear_matrix(7, spec.width)
    clock = "process CPU time" if CLOCK is time.process_time else "wall time"
    print(f"model {args.model}: {model.info()['precision']}, input {list(in_shape)}, provider {model.device}, "
          f"{args.n} evaluations per round, best of {args.repeats}, threads {args.threads or 'default'}, {clock}")

    sizes = [int(s) for s in args.batch_sizes.split(",")] if model.batchable else [1]
    bare_per = {}
    for size in sizes:
        batch = rng.normal(size=(size,) + in_shape).astype(dtype)
        rounds = max(1, args.n // size)
        bare.run(None, {spec.name: batch})  # warm-up
        t = best_of(lambda: [bare.run(None, {spec.name: batch}) for _ in range(rounds)], args.repeats)
        bare_per[size] = t / (rounds * size)
        print(f"  bare model   batch {size:>3}: {bare_per[size] * 1e3:8.3f} ms / sample")
    best_size = min(bare_per, key=bare_per.get)

    # then bare (at its best size) and blackbox (same size, and its own default) alternate, round by
    # round, so that drift in machine load hits both alike; each keeps its best round
    batch = rng.normal(size=(best_size,) + in_shape).astype(dtype)
    rounds = max(1, args.n // best_size)
    sizes_ours = sorted({best_size, model.batch_size()})
    runners = {}
    for size in sizes_ours:
        model._perturb_runners.clear()
        model.description = dataclasses.replace(model.description, requested_batch=size)
        model.score_masks(x, masks[:size], baseline=baseline, targets=[0], score="probability", ry=ry, rx=rx)
        runners[size] = dict(model._perturb_runners)
    bare_best = bare_per[best_size]
    ours_per = {size: float("inf") for size in sizes_ours}
    for _ in range(args.repeats):
        bare_best = min(bare_best, best_of(lambda: [bare.run(None, {spec.name: batch}) for _ in range(rounds)], 1)
                        / (rounds * best_size))
        for size in sizes_ours:
            model._perturb_runners = runners[size]
            t = best_of(lambda: model.score_masks(x, masks, baseline=baseline, targets=[0], score="probability",
                                                  ry=ry, rx=rx), 1)
            ours_per[size] = min(ours_per[size], t / args.n)
    for size in sizes_ours:
        print(f"  blackbox     batch {size:>3}: {ours_per[size] * 1e3:8.3f} ms / evaluation")
    ours_best = min(ours_per.values())
    print(f"bare model best: {bare_best * 1e3:.3f} ms/sample (batch {best_size}); "
          f"blackbox best: {ours_best * 1e3:.3f} ms/evaluation")
    print(f"overhead ratio (blackbox / bare): {ours_best / bare_best:.3f}x   (target <= 1.05x)")
    del raw


if __name__ == "__main__":
    main()
