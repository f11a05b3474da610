"""``results.parquet``: the report's results as a typed table (pyarrow), for pandas, DuckDB, Polars, Spark.

One row per image x method x target, the same columns as ``results.csv`` (:data:`~blackbox.report.run.
CSV_COLUMNS`) with real types: floats for scores and metrics, integers for the target and the evaluation
count, booleans for the pointing game, strings for text (kept as they are: unlike the CSV, nothing
here is opened by a spreadsheet or printed to a terminal; ``notes``: the record's warnings joined by " | ",
``n_notes`` their count), ``top_k`` as a list of ``{index, label, probability}``
structs and ``params`` as a JSON string (its keys differ by method). Missing values are nulls. The file is
written with :func:`blackbox.files.write_atomic` (a temporary in the folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import ParameterError
from ..files import write_atomic

_INT = ("target", "n_evals", "n_notes")
_BOOL = ("pointing_mask", "pointing_box")
_FLOAT = ("probability", "log_probability", "logit", "explained_score", "seconds", "deletion_auc", "insertion_auc",
          "share_mask", "area_mask",
          "share_box", "area_box", "sanity_spearman_abs", "sanity_spearman", "sanity_ssim")


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a core dependency; only a broken install lacks it
        raise ParameterError("results.parquet needs pyarrow: pip install pyarrow") from None
    return pa, pq


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _bool(value: Any) -> bool | None:
    return bool(value) if isinstance(value, (bool, int, float)) and not (
        isinstance(value, float) and math.isnan(value)) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _top(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, (list, tuple)):
        return None
    return [{"index": _int(t.get("index")), "label": _text(t.get("label")), "probability": _float(t.get("probability"))}
            for t in value if isinstance(t, dict)]


def _schema(pa, columns: Sequence[str]):
    top = pa.list_(pa.struct([("index", pa.int64()), ("label", pa.string()), ("probability", pa.float64())]))
    fields = []
    for column in columns:
        kind = (pa.int64() if column in _INT else pa.bool_() if column in _BOOL else
                pa.float64() if column in _FLOAT else top if column == "top_k" else pa.string())
        fields.append(pa.field(column, kind))
    return pa.schema(fields)


def _row(record: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    files = record.get("files") or {}
    params = record.get("params")
    source = {**metrics, **{k: v for k, v in record.items() if k not in ("metrics", "files")},
              "overlay": files.get("overlay"), "npz": files.get("npz"),
              "top_k": record.get("top"), "explained_score": record.get("score"),
              "explained_space": record.get("score_space"),
              "notes": " | ".join(str(n) for n in record.get("notes") or []) or None,
              "n_notes": len(record.get("notes") or []) if record.get("status") == "ok" else None,
              "params": json.dumps(params, sort_keys=True, allow_nan=False, default=str) if params is not None
              else None}
    row: dict[str, Any] = {}
    for column in columns:
        value = source.get(column)
        row[column] = (_int(value) if column in _INT else _bool(value) if column in _BOOL else
                       _float(value) if column in _FLOAT else _top(value) if column == "top_k" else _text(value))
    return row


def results_table(records: Sequence[dict[str, Any]]):
    """The records as a ``pyarrow.Table`` with the results.csv columns (typed, see the module's text)."""
    from .run import CSV_COLUMNS

    pa, _ = _arrow()
    schema = _schema(pa, CSV_COLUMNS)
    rows = [_row(r, CSV_COLUMNS) for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def write_parquet(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """``results.parquet`` at ``path``, written atomically (snappy-compressed row groups of 64k rows)."""
    _, pq = _arrow()
    table = results_table(records)
    return write_atomic(path, lambda stream: pq.write_table(table, stream, compression="snappy",
                                                            row_group_size=65536),
                        error=ParameterError)
