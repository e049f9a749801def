"""The Starlette application: routes, and HTTP requests to agents.

    GET  /                          which agent classes are served
    GET  /agents/{class}/{name}/get-messages   a chat agent's conversation (UIMessages)
    POST /_agentbook/ticket         a one-time connect ticket (needs the token)
    GET  /_agentbook/pages/{name}   a page the user named (server.add_page; no token)
    ANY  /agents/{class}/{name}     HTTP: the agent's ``on_request``
    WS   /agents/{class}/{name}     WebSocket: see :mod:`agentbook.serve.session`

``{class}`` is the class name in kebab case (``SupportAgent`` -> ``support-agent``), as
Cloudflare's client writes it; the exact class name works too. ``on_request`` runs as
a handler in the agent's mailbox (one at a time, its writes committed); an agent that
doesn't override it answers ``GET`` with its state, read without waiting.
"""

from __future__ import annotations

import asyncio
import mimetypes
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute

from .. import jsonvalue
from ..core.agent import Agent
from ..envelope import Envelope
from ..errors import AgentbookError, UsageError
from .auth import PAGES_PATH, TICKET_PATH
from .chat import is_chat
from .limits import BODY_SECONDS
from .protocol import encode, encode_value
from .session import AgentSocket

if TYPE_CHECKING:
    from .handle import Server

__all__ = ["build_app"]

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_app(server: Server, *, mcp: bool = False) -> Starlette:
    """The ASGI app serving *server*'s runtime (the :class:`~.auth.Guard` goes around it)."""

    async def index(request: Request) -> Response:
        return _json(200, {"agents": server.routes(), "ticket": TICKET_PATH,
                           "protocol": "cloudflare-agents"})

    async def ticket(request: Request) -> Response:
        return _json(200, {"ticket": server.ticket(), "expires_in": server.auth.ticket_ttl})

    async def agent(request: Request) -> Response:
        return await _agent_request(server, request)

    async def get_messages(request: Request) -> Response:
        return _get_messages(server, request)

    async def page(request: Request) -> Response:
        file = server.pages.get(request.path_params["page"])
        if file is None:
            return _json(404, {"error": "no such page"})
        try:
            data = await asyncio.to_thread(file.read_bytes)
        except OSError as exc:
            return _json(404, {"error": f"the page's file can't be read: {exc.strerror}"})
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith(("javascript", "json")):
            kind += "; charset=utf-8"
        return Response(data, media_type=kind, headers={
            "cache-control": "no-store", "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer"})

    routes: list[Any] = [
        Route("/", index, methods=["GET"]),
        Route(PAGES_PATH + "{page}", page, methods=["GET"]),
        Route(TICKET_PATH, ticket, methods=["POST"]),
        Route("/agents/{agent}/{name}/get-messages", get_messages, methods=["GET"]),
        Route("/agents/{agent}/{name}", agent, methods=_METHODS),
        WebSocketRoute("/agents/{agent}/{name}", AgentSocket(server)),
    ]
    if mcp:
        try:
            from ..mcp import asgi_app
        except ImportError:
            raise UsageError("mcp=True needs agentbook's MCP server (agentbook.mcp), which "
                             "this installation does not have") from None
        routes.append(Mount("/mcp", app=asgi_app(server.rt)))
    return Starlette(routes=routes)


async def _agent_request(server: Server, request: Request) -> Response:
    rt = server.rt
    class_name = server.resolve(request.path_params["agent"])
    if class_name is None:
        return _json(404, {"error": f"no agent class is served as {request.path_params['agent']!r}; "
                                    f"served: {', '.join(server.routes()) or '(none)'}"})
    try:
        ref = rt.get(class_name, request.path_params["name"])
    except AgentbookError as exc:
        return _json(400, {"error": str(exc)})
    cls = rt.class_for(class_name)
    if cls is None or cls.on_request is Agent.on_request:
        if request.method in ("GET", "HEAD"):
            return _json(200, {"name": ref.name, "state": ref.state})
        return _json(405, {"error": f"{class_name} has no on_request hook; GET returns its "
                                    "state, and WebSocket clients can call its methods"},
                     headers={"allow": "GET, HEAD"})
    try:  # (a client that sends its body slowly, or never, gets a deadline)
        buffered = await asyncio.wait_for(_read_body(request, server.max_message), BODY_SECONDS)
    except asyncio.TimeoutError:
        return _json(408, {"error": f"the request body did not arrive within {BODY_SECONDS:g} s"},
                     headers={"connection": "close"})
    if buffered is None:
        return _json(413, {"error": f"the body is over the limit of {server.max_message} bytes"})
    request = buffered
    env = Envelope.call("on_request", (request,), source=f"http:{request.method}",
                        args_json=encode([{"method": request.method, "path": request.url.path}]),
                        label="on_request")
    try:
        result = await rt.submit(ref._ab_key, env)
    except Exception as exc:
        return _json(500, {"error": str(exc), "errorType": type(exc).__name__})
    return _response(result)


def _get_messages(server: Server, request: Request) -> Response:
    """A chat agent's committed conversation as AI SDK UIMessages (``useAgentChat`` loads
    it before it connects)."""
    class_name = server.resolve(request.path_params["agent"])
    if class_name is None or not is_chat(server.rt.class_for(class_name)):
        return _json(404, {"error": f"no chat agent class is served as "
                                    f"{request.path_params['agent']!r}"})
    try:
        ref = server.rt.get(class_name, request.path_params["name"])
    except AgentbookError as exc:
        return _json(400, {"error": str(exc)})
    return _json(200, server.chat.transcript(ref))


class _BufferedRequest(Request):
    """A request whose body was read up front: ``body()``, ``json()`` and ``stream()`` give
    it without waiting (Starlette keeps a read body in ``_body``, as ``body()`` does)."""

    def __init__(self, request: Request, body: bytes) -> None:
        super().__init__(request.scope, request.receive)
        self._body = body


async def _read_body(request: Request, limit: int) -> Request | None:
    """The request with its body read up front (so the hook never waits on the network);
    ``None`` if the body is over *limit* bytes."""
    try:
        if int(request.headers.get("content-length") or 0) > limit:
            return None
    except ValueError:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return _BufferedRequest(request, b"".join(chunks))


def _response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status_code=204)
    if isinstance(result, str):
        return Response(result, media_type="text/plain; charset=utf-8")
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), media_type="application/octet-stream")
    try:
        return Response(encode_value(result, "response"), media_type="application/json")
    except (TypeError, ValueError) as exc:
        return _json(500, {"error": f"on_request returned something that is not JSON: {exc}"})


def _json(status: int, body: Any, headers: dict | None = None) -> Response:
    return Response(encode(jsonvalue.freeze(body, "response")), status_code=status,
                    media_type="application/json", headers=headers)
