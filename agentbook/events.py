"""The observability event bus: silent, and free, unless someone listens.

Records are dicts ``{type, agent, name, payload, timestamp}`` (Cloudflare Agents' shape:
``agent`` is the class name, ``name`` the agent's name, ``timestamp`` epoch milliseconds).
Event names follow Cloudflare Agents where it has one for the same thing: ``state:update``,
``rpc``, ``rpc:error``, ``schedule:*``, ``queue:*``, ``connect``, ``disconnect``,
``destroy``, ``mcp:client:*``, ``tool:approval``, ``chat:*``; agentbook's own are
``agent:start``, ``agent:hibernate`` and whatever agents ``emit``.

Code that produces events checks :attr:`EventBus.active` first, so with no subscriber
not even the record is built.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Event", "EventBus"]

log = logging.getLogger("agentbook.events")

Event = dict[str, Any]


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
            nothing is delivered); used to measure what events cost.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._subs: list[_Subscription] = []
        self.enabled = enabled
        #: True when at least one subscriber exists; producers check this first.
        self.active = False
        self._watchers: list[Callable[[], None]] = []

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
        self.active = self.enabled
        if self._watchers:
            self._changed()

        def unsubscribe() -> None:
            try:
                self._subs.remove(sub)
            except ValueError:
                pass
            self.active = self.enabled and bool(self._subs)
            if self._watchers:
                self._changed()

        return unsubscribe

    def emit(
        self, type: str, agent: str | None, name: str | None, payload: Any, timestamp: float
    ) -> None:
        """Deliver one event (callers check :attr:`active` first)."""
        if not self.active:
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
        return f"<EventBus subscribers={len(self._subs)} enabled={self.enabled}>"


def _log_task_error(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("async event subscriber failed", exc_info=task.exception())
