"""``Envelope``: one message to an agent, built by a named constructor.

A message is a method call from a cell, a client or another agent (:meth:`Envelope.call`), a
scheduled or queued run (:meth:`Envelope.scheduled`), the timer's wake-up
(:meth:`Envelope.tick`), an approved action (:meth:`Envelope.approved`), a replayed step
(:meth:`Envelope.replayed`), an error report (:meth:`Envelope.error`), or an operation that runs
alone in mailbox order (:meth:`Envelope.operation`: destroy, prune). Each constructor sets every
field the message needs, so nothing is patched afterwards; the mailbox and the handler read
them. Plain data on the ground layer, so every layer can build one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from . import jsonvalue

__all__ = ["APPROVE", "TICK", "Envelope"]

#: The method name of the timer's wake-up: "run what is due" (see agentbook.schedule.firing).
TICK = "__tick__"
#: The method name of an approved action (the approval row says which method really runs).
APPROVE = "__approve__"

_NO_ARGS = "[]"


class Envelope:
    """One message: a method call, a scheduled run, or an internal operation."""

    __slots__ = ("approval", "args", "args_json", "chain", "extras", "future", "kwargs",
                 "kwargs_json", "label", "method", "op", "replay", "sched", "source")

    def __init__(self, method: str, args: tuple, kwargs: dict, args_json: str,
                 kwargs_json: str | None, source: str, *, future: asyncio.Future | None = None,
                 chain: tuple = (), op: Callable[[Any], Awaitable[Any]] | None = None,
                 label: str | None = None, sched: Any = None,
                 approval: tuple[str, str | None] | None = None, replay: Any = None,
                 extras: dict[str, Any] | None = None) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.args_json = args_json
        self.kwargs_json = kwargs_json
        #: Who sent it: ``cell``, ``script``, ``agent:Class/name``, ``schedule:<id>`` ...
        self.source = source
        #: Where the caller waits for the result (``None``: fire and forget).
        self.future = future
        #: The agents waiting on this call, outermost first (re-entrancy checks).
        self.chain = chain
        #: An ``async op(mailbox)`` run alone, in mailbox order (destroy, prune).
        self.op = op
        #: The name recorded in history, when it differs from ``method``.
        self.label = label
        #: The schedule row of a scheduled run.
        self.sched = sched
        #: ``(approval id, who)`` when this message runs an approved action.
        self.approval = approval
        #: A replay step when this message replays a version.
        self.replay = replay
        #: Per-call things that are not JSON and never stored (a stream, client tools).
        self.extras = extras

    # -- named constructors -------------------------------------------------------------------
    @classmethod
    def call(cls, method: str, args: tuple = (), kwargs: dict | None = None, *, source: str,
             args_json: str | None = None, kwargs_json: str | None = None,
             chain: tuple = (), label: str | None = None,
             extras: dict[str, Any] | None = None) -> Envelope:
        """A call of *method*; the JSON forms are computed when not given."""
        kwargs = kwargs or {}
        if args_json is None:
            args_json = jsonvalue.dumps(list(args)) if args else _NO_ARGS
        if kwargs_json is None and kwargs:
            kwargs_json = jsonvalue.dumps(kwargs)
        return cls(method, args, kwargs, args_json, kwargs_json or None, source, chain=chain,
                   label=label, extras=extras)

    @classmethod
    def checked(cls, method: str, args: tuple, kwargs: dict, args_json: str,
                kwargs_json: str | None, source: str, chain: tuple) -> Envelope:
        """A call that :func:`agentbook.core.calls.prepare` checked, with both JSON forms
        made (every ``ref.method(...)``). Positional, unlike :meth:`call`: parsing
        :meth:`call`'s keywords would cost a burst of sends ~0.3 us a message."""
        return cls(method, args, kwargs, args_json, kwargs_json, source, chain=chain)

    @classmethod
    def scheduled(cls, callback: str, args: tuple, args_json: str, row: Any, *, source: str,
                  label: str | None = None) -> Envelope:
        """A due occurrence of a schedule or queue item (*row*)."""
        return cls(callback, args, {}, args_json, None, source, label=label, sched=row)

    @classmethod
    def tick(cls) -> Envelope:
        """The timer's wake-up: run whatever of the agent's schedules is due."""
        return cls(TICK, (), {}, _NO_ARGS, None, "timer")

    @classmethod
    def approved(cls, approval_id: str, by: str | None) -> Envelope:
        """Run the action that approval *approval_id* binds, decided by *by*."""
        return cls(APPROVE, (), {}, _NO_ARGS, None, f"approval:{approval_id}",
                   approval=(approval_id, by))

    @classmethod
    def replayed(cls, method: str, args_json: str, kwargs_json: str | None, step: Any, *,
                 source: str, args: tuple, kwargs: dict) -> Envelope:
        """A recorded step run again on a fork (*step* serves its journaled effects)."""
        return cls(method, args, kwargs, args_json, kwargs_json, source, replay=step)

    @classmethod
    def forwarded(cls, method: str, args_json: str, kwargs_json: str | None, *, source: str,
                  chain: tuple = (), label: str | None = None,
                  approval: tuple[str, str | None] | None = None,
                  replay: Any = None) -> Envelope:
        """A message that arrived from another process as JSON text (the Ray backend)."""
        return cls(method, tuple(jsonvalue.loads(args_json) or ()),
                   dict(jsonvalue.loads(kwargs_json) or {}) if kwargs_json else {},
                   args_json, kwargs_json or None, source, chain=chain, label=label,
                   approval=approval, replay=replay)

    @classmethod
    def error(cls, exc: BaseException, info_json: str) -> Envelope:
        """Report *exc* (from a send nobody awaited) to the agent's ``on_error``."""
        return cls("on_error", (exc,), {}, info_json, None, "error")

    @classmethod
    def operation(cls, name: str, op: Callable[[Any], Awaitable[Any]], *, source: str,
                  args: tuple = ()) -> Envelope:
        """*op* runs alone, in mailbox order (destroy, prune), recorded as *name*; *args* are
        what another process needs to build the same *op* (the Ray backend)."""
        return cls(name, args, {}, jsonvalue.dumps(list(args)) if args else _NO_ARGS, None,
                   source, op=op)
