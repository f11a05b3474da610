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


__all__ = ["AGNOSTIC_HINT", "CONTROL_FLOW", "op_label", "unsupported"]
