"""``ab.connect``: a Python client for a served agent, speaking Cloudflare's protocol.

    client = await ab.connect(server.url_for(Support, "alice"), token=server.token)
    await client.call("open_ticket", "printer on fire")
    client.state                      # kept in sync with every committed change
    await client.set_state({...})     # validated by the agent; raises if refused
    client.on_state(print)            # (state, source) on every change
    async for chunk in client.stream_chat("hi"): ...   # chat agents (see .chatclient)
    await client.close()

It does what Cloudflare's ``AgentClient`` does - identity, state sync, RPC with
streaming - over the ``websockets`` library, with the token in the ``Authorization``
header (or a one-time ``ticket=``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from .. import errors, jsonvalue
from ..errors import AgentbookError, RemoteError, StateRejectedError
from .chatclient import ChatLink

if TYPE_CHECKING:
    from ..chat.agent import ChatChunk

__all__ = ["AgentClient", "RemoteError", "connect"]

log = logging.getLogger("agentbook.serve")


def _remote(message: str, type_name: str | None) -> Exception:
    cls = getattr(errors, type_name or "", None)
    if isinstance(cls, type) and issubclass(cls, AgentbookError):
        try:
            return cls(message)
        except TypeError:
            pass
    return RemoteError(message, type_name or "Error")


async def connect(url: str, *, token: str | None = None, ticket: str | None = None,
                  on_state: Callable[[Any, str], Any] | None = None,
                  headers: dict[str, str] | None = None, open_timeout: float = 10.0,
                  max_size: int = 64 << 20) -> AgentClient:
    """Connect to one served agent and wait until its state has arrived.

    Args:
        url: The agent's URL, ``http://HOST:PORT/agents/{class}/{name}`` (``ws://`` too).
        token: The server's token (sent in the ``Authorization`` header).
        ticket: A one-time ticket instead of the token (``server.ticket()``).
        on_state: Called with ``(state, source)`` on every state change.
        headers: More HTTP headers for the upgrade request.
        open_timeout: Seconds to wait for the connection and the first state.
        max_size: Largest message accepted from the server, in bytes.

    Raises:
        ConnectionRefusedError: the server refused (wrong token, Origin, unknown agent...).
    """
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidStatus

    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = {"_pk": uuid.uuid4().hex}
    if ticket is not None:
        query["ticket"] = ticket
    target = urlunsplit((scheme, parts.netloc, parts.path,
                         "&".join(q for q in (parts.query, urlencode(query)) if q), ""))
    extra = dict(headers or {})
    if token is not None:
        extra["Authorization"] = f"Bearer {token}"
    try:
        ws = await ws_connect(target, additional_headers=extra, max_size=max_size, proxy=None,
                              compression=None, open_timeout=open_timeout)
    except InvalidStatus as exc:
        raise ConnectionRefusedError(
            f"the server refused the connection with HTTP {exc.response.status_code}") from None
    client = AgentClient(ws, query["_pk"])
    if on_state is not None:
        client.on_state(on_state)
    try:
        await asyncio.wait_for(asyncio.shield(client.opened()), open_timeout)
    except BaseException:
        await client.close()
        raise
    return client


class AgentClient:
    """A connection to one served agent (made by :func:`connect`).

    Attributes:
        state: The agent's latest state (read-only), updated on every change.
        name: The agent's name; ``agent`` is its class in kebab case.
        id: This connection's id on the server.
    """

    def __init__(self, ws: Any, conn_id: str) -> None:
        self._ws = ws
        self.id = conn_id
        self.name: str | None = None
        self.agent: str | None = None
        self.state: Any = None
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future = loop.create_future()
        self._identity = False
        self._calls: dict[str, tuple[asyncio.Future, Callable[[Any], Any] | None]] = {}
        self._updates: dict[str, asyncio.Future] = {}
        self._state_cbs: list[Callable[[Any, str], Any]] = []
        self._message_cbs: list[Callable[[Any], Any]] = []
        self._tasks: set[asyncio.Task] = set()
        self._chat = ChatLink(self._send)
        self._reader = loop.create_task(self._read())

    def __repr__(self) -> str:
        return f"<AgentClient {self.agent}/{self.name} {'closed' if self.closed else 'open'}>"

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._reader.done()

    def opened(self) -> asyncio.Future:
        """A future done when the server has sent the agent's identity and first state
        (what :func:`connect` waits for); it fails if the connection ends first."""
        return self._ready

    async def call(self, method: str, *args: Any, on_chunk: Callable[[Any], Any] | None = None,
                   timeout: float | None = None) -> Any:
        """Call an ``@ab.callable`` method; returns its result.

        Args:
            method: The method's name.
            *args: Its arguments (JSON values, positional).
            on_chunk: For streaming methods: called with each partial result.
            timeout: Seconds to wait for the result (``None``: as long as it takes).

        Raises:
            RemoteError: the method raised (agentbook's own errors come back as themselves).
            ConnectionError: the connection closed before the result came.
        """
        rid = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._calls[rid] = (fut, on_chunk)
        try:
            await self._send({"type": "rpc", "id": rid, "method": method, "args": list(args)})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._calls.pop(rid, None)

    async def set_state(self, state: Any, *, timeout: float | None = None) -> None:
        """Replace the agent's state; returns once it is committed.

        Raises:
            StateRejectedError: the agent's ``validate_state_change`` (or a read-only
                connection) refused it; ``client.state`` is the agent's state again.
        """
        uid = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._updates[uid] = fut
        try:
            await self._send({"type": "cf_agent_state", "state": state, "id": uid})
            await asyncio.wait_for(fut, timeout)
        finally:
            self._updates.pop(uid, None)

    # -- chat (agentbook.serve.chatclient) ---------------------------------------------------
    def stream_chat(self, text: str, *, client_tools: list | dict | None = None,
                    timeout: float | None = 60.0) -> AsyncIterator[ChatChunk]:
        """For chat agents: ``async for chunk in client.stream_chat(text)`` yields the answer
        as it streams (``ChatChunk``: text, tool calls and results, approvals).

        Args:
            text: The user's message.
            client_tools: Functions the model may call that run here (a list, or
                ``{name: fn}``); their schemas come from the type hints.
            timeout: Seconds to wait for each chunk.

        Raises:
            RemoteError: the turn failed on the server.
            ConnectionError: the connection closed during the turn.
        """
        return self._chat.stream(text, client_tools, timeout)

    async def chat(self, text: str, *, client_tools: list | dict | None = None,
                   timeout: float | None = 60.0) -> str:
        """For chat agents: send *text*, return the whole answer's text."""
        return "".join([str(c) async for c in self.stream_chat(
            text, client_tools=client_tools, timeout=timeout)])

    @property
    def messages(self) -> list[dict[str, Any]]:
        """For chat agents: the conversation as AI SDK UIMessages (sent on connect, kept
        in sync)."""
        return self._chat.messages

    async def decide_tool(self, tool_call_id: str, approved: bool = True) -> None:
        """Approve (or reject) a gated tool call by its call id: the same approval as the
        inbox's, decided once wherever it is clicked first; an approved call runs and the
        model's follow-up reaches every connection."""
        await self._send({"type": "cf_agent_tool_approval", "toolCallId": tool_call_id,
                          "approved": bool(approved), "autoContinue": True})

    async def clear_chat(self) -> None:
        """Forget the agent's conversation (every connection is told)."""
        self._chat.messages = []
        await self._send({"type": "cf_agent_chat_clear"})

    async def send(self, message: Any) -> None:
        """Send a message of your own (a ``str`` as it is, else JSON) to ``on_message``."""
        await self._ws.send(message if isinstance(message, str) else json.dumps(message, allow_nan=False))

    def on_state(self, callback: Callable[[Any, str], Any]) -> Callable[[], None]:
        """Call *callback(state, source)* on every state change; returns an unsubscribe."""
        self._state_cbs.append(callback)
        return lambda: self._state_cbs.remove(callback) if callback in self._state_cbs else None

    def on_message(self, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Call *callback(message)* with every other message (broadcasts, ``conn.send``)."""
        self._message_cbs.append(callback)
        return lambda: self._message_cbs.remove(callback) if callback in self._message_cbs else None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (pending calls fail with ``ConnectionError``)."""
        await self._ws.close(code, reason)
        await asyncio.gather(self._reader, return_exceptions=True)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (by either side)."""
        await asyncio.gather(asyncio.shield(self._reader), return_exceptions=True)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- the reader ------------------------------------------------------------------------
    async def _send(self, frame: dict) -> None:
        if self.closed:
            raise ConnectionError("the connection to the agent is closed")
        try:
            text = json.dumps(frame, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
            text.encode("utf-8")
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
            raise errors.JSONValueError(f"what you send must be JSON: {exc}", "args") from None
        await self._ws.send(text)

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                try:
                    self._dispatch(raw)
                except Exception:
                    log.exception("a bad frame from the server: %.200r", raw)
        except Exception as exc:  # a broken connection ends the reader like a close
            log.debug("connection lost: %s", exc)
        finally:
            code, reason = self._ws.close_code, self._ws.close_reason
            why = f"the connection closed ({code}{': ' + reason if reason else ''})"
            error = ConnectionRefusedError(why) if code and code >= 4000 else ConnectionError(why)
            self._chat.closed()
            for fut in [*(f for f, _ in self._calls.values()), *self._updates.values(), self._ready]:
                if not fut.done():
                    fut.set_exception(error)
            if self._ready.done() and not self._ready.cancelled():
                self._ready.exception()  # retrieved: nobody may be waiting any more

    def _dispatch(self, raw: str | bytes) -> None:
        frame: Any = raw
        if isinstance(raw, str):
            try:
                frame = json.loads(raw)
            except ValueError:
                pass
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "cf_agent_identity":
            self.name, self.agent = frame.get("name"), frame.get("agent")
            self._identity = True
            if not frame.get("stateFollows") and not self._ready.done():
                self._ready.set_result(None)
        elif kind == "cf_agent_state":
            self.state = jsonvalue.freeze(frame.get("state"), "state")
            if self._identity and not self._ready.done():
                self._ready.set_result(None)
            for cb in list(self._state_cbs):
                self._run(cb, self.state, "server")
        elif kind == "ab_state_applied":
            fut = self._updates.get(frame.get("id"))
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "cf_agent_state_error":
            fut = self._updates.get(frame.get("id"))
            if fut is not None and not fut.done():
                fut.set_exception(StateRejectedError(frame.get("error") or "state update rejected"))
            else:
                log.warning("the agent refused a state update: %s", frame.get("error"))
        elif isinstance(kind, str) and kind.startswith("cf_agent_") and self._chat.dispatch(frame):
            pass
        elif kind == "rpc" and frame.get("id") in self._calls:
            fut, on_chunk = self._calls[frame["id"]]
            if fut.done():
                return
            if not frame.get("success"):
                fut.set_exception(_remote(frame.get("error") or "the call failed",
                                          frame.get("errorType")))
            elif frame.get("done", True):
                fut.set_result(frame.get("result"))
            elif on_chunk is not None:
                self._run(on_chunk, frame.get("result"))
        else:
            for on_message in list(self._message_cbs):
                self._run(on_message, frame)

    def _run(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("a client callback failed")
