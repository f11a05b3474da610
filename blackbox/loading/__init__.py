"""Loading a classifier as a sequence of pure steps: read -> signature -> probes -> a frozen
:class:`ModelDescription`. :class:`blackbox.model.Model` builds its sessions from the result.

Each step takes what the previous ones decided and returns a value; none depends on call order or
on attributes set elsewhere, so a derived graph (a randomised copy) goes through the same steps with
the same :class:`LoadOptions`.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from .. import runtime
from ..errors import ModelError, ParameterError
from ..graph.compose import ScoreOutput
from ..graph.onnx_utils import dims, elem_type
from ..labels import labels_from_metadata, read_labels
from ..preprocess import Preprocess
from .description import LoadOptions, ModelDescription
from .probe import OUTPUT_KINDS, batch_rewrite, classify_output, probe_scores
from .read import check_graph, read_onnx
from .signature import (constant_inputs, find_image_input, find_output, image_spec, layout_of,
                        resolve_preprocess)

__all__ = ["LoadOptions", "ModelDescription", "OUTPUT_KINDS", "read_source", "describe"]


def read_source(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """A file path or an in-memory graph -> (checked graph, path or None)."""
    if isinstance(source, onnx.ModelProto):
        check_graph(source)
        return source, None
    if not isinstance(source, (str, os.PathLike)):
        raise ModelError(f"expected an ONNX file path or an onnx.ModelProto, got {type(source).__name__}")
    path = Path(source)
    return read_onnx(path), path


def check_options(options: LoadOptions) -> None:
    """Option values that are wrong whatever the model."""
    if options.output_kind is not None and options.output_kind not in OUTPUT_KINDS:
        raise ParameterError(f"unknown output kind {options.output_kind!r}: use one of {', '.join(OUTPUT_KINDS)}")
    size = options.batch_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ParameterError(f"batch size must be a positive whole number, got {size!r}")


def describe(proto: onnx.ModelProto, path: Path | None, options: LoadOptions,
             device: runtime.Device) -> tuple[ModelDescription, onnx.ModelProto]:
    """(description, the graph to run) — the graph is ``proto`` or its verified dynamic-batch rewrite."""
    check_options(options)
    image_value = find_image_input(proto, options.input_name)
    constants = constant_inputs(proto, image_value.name, options.inputs)
    input_shape = dims(image_value)
    layout = layout_of(input_shape, options.layout)
    given, source, guessed = resolve_preprocess(options.preprocess, proto)
    image = image_spec(image_value, layout, given)
    preprocess = (given or Preprocess.preset("none")).resolve(
        height=image.height, width=image.width, channels=image.channels, layout="NCHW")
    score_value = find_output(proto, options.output_name)
    fixed_batch = input_shape[0] if isinstance(input_shape[0], int) else None
    graph, batch_mode, batchable = proto, "dynamic", True
    if fixed_batch is not None:
        graph, batch_mode = batch_rewrite(proto, image, score_value, constants, preprocess, fixed_batch, device)
        batchable = graph is not proto
    rows = probe_scores(graph, image, score_value, constants, preprocess, batchable, device)
    detected = classify_output(rows)
    kind = options.output_kind or detected
    labels = read_labels(options.labels) if options.labels is not None else labels_from_metadata(proto)
    if labels is not None and len(labels) != rows.shape[1]:
        raise ParameterError(f"labels from {labels.source} name {len(labels)} classes but the model has "
                             f"{rows.shape[1]}")
    description = ModelDescription(
        path=path, image=image, input_shape=tuple(input_shape),
        output=ScoreOutput(score_value.name, elem_type(score_value), kind),
        output_shape=tuple(dims(score_value)), output_kind_detected=detected, num_classes=int(rows.shape[1]),
        fixed_batch=fixed_batch, batchable=batchable, batch_mode=batch_mode, constants=constants,
        preprocess=preprocess, preprocess_source=source, preprocess_guessed=guessed, labels=labels,
        requested_batch=options.batch_size)
    return description, graph
