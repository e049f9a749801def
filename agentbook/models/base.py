"""The one interface every model speaks, in agentbook's own provider-neutral terms.

Messages are JSON dicts::

    {"role": "system" | "user" | "assistant" | "tool", "content": "...",
     "tool_calls": [{"id": "c1", "name": "lookup", "arguments": {...}}],   # assistant
     "tool_call_id": "c1", "name": "lookup"}                               # tool results

Tools are described as ``{"name", "description", "parameters": <JSON schema>}``.
A :class:`Model` answers with a :class:`Response` (``complete``) or a stream of
:class:`Chunk` objects ending with one whose ``response`` is set (``stream``). Adapters
for hosted providers translate to and from their wire formats; keys come from the
environment and are never stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chunk", "Model", "Response", "ToolCall"]


@dataclass
class ToolCall:
    """A model's request to call a tool."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """As a JSON dict."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass
class Response:
    """A model's complete answer."""

    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""
    finish_reason: str = "stop"

    def to_json(self) -> dict[str, Any]:
        """As a JSON dict (what the effect journal records)."""
        return {"content": self.content, "tool_calls": [c.to_json() for c in self.tool_calls],
                "usage": dict(self.usage), "model": self.model,
                "finish_reason": self.finish_reason}

    @classmethod
    def from_json(cls, data: Any) -> Response:
        """From :meth:`to_json`'s dict (or a journaled one)."""
        if isinstance(data, Response):
            return data
        calls = [ToolCall(c["id"], c["name"], dict(c.get("arguments") or {}))
                 for c in data.get("tool_calls") or []]
        return cls(data.get("content") or "", calls, dict(data.get("usage") or {}),
                   data.get("model") or "", data.get("finish_reason") or "stop")

    def message(self) -> dict[str, Any]:
        """The assistant message this response adds to a conversation."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [c.to_json() for c in self.tool_calls]
        return msg


@dataclass
class Chunk:
    """A piece of a streamed answer: ``text`` as it arrives; the last one has ``response``."""

    text: str = ""
    response: Response | None = None


class Model:
    """Base class of models. Subclasses implement :meth:`complete`, and :meth:`stream`
    when the provider streams (the default streams the complete answer word by word)."""

    name = "model"
    provider = "custom"

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Response:
        """Answer *messages*, possibly with tool calls."""
        raise NotImplementedError

    async def stream(self, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None,
                     **options: Any) -> AsyncIterator[Chunk]:
        """Answer *messages* piece by piece; the last chunk carries the full response."""
        import asyncio

        response = await self.complete(messages, tools, **options)
        words = response.content.split(" ")
        for i, word in enumerate(words):
            yield Chunk(word if i == 0 else " " + word)
            await asyncio.sleep(0)  # let a chat box draw each word
        yield Chunk("", response)

    async def aclose(self) -> None:
        """Release the model's connections (a no-op for models that hold none)."""

    def __repr__(self) -> str:
        return f"<{self.provider} model {self.name!r}>"
