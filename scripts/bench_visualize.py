"""Speed of activation maximization: blackbox on ONNX models against Lucent on PyTorch, side by side in one run.

Not a test: figures depend on the machine and on what else runs on it; compare ratios taken in the same
run only. For each pair, the same objective (one class logit, class ``--target``, 224 x 224, one image)
with the same recipe (Fourier parametrisation with colour decorrelation, Lucid/Lucent's standard
transforms, Adam at lr 0.05):

* blackbox: ``blackbox.visualize.activation_maximization(model, target=..., steps=S)`` with its defaults
  on the real ONNX models ``mobilenetv2-12-int8.onnx`` (gradients through its dequantized float copy)
  and ``squeezenet1.0-fp16.onnx`` (through its float32 up-cast copy). The gradient sessions are built
  before the timing (their build time is printed separately) and a warm-up call runs first; a timed
  call is the whole function (loop, final evaluation, probabilities), so steps/s = S / its wall time.
* Lucent: ``lucent.optvis.render.render_vis(net, "labels:K", param_f=lambda: param.image(224),
  thresholds=(S,), show_image=False, progress=False)`` (Lucent's defaults: ``param.image`` fft +
  decorrelate, ``transform.standard_transforms`` + its ImageNet normalisation, Adam lr 0.05) on
  torchvision's MobileNetV2 and SqueezeNet 1.0 architectures, written out below in plain torch (same
  modules, same layer order, torchvision's initialisation; random weights, eval mode): the torchvision
  wheel on PyPI is built against the CUDA torch and does not import next to the CPU torch wheel.
* context: the bare model at batch 1: ONNX Runtime forward of the ONNX file as given (``Model.scores``),
  blackbox's objective gradient session alone (one forward+backward: the floor of an AM step), torch
  forward and forward+backward of the PyTorch model.

Same intra-op threads everywhere (``--threads``, default: the CPUs this process may use):
``blackbox.runtime.set_threads`` for ONNX Runtime, ``torch.set_num_threads`` for torch. Timed calls of
the two tools alternate so that load changes hit both alike; the best of ``--repeats`` is reported.

Lucent (torch-lucent 0.1.8) pins ``kornia<=0.4.1`` and requires torchvision and IPython, so it is kept
out of the project's dependencies. Install it beside the environment, without its dependencies::

    pip install --no-deps --target /tmp/lucent torch-lucent==0.1.8 kornia==0.4.1 decorator
    python scripts/bench_visualize.py --lucent-path /tmp/lucent      # or LUCENT_PATH=/tmp/lucent

(kornia 0.4.1 works with torch 2.13 for what Lucent uses.) Lucent imports two things it does not need
here at module level: ``torchvision.transforms.Normalize`` and ``IPython.display``. When they do not
import, this script puts small stand-ins in ``sys.modules`` before importing Lucent: a ``Normalize`` doing
torchvision's arithmetic, ``(t - mean[:, None, None]) / std[:, None, None]``, and an ``IPython.display``
whose functions do nothing (Lucent only calls it to show images, which is off). The header says which
stand-ins were used. Without Lucent the Lucent column is skipped with a message.

Usage: ``python scripts/bench_visualize.py [--steps 32] [--repeats 3] [--threads N] [--lucent-path DIR]``
(about two minutes on two cores).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
LABELS = REAL / "labels" / "imagenet-synsets.txt"
# name, ONNX file, blackbox preset, torch architecture
PAIRS = [("MobileNetV2", "mobilenetv2-12-int8.onnx", "imagenet", "mobilenet_v2"),
         ("SqueezeNet 1.0", "squeezenet1.0-fp16.onnx", "caffe", "squeezenet1_0")]
INSTALL = "pip install --no-deps --target /tmp/lucent torch-lucent==0.1.8 kornia==0.4.1 decorator"

# torch's OpenMP threads wait passively, as ONNX Runtime's do under blackbox.runtime.set_threads (spinning
# off): on a shared machine spinning threads steal each other's cores. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import blackbox  # noqa: E402
from blackbox import runtime  # noqa: E402
from blackbox.graph.autodiff import PLAIN, REDIRECTED  # noqa: E402
from blackbox.visualize import activation_maximization  # noqa: E402
from blackbox.visualize import engine as vis_engine  # noqa: E402
from blackbox.visualize import objectives as vis_objectives  # noqa: E402


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --- torchvision's architectures in plain torch (torchvision/models/mobilenetv2.py, squeezenet.py) ----

def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [ConvBNReLU(inp, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]]
        inp, last = 32, 1280
        features: list[nn.Module] = [ConvBNReLU(3, inp, stride=2)]
        for t, c, n, s in settings:
            oup = _make_divisible(c)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        features.append(ConvBNReLU(inp, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet10(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(512, 64, 256, 256))
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


ARCHITECTURES = {"mobilenet_v2": MobileNetV2, "squeezenet1_0": SqueezeNet10}


def torch_model(arch: str) -> nn.Module:
    """The architecture with random weights in eval mode. Batch-norm statistics are first taken from a
    few random batches: with the initial ones (mean 0, variance 1) MobileNetV2's activations shrink to
    ~1e-9 at the logits and denormal floats would make torch slow for a reason a trained net never has."""
    torch.manual_seed(0)
    net = ARCHITECTURES[arch]()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        for m in norms:
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.rand(4, 3, 224, 224))
    return net.eval()


# --- Lucent, with stand-ins for what it imports and does not use here ------------------------------

def _stub_torchvision() -> None:
    class Normalize(nn.Module):
        """torchvision.transforms.Normalize's arithmetic on a [C, H, W] tensor."""

        def __init__(self, mean, std, inplace=False):
            super().__init__()
            self.mean, self.std = list(mean), list(std)

        def forward(self, tensor):
            mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)[:, None, None]
            std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)[:, None, None]
            return (tensor - mean) / std

    tv = types.ModuleType("torchvision")
    tv.__doc__ = "stand-in from scripts/bench_visualize.py: only transforms.Normalize"
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.Normalize = Normalize
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tv.transforms


