"""The ``blackbox`` command line: info, predict, explain, report, methods (and, in :mod:`.cli_visualize`,
layers, visualize, concepts).

User mistakes (BlackboxError, and argparse's own complaints) print one line and exit 2; outputs are
written only when an item succeeded, each file atomically. Everything shown to a person goes through
:func:`blackbox.text.printable`, so escapes in labels or file names never reach the terminal raw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np

from .errors import BlackboxError, ImageError, ParameterError
from .text import printable

EXIT_USER_ERROR = 2
_warnings: list[str] = []  # shown once the command has done its work (an error line stays the only line)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad choice or a missing argument is a user error like any other,
    not a usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"blackbox: error: {printable(message)} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _whole_number(minimum: int):
    """argparse type: a whole number >= ``minimum`` (batch sizes and top-k from 1, seeds from 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


_positive_int = _whole_number(1)
_seed = _whole_number(0)  # NumPy seeds cannot be negative


def number_type(accept, wording: str):
    """argparse type: a finite float for which ``accept(value)`` holds; otherwise one line saying it
    ``must be`` ``wording``. One maker for every numeric flag, so they all complain the same way."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"{text} must be {wording}")
        return value

    return parse


_non_negative_float = number_type(lambda v: v >= 0, "a finite number >= 0")  # tolerances, weights
_fraction = number_type(lambda v: 0 <= v <= 1, "a number from 0 to 1")  # --alpha
_percentile = number_type(lambda v: 0 <= v < 100, "a percentage >= 0 and < 100")  # --clip


_quiet = False  # --quiet of the command being run: no progress bars


def show_progress() -> bool:
    """Progress bars go to stderr when it is a terminal and the command was not given --quiet."""
    return not _quiet and sys.stderr.isatty()


def _warn(text: str) -> None:
    _warnings.append(text)


def _check_out(folder: str) -> None:
    """The output folder can be made and written, checked before any work: an existing file,
    /dev/null or a read-only place is refused now rather than after minutes of work."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ParameterError(f"--out {folder} exists and is not a folder; pass a folder name for the outputs")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ParameterError(f"--out {folder}: {probe} is not a folder, so the output folder cannot be made there")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise ParameterError(f"--out {folder}: cannot write in {probe} ({error.strerror or error}); "
                             f"pass a folder you can write to") from None


def _check_images(paths: Sequence[str]) -> None:
    """Each image is a readable regular file, checked before the model is loaded; a folder gets a pointer
    to ``blackbox report``, which takes folders."""
    from .files import check_input_file

    for path in paths:
        if Path(path).is_dir():
            raise ImageError(f"{path} is a folder; pass image files (or use 'blackbox report' for folders)")
        check_input_file(path, "image file", error=ImageError)


