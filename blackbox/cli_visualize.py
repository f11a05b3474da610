"""The command line's views inside the network: ``blackbox layers``, ``blackbox visualize``, ``blackbox concepts``.

Same conventions as :mod:`blackbox.cli`: a user mistake is one ``blackbox: error:`` line and exit 2, found
before any optimisation and before any output (inputs, layers, channels and concept folders are checked
first); every file is written atomically by the visualize objects' own writers under fixed names in
``--out``; what reaches the terminal goes through :func:`blackbox.text.printable`; notes become
``blackbox: warning:`` lines after the work.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from .cli import (_check_out, _load, _model_arguments, _non_negative_float, _positive_int, _print,
                  _seed, _warn, _whole_number, number_type)
from .errors import BlackboxError, ImageError, ParameterError, TargetError, UnsupportedOpError
from .visualize.objectives import CLASS_SCORES

VIEWS = ("am", "dream", "invert", "top", "dissect", "filters", "activations", "embed")
FORWARD_ONLY = "filters, activations, embed, top --no-projections and dissect"
_OUT = "blackbox-visualize"


# ------------------------------------------------------------------------------------- argument types

_positive_float = number_type(lambda v: v > 0, "a finite number > 0")  # learning rates, perplexity, octave scales
# quantiles and IoU thresholds (the library narrows further)
_fraction = number_type(lambda v: 0 <= v < 1, "a number from 0 to below 1")


def _size(text: str) -> int | tuple[int, int]:
    """argparse type: ``S`` or ``HxW`` (also ``H,W``) in pixels."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give S or HxW in pixels (e.g. 224 or 128x96)") \
            from None
    if len(values) not in (1, 2) or not all(8 <= v <= 2048 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give S or HxW, 8 to 2048 pixels a side")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _neuron(text: str) -> str | tuple[int, int]:
    """argparse type: ``Y,X`` (a position at the layer's resolution) or ``center``."""
    if text.strip().lower() in ("center", "centre"):
        return "center"
    parts = text.split(",")
    try:
        y, x = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position: give Y,X (whole numbers at the layer's "
                                         "resolution) or center") from None
    if y < 0 or x < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: positions start at 0,0")
    return y, x


_channel = _whole_number(0)


# ------------------------------------------------------------------------------------- parsers

def add_parsers(sub) -> None:
    """Register ``layers``, ``concepts`` and ``visualize`` (with its views) on the top-level subparsers."""
    layers = sub.add_parser("layers", help="list the layers a user can look at: index, name, op, shape, kind",
                            description="The tensors blackbox can tap, in graph order, with their shape per "
                                        "sample and kind (map = [C, H, W], tokens, vector); '*' marks the "
                                        "default CAM layer. Use the names with 'blackbox visualize' and "
                                        "--param layer=... of the CAM methods.")
    _model_arguments(layers)
    layers.add_argument("--spatial", action="store_true", help="only spatial maps [C, H, W] with H x W > 1")

    concepts = sub.add_parser("concepts", help="write a concept set for 'blackbox visualize MODEL dissect' "
                                               "(the shapes data set: shapes, colours, background)",
                              description="Write OUT/images/NNNNN.png and OUT/masks/CONCEPT/NNNNN.png for the "
                                          "project's shapes models; OUT must be new, empty or a concept set "
                                          "written before by this command.")
    concepts.add_argument("out", metavar="OUT", help="folder to write the concept set to")
    concepts.add_argument("--n", type=_positive_int, default=120, help="number of images (default 120)")
    concepts.add_argument("--size", type=_whole_number(32), default=64, help="image side in pixels (default 64)")
    concepts.add_argument("--seed", type=_seed, default=0, help="seed of the generator (default 0)")
    concepts.add_argument("--json", action="store_true", help="print JSON instead of text")

    visualize = sub.add_parser(
        "visualize", help="see inside the network: am, dream, invert, top, dissect, filters, activations, embed",
        description="blackbox visualize MODEL VIEW [view arguments] [model options] --out DIR. Model options "
                    "(--preset, --labels, --device, --input, --output, ...) go after VIEW. Views: am "
                    "(activation maximisation of a class or a unit), dream (deep dream), invert (network "
                    "inversion), top (top activations with DeconvNet projections), dissect (network "
                    "dissection), filters, activations, embed (t-SNE map). am, dream, invert and top "
                    "(with projections) need a gradient rule for every op on the way; " + FORWARD_ONLY +
                    " read the model forward only.")
    visualize.add_argument("model", metavar="MODEL", help="path to the ONNX classifier")
    views = visualize.add_subparsers(dest="view", required=True, metavar="VIEW")

    am = _view(views, "am", "activation maximisation: the picture that most excites a class or a unit")
    am.add_argument("--target", action="append", default=[], metavar="CLASS",
                    help="class index or label; several separated by commas or repeated, one image each")
    am.add_argument("--layer", help="layer name (see 'blackbox layers'), with --channel")
    am.add_argument("--channel", type=_channel, help="channel of --layer whose mean to maximise")
    am.add_argument("--neuron", type=_neuron, metavar="Y,X|center",
                    help="maximise one activation of --channel at this position instead of the mean")
    am.add_argument("--steps", type=_whole_number(1), default=256, help="Adam steps (default 256)")
    am.add_argument("--size", type=_size, metavar="S|HxW", help="picture size (default: the model's input size)")
    am.add_argument("--param", choices=["fft", "pixels", "rgb"], default="fft",
                    help="image parametrisation (default fft: Fourier basis, decorrelated colour)")
    am.add_argument("--transforms", choices=["standard", "none"], default="standard",
                    help="robustness transforms: jitter, scale, rotate, pad (default standard)")
    am.add_argument("--regularizers", choices=["none", "classic"], default="none",
                    help="classic: L2 decay, periodic blur and gradient clipping (class generation)")
    am.add_argument("--lr", type=_positive_float, default=0.05, help="Adam learning rate (default 0.05)")
    am.add_argument("--n", type=_whole_number(1), default=1, help="images per objective, kept diverse (default 1)")
    am.add_argument("--diversity", type=_non_negative_float, help="weight of the diversity term when --n > 1 "
                                                                   "(default 100)")
    am.add_argument("--score", choices=list(CLASS_SCORES), default="logit",
                    help="class score to maximise (default logit; log_odds makes the class beat its neighbours)")
    am.add_argument("--image", help="start from this picture instead of noise")
    am.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (default 0)")

    dream = _view(views, "dream", "deep dream: amplify what a layer sees in a picture")
    dream.add_argument("image", help="image file")
    dream.add_argument("--layer", required=True, help="layer name (see 'blackbox layers')")
    dream.add_argument("--channel", type=_channel, help="amplify one channel instead of the whole layer")
    dream.add_argument("--octaves", type=_whole_number(1), default=4, help="scales, coarse to fine (default 4)")
    dream.add_argument("--octave-scale", type=_positive_float, default=1.4, help="ratio between octaves (default 1.4)")
    dream.add_argument("--steps", type=_whole_number(1), default=20, help="Adam steps per octave (default 20)")
    dream.add_argument("--lr", type=_positive_float, default=0.01, help="learning rate (default 0.01)")
    dream.add_argument("--jitter", type=_whole_number(0), default=8, help="random shift in pixels (default 8)")
    dream.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (default 0)")

    invert = _view(views, "invert", "network inversion: the picture a layer's features describe")
    invert.add_argument("image", help="image file")
    invert.add_argument("--layer", action="append", required=True, metavar="LAYER",
                        help="layer to invert; repeat for several (an error-per-layer table)")
    invert.add_argument("--steps", type=_whole_number(1), default=200, help="Adam steps (default 200)")
    invert.add_argument("--lr", type=_positive_float, default=0.02, help="learning rate (default 0.02)")
    invert.add_argument("--param", choices=["fft", "pixels", "rgb"], default="rgb",
                        help="image parametrisation (default rgb)")
    invert.add_argument("--tv", type=_non_negative_float, default=0.05, help="total-variation weight (default 0.05)")
    invert.add_argument("--alpha", type=_non_negative_float, default=1.0, help="alpha-norm weight (default 1)")
    invert.add_argument("--transforms", choices=["standard", "none"], default="none",
                        help="robustness transforms (default none)")
    invert.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (default 0)")

    top = _view(views, "top", "top activations: the image patches where one unit fires most, with DeconvNet "
                              "projections")
    top.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders of images")
    top.add_argument("--layer", required=True, help="spatial layer name (see 'blackbox layers --spatial')")
    top.add_argument("--channel", type=_channel, required=True, help="channel (unit) of --layer")
    top.add_argument("--k", type=_positive_int, default=9, help="how many images to keep (default 9)")
    top.add_argument("--no-projections", dest="projections", action="store_false",
                     help="patches only, forward passes only (no gradient rule needed)")

    dissect = _view(views, "dissect", "network dissection: label units with the concepts they detect")
    dissect.add_argument("--concepts", required=True, metavar="DIR",
                         help="concept folder: DIR/images/NAME.png, DIR/masks/CONCEPT/NAME.png "
                              "('blackbox concepts' writes one for the shapes models)")
    dissect.add_argument("--layer", action="append", required=True, metavar="LAYER",
                         help="spatial layer to dissect; repeat for several")
    dissect.add_argument("--quantile", type=_fraction, default=0.005,
                         help="top fraction of activations that counts as the unit firing (default 0.005)")
    dissect.add_argument("--iou-threshold", type=_fraction, default=0.04,
                         help="IoU above which a unit is interpretable (default 0.04)")

    filters = _view(views, "filters", "a convolution's filters as a grid (first convolution by default)")
    filters.add_argument("--layer", help="output of the convolution (or its Conv node); default the first")
    filters.add_argument("--per-filter", action="store_true", help="scale each filter by itself, not the grid")

    acts = _view(views, "activations", "every channel of a spatial layer for one image, as a grid")
    acts.add_argument("image", help="image file")
    acts.add_argument("--layer", required=True, help="spatial layer name (see 'blackbox layers --spatial')")
    acts.add_argument("--shared-scale", action="store_true", help="one colour range for all channels")
    acts.add_argument("--colormap", default="viridis", help="sequential colour map (default viridis)")

    embed = _view(views, "embed", "t-SNE map of pooled features, thumbnails coloured by predicted class")
    embed.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders (at least 3 images)")
    embed.add_argument("--layer", help="layer to pool (default: what the classifier head reads)")
    embed.add_argument("--perplexity", type=_positive_float, default=30.0, help="t-SNE perplexity (default 30)")
    embed.add_argument("--seed", type=_seed, default=0, help="t-SNE seed (default 0)")


def _view(views, name: str, text: str) -> argparse.ArgumentParser:
    parser = views.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    _model_arguments(parser, positional=False)
    parser.add_argument("--out", default=_OUT, help=f"output folder (default {_OUT})")
    return parser


# ------------------------------------------------------------------------------------- shared steps

def _safe(name: str) -> str:
    """A layer or class name as a file-name part ('/stem/Conv_output_0' -> 'stem_Conv_output_0')."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_.") or "layer")[-80:]


def _progress() -> bool:
    """Bars on stderr when it is a terminal and --quiet was not given (``blackbox.cli.show_progress``)."""
    from .cli import show_progress

    return show_progress()


def _check_image(path: str | None) -> None:
    """One image file (a folder is refused: this view reads one picture), checked before the model loads."""
    from .files import check_input_file

    if path is None:
        return
    if Path(path).is_dir():
        raise ImageError(f"{path} is a folder; this view reads one image file")
    check_input_file(path, "image file", error=ImageError)


def _collect_images(paths: Sequence[str]) -> list[str]:
    """Image files and folders' images (sorted by name), checked before the model is loaded."""
    from .files import check_input_file
    from .visualize.images import collect

    items: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            items += collect(path)
        else:
            items.append(str(check_input_file(path, "image file", error=ImageError)))
    return items


def _write_json(path: Path, data: Any) -> str:
    from .files import jsonable, write_atomic

    write_atomic(path, json.dumps(jsonable(data), indent=2, allow_nan=False), error=ParameterError)
    return str(path)


def _notes(notes: Sequence[str]) -> None:
    for note in notes:
        _warn(note)


def _gradients(call, *args, **kwargs):
    """Run a gradient-based view; a missing gradient rule names the op and the views that still work."""
    try:
        return call(*args, **kwargs)
    except UnsupportedOpError as error:
        head = str(error).split("; gradient methods cannot run", 1)[0]  # the op and node, without the methods hint
        raise UnsupportedOpError(f"{head}; this view needs gradients through it, but the forward-only views "
                                 f"still work on this model: {FORWARD_ONLY}") from None


def _mkdir(out: str) -> Path:
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ParameterError(f"cannot create {folder}: {error.strerror or error}") from None
    return folder


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


# ------------------------------------------------------------------------------------- layers, concepts

def cmd_layers(args: argparse.Namespace) -> int:
    model = _load(args)
    try:
        cam = model.default_cam_layer()
    except BlackboxError:
        cam = None
    layers = [layer for layer in model.layers() if layer.spatial or not args.spatial]
    rows = [{**layer.to_dict(), "default_cam": layer.name == cam} for layer in layers]
    shape = [" x ".join("?" if d is None else str(d) for d in layer.shape) or "-" for layer in layers]
    width = max([len("name")] + [len(layer.name) for layer in layers])
    op_width = max([len("op")] + [len(layer.op_type) for layer in layers])
    lines = [f"{'index':>5}  {'name':<{width}}  {'op':<{op_width}}  {'shape':<16}  {'kind':<7}  layout"]
    for layer, text in zip(layers, shape):
        mark = "  * default CAM layer" if layer.name == cam else ""
        layout = layer.layout + (f" {layer.grid[0]}x{layer.grid[1]}" if layer.spatial else "")
        layout += f" +{layer.extra} tokens" if layer.spatial and layer.extra else ""
        lines.append(f"{layer.index:>5}  {layer.name:<{width}}  {layer.op_type:<{op_width}}  {text:<16}  "
                     f"{layer.kind:<7}  {layout}{mark}")
    if not layers:
        lines.append("(no spatial layers)" if args.spatial else "(no layers)")
    _print(args, rows, "\n".join(lines))
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from .datasets.concepts import MARKER, make_concepts

    out = make_concepts(args.out, n=args.n, size=args.size, seed=args.seed)
    meta = json.loads((out / MARKER).read_text(encoding="utf-8"))
    counts = meta.get("concepts", {})
    text = [f"{args.n} images, {len(counts)} concepts -> {out}"]
    text += [f"  {name:<12} {count} image{'' if count == 1 else 's'}" for name, count in counts.items()]
    _print(args, {"out": str(out), **meta}, "\n".join(text))
    return 0


# ------------------------------------------------------------------------------------- visualize

def cmd_visualize(args: argparse.Namespace) -> int:
    return _VIEWS[args.view](args)


def _targets(model, values: Sequence[str]) -> list[int]:
    """Class indices from --target values: each value whole (a label may hold commas), else split on commas."""
    found: list[int] = []
    for value in values:
        try:
            found.append(model.class_index(value))
            continue
        except TargetError:
            if "," not in value:
                raise
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):
            raise ParameterError(f"--target {value!r} has an empty item; separate classes with single commas")
        found += [model.class_index(p) for p in parts]
    return list(dict.fromkeys(found))


