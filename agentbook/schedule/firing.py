"""Running due schedules inside an agent's mailbox.

A *tick* message (sent by :mod:`agentbook.schedule.timers`) becomes one envelope per due schedule
row. Each runs as an ordinary handler; in the same savepoint as the callback's own writes
the row is advanced (recurring) or deleted (one-shot), so an occurrence's effects commit
exactly once. A failed attempt rolls the callback back and, in a fresh savepoint, records
the retry (or the dead letter) as a version of its own.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..envelope import Envelope
from ..faults import crash_point
from ..store import outbox
from ..store import schedules as rows
from ..store import workflows as workflow_rows
from ..store.schedules import ScheduleRow
from .policy import Occurrence, Retry, new_id, next_after_run, takes_payload, was_missed

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..core.runtime import Runtime
    from ..store import AgentStore

__all__ = ["advance", "after_failure", "after_success", "expand_due", "hold_unrecorded",
           "next_due", "occurrence_of", "recorded", "schedule_due", "skip_if_missed"]

log = logging.getLogger("agentbook")


def next_due(store: AgentStore) -> float | None:
    """The earliest time the agent has something to do: a pending schedule, a message
    still in its outbox, or a workflow run that can go on (the durable timer index keeps
    those too, so a restart wakes the agent, whose first batch delivers the messages and
    picks the runs up again)."""
    due = rows.next_due(store)
    for first in (outbox.first_pending(store), workflow_rows.first_running(store)):
        if first is not None and (due is None or first < due):
            due = first
    return due


def schedule_due(store: AgentStore) -> float | None:
    """The agent's earliest pending schedule (what the in-memory timer waits for)."""
    return rows.next_due(store)


# -- failures that could not be recorded -------------------------------------------------
#: Scheduled runs whose failure could not even be recorded (a full disk, the store's size
#: cap): per runtime, per agent, how many times in a row. Kept in memory (nothing can be
#: written), so such a schedule backs off instead of firing again at once, forever.
_unrecorded: weakref.WeakKeyDictionary[Runtime, dict[tuple[str, str], int]] = \
    weakref.WeakKeyDictionary()
#: The longest wait between two attempts of a schedule whose failures can't be recorded.
MAX_HOLD = 60.0


def hold_unrecorded(inst: Instance, envs: list[Envelope], err: BaseException) -> float:
    """Scheduled runs (*envs*) failed and not even their failure could be written: hold
    the agent's schedules back (0.5 s, 1 s, 2 s ... up to :data:`MAX_HOLD`, in memory),
    log it once until a run commits again, and announce ``schedule:error`` with the
    reason. Returns when to look again."""
    rt = inst.runtime
    key = inst.key
    table = _unrecorded.get(rt)
    if table is None:
        table = _unrecorded[rt] = {}
    times = table[key] = table.get(key, 0) + 1
    delay = min(MAX_HOLD, 0.5 * 2 ** min(times - 1, 16))
    if times == 1:
        log.warning("%s(%r): scheduled work failed and the failure could not be recorded "
                    "(%s: %s); its schedules are held back, retrying with backoff up to %g s",
                    key[0], key[1], type(err).__name__, err, MAX_HOLD)
    if rt.events.active:
        for env in envs:
            row = env.sched
            rt.emit_event("schedule:error" if row.type != "queue" else "queue:error", key, {
                "id": row.id, "callback": row.callback, "type": row.type, "due": row.due,
                "occurrence": f"{row.id}:{row.occurrence}", "attempt": row.attempt + 1,
                "error": f"{type(err).__name__}: {err}", "reason": "unrecorded",
                "retry_in": delay, "times": times})
    return rt.clock.now() + delay


def recorded(inst: Instance) -> None:
    """The agent's scheduled work committed (or its failure was recorded): no hold."""
    if _unrecorded:
        table = _unrecorded.get(inst.runtime)
        if table:
            table.pop(inst.key, None)