def _model_arguments(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """The model and how to read it; ``positional=False`` for parsers whose parent takes MODEL."""
    if positional:
        parser.add_argument("model", help="path to the ONNX classifier")
    parser.add_argument("--preset", help="preprocessing preset: imagenet, caffe, mnist, mnist-normalized, cifar, "
                                         "none, raw (default: the model's metadata, else none)")
    parser.add_argument("--labels", help="labels file: one name per line, 'index,name' or ImageNet synset lines")
    parser.add_argument("--device", default="auto", help="auto (CUDA when it works, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--input", dest="input_name", help="name of the image input when there are several")
    parser.add_argument("--output", dest="output_name", help="name of the class-score output when there are several")
    parser.add_argument("--output-kind", choices=["logits", "probabilities", "log_probabilities"],
                        help="what the output holds (default: detected on a probe)")
    parser.add_argument("--layout", choices=["NCHW", "NHWC", "NHW"], help="input layout when it cannot be detected")
    parser.add_argument("--batch-size", type=_positive_int, help="samples per ONNX Runtime call (default: from a memory budget)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="blackbox", description="Explain the decisions of any ONNX image classifier.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a model: input, output, batch, provider, preprocessing, ops")
    _model_arguments(info)

    predict = sub.add_parser("predict", help="top-k classes for images")
    _model_arguments(predict)
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top", type=_positive_int, default=5, help="how many classes to show (default 5)")

    explain = sub.add_parser(
        "explain", help="explain the model's decision on images; writes a figure PNG and an NPZ per class",
        description="Explain each image's class with one method. Writes OUT/NAME_METHOD_CLASS.png (a figure: the "
                    "original, the map with a colour bar in its own units, the overlay, a title), "
                    "OUT/NAME_METHOD_CLASS.npz (attributions, maps, summary) and, with several targets, "
                    "OUT/NAME_METHOD.png (one grid of all of them, one colour scale). --plain writes the bare "
                    "overlay instead of the figure.")
    _model_arguments(explain)
    explain.add_argument("images", nargs="+", help="image files")
    explain.add_argument("--method", default="occlusion", help="method name (see 'blackbox methods')")
    explain.add_argument("--target", help="class to explain: an index or label, several separated by commas "
                                          "(3,281 or tabby,tiger cat), or topK for the K best classes (top3); "
                                          "default: the top-1 class")
    explain.add_argument("--score", choices=["probability", "logit", "raw"], help="score to explain "
                                                                                 "(default: the method's own)")
    explain.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="method parameter, repeatable; values are JSON (e.g. window=16, stride=[8,8])")
    explain.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (default 0)")
    explain.add_argument("--out", default="blackbox-out", help="output folder (default blackbox-out)")
    explain.add_argument("--colormap", help="matplotlib colour map (default: RdBu_r for signed maps, inferno for "
                                            "non-negative ones; --plain: jet, turbo, inferno, viridis, magma, hot)")
    explain.add_argument("--sign", choices=["positive", "negative", "absolute", "all"],
                         help="which part of the map to show (default: all for signed maps, positive for "
                              "non-negative ones, absolute for pixel-gradient maps)")
    explain.add_argument("--clip", type=_percentile, default=2.0,
                         help="outlier percentage: the largest values holding this share of the map's mass "
                              "saturate the colour scale (Captum's outlier_perc; default 2)")
    explain.add_argument("--mode", choices=["heat", "blend", "masked", "alpha"], default="blend",
                         help="the figure's overlay panel: heat (map only), blend (over the gray picture, default), "
                              "masked (picture x map) or alpha (map as opacity)")
    explain.add_argument("--alpha", type=_fraction, default=0.5, help="opacity of the map in blend mode and of the "
                                                                     "plain overlay (0..1, default 0.5)")
    explain.add_argument("--plain", action="store_true", help="write the bare overlay PNG instead of the figure")

    sub.add_parser("methods", help="list the available methods and their parameters")
    _report_arguments(sub)
    from .cli_visualize import add_parsers

    add_parsers(sub)  # layers, concepts, visualize
    from .cli_serve import add_parsers as add_serve_parsers

    add_serve_parsers(sub)  # serve
    return parser


def _report_arguments(sub) -> None:
    """``blackbox report``: many images x methods -> overlays, NPZ, results.csv/json, index.html."""
    report = sub.add_parser(
        "report", help="explain many images with several methods; metrics and a self-contained HTML page",
        description="Explain every INPUT with every method, score the maps (deletion/insertion, pointing game, "
                    "sanity checks) and write DIR/index.html, results.csv, results.json and per-item overlay PNG "
                    "and NPZ files. Exit code 0 when every item succeeded, 1 when any failed (the others are "
                    "still written), 2 for a user error (bad model, no inputs, unknown method).")
    _model_arguments(report)
    report.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (recursive), globs or .txt files listing paths")
    report.add_argument("--methods", default="occlusion",
                        help="comma-separated method names, or 'all' (default occlusion; see 'blackbox methods')")
    report.add_argument("--out", default="blackbox-report", help="output folder (default blackbox-report)")
    report.add_argument("--target", help="class to explain for every image: an index or label, several separated "
                                         "by commas, or topK for the K best classes (top3); default: top-1; a "
                                         "target column in --targets-csv wins")
    report.add_argument("--score", choices=["probability", "logit", "raw"],
                        help="score to explain (default: each method's own)")
    report.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (default 0)")
    report.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="method parameter, repeatable; values are JSON (e.g. rise.n_masks=2000)")
    report.add_argument("--metrics", help="comma-separated: deletion, insertion, pointing, sanity (default "
                                          "deletion,insertion, plus pointing for images with a truth mask or box)")
    report.add_argument("--targets-csv", help="CSV with columns image, and optionally target, y0,x0,y1,x1 "
                                              "(a truth box in picture pixels) and mask (a truth mask file)")
    report.add_argument("--resume", action="store_true",
                        help="skip items already finished with the same settings (after an interruption)")
    report.add_argument("--top", type=_positive_int, default=5, help="top-k predictions to record (default 5)")
    report.add_argument("--step", type=_positive_int, help="pixels per deletion/insertion step (default H*W/224)")
    report.add_argument("--tolerance", type=_non_negative_float, default=15.0,
                        help="pointing game tolerance in model-input pixels (default 15)")
    report.add_argument("--sanity-mode", choices=["cascading", "independent"], default="cascading",
                        help="parameter randomisation mode for --metrics sanity (default cascading)")
    report.add_argument("--sanity-layers", type=_positive_int, default=5,
                        help="how many layers (from the output) to randomise for --metrics sanity (default 5)")
    report.add_argument("--colormap", help="colour map for the overlays (default jet; diverging for signed maps)")
    report.add_argument("--visualize", action="store_true",
                        help="add a model-level section: filters, activation maximisation of the top classes, "
                             "and a dissection table with --concepts")
    report.add_argument("--concepts", metavar="DIR", help="concept folder for the --visualize dissection table "
                                                          "(DIR/images/, DIR/masks/CONCEPT/; see 'blackbox concepts')")
    report.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="who computes the records: local (this process, default) or ray (actors on a Ray "
                             "cluster; pip install \"blackbox-explain[ray]\")")
    report.add_argument("--address", help="--engine ray: the cluster to connect to, HOST:PORT (default: start a "
                                          "local Ray instance)")
    report.add_argument("--workers", type=_positive_int, help="--engine ray: actors, each holding one loaded model "
                                                              "(default: one per CPU, or per --gpus-per-worker GPUs)")
    report.add_argument("--gpus-per-worker", type=_non_negative_float, default=0.0,
                        help="--engine ray: GPUs per actor (CUDA provider on the worker; default 0: CPU)")
    report.add_argument("--visualize-steps", type=_positive_int,
                        help="activation maximisation steps for --visualize (default 128)")


