"""The chat side of ``ab.connect``: the frames Cloudflare's chat client speaks, from Python.

    client = await ab.connect(server.url_for(Support, "alice"), token=server.token)
    async for chunk in client.stream_chat("what is the weather in Paris"):
        print(chunk, end="")                # ChatChunk: text, tool calls, results, approvals
    await client.chat("and in Rome?")       # the whole answer
    client.messages                         # the conversation (AI SDK UIMessages), kept in sync
    await client.decide_tool(call_id, approved=True)   # a gated call, the inbox's own approval
    await client.clear_chat()

Client tools run here: pass ``client_tools=[fn, ...]`` (or ``{name: fn}``); the model sees
their schemas (from type hints, as ``@ab.tool``), a call to one ends the server's turn, the
function runs in this process, its result goes back (``cf_agent_tool_result``) and the
model's continuation streams on in the same ``stream_chat``. Leaving the ``async for``
early cancels the turn (``cf_agent_chat_request_cancel``): the server stores what was said.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..chat.agent import ChatChunk
from ..chat.tools import as_tool
from ..errors import RemoteError

__all__ = ["ChatLink"]

_DONE = object()


class ChatLink:
    """The chat frames of one :class:`~agentbook.serve.client.AgentClient`."""

    def __init__(self, send: Callable[[dict], Awaitable[None]]) -> None:
        self._send = send
        #: The conversation as the server last sent it (UIMessages).
        self.messages: list[dict[str, Any]] = []
        self._streams: dict[str, asyncio.Queue] = {}
        #: The queue a continuation of ours (after a client tool's result) should feed.
        self._continuing: asyncio.Queue | None = None

    # -- frames from the server -----------------------------------------------------------
    def dispatch(self, frame: dict) -> bool:
        """Take a chat frame; whether it was one."""
        kind = frame.get("type")
        if kind == "cf_agent_chat_messages":
            if isinstance(frame.get("messages"), list):
                self.messages = frame["messages"]
        elif kind == "cf_agent_chat_clear":
            self.messages = []
        elif kind == "cf_agent_message_updated":
            msg = frame.get("message") or {}
            self.messages = [msg if m.get("id") == msg.get("id") else m for m in self.messages]
        elif kind == "cf_agent_use_chat_response":
            queue = self._streams.get(str(frame.get("id")))
            if queue is None and frame.get("continuation") and self._continuing is not None:
                queue = self._streams[frame["id"]] = self._continuing
                self._continuing = None
            if queue is not None:
                queue.put_nowait(frame)
        elif kind in ("cf_agent_stream_resuming", "cf_agent_stream_resume_none",
                      "cf_agent_stream_pending"):
            pass  # (this client is never offered a resume it did not ask for)
        else:
            return False
        return True

    # -- turns --------------------------------------------------------------------------
    async def stream(self, text: str, client_tools: list | dict | None = None,
                     timeout: float | None = None) -> AsyncIterator[ChatChunk]:
        """See :meth:`AgentClient.stream_chat`."""
        tools = _tools(client_tools)
        schemas = [{"name": name, "description": t.description, "parameters": t.parameters}
                   for name, t in tools.items()]
        user = {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}
        # (only the new message: the server keeps the conversation and reads a request's
        # trailing user messages only, so the whole list would be JSON for nothing)
        body: dict[str, Any] = {"messages": [user], "trigger": "submit-message"}
        if schemas:
            body["clientTools"] = schemas
        rid = uuid.uuid4().hex[:8]
        # (a requester gets no transcript of its own turn, as in Cloudflare: keep ours here)
        reply: dict[str, Any] = {"id": "", "role": "assistant", "parts": []}
        self.messages = [*self.messages, user, reply]
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = queue
        finished = False
        try:
            await self._send({"type": "cf_agent_use_chat_request", "id": rid,
                              "init": {"method": "POST", "body": json.dumps(body)}})
            while True:
                calls: list[dict] = []
                async for chunk in self._chunks(queue, timeout, calls, reply):
                    yield chunk
                asked = [c for c in calls if c["name"] in tools]
                if not asked:
                    finished = True
                    return
                self._continuing = queue  # the continuation after our results feeds on here
                for call in asked:
                    output, error = await _run(tools[call["name"]].fn, call["arguments"])
                    frame = {"type": "cf_agent_tool_result", "toolCallId": call["id"],
                             "toolName": call["name"], "output": output,
                             "autoContinue": call is asked[-1] and error is None,
                             "clientTools": schemas}
                    if error is not None:
                        frame.update(state="output-error", errorText=error)
                    await self._send(frame)
                    if error is not None:
                        finished = True
                        return
        finally:
            ids = [k for k, q in self._streams.items() if q is queue]
            for k in ids:
                del self._streams[k]
            if self._continuing is queue:
                self._continuing = None
            if not finished and ids:
                try:
                    await self._send({"type": "cf_agent_chat_request_cancel", "id": ids[-1]})
                except Exception:  # (the connection is gone, websockets' own errors too)
                    pass

    async def _chunks(self, queue: asyncio.Queue, timeout: float | None, calls: list[dict],
                      reply: dict[str, Any]) -> AsyncIterator[ChatChunk]:
        """One stream's chunks, until its done frame (client tool calls go in *calls*; the
        answer is kept in *reply*, a UIMessage)."""
        parts = reply["parts"]
        while True:
            if not queue.empty():  # (no timer for a frame that is here)
                frame = queue.get_nowait()
            elif timeout is None:
                frame = await queue.get()
            else:
                frame = await asyncio.wait_for(queue.get(), timeout)
            if frame is _DONE:
                raise ConnectionError("the connection to the agent closed during the turn")
            body = frame.get("body") or ""
            if frame.get("error"):
                raise RemoteError(body or "the turn failed", "ChatError")
            if body:
                chunk = json.loads(body)
                kind = chunk.get("type")
                if kind == "start" and chunk.get("messageId"):
                    reply["id"] = chunk["messageId"]
                elif kind == "text-start":
                    parts.append({"type": "text", "text": ""})
                elif kind == "text-delta":
                    if parts and parts[-1]["type"] == "text":
                        parts[-1]["text"] += chunk.get("delta") or ""
                    yield ChatChunk(chunk.get("delta") or "")
                elif kind == "tool-input-available":
                    call = {"id": chunk["toolCallId"], "name": chunk["toolName"],
                            "arguments": chunk.get("input") or {}}
                    calls.append(call)
                    parts.append({"type": f"tool-{call['name']}", "toolCallId": call["id"],
                                  "state": "input-available", "input": call["arguments"]})
                    yield ChatChunk("", "tool_call", call)
                elif kind == "tool-output-available":
                    calls[:] = [c for c in calls if c["id"] != chunk["toolCallId"]]
                    for part in parts:
                        if part.get("toolCallId") == chunk["toolCallId"]:
                            part.update(state="output-available", output=chunk.get("output"))
                    yield ChatChunk("", "tool_result", {"id": chunk["toolCallId"],
                                                        "result": chunk.get("output")})
                elif kind == "tool-approval-request":
                    calls[:] = [c for c in calls if c["id"] != chunk["toolCallId"]]
                    yield ChatChunk("", "approval", {"approval": chunk["approvalId"],
                                                     "id": chunk["toolCallId"]})
                elif kind == "error":
                    raise RemoteError(chunk.get("errorText") or "the turn failed", "ChatError")
            if frame.get("done"):
                return

    def closed(self) -> None:
        """The connection ended: every waiting turn fails."""
        for queue in set(self._streams.values()):
            queue.put_nowait(_DONE)


def _tools(client_tools: list | dict | None) -> dict[str, Any]:
    if not client_tools:
        return {}
    if isinstance(client_tools, dict):
        return {name: as_tool(fn, name=name) for name, fn in client_tools.items()}
    found = [as_tool(fn) for fn in client_tools]
    return {t.name: t for t in found}


async def _run(fn: Callable[..., Any], arguments: dict) -> tuple[Any, str | None]:
    try:
        value = fn(**arguments)
        if inspect.isawaitable(value):
            value = await value
        json.dumps(value, allow_nan=False)
        return value, None
    except Exception as exc:  # the model hears about it
        return None, f"{type(exc).__name__}: {exc}"
