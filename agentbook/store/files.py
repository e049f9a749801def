"""A store file read from outside the runtime: by ``agentbook doctor``, the DuckDB views,
the benchmarks.

Everything here takes a plain ``apsw`` connection - a read-only reader (which sees the
last commit and never waits for a running handler), or a copy the doctor recovered - and
asks no :class:`AgentStore` and no mailbox. The one writer, :func:`append_bare_history`,
exists for the benchmarks only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:
    import apsw

__all__ = ["CORE_TABLES", "HISTORY_PLAIN_COLUMNS", "HISTORY_TEXT_COLUMNS", "BareHistoryRow",
           "Head", "append_bare_history", "chain_at", "has_core_tables", "head",
           "last_history_version", "meta", "meta_value", "packed_history", "table_rows",
           "user_tables"]

#: The tables without which a file is not an agentbook store.
CORE_TABLES = frozenset({"_ab_meta", "_ab_history", "_ab_state"})

#: The text columns of a history row as :func:`packed_history` packs them, in order.
HISTORY_TEXT_COLUMNS = ("method", "args", "kwargs", "source", "outcome", "error", "result",
                        "occurrence")
#: The columns of :func:`packed_history`'s rows before the packed text (``state`` apart: it
#: is ``NULL`` in rows that did not change it, and the views fill it in).
HISTORY_PLAIN_COLUMNS = ("version", "ts", "duration_ms", "due", "state")
_PACKED_HISTORY = ("SELECT version, ts, duration_ms, due, state, json_array("
                   + ", ".join(HISTORY_TEXT_COLUMNS)
                   + ") FROM _ab_history WHERE version > ? ORDER BY version")


class Head(NamedTuple):
    """The store's ``_ab_state`` row: the last committed version and its state (JSON)."""

    version: int
    state: str


def has_core_tables(conn: apsw.Connection) -> bool:
    """Whether the file holds agentbook's core tables (else it is no agent's store)."""
    tables = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()}
    return tables >= CORE_TABLES


def meta(conn: apsw.Connection) -> dict[str, str]:
    """The store's metadata (class, name, created, parent, ...)."""
    rows = cast(list[tuple[str, str]], conn.execute("SELECT key, value FROM _ab_meta").fetchall())
    return dict(rows)


def meta_value(conn: apsw.Connection, key: str) -> str | None:
    """One metadata value, or ``None``."""
    rows = cast(list[tuple[str | None]],
                conn.execute("SELECT value FROM _ab_meta WHERE key = ?", (key,)).fetchall())
    return rows[0][0] if rows else None


def head(conn: apsw.Connection) -> Head | None:
    """The last committed version and state, or ``None`` for a store never committed."""
    rows = conn.execute("SELECT version, state FROM _ab_state").fetchall()
    return Head._make(rows[0]) if rows else None


def last_history_version(conn: apsw.Connection) -> int | None:
    """The newest version in the history (``None`` when it is empty)."""
    return cast(int | None, conn.execute("SELECT max(version) FROM _ab_history").fetchall()[0][0])


def packed_history(conn: apsw.Connection, after: int) -> list[tuple]:
    """The history rows newer than version *after*, oldest first, for the DuckDB views.

    Each row is ``(version, ts, duration_ms, due, state, packed)``, where *packed* is a JSON
    array of the :data:`HISTORY_TEXT_COLUMNS` (SQLite's ``json_array``, in C; DuckDB
    unpacks it in C too): one Python object per row instead of nine, and one Arrow
    string column instead of nine. Rows stay plain tuples on purpose - this is the bulk
    path of a catch-up (a million rows), where a named tuple per row would cost more
    than the rest of the read.
    """
    rows: list[tuple] = conn.execute(_PACKED_HISTORY, (after,)).fetchall()
    return rows


def chain_at(conn: apsw.Connection, version: int) -> str | None:
    """The hash chain value of the row at *version* (``None`` if there is no such row or
    it has none): equal values mean equal histories up to there, so a store destroyed and
    made again under the same name is told apart from the one it replaced."""
    rows = conn.execute("SELECT chain FROM _ab_history WHERE version = ?", (version,)).fetchall()
    return cast(str | None, rows[0][0]) if rows else None


def user_tables(conn: apsw.Connection) -> set[str]:
    """The names of the agent's own tables and views (not agentbook's ``_ab_`` ones)."""
    return {cast(str, r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')"
        " AND name NOT LIKE '\\_ab\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall()}


def table_rows(conn: apsw.Connection, table: str) -> tuple[list[str], list[tuple]]:
    """``(column names, rows)`` of one of the agent's own tables (see :func:`user_tables`)."""
    cursor = conn.execute(f'SELECT * FROM "{table.replace(chr(34), chr(34) * 2)}"')
    rows: list[tuple] = cursor.fetchall()
    try:
        names = [d[0] for d in cursor.description]
    except Exception:  # apsw.ExecutionCompleteError: no rows, no description
        names = [cast(str, r[1]) for r in conn.execute(
            f'PRAGMA table_info("{table.replace(chr(34), chr(34) * 2)}")').fetchall()]
    return names, rows


class BareHistoryRow(NamedTuple):
    """A history row as the benchmarks write it (outcome ``ok``, no kwargs, no error)."""

    version: int
    ts: float
    method: str
    args: str  # JSON array
    source: str
    duration_ms: float
    result: str | None
    state: str | None
    due: float | None
    occurrence: str | None


def append_bare_history(conn: apsw.Connection, rows: Sequence[BareHistoryRow]) -> None:
    """Append *rows* to the history and move the head to the last one, in one transaction.

    For benchmarks only: it bypasses the runtime, so the ``chain`` and ``changes``
    columns stay empty (the hash chain no longer verifies; the projection never reads
    them) and the state is the last row's, whatever the handlers would have made.
    """
    if not rows:
        return
    with conn:
        conn.executemany(
            "INSERT INTO _ab_history(version, ts, method, args, kwargs, source, duration_ms,"
            " outcome, error, result, state, due, occurrence)"
            " VALUES (?, ?, ?, ?, NULL, ?, ?, 'ok', NULL, ?, ?, ?, ?)",
            [(r.version, r.ts, r.method, r.args, r.source, r.duration_ms, r.result, r.state,
              r.due, r.occurrence) for r in rows])
        last = rows[-1]
        conn.execute("UPDATE _ab_state SET version = ?, state = ?", (last.version, last.state))