def view_am(args: argparse.Namespace) -> int:
    from .visualize import activation_maximization

    if args.target and (args.layer is not None or args.channel is not None or args.neuron is not None):
        raise ParameterError("give either --target (a class) or --layer with --channel (a unit), not both")
    if not args.target:
        if args.layer is None:
            raise ParameterError("say what to maximise: --target CLASS, or --layer L --channel C "
                                 "('blackbox layers MODEL' lists the layers)")
        if args.channel is None:
            raise ParameterError(f"--layer {args.layer} needs --channel C (the unit to maximise)")
    _check_image(args.image)
    _check_out(args.out)
    model = _load(args)
    options = dict(steps=args.steps, size=args.size, param=args.param, transforms=args.transforms,
                   regularizers=None if args.regularizers == "none" else args.regularizers, lr=args.lr, n=args.n,
                   seed=args.seed, score=args.score, diversity=args.diversity, image=args.image,
                   progress=_progress())
    jobs: list[tuple[str, dict[str, Any]]] = []
    if args.target:
        for index in _targets(model, args.target):
            label = model.label(index)
            what = f"{index}" if label == f"class {index}" else f"{index}_{_safe(label)}"
            jobs.append((what, {"target": index}))
    else:
        layer = model.layer(args.layer).name
        what = f"{_safe(layer)}_{args.channel}"
        if args.neuron is not None:
            what += "_center" if args.neuron == "center" else f"_{args.neuron[0]}x{args.neuron[1]}"
        jobs.append((what, {"layer": layer, "channel": args.channel, "neuron": args.neuron}))
    results = [(what, _gradients(activation_maximization, model, **job, **options)) for what, job in jobs]
    out = _mkdir(args.out)
    summaries, text = [], []
    for what, vis in results:
        png = vis.save_png(out / f"am_{what}.png")
        summary = {**vis.summary(), "png": png}
        summary["json"] = _write_json(out / f"am_{what}.json", summary)
        summaries.append(summary)
        _notes(vis.notes)
        target = vis.params.get("target")
        name = (f"class {target} ({vis.params.get('label')})" if target is not None
                else vis.params.get("objective") or f"{vis.params.get('layer')} channel {vis.params.get('channel')}")
        for i, value in enumerate(vis.objectives):
            part = f"[{i}] " if len(vis.objectives) > 1 else ""
            prob = f", probability {float(vis.probability(target)[i]):.4f}" if target is not None else ""
            text.append(f"{name} {part}objective {_fmt(float(value))}{prob} -> {png}")
    _print(args, summaries, "\n".join(text))
    return 0


