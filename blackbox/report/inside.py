"""The report's model-level section, "Inside the network" (``blackbox report --visualize``).

Computed once per run, after the per-image records are on disk (and after results.json / index.html
were first written without it, so a failure or a kill here never costs the per-image results):

1. the first convolution's filters (:func:`blackbox.visualize.filters`);
2. activation maximisation (:func:`blackbox.visualize.activation_maximization`, ``steps`` =
   ``--visualize-steps``, seed ``--seed``, class logit) of the :data:`TOP_CLASSES` classes predicted most
   often over the report's images (filled up with the top classes of the first image that loads), each
   with the real model's probability for the picture;
3. with ``--concepts DIR``: network dissection (:func:`blackbox.visualize.dissect`) of a few layers
   (:func:`dissection_layers`: the default CAM layer and up to three activations spread through the
   network before it; dissecting every spatial layer of a large model takes long), the interpretable units
   per layer and the :data:`UNITS_SHOWN` units with the highest IoU, each with its picture.

A part that fails (a model op without a gradient rule makes AM impossible, a model without a convolution
has no filters) is recorded as a one-line message and the other parts go on. Files::

    DIR/inside/filters.png
    DIR/inside/am_<class>.png
    DIR/inside/dissection/dissection.json, dissection.csv, units/*.png
    DIR/inside/inside.json     the section's record (paths, SHA-256s, probabilities, counts), written last

With ``resume=True`` each part is reused when its inputs are unchanged (model SHA-256, blackbox version,
and: the class and steps and seed for an AM picture; the concept folder's files, sizes and mtimes and the
layers for the dissection) and its files still have the SHA-256 recorded when they were written; else it
is computed again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import BlackboxError, ParameterError
from ..files import jsonable, sha256_file, write_atomic

FOLDER = "inside"
RECORD = "inside.json"
TOP_CLASSES = 3
DISSECT_LAYERS = 4  # the default CAM layer and up to three before it
UNITS_SHOWN = 8
MAX_STEPS = 100_000
_ACTIVATION_OPS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish",
                   "Tanh", "Gelu", "Mish", "Softplus", "QLinearLeakyRelu", "QLinearSigmoid"}
_UNIT_NAME = re.compile(r"^(\d{2})_.*_unit(\d{4})\.png$")
VERSION = 1


# ------------------------------------------------------------------------------------- before any work

def check_config(config: Any) -> Any:
    """User errors in the section's settings, found before any work: steps out of range, a bad concept
    folder (one line from :func:`blackbox.visualize.load_concepts`), ``concepts`` without ``visualize``.
    Returns the loaded concept set (or None)."""
    if config.concepts is not None and not config.visualize:
        raise ParameterError("--concepts is used by the model-level section; add --visualize")
    if not config.visualize:
        return None
    steps = config.visualize_steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= MAX_STEPS:
        raise ParameterError(f"--visualize-steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if config.concepts is None:
        return None
    from ..visualize import load_concepts

    return load_concepts(config.concepts)


# ------------------------------------------------------------------------------------- choices

def top_classes(model: Any, records: Sequence[dict[str, Any]], k: int = TOP_CLASSES) -> tuple[list[int], str]:
    """The ``k`` classes predicted (top-1) for the most images of the report, ties in order of first
    appearance; filled up with the top classes of the first image that loads. Returns (indices, how)."""
    predicted: dict[str, int] = {}
    for r in records:
        top = r.get("top") or []
        if r.get("status") == "ok" and top and r.get("key") not in predicted:
            predicted[r.get("key")] = int(top[0]["index"])
    counts = Counter(predicted.values())
    chosen = [c for c, _ in counts.most_common(k)]
    how = f"the classes predicted most often over the report's {len(predicted)} image(s)"
    if len(chosen) < k:
        first = _first_image_order(model, records)
        extra = [int(c) for c in first if int(c) not in chosen][: k - len(chosen)]
        if extra:
            how = (f"{how}, filled up with the top classes of the first image" if chosen
                   else "the top classes of the first image")
        chosen += extra
    return chosen, how


def _first_image_order(model: Any, records: Sequence[dict[str, Any]]) -> list[int]:
    """Class indices by descending probability for the first image that loads."""
    from ..inputs import prepare

    tried: set[str] = set()
    for r in records:
        path = r.get("image")
        if not path or path in tried:
            continue
        tried.add(path)
        if len(tried) > 3:
            break
        try:
            probs = model.scores(prepare(model, path).x, score="probability")[0]
        except Exception:  # noqa: BLE001 - the next image
            continue
        return [int(i) for i in np.argsort(-np.asarray(probs, np.float64), kind="stable")]
    return []


def dissection_layers(model: Any, k: int = DISSECT_LAYERS) -> list[str]:
    """The default CAM layer and up to ``k - 1`` spatial layers spread evenly before it (activation
    outputs where the graph has them, so a unit is a post-nonlinearity feature, as in NetDissect)."""
    spatial = [layer for layer in model.layers() if layer.spatial]
    if not spatial:
        raise ParameterError("the model has no spatial layer ([C, H, W] with H x W > 1) to dissect")
    try:
        cam = model.default_cam_layer()
    except BlackboxError:
        cam = spatial[-1].name
    names = [layer.name for layer in spatial]
    position = names.index(cam) if cam in names else len(spatial) - 1
    before = spatial[:position]
    pool = [layer for layer in before if layer.op_type in _ACTIVATION_OPS] or before
    n = max(0, k - 1)
    if len(pool) <= n:
        picks = pool
    elif n == 1:
        picks = [pool[len(pool) // 2]]
    else:
        picks = [pool[round(j * (len(pool) - 1) / (n - 1))] for j in range(n)]
    return list(dict.fromkeys([layer.name for layer in picks] + [names[position]]))


# ------------------------------------------------------------------------------------- helpers

def _key(facts: dict[str, Any]) -> str:
    from .. import __version__

    text = json.dumps(jsonable({"blackbox": __version__, "section": VERSION, **facts}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, BlackboxError):
        return (text or type(error).__name__)[:500]
    return f"{type(error).__name__}: {text}"[:500]


def _files_intact(out: Path, part: dict[str, Any]) -> bool:
    files, sums = part.get("files") or {}, part.get("sha256") or {}
    if not files:
        return False
    for kind, rel in files.items():
        if not sums.get(kind) or sha256_file(out / str(rel)) != sums[kind]:
            return False
    return True


def _reusable(out: Path, old: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not old or old.get("status") != "ok" or old.get("key") != key or not _files_intact(out, old):
        return None
    return {**old, "reused": True}


def _stamp(out: Path, files: dict[str, str]) -> dict[str, str | None]:
    return {kind: sha256_file(out / rel) for kind, rel in files.items()}


def concepts_fingerprint(concepts: Any) -> dict[str, Any]:
    """What identifies a concept folder's content cheaply: its path and every file's size and mtime."""
    root = Path(concepts.root)
    entries = []
    for path in list(concepts.images) + [p for masks in concepts.masks for p in masks.values()]:
        try:
            info = os.stat(path)
            entries.append([os.path.relpath(path, root), info.st_size, info.st_mtime_ns])
        except OSError:
            entries.append([os.path.relpath(path, root), None, None])
    digest = hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()[:20]
    return {"folder": os.path.realpath(root), "files": len(entries), "digest": digest}


def load_previous(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / FOLDER / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == VERSION else None


def pending() -> dict[str, Any]:
    """What the page says while the section is being computed (and after a kill during it)."""
    return {"version": VERSION, "status": "running",
            "note": "the section is being computed; if this stays, the run was interrupted: rerun with --resume"}


# ------------------------------------------------------------------------------------- the parts

def _filters_part(model: Any, out: Path, model_sha: str, old: dict[str, Any] | None) -> dict[str, Any]:
    from ..visualize import filters

    key = _key({"part": "filters", "model": model_sha})
    reused = _reusable(out, old, key)
    if reused is not None:
        return reused
    grid = filters(model)
    files = {"png": f"{FOLDER}/filters.png"}
    grid.save_png(out / files["png"])
    tiles = grid.tiles
    return {"status": "ok", "key": key, "layer": grid.layer, "count": int(tiles.shape[0]),
            "size": [int(tiles.shape[1]), int(tiles.shape[2])], "files": files, "sha256": _stamp(out, files)}


def _am_part(model: Any, out: Path, model_sha: str, index: int, steps: int, seed: int,
             old: dict[str, Any] | None, progress: bool) -> dict[str, Any]:
    from ..visualize import activation_maximization

    label = model.label(index)
    key = _key({"part": "am", "model": model_sha, "class": index, "steps": steps, "seed": seed, "score": "logit"})
    reused = _reusable(out, old, key)
    if reused is not None:
        return reused
    base = {"index": int(index), "label": label, "steps": int(steps), "seed": int(seed)}
    try:
        vis = activation_maximization(model, target=int(index), steps=int(steps), seed=int(seed), progress=progress)
        files = {"png": f"{FOLDER}/am_{int(index)}.png"}
        vis.save_png(out / files["png"])
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - recorded, the other parts go on
        return {**base, "status": "failed", "error": _error_text(error)}
    return {**base, "status": "ok", "key": key, "probability": float(vis.probability(int(index))[0]),
            "objective": float(vis.objective), "score": "logit", "notes": list(vis.notes),
            "files": files, "sha256": _stamp(out, files)}


def _clear_unit_pictures(folder: Path) -> None:
    """Remove unit pictures an earlier dissection wrote here (only names dissection makes)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _UNIT_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            try:
                path.unlink()
            except OSError:
                pass


