"""The rows of ``_ab_schedules`` and ``_ab_dead_letters``, read and written by name.

The scheduling concept (:mod:`agentbook.schedule`) decides *what* a schedule does; this
module is the only place that knows its SQL. Writes go through
:meth:`AgentStore.internal`, so they join the running handler's savepoint and commit with
it (that is what makes an occurrence's effects and the row's advance one commit). Reads
that may come from outside the mailbox (``ref.schedules()``, a version's view, the
analytics projection) take a plain connection instead: a reader, or an in-memory copy.

A schedule row is a :class:`ScheduleRow`, a named tuple in table order, so it is as cheap
as the tuple SQLite returns; ``Envelope.sched`` carries one through a scheduled run.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from . import rowchange

if TYPE_CHECKING:
    import apsw

    from .agentstore import AgentStore

__all__ = ["ROW_SQL", "DeadLetterRow", "Recorded", "SameRow", "ScheduleRow", "add_dead_letter",
           "advance", "advance_recorded", "clear", "dead_letter", "delete", "delete_dead_letter",
           "delete_recorded", "due_rows", "exists", "find_key", "find_same", "insert", "next_due",
           "retry_later", "rows", "select", "set_options"]


class ScheduleRow(NamedTuple):
    """One row of ``_ab_schedules`` (see ``store/schema.py`` for what each column means)."""

    id: str
    callback: str
    #: JSON text.
    payload: str
    #: ``delayed``, ``scheduled``, ``cron``, ``interval`` or ``queue``.
    type: str
    #: When it is next due (epoch seconds); a retry's time while retrying.
    due: float
    cron: str | None
    interval: float | None
    tz: str | None
    #: Failed attempts of the current occurrence.
    attempt: int
    #: Occurrences completed so far (the ``n`` of the occurrence id ``"<id>:<n>"``).
    occurrence: int
    missed: str
    #: JSON ``[max_attempts, base, max_delay, jitter]`` (``None``: the default Retry).
    retry: str | None
    last_error: str | None
    #: Creation order: ties on ``due`` run in it (FIFO for queues).
    seq: int
    #: While retrying: when the occurrence was first due (a retry keeps its due time).
    occurrence_due: float | None


class DeadLetterRow(NamedTuple):
    """What retrying a dead letter needs of its ``_ab_dead_letters`` row."""

    callback: str
    #: JSON text.
    payload: str
    type: str
    retry: str | None


class SameRow(NamedTuple):
    """What making a schedule again needs of a pending one (:func:`find_same`, :func:`find_key`)."""

    id: str
    callback: str
    #: The digest of its callback, kind, timing and payload (``None``: queued work).
    ident: str | None
    #: The name it was given with ``key=``, if any.
    key: str | None
    missed: str
    retry: str | None


#: The query every schedule read starts with: its rows are in :class:`ScheduleRow` order.
#: Ask with :func:`rows`, :func:`due_rows` or :func:`select` rather than running it.
ROW_SQL = ("SELECT id, callback, payload, type, due, cron, interval, tz, attempt, occurrence,"
           " missed, retry, last_error, seq, occurrence_due FROM _ab_schedules")


# -- reads ------------------------------------------------------------------------------
def rows(store: AgentStore) -> list[ScheduleRow]:
    """Every pending schedule row, in no particular order."""
    return [ScheduleRow._make(r) for r in store.internal(ROW_SQL)]


def due_rows(store: AgentStore, now: float) -> list[ScheduleRow]:
    """The rows due at *now*, in the order they run (due time, then creation)."""
    return [ScheduleRow._make(r)
            for r in store.internal(ROW_SQL + " WHERE due <= ? ORDER BY due, seq", (now,))]


#: The earliest pending due time (an index look-up; NULL when nothing is pending).
_NEXT_DUE = "SELECT min(due) FROM _ab_schedules"


def next_due(store: AgentStore) -> float | None:
    """The earliest pending due time (an index look-up), ``None`` when nothing is pending."""
    return store.internal(_NEXT_DUE)[0][0]


def exists(store: AgentStore, id: str) -> bool:
    """Whether the schedule *id* is still pending."""
    return bool(store.internal("SELECT 1 FROM _ab_schedules WHERE id = ?", (id,)))


def select(conn: apsw.Connection, *, type: str | None = None, id: str | None = None,
           start: float | None = None, end: float | None = None) -> list[ScheduleRow]:
    """Rows from any connection to an agent's database (the writer, a reader, an in-memory
    copy), soonest first, filtered by type, id and a ``[start, end)`` due range."""
    where: list[str] = []
    params: list[str | float] = []
    if type is not None:
        where.append("type = ?")
        params.append(type)
    if id is not None:
        where.append("id = ?")
        params.append(id)
    if start is not None:
        where.append("due >= ?")
        params.append(start)
    if end is not None:
        where.append("due < ?")
        params.append(end)
    sql = ROW_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY due, seq"
    return [ScheduleRow._make(r) for r in conn.execute(sql, params).fetchall()]


def dead_letter(store: AgentStore, letter_id: str) -> DeadLetterRow | None:
    """The dead letter *letter_id*, or ``None``."""
    found = store.internal(
        "SELECT callback, payload, type, retry FROM _ab_dead_letters WHERE id = ?", (letter_id,))
    return DeadLetterRow._make(found[0]) if found else None


_SAME_SQL = "SELECT id, callback, ident, key, missed, retry FROM _ab_schedules"


def find_same(store: AgentStore, ident: str, *, skip: str | None = None,
              unnamed: bool = False) -> SameRow | None:
    """The oldest pending schedule whose identity digest is *ident* (an index look-up),
    leaving out schedule *skip* and, if *unnamed*, schedules that have a key; ``None`` when
    there is none. Writer only: a store is migrated when its agent wakes, so only the
    writer surely has the column."""
    found = store.internal(
        _SAME_SQL + " WHERE ident = ? AND id IS NOT ?" + (" AND key IS NULL" if unnamed else "")
        + " ORDER BY seq LIMIT 1", (ident, skip))
    return SameRow._make(found[0]) if found else None


def find_key(store: AgentStore, key: str, *, skip: str | None = None) -> SameRow | None:
    """The pending schedule named *key* (``key=``), leaving out schedule *skip*; ``None``
    when there is none. Writer only, like :func:`find_same`."""
    found = store.internal(_SAME_SQL + " WHERE key = ? AND id IS NOT ? ORDER BY seq LIMIT 1",
                           (key, skip))
    return SameRow._make(found[0]) if found else None


# -- writes (inside the running handler's transaction) ------------------------------------
def insert(store: AgentStore, id: str, callback: str, payload: str, type: str, due: float, *,
           cron: str | None, interval: float | None, tz: str | None, missed: str,
           retry: str, created: float, ident: str | None = None, key: str | None = None) -> None:
    """Add a schedule row (*payload* and *retry* are JSON text; *ident* its identity digest,
    *key* the name given with ``key=``)."""
    store.ensure_group("schedule_keys")  # (the look-ups of find_same and find_key)
    store.internal(
        "INSERT INTO _ab_schedules(id, callback, payload, type, due, cron, interval, tz, missed,"
        " retry, created, ident, key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (id, callback, payload, type, due, cron, interval, tz, missed, retry, created, ident,
         key),
    )


def set_options(store: AgentStore, id: str, *, missed: str, retry: str, key: str | None) -> None:
    """Give schedule *id* another ``missed`` policy, retry policy (JSON text) and key; its
    timing and occurrences stay as they are."""
    store.internal("UPDATE _ab_schedules SET missed = ?, retry = ?, key = ? WHERE id = ?",
                   (missed, retry, key, id))


def delete(store: AgentStore, id: str) -> None:
    """Remove schedule *id* (a one-shot that ran, a cancel); no row is no error."""
    store.internal("DELETE FROM _ab_schedules WHERE id = ?", (id,))


def advance(store: AgentStore, id: str, due: float, occurrence: int) -> None:
    """Move schedule *id* to its next occurrence, due at *due*, with a fresh set of attempts."""
    store.internal(
        "UPDATE _ab_schedules SET due = ?, attempt = 0, occurrence = ?, last_error = NULL,"
        " occurrence_due = NULL WHERE id = ?",
        (due, occurrence, id),
    )


#: What an advance sets (:func:`advance`, :func:`advance_recorded`), in this order.
_ADVANCED = ("due", "attempt", "occurrence", "last_error", "occurrence_due")


class Recorded(NamedTuple):
    """A schedule row written by :func:`delete_recorded` or :func:`advance_recorded`."""

    #: The changeset SQLite's session extension would have recorded for the write.
    changes: bytes | None
    #: The agent's earliest pending due time after the write (``None``: nothing pending),
    #: read by the same statement, so a firing needs no :func:`next_due` look-up after it.
    next_due: float | None


class _Recorded(NamedTuple):
    """The table's layout and the statements of :func:`delete_recorded` and
    :func:`advance_recorded`, made once per process."""

    table: rowchange.Table
    delete: str
    advance: str
    #: The positions of :data:`_ADVANCED`'s columns in the table.
    advanced_at: tuple[int, ...]


@cache
def _recorded() -> _Recorded:
    tab = rowchange.table("_ab_schedules")
    # (the row as changed, then the earliest due time left: a subquery in RETURNING sees
    # the table after the row's change - tests/test_rowchange.py holds SQLite to that)
    returning = " RETURNING " + ", ".join(tab.columns) + f", ({_NEXT_DUE})"
    return _Recorded(
        tab, "DELETE FROM _ab_schedules WHERE id = ?" + returning,
        "UPDATE _ab_schedules SET due = ?, attempt = ?, occurrence = ?, last_error = ?,"
        " occurrence_due = ? WHERE id = ? AND due = ? AND attempt = ? AND occurrence = ?"
        " AND last_error IS ? AND occurrence_due IS ?" + returning,
        tuple(tab.columns.index(name) for name in _ADVANCED))


def delete_recorded(store: AgentStore, id: str) -> Recorded | None:
    """:func:`delete`, with the changeset SQLite's session extension would have recorded
    for it, so a firing that wrote nothing else needs no session (issue 20; see
    :mod:`agentbook.store.rowchange`), and the next due time (``None``: there was no row,
    nothing was written). One statement: the old row and the next due time come back
    with ``RETURNING``."""
    made = _recorded()
    found = store.internal(made.delete, (id,))
    if not found:
        return None
    *old, after = found[0]
    return Recorded(rowchange.delete(made.table, old), after)


def advance_recorded(store: AgentStore, row: ScheduleRow, due: float,
                     occurrence: int) -> Recorded | None:
    """:func:`advance` of the schedule *row* as read before, with its changeset and the
    next due time (see :func:`delete_recorded`). The row is updated only if it is still
    as *row* says (its old values go into the changeset); ``None`` and nothing written
    when it is not (changed or gone since: the caller records with a session)."""
    made = _recorded()
    old = (row.due, row.attempt, row.occurrence, row.last_error, row.occurrence_due)
    found = store.internal(made.advance,
                           (float(due), 0, int(occurrence), None, None, row.id, *old))
    if not found:
        return None
    *new, after = found[0]
    return Recorded(rowchange.update_at(made.table, new, made.advanced_at, old), after)


def retry_later(store: AgentStore, id: str, due: float, attempt: int, error: str,
                first_due: float) -> None:
    """Record failed attempt *attempt* of schedule *id* and retry it at *due*; the occurrence
    keeps the due time of its first attempt (*first_due*, kept from the first failure on)."""
    store.internal(
        "UPDATE _ab_schedules SET due = ?, attempt = ?, last_error = ?,"
        " occurrence_due = coalesce(occurrence_due, ?) WHERE id = ?",
        (due, attempt, error, first_due, id),
    )


def add_dead_letter(store: AgentStore, id: str, row: ScheduleRow, occurrence: str,
                    attempts: int, error: str, failed_at: float) -> None:
    """Add dead letter *id* for occurrence *occurrence* of schedule *row*."""
    store.internal(
        "INSERT INTO _ab_dead_letters(id, schedule_id, occurrence, callback, payload, type,"
        " attempts, error, failed_at, retry) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (id, row.id, occurrence, row.callback, row.payload, row.type, attempts, error,
         failed_at, row.retry),
    )


def delete_dead_letter(store: AgentStore, letter_id: str) -> None:
    """Forget dead letter *letter_id*; no row is no error."""
    store.internal("DELETE FROM _ab_dead_letters WHERE id = ?", (letter_id,))


def clear(conn: apsw.Connection, *, schedules: bool = True, dead_letters: bool = True) -> None:
    """Empty the tables on a copy of an agent's database (a fork keeps schedules only if
    asked, and never dead letters)."""
    if schedules:
        conn.execute("DELETE FROM _ab_schedules")
    if dead_letters:
        conn.execute("DELETE FROM _ab_dead_letters")