def _load(args: argparse.Namespace, *, warn_guess: bool = True):
    """The model; a guessed preprocessing is warned about here unless the command's notes say it."""
    from .model import load

    model = load(args.model, preprocess=args.preset, labels=args.labels, device=args.device,
                 input_name=args.input_name, output_name=args.output_name, output_kind=args.output_kind,
                 layout=args.layout, batch_size=args.batch_size)
    if model.preprocess_guessed and warn_guess:
        _warn("no --preset given and the model has no preprocessing metadata; assuming pixels/255 (exact "
              "resize). Pass --preset imagenet, caffe, mnist, mnist-normalized, cifar, none or raw")
    return model


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    from .methods.base import parse_value

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--param {item!r} must look like KEY=VALUE")
        params[key.strip()] = parse_value(value, item)
    return params


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    """JSON keeps every value as it is (json.dumps escapes control characters itself); text is for a
    terminal, so each line is made printable."""
    print(json.dumps(data, indent=2) if args.json else "\n".join(printable(line) for line in text.split("\n")))


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args)
    info = model.info()
    lines = [f"model      {info['path']}  ({info['size_bytes']} bytes, sha256 {info['sha256'][:12]}...)",
             f"producer   {info['producer'] or '-'}, IR {info['ir_version']}, opset {info['opset']}, {info['precision']}",
             f"input      {info['input']['name']} {info['input']['dtype']} {info['input']['shape']} "
             f"{info['input']['layout']}",
             f"output     {info['output']['name']} {info['output']['dtype']} {info['output']['shape']}: "
             f"{info['output']['classes']} classes, {info['output']['kind']}",
             f"batch      {info['batch']} (batch size {info['batch_size']})",
             f"provider   {info['provider']}",
             f"preprocess {info['preprocess']['source']}",
             f"labels     {info['labels']['source'] + ': ' + ', '.join(info['labels']['first']) + ', ...' if info['labels'] else 'none (class indices)'}",
             "ops        " + ", ".join(f"{k} {v}" for k, v in info["ops"].items())]
    _print(args, info, "\n".join(lines))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inputs import prepare

    _check_images(args.images)
    model = _load(args)
    samples = [prepare(model, path) for path in args.images]
    probs = model.scores(np.stack([s.x for s in samples]), score="probability")
    results, text = [], []
    for path, row in zip(args.images, probs):
        order = np.argsort(-row)[: args.top]
        top = [{"index": int(i), "label": model.label(int(i)), "probability": float(row[i])} for i in order]
        results.append({"image": path, "top": top})
        text.append(path)
        text += [f"  {t['probability']:.4f}  {t['index']:>5}  {t['label']}" for t in top]
    _print(args, results, "\n".join(text))
    return 0


