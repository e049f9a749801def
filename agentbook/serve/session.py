"""One WebSocket client of one agent, from the upgrade to the close.

On connect the client gets ``cf_agent_identity`` and the committed state, then the
agent's ``on_connect`` runs (only if the class overrides it: a hook is a handler, and
every handler is a version). Frames are then read one by one and never wait for each
other: an RPC is checked (``@ab.callable`` only, arguments bound, JSON) and queued in the
agent's mailbox, and its result is written from the future's callback, after the commit
and after the state frames of that commit. A client's ``cf_agent_state`` runs
``set_state`` as a handler with source ``client:<connection id>``, so
``validate_state_change`` sees who asked. Anything else goes to ``on_message``, or earns
an error frame. Nothing a client sends can break the connection, the agent or the server.

A client may ask (``{"type": "ab_pass_request"}``) for a *session pass*: a reusable secret
for reconnecting to this agent only (``Auth.issue_pass``), sent back as
``{"type": "ab_pass", "pass", "expiresIn"}`` and presented as the subprotocol
``pass.<secret>``. agentbook's chat page, which came with a one-time ticket, reconnects
with it after a dropped socket.
"""

from __future__ import annotations

import logging
import re
import secrets
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..core.agent import Agent
from ..core.ref import AgentRef
from ..envelope import Envelope
from ..errors import RuntimeClosedError
from ..methods import method_info
from .auth import PASS_PREFIX
from .chat import is_chat
from .protocol import (
    ERROR,
    IDENTITY,
    RPC,
    STATE,
    STATE_APPLIED,
    STATE_ERROR,
    Connection,
    ConnectionContext,
    Stream,
    decode,
    encode,
    kebab,
)

if TYPE_CHECKING:
    from .handle import Server

__all__ = ["AgentSocket"]

log = logging.getLogger("agentbook.serve")