def view_dream(args: argparse.Namespace) -> int:
    from .visualize import deep_dream

    _check_image(args.image)
    _check_out(args.out)
    model = _load(args)
    layer = model.layer(args.layer).name
    vis = _gradients(deep_dream, model, args.image, layer=layer, channel=args.channel, octaves=args.octaves,
                     octave_scale=args.octave_scale, steps=args.steps, lr=args.lr, jitter=args.jitter,
                     seed=args.seed, progress=_progress())
    out = _mkdir(args.out)
    stem = f"dream_{_safe(Path(args.image).stem)}_{_safe(layer)}" + ("" if args.channel is None else f"_{args.channel}")
    png = vis.save_png(out / f"{stem}.png")
    summary = {**vis.summary(), "image": args.image, "png": png}
    summary["json"] = _write_json(out / f"{stem}.json", summary)
    _notes(vis.notes)
    what = layer if args.channel is None else f"{layer} channel {args.channel}"
    _print(args, summary, f"{args.image}: deep dream on {what}, objective {_fmt(vis.objective)} -> {png}")
    return 0


def view_invert(args: argparse.Namespace) -> int:
    from .visualize import invert

    _check_image(args.image)
    _check_out(args.out)
    model = _load(args)
    layers = list(dict.fromkeys(model.layer(name).name for name in args.layer))  # all names checked first
    stems = [_safe(layer) for layer in layers]
    if len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})[0]
        raise ParameterError(f"two layers would both be written as invert_..._{twice}.png; invert them in "
                             "separate runs")
    results = [_gradients(invert, model, args.image, layer=layer, steps=args.steps, lr=args.lr, param=args.param,
                          tv=args.tv, alpha=args.alpha, transforms=args.transforms, seed=args.seed,
                          progress=_progress()) for layer in layers]
    out = _mkdir(args.out)
    image_stem = _safe(Path(args.image).stem)
    rows = []
    for layer, stem, vis in zip(layers, stems, results):
        png = vis.save_png(out / f"invert_{image_stem}_{stem}.png")
        rows.append({"layer": layer, "feature_error": vis.feature_error, "objective": vis.objective, "png": png,
                     "params": vis.params})
        _notes(vis.notes)
    data = {"image": args.image, "layers": rows}
    data["json"] = _write_json(out / f"invert_{image_stem}.json", data)
    width = max([len("layer")] + [len(layer) for layer in layers])
    lines = [f"{'layer':<{width}}  feature_error  png"]
    lines += [f"{r['layer']:<{width}}  {_fmt(r['feature_error']):>13}  {r['png']}" for r in rows]
    _print(args, data, "\n".join(lines))
    return 0


