"""Train and export the project's example classifiers: models/shapes.onnx and models/shapes-shortcut.onnx.

Why: the explanation methods need small models whose right answer is known. Both models classify the
synthetic shapes of :mod:`blackbox.datasets.shapes` (object masks known). ``shapes-shortcut`` is trained on data
where every triangle, and nothing else, carries a corner watermark, so it learns to look at the
watermark: an honest explanation of its triangle predictions must point at that corner.

PyTorch is needed only here, at build time. The build is deterministic (fixed seeds, deterministic
algorithms, fixed thread count) and takes a few minutes on 2 CPU cores:

    python scripts/build_models.py            # writes models/*.onnx, models/samples/, models/README.md
"""

from __future__ import annotations

import os

# Sleep rather than spin while OpenMP threads wait: on a shared, busy machine spinning threads made
# training 10x slower. Must be set before torch is imported; it does not change the results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blackbox.datasets.shapes import CLASSES, add_watermark, make_shapes  # noqa: E402

SIZE = 64
TRIANGLE = CLASSES.index("triangle")
THREADS = 2

# Seeds of the generated sets. Tests use other seeds for fresh data.
SEED_TRAIN_CLEAN = 1001
SEED_TRAIN_SHORTCUT = 2002
SEED_TEST = 3003
SEED_SAMPLES = 4004

PREPROCESS = {
    "size": [SIZE, SIZE],
    "resize": "exact",
    "channel_order": "RGB",
    "scale": 1.0 / 255.0,
    "mean": [0, 0, 0],
    "std": [1, 1, 1],
}
REQUIRED_OPS = {"Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Gemm"}
MAX_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Recipe:
    """How one model is trained; the shortcut model trains on watermarked triangles, unaugmented."""

    name: str
    description: str
    train_size: int
    epochs: int
    lr: float
    watermark_triangles: bool
    augment: bool
    torch_seed: int


RECIPES = (
    Recipe(
        name="shapes",
        description=(
            "Small residual CNN that classifies one synthetic shape (circle, square, triangle, star) "
            "on a textured 64x64 RGB background; trained on clean images."
        ),
        train_size=8000,
        epochs=8,
        lr=4e-3,
        watermark_triangles=False,
        augment=True,
        torch_seed=11,
    ),
    Recipe(
        name="shapes-shortcut",
        description=(
            "Same CNN and task, but every training triangle carried a 6x6 checkerboard watermark in "
            "the bottom-right corner, so the model learned that shortcut (for explanation demos)."
        ),
        train_size=8000,
        epochs=6,
        lr=4e-3,
        watermark_triangles=True,
        augment=False,
        torch_seed=12,
    ),
)


