"""An agent's event stream on record: the ``_ab_events`` table of its store.

Every event a committed handler produced - ``schedule:*`` and ``queue:*``,
``approval:*``, ``chat:*``, what the agent ``emit``-ted - is a row here (a call's ``rpc``
and ``state:update`` are not: its history row holds them, and the ``events`` view derives
them), inserted in the same transaction as the handler's history row (one
``executemany`` per batch, the way history rows go in), so an event is on record exactly
when what it tells of is. A handler that raised leaves none of its events behind.

Rows are ``(seq, version, ts, type, payload)``: ``seq`` orders one agent's events (it only
grows, also across pruning), ``version`` is the version whose commit wrote the row, ``ts``
the runtime clock's epoch seconds and ``payload`` JSON text (an ``ab.Secret`` in it is ``{"$secret": name}``).

Retention (``ab.Runtime(events_keep=..., events_max_age=...)``) is applied as rows are
written, in the same transaction: the newest *keep* rows stay (older ones go in steps of
an eighth of *keep*, one range delete each, so up to 12.5% more may be on record for a
while), and rows older than *max_age* seconds (measured from the newest row's time) go.
The table is untracked: no changeset carries it, so a rewind never takes events back - they happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:
    import apsw

__all__ = ["EventRow", "Retention", "bounds", "prune", "read_after", "write"]

_INSERT = "INSERT INTO _ab_events(version, ts, type, payload) VALUES (?, ?, ?, ?)"


class EventRow(NamedTuple):
    """One event as the store keeps it (``seq`` is given by the insert)."""

    version: int | None
    ts: float
    type: str
    payload: str  # JSON


class Retention(NamedTuple):
    """How much of each agent's event stream is kept.

    ``keep``: the newest rows kept (``None``: all); ``max_age``: seconds a row is kept
    (``None``: no limit).
    """

    keep: int | None = 10_000
    max_age: float | None = None


def write(conn: apsw.Connection, rows: Sequence[tuple], retention: Retention,
          floor: int) -> int:
    """Insert *rows* (inside the caller's transaction) and apply *retention*.

    *floor* is the lowest ``seq`` that may still be in the table (0 when unknown): a
    count-based prune runs only when the newest rows pushed it up. Returns the new floor.
    """
    conn.executemany(_INSERT, rows)
    last = conn.last_insert_rowid()
    keep, max_age = retention
    if keep is not None and last - keep >= floor + keep // 8:  # (in steps: one range delete)
        conn.execute("DELETE FROM _ab_events WHERE seq <= ?", (last - keep,))
        floor = last - keep + 1
    if max_age is not None:
        floor = _prune_age(conn, rows[-1][1] - max_age, last, floor)
    return floor


def _prune_age(conn: apsw.Connection, cutoff: float, last: int, floor: int) -> int:
    """Delete the rows older than *cutoff* (never the newest row)."""
    oldest = cast(list[tuple[int, float]], conn.execute(
        "SELECT seq, ts FROM _ab_events ORDER BY seq LIMIT 1").fetchall())
    if not oldest or oldest[0][1] >= cutoff:
        return max(floor, oldest[0][0]) if oldest else floor
    # rows are in time order (seq follows the clock), so the first young row ends the scan
    young = cast(list[tuple[int]], conn.execute(
        "SELECT seq FROM _ab_events WHERE ts >= ? ORDER BY seq LIMIT 1", (cutoff,)).fetchall())
    upto = young[0][0] if young else last
    conn.execute("DELETE FROM _ab_events WHERE seq < ?", (upto,))
    return upto


def prune(conn: apsw.Connection, retention: Retention, now: float) -> int:
    """Apply *retention* to the whole table as of *now* (inside the caller's
    transaction); returns how many rows went. For a prune that runs apart from writes
    (``ref.prune``); writes prune as they go (:func:`write`)."""
    before = conn.total_changes()
    keep, max_age = retention
    if keep is not None:
        conn.execute("DELETE FROM _ab_events WHERE seq <= (SELECT max(seq) FROM _ab_events) - ?",
                     (keep,))
    if max_age is not None:
        conn.execute("DELETE FROM _ab_events WHERE ts < ?", (now - max_age,))
    return conn.total_changes() - before


def bounds(conn: apsw.Connection) -> tuple[int, int] | None:
    """``(first seq, last seq)`` of the stored events, ``None`` when there are none (or the
    store predates the events table: it gets one when the runtime next opens it)."""
    try:
        rows = conn.execute("SELECT min(seq), max(seq) FROM _ab_events").fetchall()
    except Exception as exc:  # apsw.SQLError: no such table (a store not yet migrated)
        if "no such table" in str(exc):
            return None
        raise
    first, last = rows[0]
    return None if first is None else (cast(int, first), cast(int, last))


def read_after(conn: apsw.Connection, seq: int) -> list[tuple]:
    """The rows with a ``seq`` above *seq*, oldest first: ``(seq, version, ts, type,
    payload)`` (plain tuples: the bulk path of the DuckDB views)."""
    rows: list[tuple] = conn.execute(
        "SELECT seq, version, ts, type, payload FROM _ab_events WHERE seq > ? ORDER BY seq",
        (seq,)).fetchall()
    return rows