def view_top(args: argparse.Namespace) -> int:
    from .visualize.top import top_activations

    items = _collect_images(args.images)
    _check_out(args.out)
    model = _load(args)
    call = _gradients if args.projections else (lambda f, *a, **k: f(*a, **k))
    result = call(top_activations, model, items, layer=args.layer, channel=args.channel, k=args.k,
                  batch_size=args.batch_size, projections=args.projections, progress=_progress())
    paths = result.save(_mkdir(args.out))
    data = {**result.to_dict(), "files": [str(p) for p in paths]}
    lines = [f"{result.layer} channel {result.channel}: top {len(result.scores)} of {len(items)} images -> {paths[0]}"]
    lines += [f"  {rank + 1:>3}  {score:.4g}  {source}" for rank, (score, source)
              in enumerate(zip(result.scores, result.sources))]
    _print(args, data, "\n".join(lines))
    return 0


def view_dissect(args: argparse.Namespace) -> int:
    from .visualize import dissect, load_concepts

    concepts = load_concepts(args.concepts)  # the whole folder checked before the model is loaded
    _check_out(args.out)
    model = _load(args)
    result = dissect(model, concepts, layers=args.layer, quantile=args.quantile, iou_threshold=args.iou_threshold,
                     batch_size=args.batch_size, progress=_progress())
    paths = result.save(_mkdir(args.out))
    data = {"interpretable": result.interpretable, "units": result.units, "files": [str(p) for p in paths]}
    _print(args, data, result.summary() + f"\n-> {paths[0]}, {paths[1]}, {len(paths) - 2} unit pictures")
    return 0


