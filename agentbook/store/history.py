"""Reading an agent's history: paged, filtered, indexed by version.

History rows are keyed by version (the table's integer primary key), so the newest page,
any page ``before=`` a version, and "the state at version k" are index look-ups whose cost
does not grow with the length of the history.
"""

from __future__ import annotations

import apsw

__all__ = ["COLUMNS", "read_history", "state_at"]

#: Columns of ``ref.history()`` (after ``class`` and ``name`` are prepended).
COLUMNS = ["version", "ts", "method", "args", "kwargs", "source", "duration_ms", "outcome",
           "error", "result", "state", "due", "occurrence"]


def read_history(
    conn: apsw.Connection,
    *,
    limit: int = 50,
    before: int | None = None,
    method: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[tuple]:
    """Rows of :data:`COLUMNS`, newest first; ``state`` is filled in for every row."""
    where, params = [], []
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
    sql = (
        "SELECT version, ts, method, args, kwargs, source, duration_ms, outcome, error, result,"
        " state, due, occurrence FROM _ab_history"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY version DESC LIMIT ?"
    )
    rows = conn.execute(sql, (*params, limit)).fetchall()
    if not rows:
        return []
    # Fill in the state of rows that did not change it, walking oldest to newest.
    oldest = rows[-1]
    current = oldest[10] if oldest[10] is not None else state_at(conn, oldest[0])
    out = []
    for row in reversed(rows):
        if row[10] is not None:
            current = row[10]
        out.append((*row[:10], current, row[11], row[12]))
    out.reverse()
    return out


def state_at(conn: apsw.Connection, version: int) -> str | None:
    """JSON text of the state as it was after *version* (``None`` if unknown)."""
    rows = conn.execute(
        "SELECT state FROM _ab_history WHERE version <= ? AND state IS NOT NULL"
        " ORDER BY version DESC LIMIT 1",
        (version,),
    ).fetchall()
    if rows:
        return rows[0][0]
    rows = conn.execute("SELECT value FROM _ab_meta WHERE key = 'initial_state'").fetchall()
    return rows[0][0] if rows else None


def newest_version(conn: apsw.Connection) -> int:
    """The latest committed version (0 for a new agent)."""
    rows = conn.execute("SELECT version FROM _ab_state WHERE id = 1").fetchall()
    return rows[0][0] if rows else 0


