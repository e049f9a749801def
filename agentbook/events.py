"""The observability event bus: silent, and free, unless someone listens.

Records are dicts ``{type, agent, name, payload, timestamp}`` (Cloudflare Agents' shape:
``agent`` is the class name, ``name`` the agent's name, ``timestamp`` epoch milliseconds).
Event names follow Cloudflare Agents where it has one for the same thing: ``state:update``,
``rpc``, ``rpc:error``, ``schedule:*``, ``queue:*``, ``connect``, ``disconnect``,
``destroy``, ``mcp:client:*``, ``tool:approval``, ``chat:*``; agentbook's own are
``agent:start``, ``agent:hibernate`` and whatever agents ``emit``.

Code that produces events checks :attr:`EventBus.active` first, so with no subscriber
not even the record is built - except inside a handler when the stream is kept on record
(:attr:`EventBus.recording`, the default): there :attr:`~EventBus.active` is true, the
handler's events are collected, and they are written with its commit, in the agent's own
store (:mod:`agentbook.store.events`), whoever listens. Live delivery still happens only
when someone subscribes.

What is on record (the ``events`` view, ``rt.sql("SELECT * FROM events")``): everything a
committed handler produced - ``rpc``, ``state:update``, ``schedule:*``/``queue:*`` (create,
cancel, execute, retry, error), ``approval:*`` and ``tool:approval`` of the requests and
decisions it committed, ``chat:*``, ``timetravel:rewind`` and its ``emit`` calls (``on_start``'s, when it made
a version). A handler that raised leaves none of
its own events; its ``rpc:error`` is on record through the runtime's failure log (the
catalog's ``failures``, also behind the ``history`` view's ``outcome = 'error'`` rows).
A call's ``rpc`` and ``state:update`` are its history row seen as events: the view derives
them from history instead of writing them twice (so they cost a committed call nothing more,
and stay as long as history does: ``ref.prune``); ``events_keep``/``events_max_age`` apply
to the rest, which ``_ab_events`` keeps.
Live only (they happen outside any commit, or to an agent that no longer exists):
``agent:start`` and ``agent:hibernate`` (a wake writes nothing), ``destroy``,
``connect``/``disconnect``, ``mcp:client:*``, ``broadcast`` (its message goes to clients;
not kept), ``timetravel:fork``/``replay``, ``runtime:close`` and ``emit`` from outside a
handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["IN_HANDLER", "Event", "EventBus"]

log = logging.getLogger("agentbook.events")

Event = dict[str, Any]

#: True while a handler whose events are kept on record runs in this task, and between the
#: handlers of one mailbox batch: set through :meth:`EventBus.enter_handler`, or directly,
#: once for a batch's handlers (``agentbook.core.handler.enter_batch``:
#: ``IN_HANDLER.set(True) if bus.recording else None``), reset the same way.
IN_HANDLER: contextvars.ContextVar[bool] = contextvars.ContextVar("ab_events_kept",
                                                                  default=False)


class _Subscription:
    __slots__ = ("agent", "callback", "pattern")

    def __init__(self, callback: Callable[[Event], Any], types: Iterable[str] | None, agent: Any):
        self.callback = callback
        if types is None:
            self.pattern = None
        else:
            if isinstance(types, str):
                types = [types]
            self.pattern = re.compile("|".join(fnmatch.translate(t) for t in types))
        self.agent = agent

    def wants(self, event: Event) -> bool:
        if self.pattern is not None and not self.pattern.match(event["type"]):
            return False
        if self.agent is not None:
            want = self.agent
            if isinstance(want, tuple):
                return (event["agent"], event["name"]) == want
            return event["name"] == want or event["agent"] == want
        return True


class EventBus:
    """Fan events out to subscribers.

    Args:
        enabled: ``False`` switches events off entirely (``subscribe`` still works but
            nothing is delivered, and nothing is kept on record); used to measure what
            events cost.
        record: Keep each agent's events on record, written with its handler's commit
            (``ab.Runtime(events_keep=0)`` turns it off).
    """

    def __init__(self, enabled: bool = True, record: bool = False) -> None:
        self._subs: list[_Subscription] = []
        self.enabled = enabled
        #: Whether handlers' events are written with their commits.
        self.recording = enabled and record
        #: True when at least one subscriber exists (live delivery happens).
        self.live = False
        self._watchers: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        """Whether event records are wanted here: someone subscribes, or a handler whose
        events are kept on record is running. Producers check this first."""
        return self.live or (self.recording and IN_HANDLER.get())

    def enter_handler(self) -> contextvars.Token[bool] | None:
        """A handler starts in this task: its events are collected while it runs (when
        kept on record). Pass what it returns to :meth:`leave_handler`."""
        return IN_HANDLER.set(True) if self.recording else None

    @staticmethod
    def leave_handler(token: contextvars.Token[bool] | None) -> None:
        """The handler :meth:`enter_handler` announced is over."""
        if token is not None:
            IN_HANDLER.reset(token)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call *callback* (no arguments) after each subscribe and unsubscribe, when
        :attr:`active` may have changed (a backend starts or stops relaying events)."""
        self._watchers.append(callback)

    def _changed(self) -> None:
        for watcher in list(self._watchers):
            try:
                watcher()
            except Exception:
                log.exception("event bus watcher %r failed", watcher)

    def subscribe(
        self,
        callback: Callable[[Event], Any],
        types: Iterable[str] | str | None = None,
        agent: Any = None,
    ) -> Callable[[], None]:
        """Call *callback* with every matching event; returns a function that unsubscribes.

        Live events are those of the handlers that run from now on (a handler running at
        this moment may have decided already that nobody listens); everything before is in
        the ``events`` view.

        Args:
            callback: A function or ``async`` function taking the event record. Its
                exceptions are logged, never raised into the agent.
            types: Event types to receive; shell wildcards allowed (``"schedule:*"``).
                ``None`` receives everything.
            agent: Only events of this agent: an ``AgentRef``, a name, a class name,
                or a ``(class_name, name)`` tuple.
        """
        if hasattr(agent, "_ab_key"):
            agent = agent._ab_key
        sub = _Subscription(callback, types, agent)
        self._subs.append(sub)
        self.live = self.enabled
        if self._watchers:
            self._changed()

        def unsubscribe() -> None:
            try:
                self._subs.remove(sub)
            except ValueError:
                pass
            self.live = self.enabled and bool(self._subs)
            if self._watchers:
                self._changed()

        return unsubscribe

    def emit(
        self, type: str, agent: str | None, name: str | None, payload: Any, timestamp: float
    ) -> None:
        """Deliver one event to the subscribers (callers check :attr:`active` first)."""
        if not self.live:
            return
        event = {
            "type": type,
            "agent": agent,
            "name": name,
            "payload": payload,
            "timestamp": int(timestamp * 1000),
        }
        for sub in list(self._subs):
            if sub.wants(event):
                try:
                    result = sub.callback(event)
                    if inspect.isawaitable(result):
                        task = asyncio.ensure_future(result)
                        task.add_done_callback(_log_task_error)
                except Exception:
                    log.exception("event subscriber %r failed on %s", sub.callback, type)

    def __repr__(self) -> str:
        return (f"<EventBus subscribers={len(self._subs)} enabled={self.enabled}"
                f" recording={self.recording}>")


def _log_task_error(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("async event subscriber failed", exc_info=task.exception())