def view_filters(args: argparse.Namespace) -> int:
    from .visualize import filters

    _check_out(args.out)
    model = _load(args)
    grid = filters(model, args.layer, per_filter=args.per_filter)
    png = grid.save_png(_mkdir(args.out) / f"filters_{_safe(grid.layer)}.png")
    shape = list(grid.tiles.shape[1:3])
    data = {"layer": grid.layer, "filters": int(len(grid.tiles)), "size": shape, "png": png}
    _print(args, data, f"{grid.layer}: {len(grid.tiles)} filters of {shape[0]} x {shape[1]} -> {png}")
    return 0


def view_activations(args: argparse.Namespace) -> int:
    from .visualize import activations

    _check_image(args.image)
    _check_out(args.out)
    model = _load(args)
    grid = activations(model, args.image, layer=args.layer, shared_scale=args.shared_scale, colormap=args.colormap)
    png = grid.save_png(_mkdir(args.out) / f"activations_{_safe(Path(args.image).stem)}_{_safe(grid.layer)}.png")
    c, h, w = grid.tiles.shape
    data = {"image": args.image, "layer": grid.layer, "channels": int(c), "size": [int(h), int(w)], "png": png}
    _print(args, data, f"{args.image}: {grid.layer}, {c} channels of {h} x {w} -> {png}")
    return 0


def view_embed(args: argparse.Namespace) -> int:
    from .visualize import embed

    items = _collect_images(args.images)
    _check_out(args.out)
    model = _load(args)
    result = embed(model, items, layer=args.layer, perplexity=args.perplexity, seed=args.seed,
                   batch_size=args.batch_size, progress=_progress())
    files = result.save(_mkdir(args.out))
    data = {"layer": result.layer, "images": len(items), "features": int(result.features.shape[1]), **files}
    _print(args, data, f"{len(items)} images, {result.features.shape[1]} features at {result.layer} -> "
                       f"{files['png']}, {files['npz']}")
    return 0


_VIEWS = {"am": view_am, "dream": view_dream, "invert": view_invert, "top": view_top, "dissect": view_dissect,
          "filters": view_filters, "activations": view_activations, "embed": view_embed}
HANDLERS = {"layers": cmd_layers, "concepts": cmd_concepts, "visualize": cmd_visualize}

__all__ = ["HANDLERS", "VIEWS", "add_parsers"]
