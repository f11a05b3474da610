"""Render the feature-visualisation gallery on the real third-party models (``../shared/real``).

    python scripts/visualize_gallery.py [--out docs/gallery] [--steps 256]

Writes, and prints the figures behind them:
* activation maximisation of flamingo, bald eagle and tabby on MobileNetV2-int8 and SqueezeNet-fp16
  (defaults; SqueezeNet's tabby also with ``score="log_odds"``), with the real model's probability;
* inversion of flamingo.jpg on five MobileNetV2-int8 layers, first convolution to last, with the
  feature error per layer;
* first-convolution filters of both models; the top-9 activations of one MobileNetV2 unit over the
  photos; a t-SNE map of the photos; dissection counts per layer of the project's shapes model.

Views that hold pixels of the photos (inversions, top-activation patches, the t-SNE thumbnails) go to
``OUT/photos/``, which git ignores: the photos are third-party data and never enter this repository.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import blackbox
from blackbox.datasets.concepts import make_concepts
from blackbox.image_io import write_png_atomic
from blackbox.visualize import (activation_maximization, dissect, embed, filters, invert, top_activations)

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
LABELS = REAL / "labels" / "imagenet-synsets.txt"
CLASSES = ("flamingo", "bald eagle", "tabby")
INVERT_LAYERS = ("474_quantized", "339_quantized", "537_quantized", "573_quantized", "627_quantized")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "gallery"))
    parser.add_argument("--steps", type=int, default=256)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"mobilenetv2-int8": blackbox.load(REAL / "models" / "mobilenetv2-12-int8.onnx", preprocess="imagenet",
                                                labels=LABELS),
              "squeezenet-fp16": blackbox.load(REAL / "models" / "squeezenet1.0-fp16.onnx", preprocess="caffe",
                                               labels=LABELS)}
    record: dict = {"am": [], "invert": [], "dissection": {}}
    for name, model in models.items():
        runs = [(label, "logit") for label in CLASSES] + ([("tabby", "log_odds")] if name.startswith("squeeze") else [])
        for label, score in runs:
            start = time.perf_counter()
            v = activation_maximization(model, target=label, steps=args.steps, score=score)
            index = model.class_index(label)
            top = int(np.argmax(v.scores[0]))
            path = out / f"am_{name}_{label.replace(' ', '_')}{'' if score == 'logit' else '_' + score}.png"
            v.save_png(path)
            row = {"model": name, "class": label, "score": score, "probability": round(float(v.probability(index)[0]), 4),
                   "top1": model.label(top), "seconds": round(time.perf_counter() - start, 1), "png": path.name}
            record["am"].append(row)
            print("am", row, flush=True)
        filters(model).save_png(out / f"filters_{name}.png")

    mnv2 = models["mobilenetv2-int8"]
    flamingo = REAL / "images" / "flamingo.jpg"
    strips = []
    for layer in INVERT_LAYERS:
        v = invert(mnv2, flamingo, layer=layer)
        strips.append(v.image)
        row = {"layer": layer, "shape": list(mnv2.layer(layer).shape), "feature_error": round(v.feature_error, 3)}
        record["invert"].append(row)
        print("invert", row, flush=True)
    photos_out = out / "photos"
    photos_out.mkdir(exist_ok=True)
    write_png_atomic(photos_out / "invert_mobilenetv2-int8_flamingo.png", np.concatenate(strips, axis=1))

    photos = sorted(str(p) for p in (REAL / "images").iterdir() if p.suffix in (".jpg", ".png")
                    and not p.name.startswith("digit"))
    top_activations(mnv2, photos, layer="534_quantized", channel=5).save(photos_out)
    embed(mnv2, photos).save(photos_out / "embedding")

    shapes = blackbox.load(ROOT / "models" / "shapes.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        concepts = make_concepts(Path(tmp) / "concepts", n=120, seed=0)
        layers = [layer.name for layer in shapes.layers() if layer.spatial]
        result = dissect(shapes, concepts, layers=layers)
    record["dissection"] = {layer: int(count) for layer, count in result.interpretable.items()}
    print(result.summary())
    (out / "gallery.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
