"""The AI SDK's UI shapes of a chat agent's conversation: what Cloudflare's chat client reads.

Cloudflare's ``useAgentChat`` (and the AI SDK's ``Chat``) keep a conversation as
*UIMessages* - ``{id, role, parts: [...]}`` - and receive a turn as *UIMessageChunks*
(``start``, ``start-step``, ``text-delta``, ``tool-input-available``, ``finish``...).
An agent's store keeps it as rows (:mod:`agentbook.store.messages`): a user row, then the
assistant's rows and its tool rows. This module translates both ways, and nothing else
(the frames are :mod:`agentbook.serve.chat`'s):

- :func:`ui_messages`: stored rows -> UIMessages. A user row is one message; the rows
  after it (assistant text, tool calls, tool results) are one assistant message, its id
  the first assistant row's. A gated call's parts carry its approval (``approval-requested``
  while pending; ``output-available`` or ``output-denied`` once a person decided - the
  decision's own rows, ``<call>-approved`` / ``-rejected`` / ``-expired``, fold into the
  original call's part). A client tool call still waiting for its result is
  ``input-available``. A turn a restart cut short (:mod:`agentbook.chat.turns`) is an
  assistant message with ``metadata: {"finishReason": "error", "interrupted": true}``
  and no parts of its own.
- :class:`UIStream`: one turn's :class:`~agentbook.chat.agent.ChatChunk` pieces -> chunks.
- :func:`rows_from_ui`: UIMessages a client sets -> rows (text, tool calls, results).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store.messages import Message

#: The ``name`` of the assistant row of a turn a restart cut short (agentbook.chat.turns).
INTERRUPTED = "interrupted"

__all__ = ["DECIDED", "UIStream", "original_call", "rows_from_ui", "text_of", "ui_messages"]

#: The suffixes of the rows a person's decision on a gated tool call adds (agent.py).
DECIDED = ("-approved", "-rejected", "-expired")


def original_call(call_id: str) -> tuple[str, str | None]:
    """``(the gated call's id, "approved" | "rejected" | "expired")`` for a decision's own
    call id, ``(call_id, None)`` for any other."""
    for suffix in DECIDED:
        if call_id.endswith(suffix):
            return call_id[: -len(suffix)], suffix[1:]
    return call_id, None


def text_of(message: Any) -> str:
    """The text of a UIMessage (its text parts, joined)."""
    parts = message.get("parts") if isinstance(message, dict) else None
    return "".join(p.get("text") or "" for p in parts or ()
                   if isinstance(p, dict) and p.get("type") == "text")


def _load(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def ui_messages(rows: list[Message]) -> list[dict[str, Any]]:
    """The conversation as AI SDK UIMessages (the summary row of folded turns is left out)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    tools: dict[str, dict[str, Any]] = {}  # toolCallId -> its part, in the current message
    part: dict[str, Any] | None
    for row in rows:
        if row.role == "summary":
            continue
        if row.role in ("user", "system"):
            out.append({"id": row.id, "role": row.role,
                        "parts": [{"type": "text", "text": row.content, "state": "done"}]})
            current = None
            continue
        if current is None:
            current = {"id": row.id, "role": "assistant", "parts": []}
            tools = {}
            out.append(current)
        parts = current["parts"]
        if row.role == "assistant" and row.name == INTERRUPTED and not row.content:
            current["metadata"] = {"finishReason": "error", "interrupted": True}
        elif row.role == "assistant":
            calls = _load(row.tool_calls) or []
            if any(original_call(c.get("id", ""))[1] is None for c in calls) or row.content:
                parts.append({"type": "step-start"})
            if row.content:
                parts.append({"type": "text", "text": row.content, "state": "done"})
            for call in calls:
                cid, decided = original_call(call.get("id", ""))
                if decided is not None and cid in tools:
                    tools[call["id"]] = tools[cid]  # its result lands on the original part
                    continue
                part = {"type": f"tool-{call.get('name')}", "toolCallId": cid,
                        "state": "input-available", "input": call.get("arguments") or {}}
                tools[cid] = part
                parts.append(part)
            if not calls:
                current["metadata"] = {"finishReason": "stop"}
            else:
                current["metadata"] = {"finishReason": "tool-calls"}
        elif row.role == "tool":
            part = tools.get(row.tool_call_id or "")
            if part is None:
                continue
            output = _load(row.content)
            _, decided = original_call(row.tool_call_id or "")
            if isinstance(output, dict) and output.get("status") == "awaiting approval":
                part["state"] = "approval-requested"
                part["approval"] = {"id": output.get("approval")}
            elif decided == "approved":
                part["state"] = "output-available"
                part["output"] = output
                part["approval"] = {**part.get("approval", {}), "approved": True}
            elif decided is not None:
                part["state"] = "output-denied"
                reason = output.get("reason") if isinstance(output, dict) else None
                part["approval"] = {**part.get("approval", {}), "approved": False,
                                    **({"reason": reason} if reason else {})}
            else:
                part["state"] = "output-available"
                part["output"] = output
    return out


class UIStream:
    """Turns one turn's pieces into AI SDK UIMessageChunks (dicts), in order.

    Call :meth:`start`, then :meth:`step` before each model call, :meth:`piece` for every
    :class:`~agentbook.chat.agent.ChatChunk`, and :meth:`finish` (or :meth:`abort`) last.
    Each returns the chunks to send."""

    __slots__ = ("in_step", "n", "text")

    def __init__(self) -> None:
        self.in_step = False
        self.text: str | None = None  # the open text part's id
        self.n = 0

    def start(self, message_id: str | None) -> list[dict[str, Any]]:
        """The turn's first chunk (no ``messageId`` on a continuation)."""
        return [{"type": "start", "messageId": message_id} if message_id else {"type": "start"}]

    def _close_text(self, out: list[dict[str, Any]]) -> None:
        if self.text is not None:
            out.append({"type": "text-end", "id": self.text})
            self.text = None

    def _open_step(self, out: list[dict[str, Any]]) -> None:
        if not self.in_step:
            out.append({"type": "start-step"})
            self.in_step = True

    def step(self) -> list[dict[str, Any]]:
        """A model call begins (a step ends first, if one is open)."""
        out: list[dict[str, Any]] = []
        self._close_text(out)
        if self.in_step:
            out.append({"type": "finish-step"})
            self.in_step = False
        self._open_step(out)
        return out

    def piece(self, kind: str, text: str, data: Any) -> list[dict[str, Any]]:
        """One :class:`~agentbook.chat.agent.ChatChunk` (its ``kind``, ``text``, ``data``)."""
        out: list[dict[str, Any]] = []
        self._open_step(out)
        if kind == "text":
            if not text:
                return out
            if self.text is None:
                self.n += 1
                self.text = f"t{self.n}"
                out.append({"type": "text-start", "id": self.text})
            out.append({"type": "text-delta", "id": self.text, "delta": text})
            return out
        self._close_text(out)
        if kind == "tool_call":
            out.append({"type": "tool-input-available", "toolCallId": data["id"],
                        "toolName": data["name"], "input": data.get("arguments") or {}})
        elif kind == "tool_result":
            cid, _ = original_call(data["id"])
            out.append({"type": "tool-output-available", "toolCallId": cid,
                        "output": data.get("result")})
        elif kind == "approval" and data.get("id"):
            out.append({"type": "tool-approval-request", "approvalId": data["approval"],
                        "toolCallId": data["id"]})
        return out

    def finish(self, reason: str) -> list[dict[str, Any]]:
        """The turn's last chunks; *reason* is ``"stop"`` or ``"tool-calls"``."""
        out: list[dict[str, Any]] = []
        self._close_text(out)
        if self.in_step:
            out.append({"type": "finish-step"})
            self.in_step = False
        out.append({"type": "finish", "messageMetadata": {"finishReason": reason}})
        return out

    def abort(self) -> list[dict[str, Any]]:
        """The last chunks of a turn stopped by its client."""
        out: list[dict[str, Any]] = []
        self._close_text(out)
        out.append({"type": "abort"})
        return out


def rows_from_ui(messages: list[Any]) -> list[tuple[str, str, str, str | None, str | None,
                                                    str | None]]:
    """Rows ``(id, role, content, tool_calls JSON, tool_call_id, name)`` for UIMessages a
    client sets: user and assistant text, tool calls and their outputs; other parts are
    left out."""
    rows: list[tuple[str, str, str, str | None, str | None, str | None]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
            continue
        mid = str(msg.get("id") or f"ui-{i}")
        if msg["role"] != "assistant":
            rows.append((mid, msg["role"], text_of(msg), None, None, None))
            continue
        calls, results = [], []
        for part in msg.get("parts") or ():
            if not isinstance(part, dict) or not str(part.get("type", "")).startswith("tool-"):
                continue
            name, cid = part["type"][5:], str(part.get("toolCallId") or "")
            calls.append({"id": cid, "name": name, "arguments": part.get("input") or {}})
            if part.get("state") == "output-available":
                results.append((cid, name, json.dumps(part.get("output"))))
        rows.append((mid, "assistant", text_of(msg), json.dumps(calls) if calls else None,
                     None, None))
        for cid, name, output in results:
            rows.append((f"{mid}-{cid}", "tool", output, None, cid, name))
    return rows
