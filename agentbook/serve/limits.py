"""Connections that never finish a request, and how many may be open at once.

uvicorn times out an idle keep-alive connection (``timeout_keep_alive``), but not one that
never sends a whole request: a thousand sockets that connect and say nothing (or half a
header) would stay open forever, and take the file descriptors every agent of the kernel
needs for its store. :class:`ConnectionGuard` wraps uvicorn's HTTP protocol:

* **a header deadline**: a connection whose request headers are not complete within
  ``header_timeout`` seconds of connecting (or of its previous response) is closed;
* **a cap**: at most ``max_connections`` HTTP connections are open; over it, the oldest
  ones that are not handling a request (half-open, or idle between requests) are closed
  first, so a new client still gets in; if every one is busy, the new one is closed.

Upgraded WebSocket connections are past both (they authenticate at once and have their own
ping timeouts). The request body has its own deadline in the app (``BODY_SECONDS``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..store import fds

__all__ = ["BODY_SECONDS", "HEADER_SECONDS", "KEEP_ALIVE_SECONDS", "ConnectionGuard",
           "default_max_connections"]

#: Seconds a connection may take to send its request headers.
HEADER_SECONDS = 10.0
#: Seconds an HTTP request may take to send its body (then: 408).
BODY_SECONDS = 30.0
#: Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
KEEP_ALIVE_SECONDS = 5
_MAX_CONNECTIONS = 1000


def default_max_connections(max_open: int) -> int:
    """How many connections a server may hold: what the limit on open files leaves besides
    the runtime's stores (``max_open`` of them), halved, at most 1 000 and at least 16."""
    soft, _hard = fds.limits()
    if soft is None:
        return _MAX_CONNECTIONS
    left = soft - max_open * fds.PER_STORE
    return max(16, min(_MAX_CONNECTIONS, left // 2))


class ConnectionGuard:
    """The header deadline and the connection cap of one server (see the module)."""

    def __init__(self, max_connections: int, header_timeout: float = HEADER_SECONDS) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        #: Open HTTP connections (uvicorn protocol objects), oldest first.
        self.open: dict[Any, asyncio.TimerHandle | None] = {}
        #: Connections closed for being too slow, and closed to make room.
        self.timed_out = 0
        self.evicted = 0

    def __repr__(self) -> str:
        return (f"<ConnectionGuard open={len(self.open)}/{self.max_connections} "
                f"timed_out={self.timed_out} evicted={self.evicted}>")

    def protocol(self, base: type) -> type:
        """*base* (uvicorn's HTTP protocol class) with this guard around it."""
        guard = self

        class Guarded(base):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                guard.opened(self)

            def connection_lost(self, exc: Exception | None) -> None:
                guard.closed(self)
                super().connection_lost(exc)

            def on_response_complete(self) -> None:
                super().on_response_complete()
                if self in guard.open:  # the next request's headers have a deadline too
                    guard.arm(self)

        Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
        return Guarded

    # -- the deadline -------------------------------------------------------------------
    def arm(self, proto: Any) -> None:
        timer = self.open.get(proto)
        if timer is not None:
            timer.cancel()
        marker = getattr(proto, "cycle", None)
        self.open[proto] = asyncio.get_running_loop().call_later(
            self.header_timeout, self._expire, proto, marker)

    def _expire(self, proto: Any, marker: Any) -> None:
        if proto not in self.open:
            return
        self.open[proto] = None
        if _upgraded(proto):
            del self.open[proto]
        elif getattr(proto, "cycle", None) is marker and _idle(proto):
            self.timed_out += 1
            self._close(proto)

    # -- the cap ------------------------------------------------------------------------
    def opened(self, proto: Any) -> None:
        self.open[proto] = None
        self.arm(proto)
        if len(self.open) <= self.max_connections:
            return
        for other in list(self.open):  # oldest first; upgraded ones are not counted
            if len(self.open) <= self.max_connections:
                return
            if _upgraded(other):
                self._forget(other)
            elif other is not proto and _idle(other):
                self.evicted += 1
                self._close(other)
        if len(self.open) > self.max_connections:  # every other one is busy: not this one
            self.evicted += 1
            self._close(proto)

    def closed(self, proto: Any) -> None:
        self._forget(proto)

    def _forget(self, proto: Any) -> None:
        timer = self.open.pop(proto, None)
        if timer is not None:
            timer.cancel()

    def _close(self, proto: Any) -> None:
        self._forget(proto)
        transport = getattr(proto, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()  # (its descriptor is freed now, not after a goodbye)


def _upgraded(proto: Any) -> bool:
    """Whether the connection became a WebSocket (its transport serves another protocol)."""
    transport = getattr(proto, "transport", None)
    return transport is not None and transport.get_protocol() is not proto


def _idle(proto: Any) -> bool:
    """No request in progress: none yet, or the last one answered."""
    cycle = getattr(proto, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))
