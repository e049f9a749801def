"""An agent's history: one named row per version, read by version.

History rows are keyed by version (the table's integer primary key), so the newest page,
any page ``before=`` a version, and "the state at version k" are index look-ups whose cost
does not grow with the length of the history. A row stores the state only when the
version changed it, and the schema only when it changed that: "the state (or schema) at
k" is the newest stored one at or below k.

The newest version and state also sit in ``_ab_state`` (one row), so reading "now" never
touches the history at all.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import apsw

from .. import jsonvalue
from ..errors import VersionNotFoundError

__all__ = ["COLUMNS", "HistoryRow", "bounds", "changesets_above", "changesets_between",
           "check_version", "check_version_type", "drop_before", "history_rows", "meta_value",
           "newest_state", "newest_version", "occurrences_ran_after", "read_history",
           "result_json", "schema_at", "state_at"]


class HistoryRow(NamedTuple):
    """One version of an agent, as ``_ab_history`` keeps it.

    The field order is the table's column order, and the hash chain
    (:mod:`agentbook.store.chain`) covers exactly these values in this order.
    """

    version: int
    #: When the handler started (runtime clock, epoch seconds).
    ts: float
    #: The method, or the label of an internal version (``on_start``, ``rewind``, ``fork``...).
    method: str
    #: JSON text of the positional and keyword arguments (``kwargs`` is ``None`` when empty).
    args: str | None
    kwargs: str | None
    #: Who sent it: ``cell``, ``agent:Class/name``, ``schedule:<id>``, ``replay:...``.
    source: str
    duration_ms: float
    #: ``ok``, ``skipped`` (a missed tick), or what a failed attempt became (``retry``,
    #: ``dead``, ``error``).
    outcome: str
    error: str | None = None
    #: The handler's result as JSON text (``None`` when it returned nothing, or no JSON).
    result: str | None = None
    #: The state after this version, when it changed it (else ``None``; see :func:`state_at`).
    state: str | None = None
    #: The version's row changes: a SQLite session changeset, or framed segments
    #: (:func:`agentbook.store.changesets.segments`).
    changes: bytes | None = None
    #: The agent's full schema after this version, when it changed it.
    schema: str | None = None
    #: For scheduled runs: when the occurrence was due, and its id ``"<schedule>:<n>"``.
    due: float | None = None
    occurrence: str | None = None
    #: The effect journal, JSON ``[[key, result], ...]`` (``None`` when nothing was journaled).
    effects: str | None = None


#: Columns of ``ref.history()`` (after ``class`` and ``name`` are prepended).
COLUMNS = ["version", "ts", "method", "args", "kwargs", "source", "duration_ms", "outcome",
           "error", "result", "state", "due", "occurrence"]

_ALL = ", ".join(HistoryRow._fields)
#: Every column but the two that can be large and that readers of inputs and outcomes
#: never need (the changeset and the schema): they read as ``None``.
_LIGHT = ", ".join("NULL" if name in ("changes", "schema") else name for name in HistoryRow._fields)


def _rows(rows: list[tuple]) -> list[HistoryRow]:
    return [HistoryRow._make(row) for row in rows]


# -- reading the history -----------------------------------------------------------------
def read_history(
    conn: apsw.Connection,
    *,
    limit: int = 50,
    before: int | None = None,
    method: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[HistoryRow]:
    """A page of rows, newest first; ``state`` is filled in for every row, ``changes``
    and ``schema`` are left out (``None``)."""
    where: list[str] = []
    params: list[Any] = []
    if before is not None:
        where.append("version < ?")
        params.append(before)
    if method is not None:
        where.append("method = ?")
        params.append(method)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    sql = (f"SELECT {_LIGHT} FROM _ab_history"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY version DESC LIMIT ?")
    rows = _rows(conn.execute(sql, (*params, limit)).fetchall())
    rows.reverse()
    rows = _fill_states(conn, rows)
    rows.reverse()
    return rows


def history_rows(conn: apsw.Connection, first: int, last: int) -> list[HistoryRow]:
    """Versions *first* .. *last*, oldest first, with ``state`` filled in for every row
    (``changes`` and ``schema`` are left out: ``None``)."""
    return _fill_states(conn, _rows(conn.execute(
        f"SELECT {_LIGHT} FROM _ab_history WHERE version >= ? AND version <= ?"
        " ORDER BY version", (first, last)).fetchall()))


def _fill_states(conn: apsw.Connection, rows: list[HistoryRow]) -> list[HistoryRow]:
    """*rows* (oldest first) with the state of rows that did not change it filled in:
    one look-up for the oldest, then carried forward."""
    if not rows:
        return rows
    oldest = rows[0]
    current = oldest.state if oldest.state is not None else state_at(conn, oldest.version)
    out = []
    for row in rows:
        if row.state is not None:
            current = row.state
        out.append(row._replace(state=current))
    return out


def state_at(conn: apsw.Connection, version: int) -> str | None:
    """JSON text of the state as it was after *version* (``None`` if unknown)."""
    rows = conn.execute(
        "SELECT state FROM _ab_history WHERE version <= ? AND state IS NOT NULL"
        " ORDER BY version DESC LIMIT 1",
        (version,),
    ).fetchall()
    if rows:
        return cast("str", rows[0][0])
    return meta_value(conn, "initial_state")


def schema_at(conn: apsw.Connection, version: int, db: str = "main") -> str:
    """The agent's schema JSON as of *version* (``"[]"`` before any table existed)."""
    rows = conn.execute(
        f"SELECT schema FROM {db}._ab_history WHERE version <= ? AND schema IS NOT NULL"
        " ORDER BY version DESC LIMIT 1", (version,)).fetchall()
    return cast("str", rows[0][0]) if rows else "[]"