def _target_request(text: str | None) -> int | list[str] | None:
    """--target as asked: None (top-1), an int K for topK, or the list of classes (still names or indices)."""
    if text is None:
        return None
    word = text.strip().lower()
    if word.startswith("top") and word[3:].isdigit():
        k = int(word[3:])
        if k < 1:
            raise ParameterError(f"--target {text}: topK needs K >= 1 (e.g. top3)")
        return k
    items = [part.strip() for part in text.split(",")]
    if any(not part for part in items):
        raise ParameterError(f"--target {text!r} has an empty item; separate classes with single commas")
    return items


def _targets_for(model, request: int | list[str] | None, text: str | None, path: str) -> list[int | None]:
    """The classes to explain on one image: top-1 (None), its K best, or the listed ones (a label that
    itself holds commas, as ImageNet synonyms do, is taken whole when it names a class)."""
    if request is None:
        return [None]
    if isinstance(request, int):
        if request > model.num_classes:
            raise ParameterError(f"--target top{request}: the model has only {model.num_classes} classes")
        raw = model.predict([path], score="raw")[0]
        return [int(i) for i in np.argsort(-raw, kind="stable")[:request]]
    if len(request) > 1:
        try:
            return [model.class_index(text)]
        except BlackboxError:
            pass
    return list(dict.fromkeys(model.class_index(item) for item in request))


