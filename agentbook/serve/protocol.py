"""The Cloudflare Agents wire protocol, and one client connection.

Frames are JSON text, one object each, told apart by ``type`` (the words are Cloudflare's,
so the ``agents`` npm client speaks to agentbook unchanged)::

    server -> client   {"type": "cf_agent_identity", "name", "agent", "stateFollows": true}
                       {"type": "cf_agent_state", "state"}         on connect, on every change
                       {"type": "cf_agent_state_error", "error"}   a client update was refused
                       {"type": "rpc", "id", "success": true, "result", "done"}
                       {"type": "rpc", "id", "success": false, "error"}
    client -> server   {"type": "rpc", "id", "method", "args": [...]}
                       {"type": "cf_agent_state", "state"}

agentbook adds three fields that Cloudflare's client ignores: ``errorType`` on failed
RPC results, an ``id`` a client may put on its state updates, answered by
``{"type": "ab_state_applied", "id"}`` (so ``await client.set_state(...)`` knows), and
``{"type": "error", "error"}`` for frames that are neither protocol nor handled by the
agent's ``on_message``.

A :class:`Connection` writes frames straight to the socket when it can take them (the
ASGI send is driven by hand, like the mailbox drives handlers, so a broadcast to a
thousand clients costs no task switches) and queues them while the socket is busy.
Sends made inside a handler wait for its commit (:mod:`.gate`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from .gate import hold

if TYPE_CHECKING:
    from .handle import Server

__all__ = ["Connection", "ConnectionContext", "Stream", "decode", "encode", "kebab"]

IDENTITY = "cf_agent_identity"
STATE = "cf_agent_state"
STATE_ERROR = "cf_agent_state_error"
RPC = "rpc"
STATE_APPLIED = "ab_state_applied"
ERROR = "error"

#: Frames a connection may queue while its socket is busy before it is dropped as too slow.
MAX_QUEUED = 10_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEBAB = re.compile(r"[A-Z]")
#: Writes that had to wait for a busy socket (kept referenced until they finish).
_writers: set[asyncio.Task] = set()


def kebab(class_name: str) -> str:
    """A class name as Cloudflare's client writes it in URLs (``SupportAgent`` ->
    ``support-agent``; the same rule as ``camelCaseToKebabCase`` in ``agents``)."""
    if class_name == class_name.upper() and class_name != class_name.lower():
        return class_name.lower().replace("_", "-")
    text = _KEBAB.sub(lambda m: "-" + m.group(0).lower(), class_name)
    text = text[1:] if text.startswith("-") else text
    text = text.replace("_", "-")
    return text[:-1] if text.endswith("-") else text


# ASCII output: escapes keep even a lone surrogate from a client's own frame sendable.
_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                            default=jsonvalue.redact_secret)


def encode(frame: Any) -> str:
    """JSON text of a frame whose values are JSON (``NaN`` raises ``ValueError``)."""
    return _encoder.encode(frame)


def encode_value(value: Any, what: str = "message") -> str:
    """JSON text of any value a user hands over; raises ``JSONValueError`` if it is not JSON."""
    return _encoder.encode(jsonvalue.freeze(value, what))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_check_encoder = json.JSONEncoder(ensure_ascii=False)
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def decode(text: str) -> Any:
    """Parse a client's frame (``NaN`` and ``Infinity`` are refused, as JSON says).

    Raises:
        ValueError: not JSON (nesting too deep for the parser counts as not JSON).
    """
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if "\\u" in text and _ESCAPED_SURROGATE.search(text):
        try:  # keys too: a lone surrogate must never reach a handler or the store
            _check_encoder.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string in it is a lone surrogate, which is not UTF-8") from None
    return value


class ConnectionContext:
    """The second argument of ``on_connect``: ``ctx.request`` has the upgrade request's
    ``headers``, ``url`` and ``query_params`` (a Starlette ``WebSocket``)."""

    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request


class Connection:
    """One WebSocket client of one agent (``self.connections`` in an agent, ``conn`` in
    ``on_connect``, ``on_message`` and ``on_close``).

    Attributes:
        id: The connection's id (the client's ``_pk`` when it sends one, as in Cloudflare).
        uri: The path the client connected to (without the query string).
        agent: ``(class name, agent name)``.
        state: Per-connection state (a JSON value, ``None`` at first); kept in memory only.
        readonly: Whether the client may change the agent's state (see :meth:`set_readonly`).
    """

    __slots__ = ("_busy", "_closed", "_send", "_server", "agent", "id", "readonly", "state",
                 "uri")

    def __init__(self, server: Server, key: tuple[str, str], conn_id: str, uri: str,
                 send: Callable[[dict], Any]) -> None:
        self._server = server
        self._send = send
        #: Frames waiting while a write is in flight; ``None`` when the socket is free.
        self._busy: deque[dict] | None = None
        self._closed = False
        self.agent = key
        self.id = conn_id
        self.uri = uri
        self.state: Any = None
        self.readonly = False

    # -- the public API -----------------------------------------------------------------
    def set_state(self, state: Any) -> Any:
        """Replace this connection's own state (a JSON value, or a function of the old
        one, as in Cloudflare); returns the new state."""
        if callable(state):
            state = state(self.state)
        self.state = jsonvalue.freeze(state, "connection.state")
        return self.state

    def set_readonly(self, readonly: bool = True) -> None:
        """Make this client read-only: its state updates are refused, and so are its calls
        to methods that change the state. It still receives every state change."""
        self.readonly = bool(readonly)

    def send(self, message: Any) -> None:
        """Send *message* to this client: a ``str`` as it is, anything else as JSON.

        Sent from a handler, the message leaves after the handler commits (and never, if
        it fails).

        Raises:
            JSONValueError: *message* is not JSON.
        """
        if isinstance(message, str):
            if not message.isascii() and _SURROGATE.search(message):
                raise jsonvalue.JSONValueError("the message contains a lone surrogate", "message")
            text = message
        else:
            text = encode_value(message)
        item = {"type": "websocket.send", "text": text}
        if not hold(self._server.rt, self, item):
            self.write_now(item)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (after the running handler commits, if called from one).

        Codes 4000-4999 tell Cloudflare's client not to reconnect."""
        item = {"type": "websocket.close", "code": int(code), "reason": str(reason)[:120]}
        if not hold(self._server.rt, self, item):
            self.write_now(item)

    @property
    def closed(self) -> bool:
        """Whether the connection has been closed (by either side)."""
        return self._closed

    def __repr__(self) -> str:
        ro = " read-only" if self.readonly else ""
        return f"<Connection {self.id} to {self.agent[0]}({self.agent[1]!r}){ro}>"

    # -- the server's side ----------------------------------------------------------------
    def frame(self, text: str) -> None:
        """Write an encoded frame now (the server's own frames, already past the gate)."""
        self.write_now({"type": "websocket.send", "text": text})

    def write_now(self, item: dict) -> None:
        """Write one ASGI message now (the output gate calls this after the commit)."""
        if self._closed:
            return
        if item["type"] == "websocket.close":
            self._closed = True
        if self._busy is not None:
            if len(self._busy) >= MAX_QUEUED:
                self._busy.clear()
                self._closed = True
                item = {"type": "websocket.close", "code": 1008, "reason": "client too slow"}
            self._busy.append(item)
            return
        coro = self._send(item)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:
            self._closed = True
            return
        self._busy = deque()
        task = asyncio.ensure_future(self._finish(coro, yielded))
        _writers.add(task)
        task.add_done_callback(_writers.discard)

    async def _finish(self, coro: Any, yielded: Any) -> None:
        """Complete a write that had to wait for the socket, then the ones queued behind it."""
        try:
            from ..core.handler import _resume

            await _resume(coro, yielded)
            while self._busy:
                await self._send(self._busy.popleft())
        except Exception:
            self._closed = True
        finally:
            self._busy = None

    def mark_gone(self) -> None:
        """The client went away (the server's side): nothing more is written to it."""
        self._closed = True


