"""The report's batch loop: explain every image with every method, score the maps, write everything.

Files, all written atomically (a temporary name in the same folder, then ``os.replace``), so a killed run
never leaves a half-written file under a real name:

```
DIR/items/<key>/<stem>.png   overlay
DIR/items/<key>/<stem>.npz   raw maps (Explanation.save_npz)
DIR/items/<key>/<stem>.json  the item's record: the source of truth, written last
DIR/results.json, results.csv, index.html   regenerated at the end from the item records
DIR/inside/...               with ``visualize=True``: the model-level section (see blackbox.report.inside)
```

One record per image x method x target: ``<stem>`` is the method's name when the image has one target
(the default top-1 class, one ``--target`` class, a truth target), ``METHOD__SLOT`` when it has several
(``--target cat,dog`` -> slots ``c281``, ``c254``; ``--target top3`` -> ``top1``..``top3``; see
:mod:`blackbox.report.targets`).

``resume=True`` skips an item whose record says ``ok`` for the same configuration (a hash of the model,
preprocessing, labels, method, parameters, target, seed, metrics and truth) and whose files still have the
SHA-256 the record stored when they were written; failed items, and items whose files are missing,
truncated or replaced, are done again (each redo is noted on stderr and in ``results.json``).

The driver plans the work (images x methods still to do), an engine (:mod:`blackbox.report.engines`:
``local``, or ``ray`` for actors on a Ray cluster) turns it into the item files and records above, and
the driver alone builds results and pages from the records on disk; the records are the same whichever
engine made them, so ``resume`` works across engines.

One run at a time per folder: the run holds an exclusive ``flock`` on ``DIR/.blackbox-report.lock`` and a
second run on the same folder refuses in one line. Temporaries are removed only when blackbox made them
(its own name prefix) and the process that made them is gone. Every item is computed on its own with the same seed, so a resumed run gives the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one run at a time is on the user
    fcntl = None
import numpy as np
from tqdm.auto import tqdm

from ..errors import BlackboxError, ParameterError
from ..files import check_input_file, jsonable, remove_stale_temporaries, sha256_file, write_atomic
from ..text import printable
from .inputs import Entry, expand_inputs, sibling_mask

METRICS = ("deletion", "insertion", "pointing", "sanity")
DEFAULT_METRICS = ("deletion", "insertion")
REGIONS = ("mask", "box")
SUMMARY_COLUMNS = ("deletion_auc", "insertion_auc", "pointing_mask", "share_mask", "area_mask", "pointing_box",
                   "share_box", "area_box", "sanity_spearman_abs", "sanity_ssim", "seconds", "n_evals")
# probability, log_probability, logit: the target's scores in those spaces (logit only for a model that
# outputs logits); explained_score / explained_space: the score the method explained, in its true space
CSV_COLUMNS = ("image", "key", "method", "slot", "status", "error", "target", "label", "probability",
               "log_probability", "logit", "explained_score", "explained_space", "top_k", "params", "seconds",
               "n_evals", "deletion_auc", "insertion_auc", "pointing_mask", "share_mask", "area_mask",
               "pointing_box", "share_box", "area_box", "sanity_spearman_abs", "sanity_spearman", "sanity_ssim",
               "n_notes", "notes", "overlay", "npz")


# ------------------------------------------------------------------------------------ configuration

@dataclass
class ReportConfig:
    """What one report run does. ``target``: None (top-1), a class index or label, a comma-separated list
    of them, or ``topK`` (:mod:`blackbox.report.targets`); ``params`` maps method -> its keyword
    parameters; ``metrics`` None means
    deletion, insertion, plus pointing for images with a truth mask or box; ``command`` is recorded so the
    page says how to reproduce the run. ``visualize``/``concepts``/``visualize_steps``: the model-level
    section (``--visualize``)."""

    out: str
    methods: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: str | None = None
    score: str | None = None
    seed: int = 0
    metrics: list[str] | None = None
    targets_csv: str | None = None
    resume: bool = False
    top: int = 5
    step: int | None = None
    tolerance: float = 15.0
    sanity_mode: str = "cascading"
    sanity_layers: int | None = 5
    colormap: str | None = None
    command: list[str] | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    # the model-level "inside the network" section (blackbox.visualize): filters, activation maximisation
    # of the most predicted classes, and a dissection table when a concept folder is given
    visualize: bool = False
    concepts: str | None = None
    visualize_steps: int = 128
    # who computes the records (blackbox.report.engines): "local" (this process) or "ray" (actors on a Ray
    # cluster: ``address`` None starts a local instance; ``workers`` None: one per CPU, or per
    # ``gpus_per_worker`` GPUs). Not part of a record's configuration hash: --resume works across engines.
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Truth:
    """Ground truth for one image from --targets-csv (and a ``X_mask.png`` sibling)."""

    target: str | None = None
    box: tuple[float, float, float, float] | None = None
    mask: str | None = None


@dataclass
class ReportSummary:
    out: Path
    records: list[dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    redone: list[dict[str, str]] = field(default_factory=list)  # resumed items done again, and why
    inside: dict[str, Any] | None = None  # the model-level section (visualize=True), as in results.json
    engine: dict[str, Any] = field(default_factory=dict)  # what the engine did: name, workers, retried items

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.get("status") != "ok")

    @property
    def ok(self) -> int:
        return sum(1 for r in self.records if r.get("status") == "ok")


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """'a,b,c' (or 'all': every registered method) -> names, checked against ``METHODS``."""
    from ..methods import METHODS

    items = text.split(",") if isinstance(text, str) else list(text or ["occlusion"])
    names = [n.strip() for n in items if n.strip()]
    if names == ["all"]:
        return sorted(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ParameterError(f"unknown method {', '.join(map(repr, unknown)) or '(none given)'}; registered: "
                             f"{', '.join(sorted(METHODS))} (or 'all')")
    return list(dict.fromkeys(names))


def parse_method_params(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` (values as :func:`~blackbox.methods.base.parse_value` reads them: JSON or a
    bare word); ``KEY=VALUE`` is allowed when one method runs. Unknown methods or keys are user errors
    before any work starts."""
    from ..methods import METHODS
    from ..methods.base import parse_value

    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"--param {item!r} must look like METHOD.KEY=VALUE")
        method, dot, key = name.strip().partition(".")
        if not dot:
            if len(methods) != 1:
                raise ParameterError(f"--param {item!r}: say which method, e.g. {methods[0]}.{name.strip()}=...")
            method, key = methods[0], name.strip()
        if method not in params:
            raise ParameterError(f"--param {item!r} names method {method!r}, which is not in --methods")
        params[method][key] = parse_value(value, item)
    for method, given in params.items():
        METHODS[method].check_params(given)
    return params


