"""The agent's side of scheduling: what ``self.schedule(...)`` and its siblings do.

``Agent.schedule``, ``schedule_every``, ``queue``, ``get_schedules``, ``cancel_schedule`` and
the runtime's dead-letter operations delegate here, passing the agent's mailbox instance
(``inst``) and the running handler's context (``ctx``), so this concept never imports the
core. Everything runs inside one of the agent's handlers: each write joins its transaction
(``ctx.capture`` first, so the change is in the version's changeset and time travel sees
it), marks ``ctx.sched_dirty`` (the mailbox then re-reads the next due time and re-arms the
timer after the commit) and queues its ``schedule:*`` / ``queue:*`` event for after the
commit. A call that raises has written nothing.

Schedules are idempotent (SPEC §2.11): :func:`create` and :func:`create_every` first look for a
pending schedule with the same identity (:func:`~agentbook.schedule.policy.identity`) or the
same ``key=``, and return it instead of adding a row; queued work (:func:`enqueue`) always adds
one.
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
    check_options,
    identity,
    insert,
    resolve_when,
    select,
)

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..store import AgentStore

__all__ = ["add", "cancel", "create", "create_every", "drop_dead_letter", "enqueue", "pending",
           "place", "retry_dead_letter"]

RetryLike = Retry | dict | int | None


def create(inst: Instance, ctx: HandlerContext, cls: type, when: float | timedelta | datetime | str,
           callback: str, payload: Any, *, retry: RetryLike, tz: str | None,
           missed: str, idempotent: bool = True, key: str | None = None) -> Schedule:
    """``self.schedule(...)``: a one-shot at a delay or date, or a cron schedule."""
    now = inst.runtime.clock.now()
    type_, due, cron = resolve_when(when, now, tz)
    check_callback(cls, callback, payload)
    if type_ == "cron":
        timing: float | str = cron or ""
    elif type_ == "delayed" and isinstance(when, (int, float, timedelta)):
        # the delay asked for, not the due time it gives
        timing = when.total_seconds() if isinstance(when, timedelta) else float(when)
    else:
        timing = due
    return place(inst, ctx, type_, due, callback, payload, now, timing, idempotent=idempotent,
                 key=key, cron=cron, tz=tz if type_ == "cron" else None,
                 retry=Retry.coerce(retry), missed=missed)


def create_every(inst: Instance, ctx: HandlerContext, cls: type, seconds: float | timedelta,
                 callback: str, payload: Any, *, retry: RetryLike, missed: str,
                 idempotent: bool = True, key: str | None = None) -> Schedule:
    """``self.schedule_every(...)``: an interval schedule, first due one interval from now."""
    interval = check_interval(seconds)
    check_callback(cls, callback, payload)
    now = inst.runtime.clock.now()
    return place(inst, ctx, "interval", now + interval, callback, payload, now, interval,
                 idempotent=idempotent, key=key, interval=interval, retry=Retry.coerce(retry),
                 missed=missed)


def place(inst: Instance, ctx: HandlerContext, type_: str, due: float, callback: str,
          payload: Any, now: float, timing: float | str, *, idempotent: bool, key: str | None,
          retry: Retry, missed: str, **options: Any) -> Schedule:
    """Make a schedule unless the same one is pending: the idempotent path of
    :func:`create` and :func:`create_every`.

    With *key*: the pending schedule of that key is returned if its identity is the same,
    and replaced (cancelled, and a new one added with the key) if not; with no schedule of
    that key, an unnamed pending schedule of the same identity takes the key. Without a
    key, any pending schedule of the same identity is returned, unless not *idempotent*.
    A returned schedule takes this call's ``retry`` and ``missed`` options. A one-shot whose
    occurrence is running now is already spent: it is never returned.

    Raises:
        ScheduleError: a bad key, ``missed`` policy or due time; nothing is written.
        JSONValueError: *payload* is not JSON, or holds an ``ab.Secret``.
    """
    if not isinstance(idempotent, bool):
        raise ScheduleError(f"idempotent is True or False, not {idempotent!r}")
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ScheduleError(f"a schedule's key is a non-empty str, not {key!r}")
        if not idempotent:
            raise ScheduleError("key= names one schedule, so it can't go with idempotent=False; "
                                "drop one of them")
    check_options(missed, due)
    payload = jsonvalue.freeze(payload, "payload")
    ident = identity(type_, callback, payload, timing, options.get("tz"))
    store = _store(inst)
    spent = _running_one_shot(ctx)
    same = None
    if key is not None:
        same = rows.find_key(store, key, skip=spent)
        if same is not None and same.ident != ident:  # the same name, another schedule: replace
            ctx.capture(store, schema=False)
            ctx.sched_dirty = True
            rows.delete(store, same.id)
            ctx.events.append(("schedule:cancel", {"id": same.id, "callback": same.callback,
                                                   "key": key}))
            same = None
        elif same is None:
            same = rows.find_same(store, ident, skip=spent, unnamed=True)
    elif idempotent:
        same = rows.find_same(store, ident, skip=spent)
    if same is None:
        return add(inst, ctx, type_, due, callback, payload, now, retry=retry, missed=missed,
                   ident=ident, key=key, **options)
    retry_json = retry.to_json()
    named = same.key if key is None else key
    if (same.missed, Retry.from_json(same.retry), same.key) != (missed, retry, named):
        ctx.capture(store, schema=False)
        rows.set_options(store, same.id, missed=missed, retry=retry_json, key=named)
    if inst.runtime.events.active:
        ctx.events.append(("schedule:duplicate", {"id": same.id, "callback": callback,
                                                  "type": type_, "key": named}))
    return select(store.conn, id=same.id)[0]


def _running_one_shot(ctx: HandlerContext) -> str | None:
    """The id of the one-shot schedule (or queued item) whose occurrence this handler runs:
    it is deleted when the handler commits, so making it again makes a new one."""
    occ = ctx.occurrence
    if occ is None or occ.type in ("cron", "interval"):
        return None
    return occ.schedule_id


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
    ctx.capture(store, schema=False)
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
    ctx.capture(store, schema=False)
    rows.delete_dead_letter(store, letter_id)
    now = inst.runtime.clock.now()
    add(inst, ctx, "queue", now, letter.callback, jsonvalue.loads(letter.payload), now,
        retry=Retry.from_json(letter.retry))


def drop_dead_letter(inst: Instance, ctx: HandlerContext, letter_id: str) -> None:
    """Forget a dead letter for good (an unknown id changes nothing)."""
    store = _store(inst)
    ctx.capture(store, schema=False)
    rows.delete_dead_letter(store, letter_id)


def add(inst: Instance, ctx: HandlerContext, type_: str, due: float, callback: str, payload: Any,
        now: float, **options: Any) -> Schedule:
    """Write one checked schedule row in the running handler and announce it (the event
    payload is built only when someone listens)."""
    store = _store(inst)
    ctx.capture(store, schema=False)
    ctx.sched_dirty = True
    sched = insert(store, type_, due, callback, payload, now, **options)
    if inst.runtime.events.active:
        kind = "queue" if type_ == "queue" else "schedule"
        event = {"id": sched.id, "callback": callback, "type": type_, "due": due}
        if options.get("key") is not None:
            event["key"] = options["key"]
        ctx.events.append((f"{kind}:create", event))
    return sched


def _store(inst: Instance) -> AgentStore:
    store = inst.store
    assert store is not None, "a running handler's agent has its store open"
    return store