def changesets_above(conn: apsw.Connection, version: int, db: str = "main") -> list[bytes]:
    """The ``changes`` of the versions above *version*, newest first (what undoing them
    back to *version* applies, inverted)."""
    return [cast("bytes", row[0]) for row in conn.execute(
        f"SELECT changes FROM {db}._ab_history WHERE version > ? AND changes IS NOT NULL"
        " ORDER BY version DESC", (version,)).fetchall()]


def changesets_between(conn: apsw.Connection, a: int, b: int) -> list[bytes]:
    """The ``changes`` of versions ``a+1 .. b``, oldest first."""
    return [cast("bytes", row[0]) for row in conn.execute(
        "SELECT changes FROM _ab_history WHERE version > ? AND version <= ?"
        " AND changes IS NOT NULL ORDER BY version", (a, b)).fetchall()]


def occurrences_ran_after(conn: apsw.Connection, version: int) -> set[str]:
    """Ids of the schedule occurrences that ran (or were skipped, or went dead) in the
    versions after *version*: a rewind to *version* must not run them again."""
    return {cast("str", occ) for (occ,) in conn.execute(
        "SELECT occurrence FROM _ab_history WHERE version > ? AND occurrence IS NOT NULL"
        " AND outcome IN ('ok', 'dead', 'skipped')", (version,)).fetchall()}


# -- now, and how far back ---------------------------------------------------------------
def newest_version(conn: apsw.Connection, db: str = "main") -> int:
    """The latest committed version (0 for a new agent)."""
    rows = conn.execute(f"SELECT version FROM {db}._ab_state WHERE id = 1").fetchall()
    return cast("int", rows[0][0]) if rows else 0


def newest_state(conn: apsw.Connection) -> str | None:
    """JSON text of the latest committed state (``None`` before the first commit)."""
    rows = conn.execute("SELECT state FROM _ab_state WHERE id = 1").fetchall()
    return cast("str", rows[0][0]) if rows else None


def meta_value(conn: apsw.Connection, key: str, db: str = "main") -> str | None:
    """One value of the store's metadata (``initial_state``, ``parent``,
    ``first_version``...), or ``None``."""
    rows = conn.execute(f"SELECT value FROM {db}._ab_meta WHERE key = ?", (key,)).fetchall()
    return cast("str", rows[0][0]) if rows else None


def bounds(conn: apsw.Connection, db: str = "main") -> tuple[int, int]:
    """``(first, head)``: the versions time travel can reach (``first`` is 0 until the
    history is pruned, or the fork point of a fork)."""
    head = newest_version(conn, db)
    first = meta_value(conn, "first_version", db)
    return (int(first) if first is not None else 0), head


def check_version_type(version: Any, who: str) -> int:
    """*version* as a plain int, or a :class:`VersionNotFoundError` (for a float - even
    ``inf`` or ``nan`` -, a bool, a string...) before anything else looks at it."""
    if isinstance(version, bool) or not isinstance(version, int):
        shown = repr(version) if isinstance(version, float) else type(version).__name__
        raise VersionNotFoundError(
            f"versions of {who} are whole numbers (-1 is the newest), not {shown}")
    return int(version)


def check_version(conn: apsw.Connection, version: Any, who: str, db: str = "main") -> int:
    """The version as an int, or a :class:`VersionNotFoundError` saying what exists."""
    version = check_version_type(version, who)
    first, head = bounds(conn, db)
    if version < 0:
        version = head + 1 + version  # -1 is head
    if version > head or version < first:
        pruned = " (older versions were pruned)" if first else ""
        shown = version if abs(version) < 2**63 else "that big"  # str() of a huge int raises
        raise VersionNotFoundError(
            f"{who} has no version {shown}: its history covers {first}..{head}{pruned}")
    return version


# -- writing -----------------------------------------------------------------------------
def drop_before(conn: apsw.Connection, before: int) -> int:
    """Delete the rows below *before* (inside the caller's transaction); returns how many.

    The row at *before* first gets the state and schema it had, spelled out, since the
    rows that held them go: the pruned history then starts at a row that stands alone.
    """
    conn.execute("UPDATE _ab_history SET state = ? WHERE version = ? AND state IS NULL",
                 (state_at(conn, before), before))
    conn.execute("UPDATE _ab_history SET schema = ? WHERE version = ? AND schema IS NULL",
                 (schema_at(conn, before), before))
    dropped = cast("int", conn.execute("SELECT count(*) FROM _ab_history WHERE version < ?",
                                       (before,)).fetchall()[0][0])
    conn.execute("DELETE FROM _ab_history WHERE version < ?", (before,))
    return dropped


_SCALARS = (int, str, bool)
_SAFE_INT = 1 << 60


def result_json(value: Any) -> str | None:
    """A handler's result as its row's ``result`` column holds it: JSON text, or ``None``
    for ``None`` and for a value that isn't JSON (replay compares results written this
    same way). Plain ints and ASCII strings skip the freeze: most results are those."""
    if value is None:
        return None
    if type(value) is int and -_SAFE_INT < value < _SAFE_INT:
        return repr(value)  # what json.dumps writes, without an encoder
    if type(value) in _SCALARS:  # the common case, without a freeze
        try:
            return jsonvalue.dumps(value) if type(value) is not str or value.isascii() \
                else jsonvalue.dumps(jsonvalue.freeze(value, "result"))
        except (TypeError, ValueError):
            return None
    try:
        return jsonvalue.dumps(jsonvalue.freeze(value, "result"))
    except (TypeError, ValueError):
        return None
