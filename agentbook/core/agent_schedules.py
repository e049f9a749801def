"""The scheduling half of :class:`~agentbook.agent.Agent`: ``schedule``, ``schedule_every``,
``queue``, ``get_schedules``, ``cancel_schedule``, ``occurrence``, and the dead-letter
operations the runtime calls as handlers.

Everything here writes through the running handler's context, so a schedule commits (or
not) with the handler that made it. The timing logic itself lives in
:mod:`agentbook.scheduler`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..schedule import policy as scheduler
from ..schedule.policy import Occurrence, Retry, Schedule, ScheduleError, resolve_when

if TYPE_CHECKING:
    from .mailbox import Instance


class SchedulingMixin:
    """Schedules, queues and dead letters of one agent (mixed into ``ab.Agent``)."""

    _ab_instance: Instance

    async def schedule(
        self,
        when: float | timedelta | datetime | str,
        callback: str,
        payload: Any = None,
        *,
        retry: Retry | dict | int | None = None,
        tz: str | None = None,
        missed: str = "once",
    ) -> Schedule:
        """Run method *callback* later, with *payload*; durable, exactly once per occurrence.

        Args:
            when: Seconds or a ``timedelta`` from now, an aware ``datetime`` (naive means
                local time), or a five-field cron string (UTC unless *tz*).
            callback: Name of a public method of this agent; it gets *payload* as its one
                argument (omit the parameter when there is no payload).
            payload: A JSON value.
            retry: How failures are retried (``ab.Retry``, a dict of its fields, or a number
                of attempts); then the occurrence goes to the dead-letter list.
            tz: Time zone name for cron strings.
            missed: For cron: what to do with ticks missed while the runtime was down -
                ``"once"`` (default), ``"skip"`` or ``"all"``.

        Raises:
            ScheduleError: a bad time, cron string or callback; nothing is stored.
        """
        inst = self._ab_instance
        ctx = inst.require_ctx("schedule")
        now = inst.runtime.clock.now()
        type_, due, cron = resolve_when(when, now, tz)
        scheduler.check_callback(type(self), callback, payload)
        return self._ab_insert(ctx, type_, due, callback, payload, now, cron=cron, tz=tz,
                               retry=Retry.coerce(retry), missed=missed)

    async def schedule_every(
        self, seconds: float | timedelta, callback: str, payload: Any = None, *,
        retry: Retry | dict | int | None = None, missed: str = "once",
    ) -> Schedule:
        """Run *callback* every *seconds* (first run one interval from now).

        Runs never overlap (an agent runs one handler at a time); after downtime the
        missed runs collapse into one (``missed="once"``).
        """
        inst = self._ab_instance
        ctx = inst.require_ctx("schedule_every")
        interval = scheduler.check_interval(seconds)
        scheduler.check_callback(type(self), callback, payload)
        now = inst.runtime.clock.now()
        return self._ab_insert(ctx, "interval", now + interval, callback, payload, now,
                               interval=interval, retry=Retry.coerce(retry), missed=missed)

    async def queue(self, callback: str, payload: Any = None, *,
                    retry: Retry | dict | int | None = None) -> Schedule:
        """Queue background work: *callback* runs soon after this handler commits, in FIFO
        order with other queued work; a failing item retries without blocking the others."""
        inst = self._ab_instance
        ctx = inst.require_ctx("queue")
        scheduler.check_callback(type(self), callback, payload)
        now = inst.runtime.clock.now()
        return self._ab_insert(ctx, "queue", now, callback, payload, now,
                               retry=Retry.coerce(retry))

    def get_schedules(self, type: str | None = None,
                      time_range: tuple[Any, Any] | None = None) -> list[Schedule]:
        """Pending schedules, soonest first; filter by ``type`` or a ``(start, end)`` range."""
        inst = self._ab_instance
        inst.require_ctx("get_schedules")
        return scheduler.select(inst.store.conn, type, time_range)

    async def cancel_schedule(self, id: str) -> None:
        """Cancel a pending schedule (with the running handler's commit).

        Raises:
            ScheduleError: no pending schedule has that id.
        """
        inst = self._ab_instance
        ctx = inst.require_ctx("cancel_schedule")
        found = scheduler.select(inst.store.conn, id=id)
        if not found:
            raise ScheduleError(f"no pending schedule has id {id!r}; see self.get_schedules()")
        ctx.capture(inst.store)
        ctx.sched_dirty = True
        inst.store.internal("DELETE FROM _ab_schedules WHERE id = ?", (id,))
        kind = "queue" if found[0].type == "queue" else "schedule"
        ctx.events.append((f"{kind}:cancel", {"id": id, "callback": found[0].callback}))

    @property
    def occurrence(self) -> Occurrence | None:
        """In a scheduled or queued run: which occurrence (``.id`` is stable across retries,
        for idempotent calls to the outside world). ``None`` otherwise."""
        ctx = self._ab_instance.ctx
        return None if ctx is None else ctx.occurrence

    def _ab_retry_dead_letter(self, letter_id: str) -> None:
        inst = self._ab_instance
        ctx = inst.require_ctx("retry_dead_letter")
        rows = inst.store.internal(
            "SELECT callback, payload, type, retry FROM _ab_dead_letters WHERE id = ?",
            (letter_id,))
        if not rows:
            raise ScheduleError(f"no dead letter has id {letter_id!r}")
        callback, payload, _, retry = rows[0]
        ctx.capture(inst.store)
        inst.store.internal("DELETE FROM _ab_dead_letters WHERE id = ?", (letter_id,))
        now = inst.runtime.clock.now()
        self._ab_insert(ctx, "queue", now, callback, jsonvalue.loads(payload), now,
                        retry=Retry.from_json(retry))

    def _ab_drop_dead_letter(self, letter_id: str) -> None:
        inst = self._ab_instance
        ctx = inst.require_ctx("drop_dead_letter")
        ctx.capture(inst.store)
        inst.store.internal("DELETE FROM _ab_dead_letters WHERE id = ?", (letter_id,))

    def _ab_insert(self, ctx: Any, type_: str, due: float, callback: str, payload: Any,
                   now: float, **options: Any) -> Schedule:
        inst = self._ab_instance
        ctx.capture(inst.store)
        ctx.sched_dirty = True
        sched = scheduler.insert(inst.store, type_, due, callback, payload, now, **options)
        if inst.runtime.events.active:
            kind = "queue" if type_ == "queue" else "schedule"
            ctx.events.append((f"{kind}:create", {"id": sched.id, "callback": callback,
                                                  "type": type_, "due": due}))
        return sched