def parse_metrics(text: str | Sequence[str] | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ParameterError(f"unknown metric {', '.join(map(repr, unknown))}; use any of {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def _resolve_csv_path(value: str, base: Path) -> str:
    return value if os.path.isabs(value) else str(base / value)


def read_targets_csv(path: str) -> tuple[dict[str, Truth], dict[str, list[Truth]]]:
    """Columns ``image`` (required), ``target``, ``y0,x0,y1,x1`` (a box in picture pixels, pixel edges,
    half-open), ``mask`` (a truth mask file, non-zero = object). Relative paths are relative to the CSV's
    folder. Returns lookups by resolved path and by file name.

    Everything is checked here, before any work, each mistake one line naming the row: a file that is not
    UTF-8 text, rows with more or fewer cells than the header, a box that is not four finite numbers with
    y0 < y1 and x0 < x1 inside the picture, an image or mask file that does not exist."""
    csv_path = check_input_file(path, "--targets-csv file", error=ParameterError)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ParameterError(f"cannot read --targets-csv {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ParameterError(f"--targets-csv {path} is not UTF-8 text (byte {error.start}); save it as a UTF-8 "
                             "CSV") from None
    if "\x00" in text:
        raise ParameterError(f"--targets-csv {path} contains NUL bytes: it is a binary file, not a CSV")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        rows = [(reader.line_num, cells) for cells in reader]
    except csv.Error as error:
        raise ParameterError(f"--targets-csv {path} line {reader.line_num}: {error}") from None
    columns = [c.strip().lower() for c in (header or [])]
    if "image" not in columns:
        raise ParameterError(f"--targets-csv {path} needs an 'image' column (and optionally target, "
                             "y0,x0,y1,x1, mask)")
    by_path: dict[str, Truth] = {}
    by_name: dict[str, list[Truth]] = {}
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(columns):
            raise ParameterError(f"--targets-csv {path} line {line}: {len(cells)} cells but the header has "
                                 f"{len(columns)} columns")
        row = {k: v.strip() for k, v in zip(columns, cells)}
        where = f"--targets-csv {path} line {line}"
        if not row.get("image"):
            raise ParameterError(f"{where}: the image cell is empty")
        image = _resolve_csv_path(row["image"], csv_path.parent)
        check_input_file(image, f"image file named in {where}:", error=ParameterError)
        box = None
        corners = [row.get(k, "") for k in ("y0", "x0", "y1", "x1")]
        if any(corners):
            box = _check_box(corners, image, where)
        mask = _resolve_csv_path(row["mask"], csv_path.parent) if row.get("mask") else None
        if mask is not None:
            check_input_file(mask, f"mask file named in {where}:", error=ParameterError)
        truth = Truth(target=row.get("target") or None, box=box, mask=mask)
        by_path[os.path.realpath(image)] = truth
        by_name.setdefault(Path(row["image"]).name, []).append(truth)
    return by_path, by_name


def _check_box(corners: Sequence[str], image: str, where: str) -> tuple[float, float, float, float]:
    """Four finite numbers y0 < y1, x0 < x1 within the picture (whose size is read from its header)."""
    from ..image_io import picture_size

    try:
        y0, x0, y1, x1 = (float(v) for v in corners)
    except ValueError:
        raise ParameterError(f"{where}: box y0,x0,y1,x1 must be four numbers") from None
    if not all(math.isfinite(v) for v in (y0, x0, y1, x1)):
        raise ParameterError(f"{where}: box y0,x0,y1,x1 has a NaN or infinite value")
    if not (y0 < y1 and x0 < x1):
        raise ParameterError(f"{where}: box needs y0 < y1 and x0 < x1, got {y0:g},{x0:g},{y1:g},{x1:g}")
    try:
        height, width = picture_size(image)
    except BlackboxError as error:
        raise ParameterError(f"{where}: {str(error)}") from None
    if y0 < 0 or x0 < 0 or y1 > height or x1 > width:
        raise ParameterError(f"{where}: box {y0:g},{x0:g},{y1:g},{x1:g} lies outside the {width}x{height} "
                             "picture (y0,x0,y1,x1 are pixel edges, 0..height and 0..width)")
    return y0, x0, y1, x1


def _truth_for(entry: Entry, by_path: dict[str, Truth], by_name: dict[str, list[Truth]]) -> Truth:
    truth = by_path.get(os.path.realpath(entry.path))
    if truth is None:
        named = by_name.get(Path(entry.path).name, [])
        truth = named[0] if len(named) == 1 else Truth()
    if truth.mask is None and entry.error is None:
        found = sibling_mask(entry.path)
        if found:
            truth = Truth(target=truth.target, box=truth.box, mask=found)
    return truth


# ------------------------------------------------------------------------------------------ writing

def write_text_atomic(path: Path, text: str) -> None:
    """A UTF-8 text file, written with :func:`blackbox.files.write_atomic`."""
    write_atomic(path, text, error=ParameterError)


def _dumps(value: Any) -> str:
    return json.dumps(jsonable(value), indent=1, sort_keys=False, allow_nan=False)


LOCK_NAME = ".blackbox-report.lock"


class _FolderLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/.blackbox-report.lock`` for the whole run. The kernel
    drops it when the process dies, so a killed run never leaves the folder locked; the file (holding the
    owner's PID, for the message) stays."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "_FolderLock":
        if fcntl is None:  # pragma: no cover
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise ParameterError(f"cannot create the lock file {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise ParameterError(f"another blackbox report is writing to {self.path.parent} (pid {owner}); "
                                 "wait or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _safe_name(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in method) or "method"


# --------------------------------------------------------------------------------------- the model

def gradient_support(model: Any) -> str:
    """What the model card says about gradients: only what ``blackbox.graph.autodiff`` reports."""
    try:
        from ..graph import autodiff
    except Exception:  # noqa: BLE001 - not built yet, or broken: say so honestly
        return "unknown"
    build = getattr(autodiff, "build_gradient_model", None)
    if build is None:
        return "unknown"
    try:
        build(model.proto, input_name=model.image.name, score_name=model.output.name)
        return "yes: blackbox.graph.autodiff builds a gradient graph"
    except BlackboxError as error:
        return f"no: {str(error).splitlines()[0][:300]}"
    except Exception as error:  # noqa: BLE001
        return f"unknown ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"


def model_card(model: Any, *, path: str | None = None) -> dict[str, Any]:
    info = model.info()
    info["file"] = path or info.get("path")
    info["gradient_support"] = gradient_support(model)
    return info


def _labels_digest(model: Any) -> str | None:
    if model.labels is None:
        return None
    return hashlib.sha256("\n".join(model.labels.names).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------ one item

def _metric_names(config: ReportConfig, truth: Truth) -> list[str]:
    if config.metrics is not None:
        return list(config.metrics)
    names = list(DEFAULT_METRICS)
    if truth.mask or truth.box:
        names.append("pointing")
    return names


def _config_hash(config: ReportConfig, model_facts: dict[str, Any], method: str, truth: Truth,
                 token: str | None) -> str:
    """The record's configuration: ``token`` is its target as :class:`~blackbox.report.targets.TargetSlot`
    records it (the text given for one class, ``topK`` for a rank, None for the default top-1), so a
    single-target run hashes as it did before several targets existed and resumes its records."""
    from .. import __version__

    facts = {"blackbox": __version__, "model": model_facts, "method": method, "params": config.params.get(method, {}),
             "target": token, "score": config.score,
             "seed": config.seed, "metrics": _metric_names(config, truth), "step": config.step,
             "tolerance": config.tolerance, "sanity": [config.sanity_mode, config.sanity_layers],
             "truth": [truth.box, truth.mask], "top": config.top, "colormap": config.colormap}
    return hashlib.sha256(json.dumps(jsonable(facts), sort_keys=True).encode()).hexdigest()[:20]


def _load_truth_regions(model: Any, sample: Any, truth: Truth) -> dict[str, Any]:
    """Truth regions in model-input pixels: {'mask': bool [H, W], 'box': (y0, x0, y1, x1)}."""
    from ..image_io import read_image
    from ..metrics import region_mask

    regions: dict[str, Any] = {}
    size = (model.image.height, model.image.width)
    if truth.mask:
        picture = read_image(truth.mask)
        inside = (picture.max(axis=2) > 127).astype(np.float64)
        if sample.geometry is None:
            mapped = inside
        elif inside.shape != tuple(sample.geometry.original_size):
            raise ParameterError(f"truth mask {truth.mask} is {inside.shape[1]}x{inside.shape[0]} but the image is "
                                 f"{sample.geometry.original_size[1]}x{sample.geometry.original_size[0]}")
        else:
            mapped = sample.geometry.to_model(inside)
        regions["mask"] = region_mask(size, mask=mapped >= 0.5)
    if truth.box:
        box = sample.geometry.to_model_box(truth.box) if sample.geometry is not None else truth.box
        regions["box"] = tuple(float(v) for v in box)
    return regions


def _explain_item(model: Any, entry: Entry, method: str, config: ReportConfig, truth: Truth, sample: Any,
                  scores: tuple[np.ndarray, np.ndarray], item_dir: Path, exp: Any = None, *, index: int,
                  stem: str | None = None) -> dict[str, Any]:
    """Explain class ``index`` (unless ``exp``, the explanation an engine computed in a batch, is given),
    score, write PNG + NPZ as ``stem``; return the record (the caller writes the JSON last). ``scores``:
    the image's (probabilities, logit-space scores)."""
    from .. import metrics as M
    from ..api import explain
    from ..inputs import from_internal
    from ..image_io import write_png_atomic
    from ..render import overlay
    from ..render.display import display_map
    from .colorbar import overlay_range
    from .targets import target_scores, true_space

    probs, logits = scores
    if exp is None:
        exp = explain(model, entry.path, method, target=index, score=config.score, seed=config.seed,
                      **config.params.get(method, {}))
    names = _metric_names(config, truth)
    x_model = from_internal(model, sample.x)
    flat: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    sanity: list[dict[str, Any]] = []
    if "deletion" in names:
        curve = M.deletion(model, x_model, exp.model_heatmap, index, step=config.step)
        flat["deletion_auc"], curves["deletion"] = curve.auc, curve.to_dict()
    if "insertion" in names:
        curve = M.insertion(model, x_model, exp.model_heatmap, index, step=config.step)
        flat["insertion_auc"], curves["insertion"] = curve.auc, curve.to_dict()
    regions = _load_truth_regions(model, sample, truth) if (truth.mask or truth.box) else {}
    if "pointing" in names:
        for kind, region in regions.items():
            spec = {"mask": region} if kind == "mask" else {"box": region}
            flat[f"pointing_{kind}"] = M.pointing_game(exp.model_heatmap, tolerance=config.tolerance, **spec)
            flat[f"share_{kind}"] = M.saliency_fraction(exp.model_heatmap, **spec)
            flat[f"area_{kind}"] = float(M.region_mask(exp.model_heatmap.shape, **spec).mean())
    if "sanity" in names:
        steps = M.sanity_check(model, x_model, method, target=index, mode=config.sanity_mode,
                               layers=config.sanity_layers, seed=config.seed, score=config.score,
                               **config.params.get(method, {}))
        sanity = [s.to_dict() for s in steps]
        if steps:
            flat["sanity_spearman_abs"], flat["sanity_spearman"] = steps[-1].spearman_abs, steps[-1].spearman
            flat["sanity_ssim"] = steps[-1].ssim
    stem = stem or _safe_name(method)
    shown, display = display_map(method, exp.heatmap, max(np.asarray(exp.model_heatmap).shape[:2]))
    write_png_atomic(item_dir / f"{stem}.png", overlay(exp.image, shown, colormap=config.colormap, seen=exp.seen))
    exp.save_npz(item_dir / f"{stem}.npz")
    order = np.argsort(-probs, kind="stable")[: config.top]
    summary = exp.summary()
    kind = getattr(model, "output_kind", None)
    geometry = getattr(sample, "geometry", None)
    crop = None
    if geometry is not None:
        h, w = geometry.model_size
        crop = [round(float(v), 2) for v in geometry.to_image_box((0, 0, h, w))]
    return {
        "status": "ok", "error": None, "target": int(index), "label": exp.label,
        **target_scores(logits, probs, int(index), kind),
        "score": float(exp.target_score), "score_space": true_space(exp.score, kind),
        "top": [{"index": int(i), "label": model.label(int(i)), "probability": float(probs[i])} for i in order],
        "params": summary["params"], "seconds": round(float(exp.seconds), 4), "n_evals": int(exp.n_evals),
        "notes": summary["notes"],  # every warning the explanation carries (blackbox.api makes them)
        "colorbar": {**overlay_range(shown, exp.image.shape, exp.seen, config.colormap), "display": display},
        "picture": {"size": list(exp.image.shape[:2]), "crop": crop},
        "metrics": flat, "curves": curves, "sanity": sanity,
        "truth": {"target": truth.target, "box": truth.box, "mask": truth.mask,
                  "box_model": regions.get("box")},
        "files": {"overlay": f"items/{entry.key}/{stem}.png", "npz": f"items/{entry.key}/{stem}.npz"},
        "sha256": {"overlay": sha256_file(item_dir / f"{stem}.png"), "npz": sha256_file(item_dir / f"{stem}.npz")},
    }


def _record_path(out: Path, entry: Entry, stem: str) -> Path:
    return out / "items" / entry.key / f"{stem}.json"


def record_stem_of(record: dict[str, Any]) -> str:
    """The file stem of a record (records made before several targets existed name none: the method's)."""
    return str(record.get("stem") or _safe_name(str(record.get("method"))))


def _finished(out: Path, entry: Entry, stem: str, digest: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) when the stored record is ok, made with the same configuration, and every file it
    names still has the SHA-256 stored with it; else (None, why it must be done again; None when there
    is nothing to redo but a first run or a failure)."""
    path = _record_path(out, entry, stem)
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "its record is unreadable"
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None, None
    if record.get("config_hash") != digest:
        return None, "the configuration changed"
    files = record.get("files") or {}
    sums = record.get("sha256") or {}
    for kind, rel in files.items():
        target = out / str(rel)
        if not target.is_file():
            return None, f"its {kind} file is missing"
        expected = sums.get(kind)
        if not expected or sha256_file(target) != expected:
            return None, f"its {kind} file does not match the checksum recorded when it was written"
    return record, None


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, BlackboxError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"[:500]


# ------------------------------------------------------------------------------------ the run

def run_report(model: Any, inputs: Sequence[str] | Sequence[Entry], config: ReportConfig, *,
               progress: bool | None = None) -> ReportSummary:
    """Run the report. ``inputs``: INPUT arguments (expanded with :func:`expand_inputs`) or entries.
    Raises ParameterError for user errors found before any work (no inputs, unknown method/metric/param);
    a failing image or method is recorded and the run goes on."""
    from ..methods import METHODS

    for method in config.methods:
        if method not in METHODS:
            raise ParameterError(f"unknown method {method!r}; registered: {', '.join(sorted(METHODS))}")
        METHODS[method].check_params(config.params.get(method, {}))
    if config.metrics is not None:
        parse_metrics(config.metrics)
    if config.top < 1:
        raise ParameterError("--top must be at least 1")
    if config.sanity_mode not in ("cascading", "independent"):
        raise ParameterError("--sanity-mode must be cascading or independent")
    from .targets import parse_targets

    slots = parse_targets(model, config.target)  # a bad --target is the user's mistake, not 64 failed items
    from .inside import check_config

    concepts = check_config(config)  # a bad --concepts folder or --visualize-steps: before any work
    if inputs and all(isinstance(e, Entry) for e in inputs):
        entries = list(inputs)
    else:
        entries = expand_inputs([os.fspath(i) for i in inputs])
    if not entries:
        raise ParameterError("no input images: give image files, folders, globs or a .txt list")
    by_path, by_name = read_targets_csv(config.targets_csv) if config.targets_csv else ({}, {})
    out = Path(config.out)
    try:
        (out / "items").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ParameterError(f"cannot create the output folder {out}: {error.strerror or error}") from None
    with _FolderLock(out):
        remove_stale_temporaries(out)
        return _run_locked(model, entries, config, out, by_path, by_name, progress, concepts, slots)


def plan_jobs(config: ReportConfig, facts: dict[str, Any], truth: Truth, slots: Sequence[Any]) -> list[Any]:
    """Every record one image gets: per target slot (in order), per method, with its stem and hash."""
    from .engines import Job
    from .targets import record_stem, slots_for

    mine = slots_for(truth.target, slots)
    several = len(mine) > 1
    return [Job(method=m, slot=slot, stem=record_stem(_safe_name(m), slot.name if several else None),
                digest=_config_hash(config, facts, m, truth, slot.token), several=several)
            for slot in mine for m in config.methods]


def _run_locked(model: Any, entries: list[Entry], config: ReportConfig, out: Path, by_path: dict[str, Truth],
                by_name: dict[str, list[Truth]], progress: bool | None, concepts: Any = None,
                slots: Sequence[Any] = ()) -> ReportSummary:
    """The run proper, while this process holds the folder's lock."""
    redone: list[dict[str, str]] = []
    card = model_card(model, path=config.model_options.get("model"))
    facts = {"sha256": card["sha256"], "preprocess": card["preprocess"], "output": card["output"],
             "input": card["input"], "labels": _labels_digest(model)}
    truths = {e.key: _truth_for(e, by_path, by_name) for e in entries}
    from .engines import WorkItem, get_engine

    engine = get_engine(config.engine)  # an unknown engine, or ray missing: before any work
    plans = {e.key: plan_jobs(config, facts, truths[e.key], slots) for e in entries}
    total = sum(len(jobs) for jobs in plans.values())
    # progress None: a bar only on a terminal (tqdm's disable=None); True/False force it on/off
    bar = tqdm(total=total, unit="item", desc="report", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    with bar:
        # the plan: every (image, methods still to do) after the --resume checks; the engine turns it into
        # records (files and the item's JSON, written atomically under fixed names); the driver alone
        # builds results and pages from the records on disk
        work: list[WorkItem] = []
        for entry in entries:
            jobs = plans[entry.key]
            todo = []
            for job in jobs:
                if config.resume:
                    record, why = _finished(out, entry, job.stem, job.digest)
                    if record is not None:
                        continue
                    if why is not None:
                        redone.append({"image": entry.path, "key": entry.key, "method": job.method,
                                       "slot": job.slot.name if job.several else None, "reason": why})
                        tqdm.write(f"blackbox: note: redoing {printable(entry.path)} [{job.stem}]: {why}",
                                   file=sys.stderr)
                todo.append(job)
            bar.update(len(jobs) - len(todo))
            if todo:
                work.append(WorkItem(entry=entry, truth=truths[entry.key], jobs=todo))

        def on_record(record: dict[str, Any]) -> None:
            bar.set_postfix_str(Path(str(record.get("image", ""))).name[:40])
            bar.update(1)

        engine_facts = engine(model, work, config, out, on_record) if work else {}
    engine_facts = {"name": config.engine, "items": sum(len(w.jobs) for w in work), **(engine_facts or {})}
    records = collect_records(out, entries, plans)
    methods = method_summary(records, config.methods)
    inside = None
    if config.visualize:
        from .inside import build_section, pending

        # the per-image results go to disk first: a failure or a kill in the section never loses them
        write_outputs(out, records, methods, config, card, redone=redone, inside=pending(), progress=progress)
        inside = build_section(model, config, out, records, card["sha256"], concepts, progress=progress)
    write_outputs(out, records, methods, config, card, redone=redone, inside=inside, progress=progress)
    return ReportSummary(out=out, records=records, methods=methods, redone=redone, inside=inside,
                         engine=engine_facts)


def collect_records(out: Path, entries: Sequence[Entry], plans: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every (image, target, method) record in input order, read back from the item files; ``plans``:
    each image's jobs (:func:`plan_jobs`)."""
    records = []
    for entry in entries:
        for job in plans[entry.key]:
            path = _record_path(out, entry, job.stem)
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = {"image": entry.path, "key": entry.key, "method": job.method,
                          "slot": job.slot.name if job.several else None, "stem": job.stem, "status": "failed",
                          "error": "no result was recorded for this item"}
            records.append(record)
    return records


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(numbers)) if numbers else None


def method_summary(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: how many items ran and failed, and the mean of every metric over the items that have it
    (pointing: the hit rate)."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        rows = [r for r in records if r.get("method") == method]
        ok = [r for r in rows if r.get("status") == "ok"]
        summary: dict[str, Any] = {"items": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
                                   "warned": sum(1 for r in ok if r.get("notes"))}
        for column in SUMMARY_COLUMNS:
            if column in ("seconds", "n_evals"):
                values = [r.get(column) for r in ok]
            else:
                values = [(r.get("metrics") or {}).get(column) for r in ok]
            summary[column] = _mean(values)
        out[method] = summary
    return out


def _csv_text(value: Any) -> str:
    """Cells of untrusted text (labels, file names, errors): control characters escaped (the CSV is read
    in terminals too; results.json keeps the real text), and never the start of a spreadsheet formula."""
    text = "" if value is None else printable(str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def results_csv(records: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        m = r.get("metrics") or {}
        files = r.get("files") or {}
        top = "; ".join(f"{t['label']}:{t['probability']:.4f}" for t in r.get("top") or [])
        notes = [str(n) for n in r.get("notes") or []]
        row = {"image": _csv_text(r.get("image")), "key": _csv_text(r.get("key")), "method": _csv_text(r.get("method")),
               "slot": _csv_text(r.get("slot")), "status": r.get("status"), "error": _csv_text(r.get("error")),
               "target": r.get("target"), "label": _csv_text(r.get("label")), "probability": r.get("probability"),
               "log_probability": r.get("log_probability"), "logit": r.get("logit"),
               "explained_score": r.get("score"), "explained_space": r.get("score_space"),
               "n_notes": len(notes) if r.get("status") == "ok" else None, "notes": _csv_text(" | ".join(notes)),
               "top_k": _csv_text(top),
               "params": json.dumps(r.get("params"), sort_keys=True) if r.get("params") is not None else "",
               "seconds": r.get("seconds"), "n_evals": r.get("n_evals"),
               "overlay": files.get("overlay"), "npz": files.get("npz")}
        for column in CSV_COLUMNS:
            if column not in row:
                row[column] = m.get(column)
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_outputs(out: Path, records: Sequence[dict[str, Any]], methods: dict[str, dict[str, Any]],
                  config: ReportConfig, card: dict[str, Any], *, redone: Sequence[dict[str, str]] = (),
                  inside: dict[str, Any] | None = None, sections: Sequence[str] = (),
                  progress: bool | None = False) -> None:
    """results.json, results.csv and index.html from the records (each written atomically); ``inside``:
    the model-level section, recorded in results.json and shown on the page; ``sections``: more HTML
    fragments for the page; ``progress``: bars for the findings and the page's pictures (None: only on
    a terminal)."""
    from ..methods import METHODS
    from .html import render

    run = {"config": config.to_dict(), "command": config.command, "model": card,
           "registered_methods": sorted(METHODS), "versions": _versions(), "redone": list(redone)}
    summary: dict[str, Any] = {"run": run, "methods": methods}
    if inside is not None:
        summary["inside"] = inside
    from .findings import compute_findings, render_section as findings_section

    try:  # the data-set findings (blackbox.report.findings): never the reason a report is lost
        found = compute_findings(out, records, card, progress=progress)
        page_findings = findings_section(out, found)
    except Exception as error:  # noqa: BLE001
        found = {"findings": [], "classes": {}, "error": _error_text(error)}
        page_findings = findings_section(out, None, error=found["error"])
    summary["findings"] = found["findings"]
    write_text_atomic(out / "summary.json", _dumps({"methods": methods, **found}))
    write_text_atomic(out / "results.json", _dumps({**summary, "results": list(records)}))
    write_text_atomic(out / "results.csv", results_csv(records))
    from .tables import write_parquet

    write_parquet(out / "results.parquet", records)  # the same rows, typed (pyarrow)
    write_text_atomic(out / "index.html", render(out, run=jsonable(run), methods=jsonable(methods),
                                                 records=jsonable(list(records)),
                                                 inside=jsonable(inside) if inside is not None else None,
                                                 sections=[*sections, page_findings], progress=progress))


def _versions() -> dict[str, str]:
    import onnxruntime

    from .. import __version__

    return {"blackbox": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}

