"""The chat layer of the agents protocol, for every ``ab.ChatAgent``: Cloudflare's chat client
(``useAgentChat``, ``WebSocketChatTransport``) talks to a notebook's chat agent unchanged.

Frames (JSON text on the agent's socket; the words are Cloudflare's)::

    client -> server   cf_agent_use_chat_request {id, init: {method, body: "<JSON string>"}}
                       cf_agent_chat_request_cancel {id}      cf_agent_chat_clear
                       cf_agent_chat_messages {messages}      (a client sets the list)
                       cf_agent_tool_result {toolCallId, toolName, output, autoContinue}
                       cf_agent_tool_approval {toolCallId, approved, autoContinue}
                       cf_agent_stream_resume_request {probeId}   cf_agent_stream_resume_ack {id}
    server -> client   cf_agent_use_chat_response {id, body: "<one UIMessageChunk>", done, seq}
                       cf_agent_chat_messages {messages[, connect]}   cf_agent_chat_clear
                       cf_agent_message_updated {message}
                       cf_agent_stream_resuming {id[, probeId]}   cf_agent_stream_pending {id, probeId}
                       cf_agent_stream_resume_none {reason, probeId}
    HTTP               GET /agents/<class>/<name>/get-messages -> [UIMessage]

A turn is the agent's own ``chat`` handler (one commit: the user's message, the answer,
tool calls, approvals) with the request's extras: the ids the client chose, its client
tools (a call to one ends the turn; the client's ``cf_agent_tool_result`` is stored by a
handler of its own, then the model goes on as a *continuation*), and an event that
``cf_agent_chat_request_cancel`` sets (the model call ends, what was said is stored, the
turn is recorded as aborted). Only the trailing user messages of a request's list are
read (the conversation is the agent's own), so a client may send just the new one. The
runtime shows every chat turn to a :class:`ChatWire` (:mod:`agentbook.chat.live`), whoever
started it - a request here, ``ref.stream_chat`` in a notebook, an approval decided in the
inbox - so every connection of the agent sees it live.

A turn's chunks go to every connection of the agent as they are made, except those offered
a resume that have not acknowledged it. Text deltas that come faster than one per
:data:`COALESCE` seconds are merged: a part's first delta leaves at once (the time to first
token is untouched), and those within the window after a text frame go as one longer
``text-delta`` when the window ends, or before the next chunk of another kind (the AI SDK
client appends a delta of any length; Cloudflare's server sends a frame per model chunk). A
model whose tokens come further apart than the window (16 ms: slower than ~60 tokens a
second) has every token leave alone, at once; the builtin offline model, a word per
event-loop turn, would otherwise pay a JSON frame, a socket write and the client's parse
per word. Each stream keeps its chunks as sent (the last few streams, in memory), so a
client that dropped its socket gets them replayed after its ack, then the live rest (or,
for a stream that ended before the ack, the transcript the others got at its end, then done).
After the commit the transcript goes out - to every connection but the requester's (its
``_pk``) for a new turn, to all for a continuation; read only when there is one to send it
to - then the ``done`` frame: to each connection at least :data:`FINALIZE_GAP` after the
last frame of the stream it got, never in the same tick (or the AI SDK client keeps a
continuation as a message of its own, or duplicates one). So a connection whose resume ack
lands between a stream's last chunk and its end gets its end that long after its replay,
not with the others'; every connection gets one end per replay, in order, before the next
stream's first frame. A client's probe right after its tool result or approval is offered
its continuation at once, even while the turn that asked still ends, and the continuation
starts on its ack: it gets every chunk live. A turn
that failed, or whose process died, stored nothing: a reconnecting client gets the
committed transcript and ``resume_none``.

Approvals over the wire are the inbox's own (``rt.approvals.approve`` / ``reject``): the
decision is made once, wherever it is clicked first; the approved call's continuation
streams to every connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..chat import turns
from ..chat.agent import Abort, ChatAgent
from ..chat.ui import INTERRUPTED, UIStream, text_of, ui_messages
from ..envelope import Envelope
from ..errors import AgentbookError
from ..store.messages import Message
from .gate import SEND
from .protocol import encode

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.ref import AgentRef
    from .handle import Server
    from .protocol import Connection

__all__ = ["ChatWire", "is_chat", "transcript_of"]

log = logging.getLogger("agentbook.serve")

RESPONSE = "cf_agent_use_chat_response"
REQUEST = "cf_agent_use_chat_request"
MESSAGES = "cf_agent_chat_messages"
CLEAR = "cf_agent_chat_clear"
CANCEL = "cf_agent_chat_request_cancel"
UPDATED = "cf_agent_message_updated"
TOOL_RESULT = "cf_agent_tool_result"
TOOL_APPROVAL = "cf_agent_tool_approval"
RESUME_REQUEST = "cf_agent_stream_resume_request"
RESUME_ACK = "cf_agent_stream_resume_ack"
RESUMING = "cf_agent_stream_resuming"
RESUME_NONE = "cf_agent_stream_resume_none"
PENDING = "cf_agent_stream_pending"

#: Seconds a continuation waits for its requester's resume probe before it starts anyway:
#: a client that has never probed (agentbook's Python client) ...
PROBE_WAIT = 0.25
#: ... and one that has (Cloudflare's clients probe on connect and after every tool result
#: or approval; on a busy machine their probe can take longer than PROBE_WAIT).
PROBER_WAIT = 5.0
#: Finished streams kept per agent for late resumes.
KEEP_STREAMS = 8
#: Seconds after a text frame during which a stream's next text deltas are merged into one.
COALESCE = 0.016
#: Seconds between a turn's commit and its transcript frame (a later tick than its last
#: chunk: the AI SDK client must have taken that chunk in before the list replaces it).
FINALIZE_GAP = 0.01

Key = tuple[str, str]
_quote = json.encoder.encode_basestring_ascii  # (a str as ASCII JSON text, as encode writes)


def _failed(exc: BaseException) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    fut.exception()  # (retrieved)
    return fut


def is_chat(cls: type | None) -> bool:
    """Whether agents of *cls* chat (speak the chat frames)."""
    return isinstance(cls, type) and issubclass(cls, ChatAgent)


def transcript_of(ref: AgentRef) -> list[dict[str, Any]]:
    """The committed conversation of *ref* as UIMessages (read without waiting)."""
    frame = ref.messages()
    rows = []
    for seq, rec in enumerate(frame.itertuples(index=False)):
        calls = rec.tool_calls
        rows.append(Message(seq, rec.id, rec.role, rec.content or "",
                            json.dumps(calls) if isinstance(calls, list) else None,
                            rec.tool_call_id if isinstance(rec.tool_call_id, str) else None,
                            rec.name if isinstance(rec.name, str) else None, 0.0))
    return ui_messages(rows)


def _interrupted(message_id: str) -> dict[str, Any]:
    """The UIMessage of a turn a restart cut short (as its stored row will read)."""
    return ui_messages([Message(0, message_id, "assistant", "", None, None, INTERRUPTED, 0.0)])[0]


class _Stream:
    """One turn's frames: its chunks (kept for replays) and how it ended."""

    __slots__ = ("asked", "bodies", "committed", "continuation", "done", "head", "held",
                 "held_id", "id", "message_ids", "outcome", "owed", "replayed", "requester",
                 "text_at", "timer", "transcript", "ui")

    def __init__(self, sid: str, continuation: bool, requester: str | None,
                 message_ids: list[str] | None) -> None:
        self.id, self.continuation, self.requester = sid, continuation, requester
        self.message_ids = message_ids
        self.bodies: list[str] = []
        self.done = False
        #: Its turn committed (its end is due); ``done`` once the end is sent.
        self.committed = False
        self.outcome: str | None = None
        #: The transcript sent when it ends (for a connection that acks its resume later).
        self.transcript: list[dict[str, Any]] | None = None
        #: Connections that acked while it ran: when their replay ended (``loop.time()``).
        self.replayed: dict[Connection, float] = {}
        #: Ends not sent yet (transcript, then done; each at least FINALIZE_GAP after the
        #: connection's last frame of this stream): their timers, and whether replayed.
        self.owed: dict[Connection, tuple[asyncio.TimerHandle, bool]] = {}
        self.ui = UIStream()
        #: The user's message that started it, as the client sent it (until it commits,
        #: a reconnecting client still sees it, as Cloudflare's server stores it first).
        self.asked: dict[str, Any] | None = None
        #: A response frame up to its body (the JSON text of the frame's start).
        self.head = (f'{{"type":"{RESPONSE}","id":{_quote(sid)},'
                     + ('"continuation":true,' if continuation else "") + '"done":false,')
        #: Text deltas held back to go as one (text part id, pieces), its timer, and
        #: when the last text frame left (``perf_counter``).
        self.held: list[str] = []
        self.held_id: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.text_at = -1.0

    def frame(self, body: str, seq: int, **more: Any) -> str:
        if not more:
            return f'{self.head}"seq":{seq},"body":{_quote(body)}}}'
        frame: dict[str, Any] = {"type": RESPONSE, "id": self.id, "body": body, "done": False,
                                 "seq": seq}
        if self.continuation:
            frame["continuation"] = True
        frame.update(more)
        return encode(frame)

    def end_frame(self, **more: Any) -> str:
        frame: dict[str, Any] = {"type": RESPONSE, "id": self.id, "body": "", "done": True}
        if self.continuation:
            frame["continuation"] = True
        if self.message_ids:
            frame["messageIds"] = self.message_ids
        if self.outcome:
            frame["outcome"] = self.outcome
        frame.update(more)
        return encode(frame)


