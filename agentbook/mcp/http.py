"""Agents served as MCP servers over streamable HTTP, at ``/mcp/{class}/{name}``.

:func:`mcp_app` returns one ASGI app for every agent of a runtime. Mount it under
``/mcp`` and run its :meth:`MCPApp.lifespan` in the parent app's lifespan (Starlette does
not run a mounted app's lifespan)::

    mcp = mcp_app(rt, token=token)
    app = Starlette(routes=[Mount("/mcp", app=mcp)], lifespan=lambda app: mcp.lifespan())

It also runs on its own (``uvicorn.run(mcp_app(rt, token=...))``: it answers ASGI
lifespan events itself), then at ``/{class}/{name}`` or ``/mcp/{class}/{name}``. When
nobody runs its lifespan (uvicorn with ``lifespan="off"``), the first request starts the
session managers in a task of their own; ``await app.aclose()`` stops them.
``{class}`` is the class name or its kebab-case form (``SupportAgent`` or
``support-agent``). Each agent gets its own SDK session manager, made on its first
request. Auth: ``token=`` requires ``Authorization: Bearer <token>`` (compared in constant
time); ``authorize=`` takes any ``(scope) -> bool`` (or awaitable) check instead, such as
the serve path's own. Host and Origin headers are checked against loopback names unless
``check_hosts=False`` (when the parent app checks them).
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

from ..serve.auth import Auth
from .sdk import require_sdk
from .server import agent_server, resolve_class

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

__all__ = ["MCPApp", "mcp_app"]

_LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]


def mcp_app(rt: Any, *, token: str | None = None, authorize: Callable[[dict], Any] | None = None,
            check_hosts: bool = True, json_response: bool = False) -> MCPApp:
    """The ASGI app serving every agent of *rt* as an MCP server (see the module doc).

    Args:
        rt: The runtime whose agents to serve.
        token: A bearer token every request must carry.
        authorize: A check of the ASGI scope (returns or resolves to ``True`` to let the
            request in); used instead of, or as well as, *token*.
        check_hosts: Refuse requests whose Host or Origin is not a loopback name.
        json_response: Answer with plain JSON instead of an SSE stream.
    """
    require_sdk()
    return MCPApp(rt, token, authorize, check_hosts, json_response)


class MCPApp:
    """The ASGI app made by :func:`mcp_app`."""

    def __init__(self, rt: Any, token: str | None, authorize: Callable[[dict], Any] | None,
                 check_hosts: bool, json_response: bool) -> None:
        self.rt = rt
        # the serve path's token check: 'Bearer' or 'token', constant time
        self._auth = None if token is None else Auth(token, rt.clock)
        self._authorize = authorize
        self._check_hosts = check_hosts
        self._json = json_response
        self._managers: dict[tuple[str, str], Any] = {}
        self._tg: Any = None
        self._lock: Any = None
        self._hosting: Any = None  # (task, ready future, stop event) when self-hosted

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the session managers (enter it in the parent app's lifespan)."""
        import anyio

        self._lock = anyio.Lock()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self._tg = None
                self._managers.clear()

    async def aclose(self) -> None:
        """Stop the session managers this app started itself (no parent lifespan)."""
        hosting, self._hosting = self._hosting, None
        if hosting is not None:
            hosting[2].set()
            with contextlib.suppress(Exception):
                await hosting[0]

    async def _host(self) -> None:
        """No parent ran :meth:`lifespan`: run it in a task of our own (anyio wants its task
        group entered and left by one task), started by the first request."""
        import asyncio

        if self._hosting is None:
            loop = asyncio.get_running_loop()
            ready, stop = loop.create_future(), asyncio.Event()

            async def hosted() -> None:
                try:
                    async with self.lifespan():
                        ready.set_result(None)
                        await stop.wait()
                except BaseException as exc:
                    if not ready.done():
                        ready.set_exception(exc)
                    raise

            self._hosting = (loop.create_task(hosted(), name="agentbook MCP sessions"), ready, stop)
        await asyncio.shield(self._hosting[1])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan_protocol(receive, send)
            return
        if scope["type"] != "http":
            return
        parts = _route(scope)
        if parts is None:
            await _respond(send, 404, "not found: use /mcp/{class}/{name}")
            return
        if not await self._allowed(scope):
            await _respond(send, 401, "unauthorized", {"www-authenticate": "Bearer"})
            return
        class_name = resolve_class(parts[0])
        if class_name is None:
            await _respond(send, 404, f"no agent class {parts[0]!r} is defined in this process")
            return
        if self._tg is None:
            await self._host()
        manager = await self._manager(class_name, parts[1])
        await manager.handle_request(scope, receive, send)

    async def _allowed(self, scope: Scope) -> bool:
        if self._auth is not None and not self._auth.check(self._auth.bearer(scope)):
            return False
        if self._authorize is not None:
            verdict = self._authorize(cast(dict, scope))  # (servers pass a dict)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                return False
        return True

    async def _manager(self, class_name: str, name: str) -> Any:
        key = (class_name, name)
        async with self._lock:
            manager = self._managers.get(key)
            if manager is None:
                from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
                from mcp.server.transport_security import TransportSecuritySettings

                security = TransportSecuritySettings(
                    enable_dns_rebinding_protection=self._check_hosts,
                    allowed_hosts=[f"{h}:*" for h in _LOOPBACK] + _LOOPBACK,
                    allowed_origins=[f"http://{h}:*" for h in _LOOPBACK])
                manager = StreamableHTTPSessionManager(
                    app=agent_server(self.rt, class_name, name), json_response=self._json,
                    security_settings=security)
                await self._tg.start(_run_manager, manager)
                self._managers[key] = manager
        return manager

    async def _lifespan_protocol(self, receive: Callable, send: Callable) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        async with self.lifespan():  # entered and left in this one task, as anyio requires
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":
                pass
        await send({"type": "lifespan.shutdown.complete"})


async def _run_manager(manager: Any, *, task_status: Any) -> None:
    import anyio

    async with manager.run():
        task_status.started()
        await anyio.sleep_forever()


def _route(scope: Scope) -> tuple[str, str] | None:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    if len(parts) == 3 and parts[0] == "mcp":
        parts = parts[1:]
    return (parts[0], parts[1]) if len(parts) == 2 else None


async def _respond(send: Callable, status: int, message: str,
                   headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