def _stub_ipython() -> None:
    ip = types.ModuleType("IPython")
    ip.__doc__ = "stand-in from scripts/bench_visualize.py: IPython.display with no-op functions"
    ip.display = types.ModuleType("IPython.display")
    for name in ("display", "HTML", "Image", "Javascript", "clear_output"):
        setattr(ip.display, name, lambda *args, **kwargs: None)
    sys.modules["IPython"], sys.modules["IPython.display"] = ip, ip.display


def _forget(prefix: str) -> None:
    for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
        del sys.modules[key]


def import_lucent(path: str | None):
    """(render, param, version, stand-ins used) or (None, reason, None, [])."""
    if path:
        sys.path.insert(0, path)
    shims = []
    try:
        import torchvision.transforms  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # absent, or the CUDA wheel next to the CPU torch
        # ("RuntimeError: operator torchvision::nms does not exist")
        _forget("torchvision")
        _stub_torchvision()
        shims.append("torchvision.transforms.Normalize")
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        _forget("IPython")
        _stub_ipython()
        shims.append("IPython.display")
    try:
        from lucent.optvis import param, render
    except (ImportError, RuntimeError, AttributeError) as error:  # absent, or a kornia it cannot use
        return None, f"{type(error).__name__}: {error}", None, []
    try:
        version = importlib.metadata.version("torch-lucent")
    except importlib.metadata.PackageNotFoundError:
        import lucent

        version = getattr(lucent, "__version__", "?")
    import kornia

    return (render, param), None, f"torch-lucent {version}, kornia {kornia.__version__}", shims


# --- timing ------------------------------------------------------------------------------------------

def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def lucent_logit(net: nn.Module, images: np.ndarray, index: int) -> float:
    """Class logit of Lucent's final image [1, H, W, 3] in [0, 1], ImageNet-normalised as Lucent feeds it."""
    t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        return float(net((t - mean) / std)[0, index])


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def machine(threads: int) -> str:
    cpu = cpu_name()
    import onnxruntime as ort

    return (f"{cpu}, {os.cpu_count()} CPUs, {threads} intra-op threads for both (no spinning: "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); onnxruntime {ort.__version__}, "
            f"torch {torch.__version__}, blackbox from {Path(blackbox.__file__).parent}")