class _Room:
    """One chat agent's streams and the connections waiting on them."""

    __slots__ = ("aborts", "active", "awaiting", "parked", "pending", "starts", "streams")

    def __init__(self) -> None:
        self.active: _Stream | None = None
        self.streams: OrderedDict[str, _Stream] = OrderedDict()
        self.awaiting: set[Connection] = set()       # offered a resume, not acked yet
        self.parked: dict[Connection, Any] = {}      # told "pending": probe ids
        self.pending: str | None = None              # a continuation promised, not started
        self.aborts: dict[str, Abort] = {}   # request id -> its cancel
        #: Continuations waiting for their requester's probe: ``{conn id: start}``.
        self.starts: dict[str, Any] = {}


class _Sink:
    """A turn as the wire sees it (:class:`agentbook.chat.live.Sink`)."""

    __slots__ = ("ctx", "key", "stream", "wire")

    def __init__(self, wire: ChatWire, key: Key, ctx: HandlerContext, stream: _Stream) -> None:
        self.wire, self.key, self.ctx, self.stream = wire, key, ctx, stream

    def begin(self, message_id: str | None) -> None:
        self.wire.emit(self.key, self.stream, self.stream.ui.start(message_id))

    def step(self) -> None:
        self.wire.emit(self.key, self.stream, self.stream.ui.step())

    def piece(self, kind: str, text: str, data: Any) -> None:
        self.wire.emit(self.key, self.stream, self.stream.ui.piece(kind, text, data))

    def end(self, reason: str, transcript: Callable[[], list[dict[str, Any]]]) -> None:
        stream = self.stream
        if reason == "aborted":
            stream.outcome = "aborted"
            self.wire.emit(self.key, stream, stream.ui.abort())
        else:
            self.wire.emit(self.key, stream, stream.ui.finish(reason))
        # The transcript (read here, as it commits) only for connections to send it to:
        # a new turn's requester has it (as in Cloudflare's server); it grows with the chat.
        skip = None if stream.continuation else stream.requester
        messages = transcript() if any(
            c.id != skip for c in self.wire.server.connections_of(self.key)) else None
        # after the commit, a tick later: the transcript, then done
        self.ctx.events.append((SEND, lambda: self.wire.committed(self.key, stream, messages)))

    def failed(self, error: BaseException) -> None:
        self.wire.fail(self.key, self.stream, error)