_CONN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A page asks for a session pass (agentbook's own frame; the answer is :data:`PASS`).
PASS_REQUEST = "ab_pass_request"
PASS = "ab_pass"


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes."""
    return text.encode()[:123].decode(errors="ignore")


class AgentSocket:
    """The ASGI endpoint of ``WS /agents/{class}/{name}``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.websockets import WebSocket

        server = self.server
        if (await receive())["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        chosen = "agents" if "agents" in offered else next(
            (p for p in offered if not p.startswith(("bearer.", PASS_PREFIX))), None)
        await send({"type": "websocket.accept", "subprotocol": chosen})
        refusal = server.auth.websocket_refusal(scope)
        params = scope["path_params"]
        class_name = server.resolve(params["agent"])
        if refusal is None and class_name is None:
            refusal, code = f"no agent class is served as {params['agent']!r}", 4004
        else:
            code = 4001
        if refusal is None:
            assert class_name is not None  # (refused above otherwise)
            try:
                ref = server.rt.get(class_name, params["name"])
            except Exception as exc:
                refusal, code = str(exc), 4000
        if refusal is not None:
            await send({"type": "websocket.close", "code": code, "reason": _reason(refusal)})
            return
        assert class_name is not None  # (refused above otherwise)
        request = WebSocket(scope, receive, send)
        pk = request.query_params.get("_pk")
        key = ref._ab_key
        if pk is None or not _CONN_ID.fullmatch(pk) or any(
                c.id == pk for c in server.connections_of(key)):
            pk = secrets.token_hex(8)
        conn = Connection(server, key, pk, scope["path"], send)
        session = _Session(server, conn, ref, server.rt.class_for(class_name))
        await session.run(receive, ConnectionContext(request))


class _Session:
    __slots__ = ("chat", "cls", "conn", "key", "ref", "rt", "server")

    def __init__(self, server: Server, conn: Connection, ref: AgentRef,
                 cls: type[Agent] | None) -> None:
        self.server, self.conn, self.ref, self.cls = server, conn, ref, cls
        self.rt, self.key = server.rt, ref._ab_key
        self.chat = is_chat(cls)

    def _hook(self, name: str) -> bool:
        cls = self.rt.class_for(self.key[0]) or self.cls  # a redefined class counts
        return getattr(cls, name) is not getattr(Agent, name)

    def _envelope(self, method: str, args: tuple, args_json: str, source: str) -> Envelope:
        return Envelope.call(method, args, source=source, args_json=args_json, label=method)

    async def run(self, receive: Any, ctx: ConnectionContext) -> None:
        conn, rt, server = self.conn, self.rt, self.server
        server.add(conn)
        code, reason = 1006, ""
        try:
            conn.frame(encode({"type": IDENTITY, "name": self.key[1], "agent": kebab(self.key[0]),
                               "stateFollows": True}))
            conn.frame(encode({"type": STATE, "state": self.ref.state}))
            if self.chat:
                server.chat.connected(conn, self.ref)
            if rt.events.active:
                rt.emit_event("connect", self.key, {"connectionId": conn.id})
            if self._hook("on_connect"):
                env = self._envelope("on_connect", (conn, ctx), encode([conn.id]), f"ws:{conn.id}")
                try:
                    await rt.submit(self.key, env)
                except Exception as exc:
                    log.warning("%s(%r).on_connect failed: %s", *self.key, exc)
                    conn.close(1011, _reason(f"on_connect failed: {exc}"))
            limit = server.max_message
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if text is None:
                        self.binary(message.get("bytes") or b"", limit)
                    elif len(text) > limit:
                        self.error(f"a message of {len(text)} characters is over the limit of "
                                   f"{limit}; nothing was done")
                    else:
                        self.text(text)
                elif kind == "websocket.disconnect":
                    code, reason = message.get("code", 1005), message.get("reason") or ""
                    break
        finally:
            conn.mark_gone()
            server.remove(conn)
            server.chat.disconnected(conn)
            if rt.events.active:
                rt.emit_event("disconnect", self.key, {"connectionId": conn.id, "code": code,
                                                  "reason": reason})
            if self._hook("on_close") and not rt.closed:
                env = self._envelope("on_close", (conn, code, reason),
                                     encode([conn.id, code, reason]), f"ws:{conn.id}")
                rt.submit(self.key, env).add_done_callback(partial(self._hook_done, "on_close"))

    # -- frames ----------------------------------------------------------------------------
    def error(self, text: str, **extra: Any) -> None:
        self.conn.frame(encode({"type": ERROR, "error": text, **extra}))

    def text(self, text: str) -> None:
        try:
            frame = decode(text)
        except ValueError as exc:
            frame = None
            problem = f"the message is not JSON: {exc}"
        else:
            problem = ("the message is not one of the agents protocol's (rpc, cf_agent_state, "
                       "the cf_agent_ chat frames)")
        if isinstance(frame, dict):
            kind = frame.get("type")
            if kind == RPC and isinstance(frame.get("id"), str) and isinstance(
                    frame.get("method"), str) and isinstance(frame.get("args", []), list):
                self.rpc(frame["id"], frame["method"], frame.get("args", []))
                return
            if kind == STATE and "state" in frame:
                self.client_state(frame["state"], frame.get("id"))
                return
            if kind == PASS_REQUEST:  # (a page that came with a one-time ticket)
                self.conn.frame(encode({"type": PASS, "pass": self.server.auth.issue_pass(
                    self.conn.uri), "expiresIn": self.server.auth.pass_ttl}))
                return
            if isinstance(kind, str) and kind.startswith("cf_agent_") and kind != STATE:
                refused = self.server.chat.frame(self.conn, self.ref, self.chat, frame)
                if refused is not None:
                    self.error(refused, frame=kind)
                return
            if kind == RPC:
                problem = "an rpc message needs a string id, a string method and a list of args"
        if self._hook("on_message"):
            self.on_message(text)
        elif isinstance(frame, dict) and kind == RPC and isinstance(frame.get("id"), str):
            self.conn.frame(encode({"type": RPC, "id": frame["id"], "success": False,
                                    "error": problem, "errorType": "BadArgumentsError"}))
        else:
            self.error(problem)

    def binary(self, data: bytes, limit: int) -> None:
        if len(data) > limit:
            self.error(f"a message of {len(data)} bytes is over the limit of {limit}")
        elif self._hook("on_message"):
            self.on_message(data)
        else:
            self.error("binary messages are not part of the agents protocol; send JSON text")

    def on_message(self, message: str | bytes) -> None:
        shown = message if isinstance(message, str) else {"bytes": len(message)}
        env = self._envelope("on_message", (self.conn, message), encode([self.conn.id, shown]),
                             f"ws:{self.conn.id}")
        self.rt.submit(self.key, env).add_done_callback(partial(self._hook_done, "on_message"))

    def _hook_done(self, hook: str, fut: Any) -> None:
        exc = RuntimeClosedError("cancelled") if fut.cancelled() else fut.exception()
        if exc is None:
            return
        log.warning("%s(%r).%s failed: %s: %s", *self.key, hook, type(exc).__name__, exc)
        if hook == "on_message":
            self.error(f"on_message raised {type(exc).__name__}: {exc}")

    # -- calls -----------------------------------------------------------------------------
    def rpc(self, rid: str, method: str, args: list) -> None:
        rt, conn = self.rt, self.conn
        cls = self.rt.class_for(self.key[0]) or self.cls
        fn, is_callable = (None, False) if cls is None else method_info(cls, method)
        streaming = is_callable and getattr(fn, "_ab_streaming", False)
        try:
            env = rt.prepare_call(self.key, method, (None, *args) if streaming else tuple(args), {},
                              external=True, future=True)
        except Exception as exc:
            if rt.events.active:
                rt.emit_event("rpc:error", self.key, {"method": method, "error": str(exc),
                                                 "type": type(exc).__name__})
            self.rpc_failed(rid, exc)
            return
        stream = None
        if streaming:
            stream = Stream(conn, rid)
            env.args = (stream, *env.args[1:])
            env.args_json = encode(env.args[1:])
        env.source = f"ws:{conn.id}"
        if conn.readonly:
            env.label, env.method, env.args = method, "_ab_readonly_call", (method, env.args)
        rt.submit(self.key, env).add_done_callback(partial(self.rpc_done, rid, stream))

    def rpc_failed(self, rid: str, exc: BaseException) -> None:
        self.conn.frame(encode({"type": RPC, "id": rid, "success": False,
                                "error": str(exc) or type(exc).__name__,
                                "errorType": type(exc).__name__}))

    def rpc_done(self, rid: str, stream: Stream | None, fut: Any) -> None:
        exc = RuntimeClosedError("the call was cancelled") if fut.cancelled() else fut.exception()
        if exc is not None:
            self.rpc_failed(rid, exc)
            return
        if stream is not None and stream.failure is not None:
            self.rpc_failed(rid, RuntimeError(stream.failure))
            return
        final = stream.final if stream is not None else None
        result = final[0] if final is not None else fut.result()
        try:
            text = encode({"type": RPC, "id": rid, "success": True,
                           "result": jsonvalue.freeze(result, "result"), "done": True})
        except (TypeError, ValueError) as error:
            self.rpc_failed(rid, TypeError(f"the method ran, but its result is not JSON: {error}"))
            return
        self.conn.frame(text)

    # -- client state --------------------------------------------------------------------
    def client_state(self, state: Any, uid: Any) -> None:
        conn = self.conn
        if conn.readonly:
            self.state_refused(uid, "Connection is readonly")
            return
        try:
            state = jsonvalue.freeze(state, "state")
        except (TypeError, ValueError) as exc:
            self.state_refused(uid, str(exc))
            return
        env = self._envelope("set_state", (state,), encode([state]), f"client:{conn.id}")
        self.rt.submit(self.key, env).add_done_callback(partial(self.state_done, uid))

    def state_done(self, uid: Any, fut: Any) -> None:
        exc = RuntimeClosedError("cancelled") if fut.cancelled() else fut.exception()
        if exc is not None:
            self.state_refused(uid, str(exc))
            return
        if uid is not None:
            self.conn.frame(encode({"type": STATE_APPLIED, "id": uid}))

    def state_refused(self, uid: Any, error: str) -> None:
        frame = {"type": STATE_ERROR, "error": error}
        if uid is not None:
            frame["id"] = uid
        self.conn.frame(encode(jsonvalue.freeze(frame, "frame")))
        self.conn.frame(encode({"type": STATE, "state": self.ref.state}))