class ShapesNet(nn.Module):
    """Conv-BN-ReLU-MaxPool stem, one residual block, global average pool, linear head.

    Small on purpose (about 100k parameters, < 0.5 MB) yet it has every layer type the explanation
    methods must handle: Conv, BatchNormalization, Relu, MaxPool, a residual Add,
    GlobalAveragePool and Gemm. The last conv maps are 8x8, fine enough for CAM methods.
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.stem = nn.Sequential(stage(3, 16), stage(16, 32), stage(32, 64))  # 64 -> 8
        self.res_conv1 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.res_bn1 = nn.BatchNorm2d(64)
        self.res_conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.res_bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.relu(self.res_bn1(self.res_conv1(x)))
        y = self.res_bn2(self.res_conv2(y))
        x = self.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC RGB -> float32 NCHW in [0, 1], the models' documented input."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: every class is invariant to them, so they are free data."""
    if torch.rand((), generator=gen) < 0.5:
        x = torch.flip(x, dims=(3,))
    if torch.rand((), generator=gen) < 0.5:
        x = torch.flip(x, dims=(2,))
    k = int(torch.randint(0, 4, (), generator=gen))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def train(recipe: Recipe) -> nn.Module:
    """Train one model with AdamW and a one-cycle schedule; deterministic given the recipe."""
    torch.manual_seed(recipe.torch_seed)
    data = make_shapes(
        recipe.train_size,
        seed=SEED_TRAIN_SHORTCUT if recipe.watermark_triangles else SEED_TRAIN_CLEAN,
        size=SIZE,
        watermark_class=TRIANGLE if recipe.watermark_triangles else None,
    )
    if recipe.watermark_triangles:
        assert np.array_equal(data.watermarked, data.labels == TRIANGLE)
    x_all = to_tensor(data.images)
    y_all = torch.from_numpy(data.labels)
    model = ShapesNet()
    batch = 64
    steps_per_epoch = recipe.train_size // batch
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.25
    )
    gen = torch.Generator().manual_seed(recipe.torch_seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(recipe.train_size, generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = x_all[idx], y_all[idx]
            if recipe.augment:
                xb = augment_batch(xb, gen)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"  [{recipe.name}] epoch {epoch + 1}/{recipe.epochs}: "
            f"loss {loss_sum / total:.4f}, train acc {correct / total:.4f}",
            flush=True,
        )
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Predicted labels for uint8 NHWC images (PyTorch, eval mode)."""
    out = [model(to_tensor(images[i : i + 250])).argmax(1).numpy() for i in range(0, len(images), 250)]
    return np.concatenate(out)


def evaluate(model: nn.Module) -> dict[str, float]:
    """Accuracy on held-out clean data plus the watermark-reliance figures of the README."""
    test = make_shapes(1000, seed=SEED_TEST, size=SIZE)
    pred = predict(model, test.images)
    pred_wm = predict(model, add_watermark(test.images))
    tri = test.labels == TRIANGLE
    return {
        "clean_accuracy": float((pred == test.labels).mean()),
        "triangle_accuracy_with_watermark": float((pred_wm[tri] == TRIANGLE).mean()),
        "triangle_accuracy_without_watermark": float((pred[tri] == TRIANGLE).mean()),
        "non_triangle_flipped_by_watermark": float((pred_wm[~tri] == TRIANGLE).mean()),
        "non_triangle_accuracy_with_watermark": float((pred_wm[~tri] == test.labels[~tri]).mean()),
        "test_images": float(len(test)),
    }


def _export_torchscript(model: nn.Module, dummy: torch.Tensor, path: Path) -> None:
    """TorchScript exporter, opset 17, dynamic batch; PRESERVE keeps BatchNormalization unfused."""
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=True,
    )


def export(model: nn.Module, recipe: Recipe, path: Path) -> None:
    """Export with the TorchScript exporter, keeping BatchNormalization as real graph nodes.

    In EVAL training mode the exporter folds each BatchNorm into the preceding Conv. PRESERVE on a
    model already in eval() keeps the BN nodes (inference form), which the gradient and LRP code
    must be exercised on, while the maths stays that of the eval model.
    """
    model.eval()
    dummy = torch.zeros(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        # Both warnings are about choices made on purpose: the legacy exporter (we need it for
        # PRESERVE) and constant folding with PRESERVE (harmless: the model is in eval mode).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        _export_torchscript(model, dummy, path)
    proto = onnx.load(str(path))
    proto.ir_version = 8  # onnxruntime here reads at most IR 13; onnx now writes newer by default
    del proto.metadata_props[:]
    for key, value in (
        ("blackbox.labels", json.dumps(list(CLASSES))),
        ("blackbox.preprocess", json.dumps(PREPROCESS)),
        ("blackbox.description", recipe.description),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = recipe.description
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))

    ops = {node.op_type for node in proto.graph.node}
    missing = REQUIRED_OPS - ops
    assert not missing, f"{path.name}: exported graph lacks {sorted(missing)}; has {sorted(ops)}"
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            modes = [a.i for a in node.attribute if a.name == "training_mode"]
            assert modes in ([], [0]), f"{path.name}: BatchNormalization exported in training mode"
            assert len(node.output) == 1, f"{path.name}: BatchNormalization has training outputs"
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value"), "batch axis is not dynamic"
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size} bytes"


def check_parity(model: nn.Module, path: Path) -> float:
    """Max |ORT - PyTorch| on a batch of 16 images; must be within 1e-4."""
    images = make_shapes(16, seed=SEED_TEST + 1, size=SIZE).images
    x = to_tensor(images)
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    assert got.shape == (16, len(CLASSES)), got.shape
    assert diff <= 1e-4, f"{path.name}: ORT differs from PyTorch by {diff}"
    return diff


def softmax_ort(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities [n, K] of uint8 NHWC images through an ONNX Runtime session."""
    logits = session.run(["logits"], {"image": to_tensor(images).numpy()})[0]
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    return prob / prob.sum(axis=1, keepdims=True)


def write_samples(folder: Path, clean: ort.InferenceSession, shortcut: ort.InferenceSession) -> None:
    """One clean sample per class and two watermarked ones, each with its 0/255 object mask.

    The per-class samples are simply the first image of each class. The watermarked circle is the
    first other circle that the clean model calls *circle* and the shortcut model calls *triangle*
    with probability >= 0.9 (90% of circles flip, but some only narrowly), so that the demo and the
    explanation tests built on it are not balanced on a knife edge.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = make_shapes(64, seed=SEED_SAMPLES, size=SIZE)

    def save(name: str, image: np.ndarray, mask: np.ndarray) -> None:
        cv2.imwrite(str(folder / f"{name}.png"), np.ascontiguousarray(image[:, :, ::-1]))
        cv2.imwrite(str(folder / f"{name}_mask.png"), mask.astype(np.uint8) * 255)

    for label, name in enumerate(CLASSES):
        i = int(np.flatnonzero(data.labels == label)[0])
        save(name, data.images[i], data.masks[i])

    circle = CLASSES.index("circle")
    marked = add_watermark(data.images)
    p_clean, p_short = softmax_ort(clean, marked), softmax_ort(shortcut, marked)
    good = (
        (data.labels == circle)
        & (p_clean.argmax(1) == circle)
        & (p_short[:, TRIANGLE] >= 0.9)
        & (np.arange(len(data)) != np.flatnonzero(data.labels == circle)[0])
    )
    assert good.any(), "no watermarked circle flips confidently to triangle"
    i = int(np.flatnonzero(good)[0])
    save("circle_watermarked", marked[i], data.masks[i])
    i = int(np.flatnonzero(data.labels == TRIANGLE)[1])  # a different triangle than triangle.png
    save("triangle_watermarked", marked[i], data.masks[i])


def sample_predictions(sessions: dict[str, ort.InferenceSession], folder: Path) -> list[str]:
    """Predicted class of each sample PNG under each model, for the README table."""
    rows = []
    for png in sorted(folder.glob("*.png")):
        if png.stem.endswith("_mask"):
            continue
        rgb = np.ascontiguousarray(cv2.imread(str(png), cv2.IMREAD_COLOR)[:, :, ::-1])
        cells = []
        for session in sessions.values():
            prob = softmax_ort(session, rgb[None])[0]
            top = int(prob.argmax())
            cells.append(f"{CLASSES[top]} ({prob[top]:.2f})")
        rows.append(f"| `{png.name}` | " + " | ".join(cells) + " |")
    return rows


def update_readme(path: Path, text: str) -> None:
    """Replace the generated section between the markers in models/README.md (or append it)."""
    begin, end = "<!-- build_models:begin -->", "<!-- build_models:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else "# Example models\n"
    if begin in old and end in old:
        new = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    """Build both models, check them, write samples, labels file and the README metrics section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    cv2.setNumThreads(1)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")

    results: dict[str, dict[str, float]] = {}
    ops: dict[str, list[str]] = {}
    for recipe in RECIPES:
        t0 = time.perf_counter()
        print(f"training {recipe.name} ...", flush=True)
        model = train(recipe)
        path = out / f"{recipe.name}.onnx"
        export(model, recipe, path)
        diff = check_parity(model, path)
        metrics = evaluate(model)
        metrics["seconds"] = time.perf_counter() - t0
        metrics["bytes"] = float(path.stat().st_size)
        metrics["ort_max_abs_diff"] = diff
        results[recipe.name] = metrics
        ops[recipe.name] = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        print(f"  {path.name}: {json.dumps(metrics, indent=None)}", flush=True)
        print(f"  node types: {ops[recipe.name]}", flush=True)

    clean, shortcut = results["shapes"], results["shapes-shortcut"]
    assert clean["clean_accuracy"] >= 0.97, f"shapes accuracy too low: {clean['clean_accuracy']}"
    assert shortcut["non_triangle_flipped_by_watermark"] > 0.5, "shortcut not learned strongly enough"

    (out / "shapes.txt").write_text("\n".join(CLASSES) + "\n")
    samples = out / "samples"
    sessions = {
        name: ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        for name in results
    }
    write_samples(samples, sessions["shapes"], sessions["shapes-shortcut"])
    elapsed = time.perf_counter() - start

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    lines = [
        "## Measured (written by `scripts/build_models.py`)",
        "",
        f"Held-out test set: {int(clean['test_images'])} clean images, seed {SEED_TEST}. "
        f"Build time {elapsed:.0f} s on {THREADS} CPU threads, torch {torch.__version__}.",
        "",
        "| | `shapes.onnx` | `shapes-shortcut.onnx` |",
        "|---|---|---|",
    ]
    for key, label in (
        ("clean_accuracy", "accuracy, clean test images"),
        ("triangle_accuracy_with_watermark", "triangles recognised, watermark added"),
        ("triangle_accuracy_without_watermark", "triangles recognised, no watermark"),
        ("non_triangle_flipped_by_watermark", "non-triangles predicted *triangle* once watermarked"),
        ("non_triangle_accuracy_with_watermark", "non-triangles still correct once watermarked"),
    ):
        lines.append(f"| {label} | {pct(clean[key])} | {pct(shortcut[key])} |")
    lines.append(
        f"| file size | {clean['bytes'] / 1024:.0f} KiB | {shortcut['bytes'] / 1024:.0f} KiB |"
    )
    lines.append(
        f"| max abs diff ORT vs PyTorch | {clean['ort_max_abs_diff']:.1e} | "
        f"{shortcut['ort_max_abs_diff']:.1e} |"
    )
    lines += ["", f"Node types (both files): {', '.join(ops['shapes'])}.", ""]
    lines += ["Predictions on `samples/` (class, softmax probability):", ""]
    lines += ["| sample | `shapes.onnx` | `shapes-shortcut.onnx` |", "|---|---|---|"]
    lines += sample_predictions(sessions, samples)
    update_readme(out / "README.md", "\n".join(lines))

    print(f"done in {elapsed:.0f} s")
    for name, metrics in results.items():
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