def expand_due(inst: Instance) -> int:
    """Queue one envelope per due schedule at the front of the mailbox; returns how many."""
    store = inst.store
    assert store is not None
    now = inst.runtime.clock.now()
    envs = []
    cls = inst.cls
    for row in rows.due_rows(store, now):
        callback = row.callback
        payload = jsonvalue.loads(row.payload)
        if _takes_payload(cls, callback, payload):
            args: tuple = (payload,)
            args_json = jsonvalue.dumps([payload])
        else:
            args, args_json = (), "[]"
        source = f"{'queue' if row.type == 'queue' else 'schedule'}:{row.id}"
        label = callback[4:] if callback.startswith("_ab_") else None
        env = Envelope.scheduled(callback, args, args_json, row, source=source, label=label)
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
    row: ScheduleRow = env.sched
    # a retry keeps the first due time
    due = row.occurrence_due if row.occurrence_due is not None else row.due
    return Occurrence(f"{row.id}:{row.occurrence}", row.id, row.attempt + 1, due, row.type)


def after_success(inst: Instance, ctx: HandlerContext, env: Envelope) -> None:
    """Advance or delete the schedule row of an occurrence that just succeeded."""
    ctx.sched_dirty = True
    _advance_captured(inst, ctx, env.sched, inst.runtime.clock.now())
    crash_point("mid-schedule-fire")


def _advance_captured(inst: Instance, ctx: HandlerContext, row: ScheduleRow, now: float) -> None:
    """:func:`advance`, its row change recorded in *ctx*'s version. A handler that captured
    nothing else gets the changeset written by hand, with no session (issue 20: ~80 us a
    firing; see agentbook.store.rowchange), and the agent's next due time read by the same
    statement (``ctx.due_after``); else its session records the change."""
    store = inst.store
    assert store is not None
    if not ctx.capturing:
        nxt = next_after_run(row.type, row.due, now, row.cron, row.interval, row.tz, row.missed)
        made = (rows.delete_recorded(store, row.id) if nxt is None
                else rows.advance_recorded(store, row, nxt, row.occurrence + 1))
        if made is not None:
            ctx.add_changes(made.changes)
            ctx.due_after = (made.next_due,)  # (the mailbox's next-due look-up, done)
            return
    ctx.capture(store, schema=False)
    advance(inst, row, now)


def advance(inst: Instance, row: ScheduleRow | tuple, now: float) -> None:
    """Move the schedule of *row* past the occurrence that ran (or was skipped) at *now*:
    its next tick, or gone for a one-shot. A plain tuple in :class:`ScheduleRow` order is
    taken too (a row read with ``ROW_SQL`` directly)."""
    store = inst.store
    assert store is not None
    if type(row) is not ScheduleRow:
        row = ScheduleRow._make(row)
    nxt = next_after_run(row.type, row.due, now, row.cron, row.interval, row.tz, row.missed)
    if nxt is None:
        rows.delete(store, row.id)
    else:
        rows.advance(store, row.id, nxt, row.occurrence + 1)



def skip_if_missed(inst: Instance, ctx: HandlerContext, env: Envelope) -> bool:
    """For ``missed="skip"`` schedules whose tick was missed: advance without running."""
    row: ScheduleRow = env.sched
    if row.missed != "skip":
        return False
    now = inst.runtime.clock.now()
    if not was_missed(row.type, row.due, now, row.cron, row.interval, row.tz):
        return False
    ctx.sched_dirty = True
    _advance_captured(inst, ctx, row, now)
    return True


def after_failure(inst: Instance, ctx: HandlerContext, env: Envelope, error: str) -> tuple[str, tuple | None]:
    """Record a failed attempt (in the caller's fresh savepoint).

    Returns:
        ``("retry", None)`` or ``("dead", dead_letter_index_row)``.
    """
    store = inst.store
    assert store is not None
    ctx.capture(store, schema=False)
    ctx.sched_dirty = True
    row: ScheduleRow = env.sched
    now = inst.runtime.clock.now()
    retry = Retry.from_json(row.retry)
    attempts = row.attempt + 1
    occurrence_id = f"{row.id}:{row.occurrence}"
    if attempts < retry.max_attempts:
        rows.retry_later(store, row.id, now + retry.delay(attempts, occurrence_id), attempts,
                         error, row.due)
        return "retry", None
    letter_id = new_id()
    rows.add_dead_letter(store, letter_id, row, occurrence_id, attempts, error, now)
    advance(inst, row, now)
    key = inst.key
    return "dead", (letter_id, key[0], key[1], row.callback, row.payload, row.type, attempts,
                    error, now)