def _dissection_part(model: Any, out: Path, model_sha: str, concepts: Any, old: dict[str, Any] | None,
                     progress: bool) -> dict[str, Any]:
    from ..visualize import dissect

    layers = dissection_layers(model)
    fingerprint = concepts_fingerprint(concepts)
    key = _key({"part": "dissection", "model": model_sha, "concepts": fingerprint, "layers": layers,
                "shown": UNITS_SHOWN})
    reused = _reusable(out, old, key)
    if reused is not None:
        return reused
    result = dissect(model, concepts, layers=layers, progress=progress)
    folder = out / FOLDER / "dissection"
    _clear_unit_pictures(folder / "units")
    written = result.save(folder, max_units=UNITS_SHOWN)
    pictures: dict[tuple[int, int], str] = {}
    for path in written:
        match = _UNIT_NAME.match(Path(path).name)
        if match:
            pictures[(int(match.group(1)), int(match.group(2)))] = Path(path).relative_to(out).as_posix()
    files = {"json": f"{FOLDER}/dissection/dissection.json", "csv": f"{FOLDER}/dissection/dissection.csv"}
    chosen = sorted((u for u in result.units if u["iou"] > result.iou_threshold), key=lambda u: -u["iou"])
    top_units = []
    for n, unit in enumerate(chosen[:UNITS_SHOWN]):
        picture = pictures.get((result.layers.index(unit["layer"]), int(unit["unit"])))
        entry = {**unit, "picture": None}
        if picture is not None:
            files[f"unit{n}"] = picture
            entry["picture"] = picture
        top_units.append(entry)
    per_layer = []
    for layer in result.layers:
        rows = [u for u in result.units if u["layer"] == layer]
        named = Counter(u["concept"] for u in rows if u["iou"] > result.iou_threshold)
        per_layer.append({"layer": layer, "units": len(rows), "interpretable": int(result.interpretable[layer]),
                          "top_concepts": [[c, int(k)] for c, k in named.most_common(4)]})
    return {"status": "ok", "key": key, "concepts": fingerprint["folder"], "concept_names": list(result.concepts),
            "images": len(result.images), "layers": list(result.layers), "quantile": result.quantile,
            "iou_threshold": result.iou_threshold, "interpretable": dict(result.interpretable),
            "per_layer": per_layer, "top_units": top_units, "files": files, "sha256": _stamp(out, files)}


