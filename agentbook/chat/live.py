"""Who watches a chat agent's turns as they happen, besides the caller.

A turn streams to whoever asked (``ref.stream_chat``'s queue). The serve path also shows
every turn of a chat agent to the agent's WebSocket clients live - a turn typed in the
notebook streams to a browser page, one approved in the inbox continues there - so it
registers a :class:`Watcher` for its runtime, and so does each open chat widget (a turn
typed in a browser streams into the notebook's widget word by word). A turn asks :func:`sink` for a
:class:`Sink` when it starts (``None`` when nobody watches: a dict look-up, nothing more),
feeds it the turn's pieces inside the handler, and tells it how the turn ended; a
handler that changes the conversation without a turn (a declined approval, a cleared
chat) calls :func:`changed`. What a sink sends after the commit is its own business
(the serve path waits for the commit, as every output does).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..core.handler import HandlerContext

__all__ = ["Sink", "Watcher", "changed", "sink", "unwatch", "watch"]


class Sink(Protocol):
    """One turn, as a watcher sees it (all calls happen inside the turn's handler)."""

    def begin(self, message_id: str | None) -> None:
        """The turn starts; *message_id* is its assistant message's (``None``: it goes on
        the last assistant message, a continuation)."""

    def step(self) -> None:
        """A model call begins."""

    def piece(self, kind: str, text: str, data: Any) -> None:
        """A :class:`~agentbook.chat.agent.ChatChunk`'s ``kind``, ``text`` and ``data``."""

    def end(self, reason: str, transcript: Callable[[], list[dict[str, Any]]]) -> None:
        """The turn's work is done (its commit follows); *reason* is ``"stop"``,
        ``"tool-calls"`` or ``"aborted"``; *transcript* returns the UIMessages it commits
        (called here or not at all: it reads the whole conversation)."""

    def failed(self, error: BaseException) -> None:
        """The turn raised: nothing of it will be stored."""


class Watcher(Protocol):
    """What the serve path (and each chat widget) registers per runtime."""

    def sink(self, key: tuple[str, str], ctx: HandlerContext,
             continuation: bool) -> Sink | None:
        """A sink for a turn of agent *key* starting in the handler of *ctx*, or ``None``."""

    def changed(self, key: tuple[str, str], ctx: HandlerContext,
                transcript: list[dict[str, Any]]) -> None:
        """Agent *key*'s conversation changed without a turn (commits with *ctx*)."""


_watchers: weakref.WeakKeyDictionary[Any, list[Watcher]] = weakref.WeakKeyDictionary()


def watch(rt: Any, watcher: Watcher) -> None:
    """Show every chat turn of *rt*'s agents to *watcher* from now on."""
    watchers = _watchers.setdefault(rt, [])
    if watcher not in watchers:
        watchers.append(watcher)


def unwatch(rt: Any, watcher: Watcher) -> None:
    """Stop showing *rt*'s turns to *watcher* (if it watches)."""
    watchers = _watchers.get(rt)
    if watchers is not None and watcher in watchers:
        watchers.remove(watcher)
        if not watchers:
            del _watchers[rt]


def sink(rt: Any, key: tuple[str, str], ctx: HandlerContext,
         continuation: bool) -> Sink | None:
    """The sink of a turn starting now, if someone watches *rt*'s turns."""
    watchers = _watchers.get(rt) if _watchers else None
    if not watchers:
        return None
    if len(watchers) == 1:
        return watchers[0].sink(key, ctx, continuation)
    sinks = [s for w in list(watchers) if (s := w.sink(key, ctx, continuation)) is not None]
    return None if not sinks else sinks[0] if len(sinks) == 1 else _Sinks(sinks)


def changed(rt: Any, key: tuple[str, str], ctx: HandlerContext,
            transcript: Any) -> None:
    """Tell *rt*'s watchers that *key*'s conversation changed; *transcript* is called for
    the UIMessages only when someone watches."""
    watchers = _watchers.get(rt) if _watchers else None
    if watchers:
        messages = transcript()
        for watcher in list(watchers):
            watcher.changed(key, ctx, messages)


class _Sinks:
    """Several watchers' sinks of one turn, as one (the transcript read once)."""

    __slots__ = ("sinks",)

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def begin(self, message_id: str | None) -> None:
        for s in self.sinks:
            s.begin(message_id)

    def step(self) -> None:
        for s in self.sinks:
            s.step()

    def piece(self, kind: str, text: str, data: Any) -> None:
        for s in self.sinks:
            s.piece(kind, text, data)

    def end(self, reason: str, transcript: Callable[[], list[dict[str, Any]]]) -> None:
        read: list[list[dict[str, Any]]] = []

        def once() -> list[dict[str, Any]]:
            if not read:
                read.append(transcript())
            return read[0]

        for s in self.sinks:
            s.end(reason, once)

    def failed(self, error: BaseException) -> None:
        for s in self.sinks:
            s.failed(error)
