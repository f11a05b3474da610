"""Step 1 of loading: bytes on disk -> a validated ONNX graph that ONNX Runtime can be asked to run.

Everything a hostile or merely unusual file can do wrong is answered here with one line: not a file,
not ONNX, external data pointing outside the model's folder, a custom op domain ONNX Runtime lacks, an
opset newer than the installed packages know, an input declared so large that one probe would not fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from ..errors import ModelError
from ..files import check_input_file
from ..graph.onnx_utils import dims, real_inputs

# Op domains ONNX Runtime's standard build implements (contrib ops live in com.microsoft).
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training",
                 "com.ms.internal.nhwc", "ai.onnx.training", "com.microsoft.experimental", "pkg.onnxscript.torch_lib",
                 "pkg.onnxscript.torch_lib.common", "ai.onnx.contrib"}
# One image may hold at most this many values (C x H x W): 8192 x 8192 x 3. Classifiers take a few
# hundred pixels a side; a declared 100000 x 100000 input would make the first probe allocate 120 GB.
MAX_INPUT_VALUES = 8192 * 8192 * 3


def read_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file (with its external data, only from inside the model's folder)."""
    check_input_file(path, "model file", error=ModelError)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read model file {path}: {error.strerror}; check its permissions") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ModelError(f"not an ONNX model (it does not parse; truncated or another format?): {path}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"not an ONNX model (no graph inside; truncated or another format?): {path}")
    _load_external_data(model, path.parent)
    check_graph(model, str(path))
    return model


def check_graph(model: onnx.ModelProto, what: str = "the model") -> None:
    """onnx.checker plus what it lets through but ONNX Runtime (or our memory) cannot take."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "invalid model"
        raise ModelError(f"{what} fails the ONNX checker: {first}") from None
    except ValueError as error:  # e.g. > 2 GB protos
        raise ModelError(f"{what} cannot be checked: {str(error).splitlines()[0]}") from None
    _check_opsets(model, what)
    _check_domains(model, what)
    _check_declared_sizes(model, what)


def _check_opsets(model: onnx.ModelProto, what: str) -> None:
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ModelError(f"{what} imports ONNX opset {entry.version}, newer than this installation knows "
                             f"(up to {newest}); re-export it with an older opset or upgrade onnx and onnxruntime")
        if entry.domain in ("", "ai.onnx") and entry.version < 1:
            raise ModelError(f"{what} imports ONNX opset {entry.version}, which does not exist; re-export it")


def _check_domains(model: onnx.ModelProto, what: str) -> None:
    local = {f.domain for f in model.functions}
    for node in _all_nodes(model.graph):
        if node.domain not in KNOWN_DOMAINS and node.domain not in local:
            raise ModelError(f"{what} uses op {node.op_type!r} from the custom domain {node.domain!r}, which "
                             "ONNX Runtime does not implement; export the model without custom ops")


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _all_nodes(sub)


def _check_declared_sizes(model: onnx.ModelProto, what: str) -> None:
    for value in real_inputs(model.graph):
        shape = dims(value)
        per_sample = 1
        for d in shape[1:]:
            if isinstance(d, int):
                if d < 0:
                    raise ModelError(f"{what} declares input {value.name!r} with a negative size {shape}")
                per_sample *= d
        if per_sample > MAX_INPUT_VALUES:
            raise ModelError(f"{what} declares input {value.name!r} of shape {shape}: {per_sample:,} values per "
                             f"sample, more than blackbox evaluates (at most {MAX_INPUT_VALUES:,}); is the shape right?")


def _load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Load external tensors, refusing any location outside the model's folder (path traversal)."""
    base = folder.resolve()
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or (base != target and base not in target.parents):
            raise ModelError(f"refusing external data {location!r} of tensor {tensor.name!r}: it points outside "
                             f"the model's folder {base}")
        if not target.is_file():
            raise ModelError(f"external data file {location!r} of tensor {tensor.name!r} not found next to the model")
    if external:
        try:
            load_external_data_for_model(model, str(base))
        except Exception as error:  # noqa: BLE001
            raise ModelError(f"cannot load external data: {str(error).splitlines()[0]}") from None