def _guard(run, *args) -> dict[str, Any]:
    try:
        return run(*args)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - one line in the section, the other parts go on
        return {"status": "failed", "error": _error_text(error)}


def build_section(model: Any, config: Any, out: Path, records: Sequence[dict[str, Any]], model_sha: str,
                  concepts: Any, *, progress: bool | None = None) -> dict[str, Any]:
    """Compute (or reuse) the section and write ``inside/inside.json``; never raises for a failing part."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    old = load_previous(out) if config.resume else None
    old = old or {}
    steps, seed = int(config.visualize_steps), int(config.seed)
    from tqdm.auto import tqdm

    # one bar over the section's parts (filters, each class's AM picture, the dissection); AM and the
    # dissection show their own steps below it
    parts = tqdm(total=2 + TOP_CLASSES + (1 if concepts is not None else 0), unit="part", desc="inside the network",
                 disable=None if progress is None else not progress, dynamic_ncols=True)
    with parts:
        section = _build(model, config, out, records, model_sha, concepts, old, steps, seed, show, parts)
    write_atomic(folder / RECORD, json.dumps(jsonable(section), indent=1, allow_nan=False), error=ParameterError)
    section["file"] = f"{FOLDER}/{RECORD}"
    return section


def _build(model: Any, config: Any, out: Path, records: Sequence[dict[str, Any]], model_sha: str, concepts: Any,
           old: dict[str, Any], steps: int, seed: int, show: bool, parts: Any) -> dict[str, Any]:
    """The section's parts, one after the other (``parts``: the progress bar)."""
    section: dict[str, Any] = {"version": VERSION, "status": "ok", "model_sha256": model_sha}
    section["filters"] = _guard(_filters_part, model, out, model_sha, old.get("filters"))
    parts.update(1)
    try:
        classes, how = top_classes(model, records)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001
        classes, how = [], f"no classes: {_error_text(error)}"
    parts.total = 1 + len(classes) + (1 if concepts is not None else 0)
    parts.refresh()
    previous = {int(c["index"]): c for c in ((old.get("am") or {}).get("classes") or []) if "index" in c}
    am: dict[str, Any] = {"steps": steps, "seed": seed, "chosen": how, "classes": []}
    for index in classes:
        part = _guard(_am_part, model, out, model_sha, index, steps, seed, previous.get(index), show)
        part.setdefault("index", int(index))
        am["classes"].append(part)
        parts.update(1)
    if not classes:
        am["error"] = "no class to visualise: no image of the report could be classified"
    else:
        errors = {c.get("error") for c in am["classes"] if c.get("status") != "ok"}
        if len(errors) == 1 and all(c.get("status") != "ok" for c in am["classes"]):
            am["error"] = next(iter(errors))  # one reason for all of them: one line
    section["am"] = am
    if concepts is not None:
        section["dissection"] = _guard(_dissection_part, model, out, model_sha, concepts,
                                       old.get("dissection"), show)
        parts.update(1)
    else:
        section["dissection"] = None
    failed = [name for name, part in (("filters", section["filters"]), ("dissection", section["dissection"]))
              if part is not None and part.get("status") != "ok"]
    failed += [f"am {c.get('index')}" for c in am["classes"] if c.get("status") != "ok"]
    if failed or "error" in am:
        section["status"] = "partial"
    section["failed"] = failed
    return section


