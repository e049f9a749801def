"""The agent's side of scheduling: what ``self.schedule(...)`` and its siblings do.

``Agent.schedule``, ``schedule_every``, ``queue``, ``get_schedules``, ``cancel_schedule`` and
the runtime's dead-letter operations delegate here, passing the agent's mailbox instance
(``inst``) and the running handler's context (``ctx``), so this concept never imports the
core. Everything runs inside one of the agent's handlers: each write joins its transaction
(``ctx.capture`` first, so the change is in the version's changeset and time travel sees
it), marks ``ctx.sched_dirty`` (the mailbox then re-reads the next due time and re-arms the
timer after the commit) and queues its ``schedule:*`` / ``queue:*`` event for after the
commit. A call that raises has written nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..store import schedules as rows
from .policy import (
    Retry,
    Schedule,
    ScheduleError,
    check_callback,
    check_interval,
    insert,
    resolve_when,
    select,
)

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..store import AgentStore

__all__ = ["add", "cancel", "create", "create_every", "drop_dead_letter", "enqueue", "pending",
           "retry_dead_letter"]

RetryLike = Retry | dict | int | None


def create(inst: Instance, ctx: HandlerContext, cls: type, when: float | timedelta | datetime | str,
           callback: str, payload: Any, *, retry: RetryLike, tz: str | None,
           missed: str) -> Schedule:
    """``self.schedule(...)``: a one-shot at a delay or date, or a cron schedule."""
    now = inst.runtime.clock.now()
    type_, due, cron = resolve_when(when, now, tz)
    check_callback(cls, callback, payload)
    return add(inst, ctx, type_, due, callback, payload, now, cron=cron, tz=tz,
               retry=Retry.coerce(retry), missed=missed)


def create_every(inst: Instance, ctx: HandlerContext, cls: type, seconds: float | timedelta,
                 callback: str, payload: Any, *, retry: RetryLike, missed: str) -> Schedule:
    """``self.schedule_every(...)``: an interval schedule, first due one interval from now."""
    interval = check_interval(seconds)
    check_callback(cls, callback, payload)
    now = inst.runtime.clock.now()
    return add(inst, ctx, "interval", now + interval, callback, payload, now,
               interval=interval, retry=Retry.coerce(retry), missed=missed)


def enqueue(inst: Instance, ctx: HandlerContext, cls: type, callback: str, payload: Any, *,
            retry: RetryLike) -> Schedule:
    """``self.queue(...)``: work due now, run in creation order after this handler commits."""
    check_callback(cls, callback, payload)
    now = inst.runtime.clock.now()
    return add(inst, ctx, "queue", now, callback, payload, now, retry=Retry.coerce(retry))


def pending(inst: Instance, type: str | None, time_range: tuple[Any, Any] | None) -> list[Schedule]:
    """``self.get_schedules(...)``: read on the writer, so the running handler's own new
    schedules are in it."""
    return select(_store(inst).conn, type, time_range)


def cancel(inst: Instance, ctx: HandlerContext, id: str) -> None:
    """``self.cancel_schedule(id)``.

    Raises:
        ScheduleError: no pending schedule has that id.
    """
    store = _store(inst)
    found = select(store.conn, id=id)
    if not found:
        raise ScheduleError(f"no pending schedule has id {id!r}; see self.get_schedules()")
    ctx.capture(store)
    ctx.sched_dirty = True
    rows.delete(store, id)
    kind = "queue" if found[0].type == "queue" else "schedule"
    ctx.events.append((f"{kind}:cancel", {"id": id, "callback": found[0].callback}))


def retry_dead_letter(inst: Instance, ctx: HandlerContext, letter_id: str) -> None:
    """Queue a dead letter's work again, with a fresh set of attempts, and forget the letter.

    Raises:
        ScheduleError: no dead letter has that id.
    """
    store = _store(inst)
    letter = rows.dead_letter(store, letter_id)
    if letter is None:
        raise ScheduleError(f"no dead letter has id {letter_id!r}")
    ctx.capture(store)
    rows.delete_dead_letter(store, letter_id)
    now = inst.runtime.clock.now()
    add(inst, ctx, "queue", now, letter.callback, jsonvalue.loads(letter.payload), now,
        retry=Retry.from_json(letter.retry))


def drop_dead_letter(inst: Instance, ctx: HandlerContext, letter_id: str) -> None:
    """Forget a dead letter for good (an unknown id changes nothing)."""
    store = _store(inst)
    ctx.capture(store)
    rows.delete_dead_letter(store, letter_id)


def add(inst: Instance, ctx: HandlerContext, type_: str, due: float, callback: str, payload: Any,
        now: float, **options: Any) -> Schedule:
    """Write one checked schedule row in the running handler and announce it (the event
    payload is built only when someone listens)."""
    store = _store(inst)
    ctx.capture(store)
    ctx.sched_dirty = True
    sched = insert(store, type_, due, callback, payload, now, **options)
    if inst.runtime.events.active:
        kind = "queue" if type_ == "queue" else "schedule"
        ctx.events.append((f"{kind}:create", {"id": sched.id, "callback": callback,
                                              "type": type_, "due": due}))
    return sched


def _store(inst: Instance) -> AgentStore:
    store = inst.store
    assert store is not None, "a running handler's agent has its store open"
    return store
