"""t-SNE embeddings of pooled features, drawn as an image map.

Each image is reduced to one feature vector at a layer (a spatial map averaged over H x W, tokens over
their positions, a vector as it is), streamed batch by batch so that only the vectors and a small
thumbnail per image stay in memory. scikit-learn's t-SNE places the vectors in 2-D; the map draws each
thumbnail at its place with a border in the colour of the class the model predicts for it.
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..errors import ParameterError
from ..files import write_atomic
from ..image_io import write_png_atomic
from .images import batches, collect, source_name

__all__ = ["Embedding", "default_embedding_layer", "embed", "pool"]

MIN_IMAGES = 3
THUMB = 48  # thumbnail side kept per image while streaming
BORDER = 3
LEGEND_ROW = 22
LEGEND_MAX = 24  # classes named in the legend (the most frequent)
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


@dataclass
class Embedding:
    """2-D t-SNE ``coords`` [N, 2] of pooled ``features`` [N, D] at ``layer``; ``predictions`` [N] the
    model's classes, ``sources`` where each image came from, ``image`` the thumbnail map."""

    coords: np.ndarray
    features: np.ndarray
    predictions: np.ndarray
    sources: list[str]
    layer: str
    image: np.ndarray

    def save(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """Write ``embedding.png`` (the map) and ``embedding.npz`` (coords, features, predictions,
        sources, layer); returns their paths."""
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        png, npz = folder / "embedding.png", folder / "embedding.npz"
        write_png_atomic(png, self.image)
        arrays = {"coords": self.coords, "features": self.features, "predictions": self.predictions,
                  "sources": np.asarray(self.sources, dtype=str), "layer": np.asarray(self.layer)}
        write_atomic(npz, lambda stream: np.savez(stream, **arrays))
        return {"png": str(png), "npz": str(npz)}


# ------------------------------------------------------------------ features

def default_embedding_layer(model) -> str:
    """What the classifier head reads: the data input of the last Gemm/MatMul when it is a layer, else
    the default CAM layer (the last spatial map before global pooling), which :func:`pool` averages."""
    graph = model.float_graph().graph
    constants = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    names = {layer.tensor: layer.name for layer in model.layers()}
    for node in reversed(graph.node):
        if node.op_type in ("Gemm", "MatMul"):
            data = [name for name in node.input[:2] if name and name not in constants]
            current = data[0] if len(data) == 1 else None
            for _ in range(8):  # a reshape that is not a layer itself: its input holds the same values
                if current is None or current in names:
                    break
                before = producers.get(current)
                current = before.input[0] if before is not None and before.op_type in _RESHAPES else None
            if current in names:
                return names[current]
            break
    return model.default_cam_layer()


def pool(values: np.ndarray, layer) -> np.ndarray:
    """[N, ...] values of ``layer`` -> [N, D]: spatial layers (NCHW or NHWC maps, patch tokens) read as
    maps [N, C, h, w] and averaged over the positions; other token sequences over positions; the rest flat."""
    values = np.asarray(values, dtype=np.float32)
    if layer.spatial:
        return layer.maps(values).mean(axis=(2, 3))
    if layer.kind == "tokens":
        return values.mean(axis=1)
    return values.reshape(len(values), -1)


def _thumbnail(picture: np.ndarray, side: int) -> np.ndarray:
    h, w = picture.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(picture, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)


def _output_tap(model) -> str | None:
    """The output as a tappable layer when the float graph is the model's own (then its argmax is the
    model's prediction and one pass gives both); None when a dequantized/up-cast copy might differ."""
    if model.precision_notes:
        return None
    try:
        return model.layer(model.output.name).name
    except ParameterError:
        return None


def _predict(model, x: np.ndarray, tapped: dict[str, np.ndarray], output: str | None) -> np.ndarray:
    scores = tapped[output] if output is not None else model.scores(x, score="probability")
    return np.asarray(scores).reshape(len(x), -1).argmax(axis=1)


def features(model, items: list, layer: str, *, batch_size: int | None = None, thumb: int = THUMB,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(pooled features [N, D], predicted classes [N], thumbnails) in one streamed pass."""
    entry = model.layer(layer)
    output = _output_tap(model)
    taps = [layer] if output is None else [layer, output]
    feats, preds, thumbs = [], [], []
    with tqdm(total=len(items), desc=f"embed {layer}", unit="image", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for _, samples in batches(model, items, batch_size):
            x = np.stack([s.x for s in samples])
            tapped = model.activations(x, taps)
            feats.append(pool(tapped[layer], entry))
            preds.append(_predict(model, x, tapped, output))
            thumbs += [_thumbnail(s.image if s.image is not None else model.preprocess.display(s.x), thumb)
                       for s in samples]
            bar.update(len(samples))
    return np.concatenate(feats), np.concatenate(preds).astype(np.int64), thumbs


# ------------------------------------------------------------------ t-SNE

def tsne(feats: np.ndarray, *, perplexity: float, seed: int) -> np.ndarray:
    """[N, D] -> [N, 2]; perplexity clamped to (N - 1) / 3 (t-SNE needs it well below N)."""
    from sklearn.manifold import TSNE

    n = len(feats)
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    init = "pca" if min(feats.shape) >= 2 else "random"
    model = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed, learning_rate="auto")
    return model.fit_transform(feats.astype(np.float64)).astype(np.float32)


# ------------------------------------------------------------------ the map

def class_colours(classes: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """Distinct RGB colours for the classes present, most frequent first (golden-ratio hues)."""
    values, counts = np.unique(classes, return_counts=True)
    order = values[np.argsort(-counts, kind="stable")]
    colours = {}
    for i, cls in enumerate(order):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85 if i % 2 == 0 else 0.6, 0.95)
        colours[int(cls)] = (int(r * 255), int(g * 255), int(b * 255))
    return colours


def _legend(model, colours: dict[int, tuple[int, int, int]], width: int) -> np.ndarray:
    """Rows of colour swatches with class names (cv2.putText), the most frequent classes first."""
    entries = list(colours.items())[:LEGEND_MAX]
    cell = 200
    per_row = max(1, width // cell)
    rows = -(-len(entries) // per_row)
    strip = np.full((rows * LEGEND_ROW + 6, width, 3), 255, np.uint8)
    for i, (cls, colour) in enumerate(entries):
        r, c = divmod(i, per_row)
        y, x = 4 + r * LEGEND_ROW, 6 + c * cell
        cv2.rectangle(strip, (x, y), (x + 14, y + 14), colour, thickness=-1)
        label = model.label(cls)
        text = (label if label == f"class {cls}" else f"{cls} {label}")[:26]
        cv2.putText(strip, text, (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def draw_map(model, coords: np.ndarray, thumbs: list[np.ndarray], predictions: np.ndarray, *,
             size: int = 1600) -> np.ndarray:
    """Thumbnails at their t-SNE positions on a white ``size`` x ``size`` canvas, each framed in its
    predicted class colour, with a legend strip below."""
    colours = class_colours(predictions)
    side = max(max(t.shape[:2]) for t in thumbs) + 2 * BORDER
    canvas = np.full((size, size, 3), 255, np.uint8)
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    places = (coords - low) / span * (size - side - 2) + 1
    for (x, y), thumb, cls in zip(places, thumbs, predictions):
        h, w = thumb.shape[:2]
        x0, y0 = round(float(x)), round(float(y))
        canvas[y0:y0 + h + 2 * BORDER, x0:x0 + w + 2 * BORDER] = colours[int(cls)]
        canvas[y0 + BORDER:y0 + BORDER + h, x0 + BORDER:x0 + BORDER + w] = thumb
    return np.concatenate([canvas, _legend(model, colours, size)], axis=0)


def embed(model, images: Any, *, layer: str | None = None, perplexity: float = 30.0, seed: int = 0,
          batch_size: int | None = None, progress: bool = False, size: int = 1600,
          thumb: int = THUMB) -> Embedding:
    """t-SNE of the pooled features of ``images`` (a folder, paths or arrays) at ``layer`` (default:
    :func:`default_embedding_layer`), drawn as a thumbnail map coloured by predicted class."""
    items = collect(images)
    if len(items) < MIN_IMAGES:
        raise ParameterError(f"embed needs at least {MIN_IMAGES} images for a t-SNE map, got {len(items)}")
    if perplexity <= 0:
        raise ParameterError(f"perplexity must be > 0, got {perplexity}")
    name = model.layer(layer).name if layer is not None else default_embedding_layer(model)
    feats, preds, thumbs = features(model, items, name, batch_size=batch_size, thumb=thumb, progress=progress)
    if not np.isfinite(feats).all():
        raise ParameterError(f"layer {name!r} gives non-finite features for some images; choose another layer")
    coords = tsne(feats, perplexity=perplexity, seed=seed)
    return Embedding(coords=coords, features=feats, predictions=preds,
                     sources=[source_name(item, i) for i, item in enumerate(items)], layer=name,
                     image=draw_map(model, coords, thumbs, preds, size=size))