# ------------------------------------------------------------------------------------- the page

def _embed(path: Path, *, max_side: int, min_side: int = 0) -> str | None:
    """A PNG as a data: URI, shrunk to ``max_side`` or enlarged (nearest neighbour) to ``min_side``."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    side = max(h, w)
    if side > max_side:
        s = max_side / side
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    elif min_side and side < min_side:
        f = -(-min_side // side)  # ceil: at least min_side
        img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", img)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _picture(out: Path, rel: str | None, alt: str, *, max_side: int, min_side: int = 0) -> str:
    from .html import esc

    uri = _embed(out / rel, max_side=max_side, min_side=min_side) if rel else None
    if uri is None:
        return f'<div class="bad">{esc(alt)}: picture missing</div>'
    return f'<a href="{esc(rel)}"><img src="{uri}" alt="{esc(alt)}"></a>'


def render_section(out: Path, section: dict[str, Any] | None) -> str:
    """The page's "Inside the network" section ("" when the run has none)."""
    from .html import _number, esc

    if not section:
        return ""
    parts = ['<h2 id="inside">Inside the network</h2>']
    if section.get("status") == "running":
        parts.append(f'<p class="bad">{esc(section.get("note"))}</p>')
        return "\n".join(parts)
    parts.append('<p class="hint">Model-level views from <code>blackbox.visualize</code>, computed once for the '
                 "run (not per image). Click a picture for the full-size file.</p>")
    f = section.get("filters") or {}
    parts.append("<h3>Filters of the first convolution</h3>")
    if f.get("status") == "ok":
        png = (f.get("files") or {}).get("png")
        parts.append(f'<figure>{_picture(out, png, "first convolution filters", max_side=400, min_side=200)}'
                     f'<figcaption class="cap">{esc(f.get("layer"))}: {esc(f.get("count"))} filters of '
                     f'{esc("x".join(str(s) for s in f.get("size") or []))}, one symmetric scale, 0 is mid grey'
                     "</figcaption></figure>")
    else:
        parts.append(f'<p class="bad">filters: {esc(f.get("error"))}</p>')
    am = section.get("am") or {}
    parts.append("<h3>Activation maximization of the top classes</h3>")
    parts.append(f'<p class="small">{esc(am.get("chosen"))}; {esc(am.get("steps"))} steps, seed '
                 f'{esc(am.get("seed"))}; the probability is the real model\'s for the optimised picture.</p>')
    if am.get("error"):
        parts.append(f'<p class="bad">activation maximization failed: {esc(am.get("error"))}</p>')
    cells = []
    for c in am.get("classes") or []:
        if c.get("status") == "ok":
            png = (c.get("files") or {}).get("png")
            notes = "".join(f'<div class="small">{esc(n)}</div>' for n in c.get("notes") or [])
            picture = _picture(out, png, f"activation maximization of {c.get('label')}", max_side=224,
                               min_side=160)
            cells.append(f'<td>{picture}'
                         f'<div class="cap"><b>{esc(c.get("label"))}</b> (class {esc(c.get("index"))}) '
                         f'p={_number(c.get("probability"))} &middot; {esc(c.get("steps"))} steps</div>{notes}</td>')
        elif not am.get("error"):
            cells.append(f'<td class="bad"><b>{esc(c.get("label"))}</b>: {esc(c.get("error"))}</td>')
    if cells and any(c.get("status") == "ok" for c in am.get("classes") or []):
        parts.append(f'<table class="grid" id="inside-am"><tbody><tr>{"".join(cells)}</tr></tbody></table>')
    elif cells:
        parts.append(f'<table class="grid"><tbody><tr>{"".join(cells)}</tr></tbody></table>')
    d = section.get("dissection")
    if d is not None:
        parts.append("<h3>Network dissection</h3>")
        if d.get("status") != "ok":
            parts.append(f'<p class="bad">dissection: {esc(d.get("error"))}</p>')
        else:
            files = d.get("files") or {}
            parts.append(f'<p class="small">{esc(d.get("images"))} images of {esc(d.get("concepts"))}, '
                         f'{len(d.get("concept_names") or [])} concepts; a unit is interpretable when its best '
                         f'concept\'s IoU is above {esc(d.get("iou_threshold"))} (top {esc(d.get("quantile"))} '
                         f'of activations). All units: <a href="{esc(files.get("csv"))}">dissection.csv</a>.</p>')
            rows = "".join(
                f'<tr><td>{esc(r.get("layer"))}</td><td class="num">{esc(r.get("units"))}</td>'
                f'<td class="num">{esc(r.get("interpretable"))}</td>'
                f'<td>{esc(", ".join(f"{c} {n}" for c, n in r.get("top_concepts") or []) or "-")}</td></tr>'
                for r in d.get("per_layer") or [])
            parts.append('<table class="sortable" id="inside-dissection"><thead><tr><th>layer</th>'
                         '<th data-type="num">units</th><th data-type="num">interpretable</th>'
                         f'<th>top concepts</th></tr></thead><tbody>{rows}</tbody></table>')
            units = "".join(
                f'<tr><td>{esc(u.get("layer"))}</td><td class="num">{esc(u.get("unit"))}</td>'
                f'<td>{esc(u.get("concept"))}</td><td class="num">{_number(u.get("iou"))}</td>'
                f'<td>{_picture(out, u.get("picture"), "unit top images", max_side=400)}</td></tr>'
                for u in d.get("top_units") or [])
            if units:
                parts.append('<table id="inside-units"><thead><tr><th>layer</th><th>unit</th><th>concept</th>'
                             f'<th>IoU</th><th>top images (unit region outlined)</th></tr></thead><tbody>{units}'
                             "</tbody></table>")
            else:
                parts.append('<p class="small">no interpretable unit in these layers</p>')
    return "\n".join(parts)


__all__ = ["build_section", "check_config", "dissection_layers", "render_section", "top_classes"]
