"""The runtime's MCP connections (``rt.mcp_clients``): one per (agent, server) it was given.

:class:`Manager` starts, finds and closes :class:`~agentbook.mcp.connection.Connection`
objects. Closing (an agent hibernates, the runtime closes, a server is removed) never
blocks: it tells the connection's task to leave the SDK's contexts, which it does in its
own time; :meth:`Manager.wait_closed` waits for that. A stdio server's stderr goes to an
anonymous temporary file (never into a notebook); its last lines explain failures.
Events: ``mcp:client:preconnect|connect|discover|close|error``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import RuntimeClosedError
from .connection import Connection
from .transport import Spec

__all__ = ["Connection", "Manager", "Spec"]

Key = tuple[str, str]


class Manager:
    """All MCP connections of one runtime, by agent key and server name (``rt.mcp_clients``)."""

    def __init__(self, rt: Any, connect_timeout: float = 30.0) -> None:
        self.rt = rt
        self.connect_timeout = connect_timeout
        self.closed = False
        self._conns: dict[Key, dict[str, Connection]] = {}
        self._closing: set[asyncio.Task] = set()

    def get(self, key: Key, name: str) -> Connection | None:
        """The connection of agent *key* to server *name*, if one is open."""
        conns = self._conns.get(key)
        return None if conns is None else conns.get(name)

    def names(self, key: Key) -> list[str]:
        """Servers agent *key* has connections to."""
        return list(self._conns.get(key, ()))

    def ensure(self, key: Key, spec: Spec) -> Connection:
        """The connection for *spec*, started if needed (restarted if *spec* changed)."""
        if self.closed:
            raise RuntimeClosedError("the runtime was closed; create a new ab.Runtime to go on")
        conn = self.get(key, spec.name)
        if conn is not None and conn.spec == spec and conn.state != "closed":
            return conn
        if conn is not None:
            self._close(conn, "replaced")
        conn = Connection(self, key, spec)
        self._conns.setdefault(key, {})[spec.name] = conn
        return conn

    def drop(self, key: Key, name: str, reason: str = "removed") -> None:
        """Close and forget one connection (no waiting)."""
        conns = self._conns.get(key)
        conn = None if conns is None else conns.pop(name, None)
        if conn is not None:
            self._close(conn, reason)

    def close_agent(self, key: Key) -> None:
        """The agent hibernates: close its connections (scheduled, never blocking)."""
        for conn in self._conns.pop(key, {}).values():
            self._close(conn, "hibernate")

    def close_all(self) -> None:
        """The runtime closes: close every connection (scheduled, never blocking)."""
        self.closed = True
        for key in list(self._conns):
            for conn in self._conns.pop(key).values():
                self._close(conn, "runtime closed")

    async def wait_closed(self, timeout: float = 15.0) -> None:
        """Wait until connections being closed have let go of their servers."""
        tasks = [t for t in self._closing if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _close(self, conn: Connection, reason: str) -> None:
        conn.close(reason)
        self._closing.add(conn.task)
        conn.task.add_done_callback(self._closing.discard)

    def __repr__(self) -> str:
        count = sum(len(c) for c in self._conns.values())
        return f"<agentbook MCP connections: {count} open>"

