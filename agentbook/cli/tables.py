"""Plain text tables for the terminal: what ``agentbook ls | show | history | sql`` and the demo
print (columns two spaces apart, numbers right-aligned, long cells cut)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["format_table", "frame_rows", "history_rows", "is_missing"]

_CELL_WIDTH = 40


def history_rows(frame: pd.DataFrame, columns: Sequence[str]) -> list[list[Any]]:
    """Rows of ``ref.history()`` for printing: ``call`` joins method and arguments,
    ``ms`` is the duration; other names are history columns."""
    out = []
    for row in frame.to_dict("records"):
        row = {k: (None if is_missing(v) else v) for k, v in row.items()}
        row["call"] = _call_text(row["method"], row["args"], row["kwargs"])
        row["ms"] = None if row["duration_ms"] is None else round(row["duration_ms"], 2)
        out.append([row[c] for c in columns])
    return out


# -- printing ---------------------------------------------------------------------------------
def frame_rows(frame: pd.DataFrame) -> list[list[Any]]:
    return [[None if is_missing(v) else v for v in row]
            for row in frame.itertuples(index=False, name=None)]


def is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _cell(value: Any, null: str) -> str:
    if value is None:
        return null
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 1] + "…"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, null: str = "") -> str:
    """Rows as a plain text table: columns two spaces apart, numbers right-aligned."""
    cells = [[_cell(v, null) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], numbers.Number) and not isinstance(row[i], bool)
            for row in rows if row[i] is not None) and any(row[i] is not None for row in rows)
        for i in range(len(columns))
    ]
    widths = [max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([str(c) for c in columns]), *(line(r) for r in cells)])


def _call_text(method: str, args: Any, kwargs: Any) -> str:
    parts = [json.dumps(a, ensure_ascii=False) for a in (args or [])]
    parts += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (kwargs or {}).items()]
    return f"{method}({', '.join(parts)})"