def _class_part(model, targets: Sequence[int]) -> dict[int, str]:
    """Each class's file-name part: its label made file-safe (the index without labels, or when two
    labels would give the same part)."""
    from .cli_visualize import _safe

    parts = {t: (_safe(model.label(t)) if model.labels is not None else str(t)) for t in targets}
    counts = {v: list(parts.values()).count(v) for v in parts.values()}
    return {t: (v if counts[v] == 1 else f"{v}_{t}") for t, v in parts.items()}


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .api import explain, resolve_target
    from .inputs import prepare
    from .methods import METHODS
    from .render import _COLORMAPS, check_options

    if args.method not in METHODS:
        raise ParameterError(f"unknown method {args.method!r}; available: {', '.join(sorted(METHODS))}")
    params = _parse_params(args.param)
    METHODS[args.method].check_params(params)
    if args.plain:
        if args.colormap is not None and args.colormap.lower() not in _COLORMAPS:
            raise ParameterError(f"--colormap {args.colormap!r} is not one of the plain overlay's: "
                                 f"{', '.join(sorted(_COLORMAPS))}")
    else:
        check_options(sign=args.sign, clip=args.clip, mode=args.mode, alpha=args.alpha, colormap=args.colormap)
    request = _target_request(args.target)
    _check_images(args.images)  # fail on a bad image or output folder before any work or output
    _check_out(args.out)
    stems = [f"{Path(path).stem}_{args.method}" for path in args.images]
    if len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})[0]
        raise ParameterError(f"two images would both be written as {twice}_CLASS.png in --out; explain them in "
                             f"separate runs or rename one")
    global _quiet
    _quiet = _quiet or args.quiet
    model = _load(args, warn_guess=False)  # each explanation's notes say so
    jobs = []  # (path, stem, target index) in order, every target resolved before any work
    for path, stem in zip(args.images, stems):
        targets = [t if t is not None else resolve_target(model, None, prepare(model, path).x)
                   for t in _targets_for(model, request, args.target, path)]
        jobs += [(path, stem, t) for t in targets]
    options = {"sign": args.sign, "clip": args.clip, "mode": args.mode, "alpha": args.alpha,
               "colormap": args.colormap}
    explanations = []
    with tqdm(total=len(jobs), desc=f"{args.method}", unit="map", disable=not show_progress(), delay=1.0,
              leave=False, dynamic_ncols=True) as bar:
        for path, _, target in jobs:
            explanations.append(explain(model, path, args.method, target=target, score=args.score, seed=args.seed,
                                        progress=show_progress(), **params))
            bar.update(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, text = [], []
    for path, stem in zip(args.images, stems):
        mine = [exp for (p, _, _), exp in zip(jobs, explanations) if p == path]
        parts = _class_part(model, [exp.target for exp in mine])
        for exp in mine:
            name = f"{stem}_{parts[exp.target]}"
            for note in exp.notes:
                _warn(f"{path} [{exp.method}, {exp.label}]: {note}")
            if args.plain:
                png = exp.save_overlay(out / f"{name}.png", alpha=args.alpha, colormap=args.colormap)
            else:
                png = exp.save_figure(out / f"{name}.png", **options)
            npz = exp.save_npz(out / f"{name}.npz")
            summary = {**exp.summary(), "png": str(png), ("overlay" if args.plain else "figure"): str(png),
                       "npz": str(npz)}
            summaries.append(summary)
            text.append(f"{path}: {exp.method} for class {exp.target} ({exp.label}), {exp.score} "
                        f"{exp.target_score:.4g}; {exp.n_evals} evaluations in {exp.seconds:.2f}s -> {png}")
        if len(mine) > 1 and not args.plain:
            from .render import figure, save_figure

            grid = save_figure(figure(mine, **options), out / f"{stem}.png")
            for summary in summaries[-len(mine):]:
                summary["grid"] = str(grid)
            text.append(f"{path}: {len(mine)} classes side by side -> {grid}")
    _print(args, summaries, "\n".join(text))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    for name, spec in sorted(METHODS.items()):
        params = ", ".join(f"{k}={v!r}" for k, v in spec.parameters().items())
        print(f"{name:<24} {spec.kind:<13} score={spec.default_score:<12} {spec.summary}")
        if params:
            print(f"{'':<24} {params}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Exit 0 when every item succeeded, 1 when any failed (recorded in the results), 2 for user errors."""
    from .report import (ReportConfig, expand_inputs, parse_method_params, parse_methods, parse_metrics,
                         run_report)

    methods = parse_methods(args.methods)
    params = parse_method_params(args.param, methods)
    metrics = parse_metrics(args.metrics)
    if not args.visualize and (args.concepts is not None or args.visualize_steps is not None):
        raise ParameterError("--concepts and --visualize-steps belong to the --visualize section; add --visualize")
    if args.engine != "ray" and (args.address is not None or args.workers is not None or args.gpus_per_worker):
        raise ParameterError("--address, --workers and --gpus-per-worker belong to the ray engine; add --engine ray")
    if args.engine == "ray":
        from .report.engines.ray import require

        require()  # one line on how to install Ray, before any work
    _check_out(args.out)
    entries = expand_inputs(args.inputs)
    if not entries:
        raise ParameterError("no input images: give image files, folders, globs or a .txt list")
    model = _load(args)
    options = {k: getattr(args, k) for k in ("model", "preset", "labels", "device", "input_name", "output_name",
                                             "output_kind", "layout", "batch_size")}
    config = ReportConfig(out=args.out, methods=methods, params=params, target=args.target, score=args.score,
                          seed=args.seed, metrics=metrics, targets_csv=args.targets_csv, resume=args.resume,
                          top=args.top, step=args.step, tolerance=args.tolerance, sanity_mode=args.sanity_mode,
                          sanity_layers=args.sanity_layers, colormap=args.colormap,
                          visualize=args.visualize, concepts=args.concepts,
                          **({} if args.visualize_steps is None else {"visualize_steps": args.visualize_steps}),
                          command=_report_command(args, methods),
                          model_options=options, engine=args.engine, address=args.address, workers=args.workers,
                          gpus_per_worker=args.gpus_per_worker)
    summary = run_report(model, entries, config, progress=False if args.quiet else None)
    data = {"out": str(summary.out), "ok": summary.ok, "failed": summary.failed, "methods": summary.methods,
            "index": str(summary.out / "index.html")}
    lines = [f"{summary.ok} ok, {summary.failed} failed -> {summary.out / 'index.html'}"]
    for name, m in summary.methods.items():
        parts = [f"{k} {v:.4f}" for k, v in m.items() if k in ("deletion_auc", "insertion_auc", "pointing_mask",
                                                              "share_mask", "pointing_box", "share_box")
                 and v is not None]
        lines.append(f"  {name:<24} {m['ok']}/{m['items']} ok  " + "  ".join(parts))
    for record in summary.records:
        if record.get("status") != "ok":
            lines.append(f"  failed: {record.get('image')} [{record.get('method')}]: {record.get('error')}")
    _print(args, data, "\n".join(lines))
    return 0 if summary.failed == 0 else 1


def _report_command(args: argparse.Namespace, methods: Sequence[str]) -> list[str]:
    """The command line that reproduces this run, rebuilt from the parsed options (without --resume)."""
    command = ["blackbox", "report", args.model, *args.inputs, "--methods", ",".join(methods), "--out", args.out]
    options = [("--preset", args.preset), ("--labels", args.labels), ("--input", args.input_name),
               ("--output", args.output_name), ("--output-kind", args.output_kind), ("--layout", args.layout),
               ("--batch-size", args.batch_size), ("--target", args.target), ("--score", args.score),
               ("--metrics", args.metrics), ("--targets-csv", args.targets_csv), ("--step", args.step),
               ("--colormap", args.colormap)]
    if args.device != "auto":
        options.append(("--device", args.device))
    for flag, value in options:
        if value is not None:
            command += [flag, str(value)]
    command += ["--seed", str(args.seed), "--top", str(args.top), "--tolerance", f"{args.tolerance:g}",
                "--sanity-mode", args.sanity_mode, "--sanity-layers", str(args.sanity_layers)]
    for item in args.param:
        command += ["--param", item]
    if args.engine != "local":
        command += ["--engine", args.engine]
        if args.address is not None:
            command += ["--address", args.address]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        if args.gpus_per_worker:
            command += ["--gpus-per-worker", f"{args.gpus_per_worker:g}"]
    if args.visualize:
        command.append("--visualize")
        if args.concepts is not None:
            command += ["--concepts", args.concepts]
        if args.visualize_steps is not None:
            command += ["--visualize-steps", str(args.visualize_steps)]
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one ``blackbox: error:`` line and exit 2, warnings follow the
    work (``blackbox: warning:`` lines) and leave the exit code alone."""
    from .cli_serve import HANDLERS as SERVE_HANDLERS
    from .cli_visualize import HANDLERS

    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "predict": cmd_predict, "explain": cmd_explain, "methods": cmd_methods,
                "report": cmd_report, **HANDLERS, **SERVE_HANDLERS}
    _warnings.clear()
    global _quiet
    _quiet = bool(getattr(args, "quiet", False))
    try:
        code = handlers[args.command](args)
    except BlackboxError as error:
        print(f"blackbox: error: {printable(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print("blackbox: error: out of memory; pass a smaller --batch-size or lower the method's counts "
              "(--param)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("blackbox: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `blackbox layers MODEL | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    finally:
        pending, _warnings[:] = list(_warnings), []
    for text in dict.fromkeys(pending):
        print(f"blackbox: warning: {printable(text)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: cli_visualize shares blackbox.cli's warnings
    from blackbox.cli import main as _main

    sys.exit(_main())
