"""One saliency backward on a ResNet-50-sized network: blackbox's gradient graph vs torch autograd (not a test).

torchvision cannot be imported against the CPU torch wheel here, so the network is built in this file:
ResNet-50's shape (7x7/2 stem, 3x3/2 max pool, bottleneck blocks [3, 4, 6, 3], widths 64-2048, stride on
the 3x3 conv as torchvision does, 1000 classes), random weights and non-trivial BatchNorm statistics,
exported with the TorchScript exporter (opset 17, dynamic batch).

Timed side by side, alternated, same intra-op threads, best of R:

* blackbox: one ``InferenceSession.run`` of the gradient graph as ``GradientEngine`` builds it (image ->
  raw score and d score[target] / d image, forward and backward in one graph);
* torch: ``net(x)[:, target].sum().backward()`` with ``x.requires_grad_()`` — once with the parameters
  frozen (input gradient only, the least work autograd can do) and once as Captum's ``Saliency`` runs it
  (parameters requiring gradients, as a loaded model has them).

Both float32 gradients are compared with torch's float64 gradient (near-ties of ReLU and max-pool
decisions make float32 itself differ from it by about 1e-2 of the largest entry on random weights). ``--profile`` prints the gradient graph's kernel time by op
type from ONNX Runtime's profiler.

    python scripts/bench_backward.py --batches 1,8 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import copy
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import blackbox
from blackbox.graph.autodiff import build_gradient_model
from blackbox.graph.compose import SCORES, X, forward_graph
from bench_gradients import alternate, session  # noqa: E402  (scripts/ is on sys.path)
from torch_models import bn  # noqa: E402  (bench_gradients puts tests/ on sys.path)

nn = torch.nn
TARGET = 7


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), bn(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), bn(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), bn(cout))
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


class ResNet50Shaped(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), bn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for b in range(blocks):
                layers.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1))
                cin = 4 * width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        with torch.no_grad():  # keep activations O(1) through 16 residual additions
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    m.weight.mul_(0.5)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def export(net: nn.Module, size: int) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = io.BytesIO()
        torch.onnx.export(net, (torch.randn(1, 3, size, size),), f, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def torch_saliency(net: nn.Module, x: torch.Tensor):
    def run():
        xi = x.clone().requires_grad_(True)
        net(xi)[:, TARGET].sum().backward()
        return xi.grad
    return run


def by_op(model: onnx.ModelProto, feeds: dict, threads: int) -> collections.Counter:
    """Kernel time (best of 3 per node, microseconds) by op type, from ONNX Runtime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        sp = session(model, threads, profile=os.path.join(tmp, "run"))
        for _ in range(4):
            sp.run(None, feeds)
        with open(sp.end_profiling()) as handle:
            events = json.load(handle)
    per_node, op_of = collections.defaultdict(list), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event["dur"])
            op_of[event["name"]] = event["args"]["op_name"]
    out = collections.Counter()
    for name, durations in per_node.items():
        out[op_of[name]] += min(durations)
    return out


def compare(batch: int, args, model, net: nn.Module, frozen: nn.Module, sg, sf, grad_model) -> None:
    """Time and check one batch size: blackbox's gradient graph, torch autograd (frozen and not)."""
    x = np.random.default_rng(batch).normal(size=(batch, 3, args.size, args.size)).astype(np.float32)
    seed = np.zeros((batch, model.num_classes), np.float32)
    seed[:, TARGET] = 1.0
    xt = torch.from_numpy(x)

    def ours():
        return sg.run(None, {X: x, "seed": seed})[1]

    def forward():
        return sf.run(None, {X: x})

    frozen_run, captum_run = torch_saliency(frozen, xt), torch_saliency(net, xt)
    exact = torch_saliency(copy.deepcopy(frozen).double(), xt.double())().numpy()  # what both approximate
    scale = max(float(np.abs(exact).max()), 1e-30)
    ours_err = float(np.abs(ours() - exact).max()) / scale
    torch_err = float(np.abs(frozen_run().numpy() - exact).max()) / scale
    times = alternate({"blackbox": ours, "torch": frozen_run, "torch_params": captum_run,
                       "forward": forward}, args.repeats)
    best = {k: min(v) for k, v in times.items()}
    print(f"batch {batch}: blackbox forward+backward {best['blackbox'] * 1e3:.0f} ms, "
          f"torch autograd {best['torch'] * 1e3:.0f} ms (parameters frozen), "
          f"{best['torch_params'] * 1e3:.0f} ms (parameters requiring grad) -> blackbox / torch "
          f"{best['blackbox'] / best['torch']:.2f} and {best['blackbox'] / best['torch_params']:.2f}; "
          f"blackbox forward {best['forward'] * 1e3:.0f} ms (backward / forward "
          f"{best['blackbox'] / best['forward']:.2f}); max error relative to float64 autograd: blackbox {ours_err:.1e}, "
          f"torch float32 {torch_err:.1e}")
    if args.profile:
        ops = by_op(grad_model, {X: x, "seed": seed}, args.threads)
        total = sum(ops.values())
        print("    gradient graph kernel time by op: "
              + ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in ops.most_common(10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ResNet50Shaped().eval()
    model = blackbox.load(export(net, args.size), device="cpu")
    fwd = forward_graph(model.graph, model.image, model.output, model.constants, score="raw")
    grad = build_gradient_model(fwd, input_name=X, score_name=SCORES)
    sg, sf = session(grad.model, args.threads), session(fwd, args.threads)
    frozen = ResNet50Shaped().eval()
    frozen.load_state_dict(net.state_dict())
    frozen.requires_grad_(False)
    print(f"blackbox from {Path(blackbox.__file__).parent}, onnxruntime {ort.__version__}, torch {torch.__version__}; "
          f"ResNet-50-shaped, {args.size}x{args.size}, {args.threads} threads, best of {args.repeats}")
    for batch in (int(b) for b in args.batches.split(",")):
        compare(batch, args, model, net, frozen, sg, sf, grad.model)


if __name__ == "__main__":
    main()