class Stream:
    """The first argument of an ``@ab.callable(streaming=True)`` method.

    ``stream.send(chunk)`` delivers a partial result at once; the method's return value
    (or ``stream.end(final)``) is the final one, sent after the commit.
    ``stream.error(message)`` ends the call with an error instead (the handler still
    commits).
    """

    __slots__ = ("_conn", "_end", "_error", "_id")

    def __init__(self, conn: Connection, rpc_id: Any) -> None:
        self._conn, self._id = conn, rpc_id
        self._end: tuple[Any] | None = None
        self._error: str | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`end` or :meth:`error` was called."""
        return self._end is not None or self._error is not None

    @property
    def final(self) -> tuple[Any] | None:
        """``(result,)`` as given to :meth:`end`, or ``None`` (the method's return value
        is then the final result)."""
        return self._end

    @property
    def failure(self) -> str | None:
        """The message given to :meth:`error`, or ``None``."""
        return self._error

    def send(self, chunk: Any) -> bool:
        """Send a partial result (a JSON value); ``False`` if the stream is closed."""
        if self.closed:
            return False
        self._conn.frame(encode({"type": RPC, "id": self._id, "success": True,
                                 "result": jsonvalue.freeze(chunk, "chunk"), "done": False}))
        return True

    def end(self, final: Any = None) -> bool:
        """Close the stream with a final result (sent when the handler has committed)."""
        if self.closed:
            return False
        self._end = (jsonvalue.freeze(final, "result"),)
        return True

    def error(self, message: str) -> bool:
        """Close the stream with an error message for the client."""
        if self.closed:
            return False
        self._error = str(message)
        return True
