"""Running due schedules inside an agent's mailbox.

A *tick* message (sent by :mod:`agentbook.timers`) becomes one envelope per due schedule
row. Each runs as an ordinary handler; in the same savepoint as the callback's own writes
the row is advanced (recurring) or deleted (one-shot), so an occurrence's effects commit
exactly once. A failed attempt rolls the callback back and, in a fresh savepoint, records
the retry (or the dead letter) as a version of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..faults import crash_point
from .policy import ROW_SQL, Occurrence, Retry, new_id, next_after_run, takes_payload, was_missed

if TYPE_CHECKING:
    from ..core.mailbox import HandlerContext, Instance
    from ..envelope import Envelope
    from ..store import AgentStore

__all__ = ["after_failure", "after_success", "expand_due", "next_due"]

#: Method name of the message that tells an agent to run what is due.


def next_due(store: AgentStore) -> float | None:
    """The agent's earliest pending due time."""
    return store.internal("SELECT min(due) FROM _ab_schedules")[0][0]


def expand_due(inst: Instance) -> int:
    """Queue one envelope per due schedule at the front of the mailbox; returns how many."""
    from ..envelope import Envelope

    store = inst.store
    assert store is not None
    now = inst.runtime.clock.now()
    rows = store.internal(ROW_SQL + " WHERE due <= ? ORDER BY due, seq", (now,))
    envs = []
    cls = inst.cls
    for row in rows:
        sid, callback, payload_json, type_ = row[0], row[1], row[2], row[3]
        payload = jsonvalue.loads(payload_json)
        args: tuple = (payload,) if _takes_payload(cls, callback, payload) else ()
        source = f"{'queue' if type_ == 'queue' else 'schedule'}:{sid}"
        label = callback[4:] if callback.startswith("_ab_") else None
        env = Envelope.scheduled(callback, args, jsonvalue.dumps(list(args)), row, source=source,
                                 label=label)
        envs.append(env)
    inst.queue.extendleft(reversed(envs))
    return len(envs)


def _takes_payload(cls: Any, callback: str, payload: Any) -> bool:
    fn = getattr(cls, callback, None)
    if fn is None:
        return payload is not None
    try:
        return takes_payload(fn)  # cached per function
    except TypeError:  # an unhashable callable
        return True


def occurrence_of(env: Envelope) -> Occurrence:
    """The :class:`Occurrence` a scheduled envelope runs for."""
    row = env.sched
    sid, type_, attempt, occ = row[0], row[3], row[8], row[9]
    due = row[14] if row[14] is not None else row[4]  # a retry keeps the first due time
    return Occurrence(f"{sid}:{occ}", sid, attempt + 1, due, type_)


def after_success(inst: Instance, ctx: HandlerContext, env: Envelope) -> None:
    """Advance or delete the schedule row of an occurrence that just succeeded."""
    store = inst.store
    assert store is not None
    ctx.capture(store)
    ctx.sched_dirty = True
    _advance(inst, env.sched, inst.runtime.clock.now())
    crash_point("mid-schedule-fire")


def _advance(inst: Instance, row: tuple, now: float) -> None:
    store = inst.store
    assert store is not None
    sid, type_, due, cron, interval, tz, occ, missed = (row[0], row[3], row[4], row[5], row[6],
                                                        row[7], row[9], row[10])
    nxt = next_after_run(type_, due, now, cron, interval, tz, missed)
    if nxt is None:
        store.internal("DELETE FROM _ab_schedules WHERE id = ?", (sid,))
    else:
        store.internal(
            "UPDATE _ab_schedules SET due = ?, attempt = 0, occurrence = ?, last_error = NULL,"
            " occurrence_due = NULL WHERE id = ?",
            (nxt, occ + 1, sid),
        )


def skip_if_missed(inst: Instance, ctx: HandlerContext, env: Envelope) -> bool:
    """For ``missed="skip"`` schedules whose tick was missed: advance without running."""
    row = env.sched
    if row[10] != "skip":
        return False
    now = inst.runtime.clock.now()
    if not was_missed(row[3], row[4], now, row[5], row[6], row[7]):
        return False
    store = inst.store
    assert store is not None
    ctx.capture(store)
    ctx.sched_dirty = True
    _advance(inst, row, now)
    return True


def after_failure(inst: Instance, ctx: HandlerContext, env: Envelope, error: str) -> tuple[str, tuple | None]:
    """Record a failed attempt (in the caller's fresh savepoint).

    Returns:
        ``("retry", None)`` or ``("dead", dead_letter_index_row)``.
    """
    store = inst.store
    assert store is not None
    ctx.capture(store)
    ctx.sched_dirty = True
    row = env.sched
    sid, type_, attempt, occ, retry_json = row[0], row[3], row[8], row[9], row[11]
    now = inst.runtime.clock.now()
    retry = Retry.from_json(retry_json)
    attempts = attempt + 1
    occurrence_id = f"{sid}:{occ}"
    if attempts < retry.max_attempts:
        store.internal(
            "UPDATE _ab_schedules SET due = ?, attempt = ?, last_error = ?,"
            " occurrence_due = coalesce(occurrence_due, ?) WHERE id = ?",
            (now + retry.delay(attempts, occurrence_id), attempts, error, row[4], sid),
        )
        return "retry", None
    letter_id = new_id()
    store.internal(
        "INSERT INTO _ab_dead_letters(id, schedule_id, occurrence, callback, payload, type,"
        " attempts, error, failed_at, retry) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (letter_id, sid, occurrence_id, row[1], row[2], type_, attempts, error, now, retry_json),
    )
    _advance(inst, row, now)
    key = inst.key
    return "dead", (letter_id, key[0], key[1], row[1], row[2], type_, attempts, error, now)
