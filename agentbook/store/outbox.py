"""The durable outbox and the inbox's memory of delivered messages (SPEC 2.3, 2.9).

A message a handler sends to another agent (``ref.send(...)`` from a handler) is a row of
the sender's ``_ab_outbox``, written in the transaction of the batch that ran the handler:
it exists exactly when the handler's other writes do. After the commit the output gate
delivers it; the receiver's commit acknowledges it, and the row is deleted. Rows still
there when the sender's store is opened again (after a restart, or a hibernation before
the acknowledgement came) are delivered again, oldest first, before anything new leaves.

Each message has a sequence number, unique and growing per sender. The receiver keeps the
numbers it has committed in ``_ab_inbox_seen`` (written with the handler the message ran,
so "ran" and "seen" commit together) and skips a number it has already seen: delivered
exactly once. Every delivery also carries the sender's *low-water mark* - the smallest
number still in its outbox, read after a commit - and the receiver forgets the numbers
below it: the sender deleted those rows for good, so they never come again. The inbox
memory stays as small as what is in flight.

Both tables are untracked (see :mod:`agentbook.store.schema`): no changeset carries them,
so a rewind never sends again or forgets what arrived, and a fork copies neither.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:
    import apsw

    from .agentstore import AgentStore

__all__ = ["OutboxRow", "delete", "first_pending", "low_water", "mark_seen", "next_seq", "pending",
           "seen", "write"]

_INSERT = ("INSERT INTO _ab_outbox(seq, ts, class, name, method, args, kwargs, source)"
           " VALUES (?,?,?,?,?,?,?,?)")


class OutboxRow(NamedTuple):
    """One message waiting in the sender's outbox."""

    seq: int
    ts: float
    #: The receiver: class name and agent name.
    cls: str
    name: str
    method: str
    #: JSON text.
    args: str
    kwargs: str | None
    source: str


def next_seq(last: int) -> int:
    """The sequence number after *last*: the wall clock in microseconds, or *last* + 1 if
    that is not more (so a sender made again under an old name starts above its past)."""
    now = time.time_ns() // 1000
    return now if now > last else last + 1


def write(store: AgentStore, rows: list[tuple]) -> None:
    """Insert outbox rows (:class:`OutboxRow` order) in the running transaction."""
    store.conn.executemany(_INSERT, rows)


def pending(store: AgentStore) -> list[OutboxRow]:
    """Every row still in the outbox, oldest first."""
    rows = store.conn.execute(
        "SELECT seq, ts, class, name, method, args, kwargs, source FROM _ab_outbox ORDER BY seq"
    ).fetchall()
    return [OutboxRow._make(r) for r in rows]


def first_pending(store: AgentStore) -> float | None:
    """When the oldest row still in the outbox was written (``None``: it is empty)."""
    rows = store.conn.execute("SELECT min(ts) FROM _ab_outbox").fetchall()
    return cast("float | None", rows[0][0])


def low_water(store: AgentStore) -> int | None:
    """The smallest sequence number still in the outbox (``None``: it is empty)."""
    rows = store.conn.execute("SELECT min(seq) FROM _ab_outbox").fetchall()
    return cast("int | None", rows[0][0])


def delete(store: AgentStore, seqs: list[int]) -> None:
    """Forget delivered rows (in the running transaction, or as one of its own)."""
    store.conn.executemany("DELETE FROM _ab_outbox WHERE seq = ?", [(s,) for s in seqs])


def seen(store: AgentStore, sender: str, seq: int) -> bool:
    """Whether this store's agent already committed message *seq* of *sender*."""
    return bool(store.internal(
        "SELECT 1 FROM _ab_inbox_seen WHERE sender = ? AND seq = ?", (sender, seq)))


def mark_seen(store: AgentStore, sender: str, seq: int, low: int | None) -> None:
    """Remember message *seq* of *sender* (inside the handler that runs it), and forget
    the sender's numbers below its low-water mark *low*."""
    if low is not None:
        store.internal("DELETE FROM _ab_inbox_seen WHERE sender = ? AND seq < ?", (sender, low))
    store.internal("INSERT OR IGNORE INTO _ab_inbox_seen(sender, seq) VALUES (?, ?)",
                   (sender, seq))


def seen_rows(conn: apsw.Connection) -> list[tuple[str, int]]:
    """Every ``(sender, seq)`` remembered (for tests and ``doctor``)."""
    return cast("list[tuple[str, int]]",
                conn.execute("SELECT sender, seq FROM _ab_inbox_seen ORDER BY sender, seq").fetchall())
