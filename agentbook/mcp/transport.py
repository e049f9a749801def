"""Opening an SDK client over stdio or streamable HTTP, and saying why one failed.

The transport is wrapped so that the end of its read stream (a stdio server that exited,
an HTTP stream that ended) tells the connection at once, even while no call is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..errors import MCPConnectionError, MCPProtocolError, MCPToolError
from .sdk import agentbook_version

if TYPE_CHECKING:
    from .client import Connection

__all__ = ["Spec", "Stderr", "call_error", "deadline", "describe", "leaf", "open_client"]

_STDERR_CAP = 1 << 20


@dataclass(frozen=True)
class Spec:
    """How to reach one server. ``headers`` and ``env`` are secrets: never in a repr."""

    name: str
    transport: str  # "stdio" | "http"
    target: str | tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: Secrets the registration names but the store lacks (e.g. in a fork).
    missing: tuple[str, ...] = ()

    def secret_values(self) -> list[str]:
        return [v for _, v in self.headers + self.env]


class Stderr:
    """A stdio server's stderr: an anonymous temporary file (never a notebook's output),
    kept under a megabyte, whose last lines explain failures."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the server runs

    def tail(self, limit: int = 600) -> str:
        try:
            size = os.fstat(self.file.fileno()).st_size
            data = os.pread(self.file.fileno(), 4096, max(0, size - 4096))
        except (OSError, ValueError):
            return ""
        lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[-limit:]

    def trim(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if os.fstat(self.file.fileno()).st_size > _STDERR_CAP:  # the child shares the offset
                os.ftruncate(self.file.fileno(), 0)
                os.lseek(self.file.fileno(), 0, os.SEEK_SET)

    def close(self) -> None:
        self.file.close()


async def open_client(stack: contextlib.AsyncExitStack, spec: Spec, stderr: Any,
                      conn: Connection) -> Any:
    """Enter an ``mcp.Client`` for *spec* on *stack* (handshake done) and return it."""
    from mcp import Client
    from mcp_types import Implementation


    if spec.transport == "stdio":
        from mcp.client.stdio import StdioServerParameters, stdio_client

        command, *args = cast(tuple[str, ...], spec.target)  # (stdio: a command list)
        params = StdioServerParameters(command=command, args=list(args),
                                       env=dict(spec.env) or None)
        transport: Any = stdio_client(params, errlog=stderr)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        async def on_response(response: Any) -> None:  # the SDK keeps statuses to itself
            if response.status_code >= 400:
                conn.http_status = response.status_code

        http = await stack.enter_async_context(httpx2.AsyncClient(
            headers=dict(spec.headers) or None, timeout=httpx2.Timeout(30.0, read=300.0),
            event_hooks={"response": [on_response]}))
        transport = streamable_http_client(str(spec.target), http_client=http)

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/tools/list_changed":
            conn.refresh()

    client = Client(_Watched(transport, conn), cache=None, message_handler=on_message,
                    client_info=Implementation(name="agentbook", version=agentbook_version()))
    return await stack.enter_async_context(client)


class _Watched:
    """A transport whose read side reports its end to the connection."""

    def __init__(self, inner: Any, conn: Connection) -> None:
        self._inner, self._conn = inner, conn

    async def __aenter__(self) -> Any:
        read, write = await self._inner.__aenter__()
        return _WatchedRead(read, self._conn), write

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


class _WatchedRead:
    def __init__(self, inner: Any, conn: Connection) -> None:
        self._inner, self._conn = inner, conn

    def __getattr__(self, name: str) -> Any:  # last_context and the like
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        import anyio

        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._conn.lost()
            raise

    def __aiter__(self) -> _WatchedRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._conn.lost()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedRead:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


def leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def describe(exc: BaseException, spec: Spec, stderr_tail: str = "", connecting: bool = True,
             http_status: int | None = None) -> str:
    """Why connecting (or a call) failed, in one line a person can act on."""
    from mcp.shared.exceptions import MCPError as SDKError
    from mcp_types import CONNECTION_CLOSED
    from pydantic import ValidationError

    exc = leaf(exc)
    where = spec.target[0] if spec.transport == "stdio" else spec.target
    status = _http_status(exc) or http_status
    if status in (401, 403):
        text = f"{where} refused the credentials (HTTP {status}); check the headers"
    elif status is not None and isinstance(exc, SDKError):
        text = f"{where} answered HTTP {status}: {exc.error.message}"
    elif isinstance(exc, FileNotFoundError) and spec.transport == "stdio":
        text = f"could not start {where!r}: no such program (check the command and PATH)"
    elif isinstance(exc, PermissionError) and spec.transport == "stdio":
        text = f"could not start {where!r}: permission denied"
    elif isinstance(exc, SDKError) and exc.code == CONNECTION_CLOSED:
        text = "the server closed the connection" + (" before it was ready" if connecting else "")
    elif isinstance(exc, SDKError):
        text = f"the server answered with an error: {exc.error.message}"
    elif isinstance(exc, ValidationError):
        first = (str(exc).splitlines() or ["?"])[0]
        text = f"the server's answer was malformed ({first})"
    elif status is not None:
        text = f"{where} answered HTTP {status}"
    elif type(exc).__module__.startswith(("httpx", "httpcore")) or isinstance(exc, OSError):
        text = f"could not reach {where}: {exc or type(exc).__name__}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    if stderr_tail:
        text += f" (stderr: {stderr_tail})"
    return text


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def call_error(exc: BaseException, spec: Spec, tool: str, tail: str,
               http_status: int | None) -> Exception:
    """The typed error for a tool call that raised *exc*."""
    from mcp.shared.exceptions import MCPError as SDKError
    from mcp_types import CONNECTION_CLOSED
    from pydantic import ValidationError

    name = spec.name
    exc = leaf(exc)
    if isinstance(exc, SDKError) and exc.code != CONNECTION_CLOSED:
        return MCPToolError(f"MCP server {name!r} refused {tool}: {exc.error.message}", name)
    if isinstance(exc, ValidationError):
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        return MCPProtocolError(f"MCP server {name!r} sent a malformed result for {tool}: {first}",
                                name)
    why = describe(exc, spec, tail, connecting=False, http_status=http_status)
    return MCPConnectionError(f"MCP server {name!r} failed during {tool}: {why}; it is "
                              "reconnecting", name)


def deadline(seconds: float) -> Any:
    """A timeout around a call: asyncio's own where there is one (a third of anyio's cost)."""
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    import anyio

    return _AnyioDeadline(anyio.fail_after(seconds))


class _AnyioDeadline:
    def __init__(self, scope: Any) -> None:
        self._scope = scope

    async def __aenter__(self) -> None:
        self._scope.__enter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return self._scope.__exit__(*exc)