class ChatWire:
    """The chat frames of one server, for every chat agent it serves."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rooms: dict[Key, _Room] = {}
        #: Ids of the open connections that have sent a resume probe (they will again).
        self.probers: set[str] = set()
        #: The runtime's turn marks (agentbook.chat.turns): turns a restart cut short.
        self.turns = turns.log_of(server.rt)
        self.recover()

    def recover(self) -> None:
        """Store the turns an earlier life of the runtime left unfinished as interrupted
        (one message to each such chat agent), so clients see them from their first frame."""
        rt = self.server.rt
        for key in turns.unrecovered(rt):
            if is_chat(rt.class_for(key[0])):
                fut = turns.store_interrupted(rt, key)
                fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is None
                                      else log.warning("storing the interrupted turns failed: "
                                                       "%s", f.exception()))

    def room(self, key: Key) -> _Room:
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = _Room()
        return room

    # -- sending -----------------------------------------------------------------------
    def send_all(self, key: Key, text: str, skip: str | None = None) -> None:
        room = self.rooms.get(key)
        waiting = room.awaiting if room is not None else ()
        for conn in self.server.connections_of(key):
            if conn.id != skip and conn not in waiting:
                conn.frame(text)

    def emit(self, key: Key, stream: _Stream, chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            if chunk["type"] == "text-delta":
                self.text(key, stream, chunk["id"], chunk["delta"])
                continue
            if stream.held:
                self.flush(key, stream)
            self.send(key, stream, encode(chunk))

    def send(self, key: Key, stream: _Stream, body: str) -> None:
        """One chunk's JSON text, kept for replays and sent to the agent's connections."""
        seq = len(stream.bodies)
        stream.bodies.append(body)
        self.send_all(key, stream.frame(body, seq))

    def text(self, key: Key, stream: _Stream, part: str, delta: str) -> None:
        """A text delta: sent at once if no text frame left in the last :data:`COALESCE`
        seconds, else held back to go with the next ones (see the module's docstring)."""
        if stream.held and stream.held_id != part:
            self.flush(key, stream)
        if stream.held:
            stream.held.append(delta)
            return
        now = time.perf_counter()
        wait = stream.text_at + COALESCE - now
        if wait <= 0:
            stream.text_at = now
            self.send(key, stream, f'{{"type":"text-delta","id":{_quote(part)},'
                                   f'"delta":{_quote(delta)}}}')
            return
        stream.held.append(delta)
        stream.held_id = part
        stream.timer = asyncio.get_running_loop().call_later(wait, self.flush, key, stream)

    def flush(self, key: Key, stream: _Stream) -> None:
        """Send the text deltas held back as one."""
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if not stream.held:
            return
        delta = "".join(stream.held)
        stream.held.clear()
        stream.text_at = time.perf_counter()
        self.send(key, stream, f'{{"type":"text-delta","id":{_quote(stream.held_id or "")},'
                               f'"delta":{_quote(delta)}}}')

    def committed(self, key: Key, stream: _Stream,
                  transcript: list[dict[str, Any]] | None) -> None:
        """*stream*'s turn committed (with *transcript* to send, or ``None``): its end is
        due (:meth:`later`)."""
        stream.committed, stream.transcript = True, transcript
        self.later(key, stream)

    def later(self, key: Key, stream: _Stream) -> None:
        """The end of a committed stream (the transcript and the done frame), a little later
        (the next tick when there is no transcript to send: only the list must not share
        the last chunk's tick)."""
        loop = asyncio.get_running_loop()
        if stream.transcript is None:
            loop.call_soon(self.finish, key, stream)
        else:
            loop.call_later(FINALIZE_GAP, self.finish, key, stream)

    def finish(self, key: Key, stream: _Stream) -> None:
        """The end of *stream* to each connection that follows it: the transcript (if it
        gets one), then done - at least :data:`FINALIZE_GAP` after the last frame of the
        stream it got. Those that got the chunks live had the last one that long ago
        (:meth:`later`); one whose resume ack came in the gap had its replay just now,
        and gets its end that long after the replay; one still offered the stream gets
        it after its ack (:meth:`resume_ack`)."""
        if stream.done:
            return
        self.flush(key, stream)
        stream.done = True
        transcript, replayed, stream.replayed = stream.transcript, stream.replayed, {}
        skip = None if stream.continuation else stream.requester
        listed = None if transcript is None else encode({"type": MESSAGES,
                                                         "messages": transcript})
        end = stream.end_frame()
        room = self.rooms.get(key)
        waiting = room.awaiting if room is not None else ()
        now = asyncio.get_running_loop().time()
        for conn in self.server.connections_of(key):
            if conn in waiting:
                continue
            if listed is not None and conn.id != skip:
                due = replayed.get(conn, now - FINALIZE_GAP) + FINALIZE_GAP
                if due > now:  # it acked in the gap
                    self.owe(conn, stream, due - now, replay=False)
                    continue
                conn.frame(listed)
            conn.frame(end)
        self.close(key, stream)

    def owe(self, conn: Connection, stream: _Stream, delay: float, replay: bool) -> None:
        """Send *conn* the end of the ended *stream* (its transcript, then done) in *delay*
        seconds (the one end it is owed of it: a later ack's replay replaces it)."""
        handle = asyncio.get_running_loop().call_later(delay, self.pay, conn, stream)
        stream.owed[conn] = (handle, replay)

    def pay(self, conn: Connection, stream: _Stream) -> None:
        """Send *conn* the end it is owed of *stream* now (nothing if it is owed none)."""
        owed = stream.owed.pop(conn, None)
        if owed is None:
            return
        handle, replay = owed
        handle.cancel()
        if not conn.closed and stream.transcript is not None:
            conn.frame(encode({"type": MESSAGES, "messages": stream.transcript}))
            conn.frame(stream.end_frame(**({"replay": True} if replay else {})))

    def forget(self, conn: Connection, stream: _Stream) -> None:
        """Forget what *conn* is owed of *stream* and when it was replayed."""
        owed = stream.owed.pop(conn, None)
        if owed is not None:
            handle, _ = owed
            handle.cancel()
        stream.replayed.pop(conn, None)

    def fail(self, key: Key, stream: _Stream, error: BaseException) -> None:
        if stream.done:
            return
        self.flush(key, stream)  # (what was said before it failed)
        stream.done = True
        stream.replayed.clear()
        stream.outcome = "error"
        text = str(error) or type(error).__name__
        self.send(key, stream, encode({"type": "error", "errorText": text}))
        self.send_all(key, stream.end_frame())
        self.close(key, stream)

    def close(self, key: Key, stream: _Stream) -> None:
        room = self.room(key)
        room.aborts.pop(stream.id, None)
        if room.active is stream:
            room.active = None

    # -- the runtime's watcher (agentbook.chat.live) -------------------------------------
    def sink(self, key: Key, ctx: HandlerContext, continuation: bool) -> _Sink | None:
        wire = ctx.extras.get("wire")
        if wire is None and not self.server.connections_of(key):
            return None
        room = self.room(key)
        if wire is not None:
            sid, requester = wire["id"], wire.get("requester")
            continuation = bool(wire.get("continuation", continuation))
            message_ids = wire.get("message_ids")
            asked = wire.get("asked")
        else:
            sid = room.pending if continuation and room.pending else "ab-" + secrets.token_hex(6)
            requester, message_ids, asked = None, None, None
        if room.pending == sid:
            room.pending = None
        # the ends of the streams before, to every connection, before this one's first frame
        older = room.active
        if older is not None and older.committed and not older.done:  # (its end due)
            self.finish(key, older)
        for older in room.streams.values():
            for conn in list(older.owed):
                self.pay(conn, older)
        stream = _Stream(sid, continuation, requester, message_ids)
        stream.asked = asked
        room.active = stream
        room.streams[sid] = stream
        while len(room.streams) > KEEP_STREAMS:
            room.streams.popitem(last=False)
        for conn in list(room.parked):  # probes told "pending" get the offer now
            room.parked.pop(conn)
            if not conn.closed:
                room.awaiting.add(conn)
                conn.frame(encode({"type": RESUMING, "id": sid}))
        return _Sink(self, key, ctx, stream)

    def changed(self, key: Key, ctx: HandlerContext, transcript: list[dict[str, Any]]) -> None:
        """After the commit, the new transcript to every connection but the one whose
        frame changed it (it has the change already)."""
        if self.server.connections_of(key):
            text = encode({"type": MESSAGES, "messages": transcript})
            skip = ctx.source[3:] if ctx.source.startswith("ws:") else None
            ctx.events.append((SEND, lambda: self.send_all(key, text, skip)))

    # -- a connection ------------------------------------------------------------------
    def transcript(self, ref: AgentRef) -> list[dict[str, Any]]:
        """The committed conversation, and the user's message of a turn still running."""
        messages = transcript_of(ref)
        for mark in self.turns.left.get(ref._ab_key, ()):  # (being stored: shown as it will be)
            ids = {m["id"] for m in messages}
            if mark.asked_id and mark.asked is not None and mark.asked_id not in ids:
                messages.append({"id": mark.asked_id, "role": "user", "parts": [
                    {"type": "text", "text": mark.asked, "state": "done"}]})
            if mark.reply not in ids:
                messages.append(_interrupted(mark.reply))
        room = self.rooms.get(ref._ab_key)
        active = None if room is None else room.active
        if active is not None and active.asked is not None and not active.done and all(
                m["id"] != active.asked.get("id") for m in messages):
            messages.append(active.asked)
        return messages

    def connected(self, conn: Connection, ref: AgentRef) -> None:
        """On connect: the transcript, and the offer of a stream that is running."""
        conn.frame(encode({"type": MESSAGES, "messages": self.transcript(ref), "connect": True}))
        room = self.rooms.get(ref._ab_key)
        if room is not None and room.active is not None and not room.active.done:
            room.awaiting.add(conn)
            conn.frame(encode({"type": RESUMING, "id": room.active.id}))

    def disconnected(self, conn: Connection) -> None:
        self.probers.discard(conn.id)
        room = self.rooms.get(conn.agent)
        if room is not None:
            room.awaiting.discard(conn)
            room.parked.pop(conn, None)
            for stream in room.streams.values():
                self.forget(conn, stream)

    def frame(self, conn: Connection, ref: AgentRef, chat: bool, frame: dict) -> str | None:
        """Handle one chat frame; a problem to report, or ``None``."""
        kind = frame["type"]
        if kind == RESUME_REQUEST:
            self.resume_request(conn, frame.get("probeId"))
            return None
        if not chat:
            return f"{ref._ab_key[0]} is not a chat agent (an ab.ChatAgent): {kind} needs one"
        if kind == REQUEST:
            return self.request(conn, ref, frame)
        if kind == CANCEL:
            event = self.room(ref._ab_key).aborts.get(str(frame.get("id")))
            if event is not None:
                event.set()
            return None
        if kind == RESUME_ACK:
            self.resume_ack(conn, frame.get("id"))
            return None
        if conn.readonly:
            return "this connection is read-only: it may not change the conversation"
        if kind == CLEAR:
            self.submit(conn, ref, "_ab_clear_messages", ())
            self.send_all(ref._ab_key, encode({"type": CLEAR}), skip=conn.id)
            return None
        if kind == MESSAGES:
            messages = frame.get("messages")
            if not isinstance(messages, list):
                return "cf_agent_chat_messages needs a list of messages"
            self.submit(conn, ref, "_ab_set_messages", (messages,))
            return None
        if kind == TOOL_RESULT:
            return self.tool_result(conn, ref, frame)
        if kind == TOOL_APPROVAL:
            return self.tool_approval(conn, ref, frame)
        return None  # (other cf_agent_* frames: nothing to do)

    def submit(self, conn: Connection, ref: AgentRef, method: str, args: tuple,
               extras: dict | None = None) -> Any:
        env = Envelope.call(method, args, source=f"ws:{conn.id}", args_json=encode(
            [a if not isinstance(a, (list, dict)) or len(encode(a)) < 4096 else "..."
             for a in args]), label=method.removeprefix("_ab_"))
        if extras:
            env.extras = extras
        fut = self.server.rt.submit(ref._ab_key, env)
        fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is None else
                              log.warning("%s of %s failed: %s", method, ref._ab_key, f.exception()))
        return fut

    # -- turns -------------------------------------------------------------------------
    def request(self, conn: Connection, ref: AgentRef, frame: dict) -> str | None:
        rid, init = frame.get("id"), frame.get("init")
        if not isinstance(rid, str) or not isinstance(init, dict):
            return "cf_agent_use_chat_request needs an id and an init"
        if init.get("method", "POST") != "POST" or not init.get("body"):
            return None  # (as Cloudflare's server: ignored)
        try:
            body = json.loads(init["body"])
            messages = body.get("messages") or []
        except (TypeError, ValueError, AttributeError):
            return self.refuse(conn, rid, "the request's body is not JSON with messages")
        if conn.readonly:
            return self.refuse(conn, rid, "this connection is read-only: it may not chat")
        key = ref._ab_key
        room = self.room(key)
        abort = room.aborts[rid] = Abort()
        trailing: list[str] = []
        for msg in reversed(messages):
            if not isinstance(msg, dict) or msg.get("role") != "user":
                break
            trailing.insert(0, str(msg.get("id")))
        last = messages[-1] if messages and isinstance(messages[-1], dict) else None
        extras: dict[str, Any] = {
            "wire": {"id": rid, "requester": conn.id, "message_ids": trailing or None},
            "abort": abort, "declared_tools": body.get("clientTools") or (),
            "defer_client_tools": True}
        rt = self.server.rt
        if last is not None and last.get("role") == "user" and text_of(last).strip():
            extras["message_id"] = str(last.get("id") or "") or None
            extras["wire"]["asked"] = {"id": extras["message_id"], "role": "user",
                                       "parts": [{"type": "text", "text": text_of(last)}]}
            extras["reply_id"] = "assistant_" + secrets.token_hex(8)
            try:
                env = rt.prepare_call(key, "chat", (text_of(last),), {}, external=True,
                                      future=True)
            except AgentbookError as exc:
                room.aborts.pop(rid, None)
                return self.refuse(conn, rid, str(exc))
            env.source = f"ws:{conn.id}"
            env.extras = extras
            fut = rt.submit(key, env)
        else:  # no new words: the model goes on (after tool results the client added)
            extras["wire"]["continuation"] = True
            fut = self.submit(conn, ref, "_ab_continue", (), extras)
        fut.add_done_callback(lambda f: self.turn_done(key, rid, f))
        return None

    def refuse(self, conn: Connection, rid: str, text: str) -> str | None:
        """Answer request *rid* with an error (the client's turn fails with *text*)."""
        conn.frame(encode({"type": RESPONSE, "id": rid, "body": text, "done": True,
                           "error": True}))
        return None

    def turn_done(self, key: Key, sid: str, fut: Any) -> None:
        """A turn's future: a failure the sink did not report, or a turn that never
        streamed (nothing to continue), still ends the client's wait."""
        room = self.room(key)
        stream = room.streams.get(sid)
        error = None if fut.cancelled() else fut.exception()
        if stream is None:  # it never started
            room.aborts.pop(sid, None)
            if room.pending == sid:
                room.pending = None
                for conn in list(room.parked):
                    probe = room.parked.pop(conn)
                    conn.frame(encode({"type": RESUME_NONE, "reason": "idle", "probeId": probe}))
            if error is not None:
                self.send_all(key, encode({"type": RESPONSE, "id": sid, "body": str(error),
                                           "done": True, "error": True}))
            return
        if error is not None:
            self.fail(key, stream, error)

    # -- client tools and approvals --------------------------------------------------------
    def continuation(self, conn: Connection, ref: AgentRef, frame: dict) -> str:
        """A continuation id the next probes are told is pending."""
        sid = "cont-" + secrets.token_hex(6)
        self.room(ref._ab_key).pending = sid
        return sid

    def start_after_probe(self, conn: Connection, start: Any) -> None:
        """Run *start* (which begins a continuation) once *conn* has acked the offer its
        probe got (:meth:`resume_request`), or after :data:`PROBE_WAIT` s
        (:data:`PROBER_WAIT` for a connection that has probed before): Cloudflare's
        client asks to attach to a continuation right after it sent a tool result or an
        approval; a continuation that streamed before that would reach it as a stranger's
        stream, or as a replay its end could catch up with (AIChatAgent, which coalesces
        continuations, never starts one that early either)."""
        room = self.room(conn.agent)
        done = False

        def once() -> None:
            nonlocal done
            if not done:
                done = True
                if room.starts.get(conn.id) is once:
                    del room.starts[conn.id]
                start()

        room.starts[conn.id] = once
        wait = PROBER_WAIT if conn.id in self.probers else PROBE_WAIT
        asyncio.get_running_loop().call_later(wait, once)

    def tool_result(self, conn: Connection, ref: AgentRef, frame: dict) -> str | None:
        cid, name = frame.get("toolCallId"), frame.get("toolName")
        if not isinstance(cid, str) or not isinstance(name, str):
            return "cf_agent_tool_result needs a toolCallId and a toolName"
        error = None
        if frame.get("state") == "output-error":
            error = str(frame.get("errorText") or "the client's tool failed")
        self.submit(conn, ref, "_ab_tool_output", (cid, name, frame.get("output"), error))
        if frame.get("autoContinue") and error is None:
            sid = self.continuation(conn, ref, frame)
            extras = {"wire": {"id": sid, "requester": conn.id, "continuation": True},
                      "abort": self.room(ref._ab_key).aborts.setdefault(sid, Abort()),
                      "declared_tools": frame.get("clientTools") or (),
                      "defer_client_tools": True}

            def start() -> None:
                fut = self.submit(conn, ref, "_ab_continue", (), extras)
                fut.add_done_callback(lambda f: self.turn_done(ref._ab_key, sid, f))

            self.start_after_probe(conn, start)
        return None

    def tool_approval(self, conn: Connection, ref: AgentRef, frame: dict) -> str | None:
        cid = frame.get("toolCallId")
        approval = next((p["approval"]["id"] for m in transcript_of(ref)
                         for p in m["parts"] if p.get("toolCallId") == cid
                         and p.get("state") == "approval-requested"), None)
        if approval is None:
            self.resync(conn, ref)
            return f"no approval is pending for tool call {cid!r}"
        approvals = self.server.rt.approvals
        key = ref._ab_key
        sid = self.continuation(conn, ref, frame) if frame.get("approved") and frame.get(
            "autoContinue") else None
        by = f"client:{conn.id}"
        if sid is None:
            try:
                if frame.get("approved"):
                    approvals.approve(approval, by=by)
                else:
                    approvals.reject(approval, frame.get("reason"), by=by)
            except AgentbookError as exc:  # decided already (in the notebook's inbox, say)
                self.resync(conn, ref)
                return str(exc)
            return None
        status = approvals.get(approval).status
        if status != "pending":
            self.room(key).pending = None
            self.resync(conn, ref)
            return f"approval {approval} was already {status}"

        def start() -> None:
            try:
                fut = approvals.approve(approval, by=by)
            except AgentbookError as exc:  # decided meanwhile, elsewhere
                self.turn_done(key, sid, _failed(exc))
                conn.frame(encode({"type": "error", "error": str(exc)}))
                self.resync(conn, ref)
                return
            fut.add_done_callback(lambda f: self.turn_done(key, sid, f))

        self.start_after_probe(conn, start)
        return None

    def resync(self, conn: Connection, ref: AgentRef) -> None:
        conn.frame(encode({"type": MESSAGES, "messages": transcript_of(ref)}))

    # -- resuming ------------------------------------------------------------------------
    def resume_request(self, conn: Connection, probe: Any) -> None:
        self.probers.add(conn.id)
        room = self.rooms.get(conn.agent)
        extra = {} if probe is None else {"probeId": probe}
        if room is not None and room.pending is not None and conn.id in room.starts:
            # Its own continuation waits for this probe (it sent a tool result or an
            # approval; the turn that asked may still be ending): offered now, and started
            # by its ack, so it gets every chunk live - not a replay of a stream that may
            # have ended before its ack, which its end then could reach in the same tick.
            conn.frame(encode({"type": PENDING, "id": room.pending, **extra}))
            conn.frame(encode({"type": RESUMING, "id": room.pending}))
        elif room is not None and room.active is not None and not room.active.done:
            room.awaiting.add(conn)
            conn.frame(encode({"type": RESUMING, "id": room.active.id, **extra}))
        elif room is not None and room.pending is not None:
            room.parked[conn] = probe
            conn.frame(encode({"type": PENDING, "id": room.pending, **extra}))
        elif (cut := self.cut_short(conn.agent)) is not None:
            # Cloudflare's terminal record: offered as a stream; its ack gets the error
            conn.frame(encode({"type": RESUMING, "id": cut.id, **extra}))
        else:
            conn.frame(encode({"type": RESUME_NONE, "reason": "idle", **extra}))

    def cut_short(self, key: Key) -> turns.TurnMark | None:
        """The last turn of agent *key* a restart cut short, until its next turn."""
        left = self.turns.left.get(key)
        return left[-1] if left else self.turns.reported.get(key)

    def resume_ack(self, conn: Connection, sid: Any) -> None:
        cut = self.cut_short(conn.agent)
        if cut is not None and sid == cut.id:
            conn.frame(encode({"type": RESPONSE, "id": cut.id, "done": True,
                               "body": turns.INTERRUPTED_TEXT, "error": True,
                               **({"messageIds": [cut.asked_id]} if cut.asked_id else {})}))
            return
        room = self.rooms.get(conn.agent)
        if room is None:
            return
        room.awaiting.discard(conn)
        stream = room.streams.get(sid) if isinstance(sid, str) else None
        if stream is None:
            start = room.starts.get(conn.id)
            if start is not None and sid == room.pending:  # its continuation, offered early
                start()
            return
        self.forget(conn, stream)  # (an ack again: this replay gets the one end)
        for seq, body in enumerate(list(stream.bodies)):
            conn.frame(stream.frame(body, seq, replay=True))
        skip = None if stream.continuation else stream.requester
        if stream.done and stream.transcript is not None and conn.id != skip:
            # It ended before this connection acked (a continuation of a fast model, a
            # client slow to ack): the transcript the others got at its end, then done -
            # FINALIZE_GAP after the replay, as at the end of a live stream.
            self.owe(conn, stream, FINALIZE_GAP, replay=True)
        elif stream.done:
            conn.frame(stream.end_frame(replay=True))
        else:  # the live rest follows; its end, FINALIZE_GAP after this (finish)
            frame: dict[str, Any] = {"type": RESPONSE, "id": stream.id, "body": "",
                                     "done": False, "replay": True, "replayComplete": True}
            if stream.continuation:
                frame["continuation"] = True
            conn.frame(encode(frame))
            stream.replayed[conn] = asyncio.get_running_loop().time()