def bench_pair(name: str, onnx_file: str, preset: str, arch: str, args, lucent) -> dict:
    row = {"name": name}
    start = time.perf_counter()
    model = blackbox.load(REAL / "models" / onnx_file, preprocess=preset, labels=LABELS, device="cpu")
    row["load"] = time.perf_counter() - start
    index = model.class_index(args.target)
    objective = vis_objectives.class_score(index, "logit")  # what activation_maximization(target=...) builds
    start = time.perf_counter()
    plain = vis_engine.gradients_for(model, objective, PLAIN)
    vis_engine.gradients_for(model, objective, REDIRECTED)
    row["build"] = time.perf_counter() - start
    sessions = len(vis_engine._CACHE[model])

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 224, 224)).astype(np.float32)
    bare = max(10, args.repeats)  # bare calls are short: more repeats against a loaded machine
    row["ort_forward"] = best_of(lambda: model.scores(x, score="raw"), bare)
    row["bb_gradient"] = best_of(lambda: plain(x), bare)

    def blackbox_am():
        return activation_maximization(model, target=index, steps=args.steps, seed=0)

    net = torch_model(arch)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        row["torch_forward"] = best_of(lambda: net(xt), bare)

    def forward_backward():
        xg = xt.clone().requires_grad_(True)
        net(xg)[0, index].backward()

    row["torch_gradient"] = best_of(forward_backward, bare)

    def lucent_am():
        render, param = lucent
        np.random.seed(0)
        torch.manual_seed(0)
        return render.render_vis(net, f"labels:{index}", param_f=lambda: param.image(224),
                                 thresholds=(args.steps,), show_image=False, progress=False)

    if lucent:  # the logit of Lucent's starting image, for the closing line
        np.random.seed(0)
        torch.manual_seed(0)
        start_image = lucent[1].image(224)[1]().detach().numpy().transpose(0, 2, 3, 1)
        row["lucent_start"] = lucent_logit(net, start_image, index)

    runs = {"blackbox": blackbox_am} | ({"lucent": lucent_am} if lucent else {})
    for fn in runs.values():
        fn()  # warm-up: arenas, thread pools, the forward session of the final probabilities
    if len(vis_engine._CACHE[model]) != sessions:
        log(f"note: activation_maximization built {len(vis_engine._CACHE[model]) - sessions} more gradient "
            "session(s) than the pre-built ones; its warm-up call absorbed them")
    times = {key: [] for key in runs}
    cpu = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            result = fn()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
            if key == "blackbox":
                row["trace"] = (float(result.trace[0, 0]), float(result.trace[-1, 0]))
            else:  # the logit Lucent optimised, of its final image (to show its loop ran, not to compare)
                row["lucent_logit"] = lucent_logit(net, result[-1], index)
    for key, values in times.items():
        row[key] = args.steps / min(values)
        row[key + "_median"] = args.steps / statistics.median(values)
        row[key + "_cpu"] = min(cpu[key]) / args.steps  # CPU seconds (all threads) per step
    row["label"] = model.label(index)
    row["index"] = index
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=32, help="AM steps per timed call (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per tool, best reported (default 5)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="intra-op threads for ONNX Runtime and torch (default: CPUs available)")
    parser.add_argument("--target", default="flamingo", help="class to maximise (label or index)")
    parser.add_argument("--lucent-path", default=os.environ.get("LUCENT_PATH"),
                        help="folder put first on sys.path for Lucent (default $LUCENT_PATH)")
    args = parser.parse_args(argv)

    runtime.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    lucent, reason, lucent_version, shims = import_lucent(args.lucent_path)
    print("Activation maximization speed, 224 x 224, one image, class logit, Fourier + decorrelation, standard "
          "transforms, Adam lr 0.05")
    print(machine(args.threads))
    if lucent:
        print(f"Lucent: {lucent_version}"
              + (f"; stand-ins for {', '.join(shims)} (see the script's docstring)" if shims else ""))
    else:
        print(f"Lucent: not importable ({reason}); Lucent columns skipped. Install it with\n"
              f"    {INSTALL}\nand run with --lucent-path /tmp/lucent (or LUCENT_PATH=/tmp/lucent).")
    print(f"{args.steps} steps per timed call, best of {args.repeats} alternated calls (median in brackets)")
    print()

    rows = []
    for pair in PAIRS:
        log(f"... {pair[0]}")
        rows.append(bench_pair(*pair, args, lucent[0:2] if lucent else None))

    def rate(row, key):
        return f"{row[key]:6.2f} ({row[key + '_median']:.2f})" if key in row else "n/a"

    header = (f"{'model (ONNX file | torch architecture)':56} {'blackbox steps/s':>16} {'Lucent steps/s':>16} "
              f"{'ratio':>6} {'CPU-time ratio':>14}")
    print(header)
    print("-" * len(header))
    for row, (_, onnx_file, _, arch) in zip(rows, PAIRS):
        ratio = f"{row['blackbox'] / row['lucent']:.2f}" if "lucent" in row else "n/a"
        cpu_ratio = f"{row['lucent_cpu'] / row['blackbox_cpu']:.2f}" if "lucent" in row else "n/a"
        print(f"{row['name'] + ' (' + onnx_file + ' | ' + arch + ')':56} {rate(row, 'blackbox'):>16} "
              f"{rate(row, 'lucent'):>16} {ratio:>6} {cpu_ratio:>14}")
    print("ratio: blackbox steps/s / Lucent steps/s, wall clock (above 1: blackbox is faster); CPU-time ratio: "
          "Lucent's CPU time per step /\nblackbox's (process time, all threads; less sensitive to other load on "
          "the machine than wall clock)")
    print()
    print(f"Context, batch 1, ms (bare calls best of {max(10, args.repeats)}; AM steps from the calls above):")
    header = (f"{'model':16} {'load':>6} {'build':>6} {'ORT fwd':>8} {'bb grad':>8} {'bb step':>8} {'bb CPU':>7} "
              f"{'torch fwd':>10} {'torch f+b':>10} {'Lucent step':>12} {'Lucent CPU':>11}")
    print(header)
    print("-" * len(header))
    for row in rows:
        has = "lucent" in row
        lucent_step = f"{1e3 / row['lucent']:12.1f}" if has else f"{'n/a':>12}"
        lucent_cpu = f"{1e3 * row['lucent_cpu']:11.1f}" if has else f"{'n/a':>11}"
        print(f"{row['name']:16} {row['load'] * 1e3:6.0f} {row['build'] * 1e3:6.0f} {row['ort_forward'] * 1e3:8.1f} "
              f"{row['bb_gradient'] * 1e3:8.1f} {1e3 / row['blackbox']:8.1f} {1e3 * row['blackbox_cpu']:7.1f} "
              f"{row['torch_forward'] * 1e3:10.1f} {row['torch_gradient'] * 1e3:10.1f} {lucent_step} {lucent_cpu}")
    print("load: blackbox.load; build: the objective's two gradient sessions (plain and redirected ReLU), built "
          "once before the timed calls;\nORT fwd: Model.scores on the ONNX file as given; bb grad: the objective's "
          "gradient session alone (forward+backward on the float copy);\nbb step / Lucent step: a whole AM call's "
          "wall time per step (best call); bb CPU / Lucent CPU: its CPU time per step;\ntorch fwd / f+b: the "
          "PyTorch architecture (random weights, batch-norm statistics from random batches).")
    for row in rows:
        print(f"blackbox objective on {row['name']}, class {row['index']} ({row['label']}): "
              f"{row['trace'][0]:.2f} at step 1 -> {row['trace'][1]:.2f} at step {args.steps}"
              + (f"; Lucent on the random-weight {row['name']}: {row['lucent_start']:.3f} at its start -> "
                 f"{row['lucent_logit']:.3f} at step {args.steps}"
                 if "lucent_logit" in row else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
