"""One agent's connection to one MCP server: a task that holds the SDK's contexts open.

The SDK's transports and sessions are anyio context managers, which must be entered and
left in the same task; so each connection is a task that opens them, discovers the tools,
and then holds them open until it is told to stop or the server goes away. Calls are
made from the handler's task through the open session (only entering and leaving are
tied to a task).

States: ``connecting`` -> ``ready``, or ``failed`` (with the reason). A ready connection
that breaks (the server process died, the stream ended) reconnects at once; a failed one
retries with exponential backoff (0.5 s doubling to 30 s, with jitter) for as long as the
agent is awake. Every connect lists the tools again, and so does a server's
``tools/list_changed`` notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..errors import MCPConnectionError, MCPTimeoutError, MCPToolError
from .shapes import SchemaProblem, result_value, sanitize_schema, scrub
from .transport import Spec, Stderr, call_error, deadline, describe, open_client

if TYPE_CHECKING:
    from .client import Manager

__all__ = ["Connection"]

log = logging.getLogger("agentbook.mcp")

Key = tuple[str, str]
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0


class Connection:
    """One agent's connection to one server, kept by a task of its own."""

    def __init__(self, manager: Manager, key: Key, spec: Spec) -> None:
        self.manager, self.key, self.spec = manager, key, spec
        #: ``(transport, target JSON)`` as in its ``_ab_mcp_servers`` row.
        self.registered_as = (spec.transport, jsonvalue.dumps(
            list(spec.target) if spec.transport == "stdio" else spec.target))
        self._secrets = spec.secret_values()
        self.state = "connecting"
        self.error: str | None = None
        #: Usable tools by name: ``{"name", "description", "parameters"}``.
        self.tools: dict[str, dict[str, Any]] = {}
        #: Tools left out, with the reason (an unusable input schema).
        self.invalid: dict[str, str] = {}
        self.server_info: dict[str, Any] | None = None
        self.last_sync: float | None = None
        self.attempts = 0
        self.calls = 0
        self.retry_at: float | None = None
        self.client: Any = None
        #: The last HTTP error status the server answered (HTTP servers only).
        self.http_status: int | None = None
        self._stderr: Any = None
        self._scope: Any = None
        self._settled = asyncio.Event()
        self._kick = asyncio.Event()
        self._stop: str | None = None
        self._broken = self._refresh = False
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"mcp {key[0]}/{key[1]} {spec.name}")

    # -- what agents see ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """State, error, tools, last sync, attempts (JSON; never a secret)."""
        retry = None if self.retry_at is None else max(0.0, round(self.retry_at - time.time(), 2))
        return {"state": self.state, "error": self.error, "tools": sorted(self.tools),
                "invalid_tools": dict(self.invalid), "last_sync": self.last_sync,
                "attempts": self.attempts, "retry_in": retry, "server_info": self.server_info}

    async def settle(self, timeout: float) -> None:
        """Wait (at most *timeout* s) until this connection is ready or has failed."""
        if self._settled.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    async def call(self, tool: str, args: dict[str, Any], timeout: float) -> Any:
        """Call *tool*; its JSON value, or a typed :class:`~agentbook.mcp.MCPError`."""
        name = self.spec.name
        client = self.client
        if client is None or self.state != "ready":
            raise self.unavailable()
        self.calls += 1
        try:
            async with deadline(timeout):
                result = await client.call_tool(tool, args)
        except TimeoutError:
            raise MCPTimeoutError(f"MCP server {name!r} gave no answer to {tool} within "
                                  f"{timeout:g} s; it may be stuck", name) from None
        except Exception as exc:
            error = call_error(exc, self.spec, tool, self._tail(), self.http_status)
            error.args = (self._scrubbed(str(error)),)  # a server may quote what it was sent
            if isinstance(error, MCPConnectionError):
                self.lost()
            raise error from None
        finally:
            if self._stderr is not None and not self.calls % 64:
                self._stderr.trim()
        is_error, value = result_value(result)
        if self._secrets:
            value = scrub(value, self._secrets)
        if is_error:
            text = value if isinstance(value, str) else "the tool reported an error"
            raise MCPToolError(f"MCP tool {name}.{tool} failed: {text}", name)
        return value

    def unavailable(self) -> MCPConnectionError:
        """The error for a call while not ready: what is wrong, and when it retries."""
        name = self.spec.name
        if self.state in ("failed", "connecting") and self.error:
            retry = self.status()["retry_in"]
            when = f"; retrying in {retry:g} s" if retry else "; retrying"
            return MCPConnectionError(f"MCP server {name!r} is not connected: {self.error}{when}",
                                      name)
        if self.state == "closed":
            return MCPConnectionError(f"MCP server {name!r} was disconnected", name)
        return MCPConnectionError(f"MCP server {name!r} is still connecting; await "
                                  "self.mcp.ready() first", name)

    # -- the connection's task ----------------------------------------------------------
    def close(self, reason: str) -> None:
        """Stop (without waiting): the task leaves the SDK's contexts and ends."""
        if self._stop is None:
            self._stop = reason
            self._kick.set()
            if self.state != "ready" and self._scope is not None:
                self._scope.cancel()

    def lost(self) -> None:
        """The transport ended (the server died or hung up): reconnect."""
        if self._stop is None and self.state == "ready":
            self._broken = True
            self._kick.set()

    def refresh(self) -> None:
        """List the tools again (the server said they changed)."""
        self._refresh = True
        self._kick.set()

    async def _run(self) -> None:
        delay = 0.0
        try:
            while self._stop is None:
                if delay:
                    self.retry_at = None if delay == math.inf else time.time() + delay
                    self._kick.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._kick.wait(),
                                               None if delay == math.inf else delay)
                    if self._stop is not None:
                        break
                self.retry_at = None
                self.state = "connecting"
                self._emit("preconnect", transport=self.spec.transport, attempt=self.attempts + 1)
                was_ready, reason = await self._session()
                if self._stop is not None:
                    break
                if was_ready:  # it worked before: try again at once, callers wait for it
                    self.attempts, delay = 0, 0.0
                    self._settled.clear()
                    self.error = reason
                    self._emit("error", error=reason, attempt=0, retry_in=0.0)
                    continue
                self.attempts += 1
                delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self.attempts - 1))
                delay *= random.uniform(0.8, 1.2)
                if self.spec.missing:  # retrying can't help: wait to be replaced or closed
                    delay = math.inf
                self.state, self.error = "failed", reason
                self._emit("error", error=reason, attempt=self.attempts,
                           retry_in=None if delay == math.inf else round(delay, 2))
                self._settled.set()
        except Exception:  # never let a connection take anything else down
            log.exception("MCP connection %s of %s failed unexpectedly", self.spec.name, self.key)
        finally:
            self.state, self.client, self.retry_at = "closed", None, None
            self._settled.set()
            self._emit("close", reason=self._stop or "ended")

    async def _session(self) -> tuple[bool, str]:
        """Connect, discover, hold the session open; ``(was_ready, why it ended)``."""
        import anyio

        spec = self.spec
        if spec.missing:
            return False, (f"its credentials ({', '.join(spec.missing)}) are not in this agent's "
                           "store (forks and rewinds never copy secrets); call add_mcp_server "
                           "again with them")
        was_ready = False
        self.http_status = None
        self._stderr = Stderr() if spec.transport == "stdio" else None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                scope.deadline = anyio.current_time() + self.manager.connect_timeout
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        errlog = None if self._stderr is None else self._stderr.file
                        client = await open_client(stack, spec, errlog, self)
                        await self._discover(client)
                        scope.deadline = math.inf
                        self._ready(client)
                        was_ready = True
                        while self._stop is None and not self._broken:
                            self._kick.clear()
                            if self._refresh:
                                self._refresh = False
                                with anyio.fail_after(self.manager.connect_timeout):
                                    await self._discover(client)
                            elif self._stop is None and not self._broken:
                                await self._kick.wait()
                        self.client = None
                except Exception as exc:
                    why = describe(exc, spec, self._tail(), connecting=not was_ready,
                                   http_status=self.http_status)
                    return was_ready, self._scrubbed(why)
            if scope.cancelled_caught and self._stop is None:
                tail = self._tail()
                return was_ready, self._scrubbed(
                    f"no answer within {self.manager.connect_timeout:g} s while connecting"
                    + (f" (stderr: {tail})" if tail else ""))
            tail = self._tail()
            return was_ready, self._scrubbed("the server closed the connection"
                                             + (f" (stderr: {tail})" if tail else ""))
        finally:
            self._scope = None
            self.client = None
            self._broken = False
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    async def _discover(self, client: Any) -> None:
        found: list[Any] = []
        cursor = None
        for _ in range(100):
            page = await client.list_tools(cursor=cursor)
            found += page.tools
            cursor = page.next_cursor
            if not cursor:
                break
        tools, invalid = {}, {}
        for tool in found:
            try:
                params = sanitize_schema(tool.input_schema)
            except SchemaProblem as problem:
                invalid[tool.name] = str(problem)
                continue
            tools[tool.name] = {"name": tool.name, "parameters": params,
                                "description": tool.description or tool.title or tool.name}
        self.tools, self.invalid = tools, invalid
        self.last_sync = self.manager.rt.clock.now()
        if self.state == "ready":
            self._emit("discover", tools=sorted(tools), invalid=dict(invalid))

    def _ready(self, client: Any) -> None:
        self.client = client
        info = client.server_info
        self.server_info = None if info is None else {"name": info.name, "version": info.version}
        self.state, self.error, self.attempts = "ready", None, 0
        self._settled.set()
        self._emit("connect", transport=self.spec.transport, protocol=client.protocol_version,
                   server_info=self.server_info)
        self._emit("discover", tools=sorted(self.tools), invalid=dict(self.invalid))

    # -- helpers ------------------------------------------------------------------------
    def _emit(self, kind: str, **payload: Any) -> None:
        rt = self.manager.rt
        if rt.events.active:
            rt.emit_event(f"mcp:client:{kind}", self.key, {"server": self.spec.name, **payload})

    def _tail(self) -> str:
        return "" if self._stderr is None else self._scrubbed(self._stderr.tail())

    def _scrubbed(self, text: str) -> str:
        return scrub(text, self._secrets) if self._secrets else text

