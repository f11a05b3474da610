"""The one-line errors of the differentiator (the classes themselves live in :mod:`blackbox.errors`).

Every message says what cannot be differentiated and what to do instead: the model-agnostic methods
only run the forward graph, so they work on any model ONNX Runtime can run.
"""

from __future__ import annotations

import onnx

from ...errors import UnsupportedOpError
from ..onnx_utils import DEFAULT_DOMAINS

AGNOSTIC_HINT = "use a model-agnostic method instead: occlusion, rise, lime, kernel_shap"

# Ops whose subgraphs hold the computation; the walk does not differentiate through subgraphs.
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def op_label(node: onnx.NodeProto) -> str:
    """``Op`` for the default domain, ``domain::Op`` otherwise (also the registry key of its rule)."""
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def unsupported(node: onnx.NodeProto, detail: str = "") -> UnsupportedOpError:
    """The one-line error for a node on the input -> score path that the differentiator cannot handle."""
    if not detail and node.domain in DEFAULT_DOMAINS and node.op_type in CONTROL_FLOW:
        detail = "control flow: gradients are not taken through its subgraphs"
    what = f" ({detail})" if detail else ""
    return UnsupportedOpError(
        f"no gradient rule for op {op_label(node)}{what} at node {node.name or '<unnamed>'!r} "
        f"(output {node.output[0] if node.output else '?'!r}); gradient methods cannot run on this "
        f"model, {AGNOSTIC_HINT}"
    )


def cannot_differentiate(node: onnx.NodeProto, reason: str, remedy: str = "") -> UnsupportedOpError:
    """The one-line error for a node whose rule exists but cannot handle this case: ``reason`` says what
    is missing, ``remedy`` (optional) what would give it, before the model-agnostic methods."""
    advice = f"{remedy} or {AGNOSTIC_HINT}" if remedy else f"gradient methods cannot run on this model, {AGNOSTIC_HINT}"
    return UnsupportedOpError(
        f"cannot differentiate node {node.name or '<unnamed>'!r} (op {op_label(node)}, output "
        f"{node.output[0] if node.output else '?'!r}): {reason}; {advice}"
    )


def unknown_size(node: onnx.NodeProto, tensor: str, axis: int | None = None) -> UnsupportedOpError:
    """A size (``axis``) or the rank (``axis`` None) of ``tensor`` that a rule needs and nobody knows."""
    what = f"the size of axis {axis}" if axis is not None else "the rank"
    return cannot_differentiate(
        node, f"{what} of tensor {tensor!r} is unknown after shape inference and could not be recovered from "
              "the fixed image size (it depends on the data, or a model input has an unknown size)",
        "export the model with static sizes (e.g. torch.onnx.export(..., dynamo=True))")


__all__ = ["AGNOSTIC_HINT", "CONTROL_FLOW", "cannot_differentiate", "op_label", "unknown_size", "unsupported"]
