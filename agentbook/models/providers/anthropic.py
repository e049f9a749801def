"""Anthropic's Messages API through the official ``anthropic`` SDK (``AsyncAnthropic``).

System messages become the top-level ``system`` text, tool calls ``tool_use`` blocks and
tool results ``tool_result`` blocks in one user turn. The SDK is imported when a model is
made, never by ``import agentbook``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ...errors import ModelAuthError, ModelError, ModelResponseError
from ..base import Chunk, Response, ToolCall
from . import sdk as _sdk

__all__ = ["AnthropicModel"]

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
           "tool_use": "tool_calls", "max_tokens": "length",
           "model_context_window_exceeded": "length", "refusal": "content_filter"}
_AUTH = {"authentication_error", "permission_error"}
_RATE = {"rate_limit_error"}


class AnthropicModel(_sdk.SDKModel):
    """A Claude model through Anthropic's Messages API.

    Args:
        model: The model name, such as ``"claude-sonnet-4-5"``.
        api_key: The key; by default ``ANTHROPIC_API_KEY`` is read when the first call is
            made. It is kept in memory only: never shown, pickled or journaled.
        base_url: Another endpoint (a proxy or gateway).
        timeout: Seconds to wait for the provider before :class:`ModelTimeoutError`.
        max_tokens: The answer's length limit, which Anthropic requires (``max_tokens=`` per
            call overrides it).
        **client_options: Passed to ``anthropic.AsyncAnthropic`` (``max_retries``,
            ``default_headers``, ...).

    Raises:
        ModelNotInstalledError: The ``anthropic`` package is missing.
    """

    provider = "anthropic"
    _package = ("anthropic", "anthropic", "anthropic")

    def __init__(self, model: str, api_key: str | None = None, base_url: str | None = None,
                 timeout: float = 60, max_tokens: int = 4096, **client_options: Any) -> None:
        super().__init__(model, api_key, base_url, timeout, client_options)
        self.max_tokens = max_tokens

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Response:
        """Answer *messages* (see :class:`~agentbook.models.base.Model`)."""
        request = self._request(messages, tools, options)
        with _sdk.translated(self._translate) as phase:
            message = await self._clients.get().messages.create(**request)
            phase.started = True
            blocks = getattr(message, "content", None)
            if not isinstance(blocks, list):
                raise ModelResponseError(f"Anthropic answered without content: {str(message)[:200]}",
                                         provider="anthropic")
            text = "".join(b.text for b in blocks if b.type == "text")
            calls = [ToolCall(b.id, b.name, _sdk.arguments(b.input, "anthropic", b.name))
                     for b in blocks if b.type == "tool_use"]
            return Response(text, calls, _usage(message.usage), message.model or self.name,
                            _finish(message.stop_reason, bool(calls)))

    async def stream(self, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None,
                     **options: Any) -> AsyncIterator[Chunk]:
        """Stream the answer: text as it arrives, then one chunk with the full response."""
        request = self._request(messages, tools, options)
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        usage: dict[str, int] = {}
        model, finish, stopped = self.name, None, False
        with _sdk.translated(self._translate) as phase:
            stream = await self._clients.get().messages.create(**request, stream=True)
            phase.started = True
            try:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        model = event.message.model or model
                        usage = _usage(event.message.usage, usage)
                    elif kind == "content_block_start":
                        block = event.content_block
                        blocks[event.index] = {"type": block.type, "id": getattr(block, "id", ""),
                                               "name": getattr(block, "name", ""), "json": "",
                                               "input": getattr(block, "input", None)}
                    elif kind == "content_block_delta" and event.index not in blocks:
                        raise ModelResponseError("Anthropic streamed a delta for a content block "
                                                 "it never started", provider="anthropic")
                    elif kind == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta":
                            text.append(delta.text)
                            yield Chunk(delta.text)
                        elif delta.type == "input_json_delta":
                            blocks[event.index]["json"] += delta.partial_json
                    elif kind == "message_delta":
                        finish = event.delta.stop_reason or finish
                        usage = _usage(event.usage, usage)
                    elif kind == "message_stop":
                        stopped = True
            finally:
                await stream.close()
        if not stopped:
            raise ModelResponseError("Anthropic's stream ended before the model finished; try again",
                                     provider="anthropic")
        calls = [ToolCall(b["id"], b["name"],
                          _sdk.arguments(b["json"] or b["input"], "anthropic", b["name"]))
                 for _, b in sorted(blocks.items()) if b["type"] == "tool_use"]
        yield Chunk("", Response("".join(text), calls, usage, model, _finish(finish, bool(calls))))

    # -- the wire ---------------------------------------------------------------------
    def _connect(self) -> Any:
        anthropic = _sdk.require("anthropic", "anthropic", "anthropic")
        key = _sdk.key_from(self._api_key, "ANTHROPIC_API_KEY")
        if not key:
            raise ModelAuthError("No API key for Anthropic: set ANTHROPIC_API_KEY or pass api_key= "
                                 "to the model.", provider="anthropic")
        return anthropic.AsyncAnthropic(api_key=key, base_url=self.base_url, timeout=self.timeout,
                                        **self._client_options)

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 options: dict[str, Any]) -> dict[str, Any]:
        system = [_text(m.get("content")) for m in messages if m.get("role") == "system"]
        turns: list[dict[str, Any]] = []
        for msg in messages:
            if msg.get("role") == "system":
                continue
            role, blocks = _turn(msg)
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        request: dict[str, Any] = {"model": self.name, "max_tokens": self.max_tokens,
                                   "messages": turns}
        if system:
            request["system"] = "\n\n".join(system)
        if tools:
            request["tools"] = [{"name": t["name"], "description": t.get("description") or "",
                                 "input_schema": t.get("parameters") or {"type": "object",
                                                                         "properties": {}}}
                                for t in tools]
        options = dict(options)
        if "stop" in options:
            stop = options.pop("stop")
            options["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        return {**request, **options}

    def _translate(self, exc: Exception, phase: _sdk.Phase) -> ModelError | None:
        import anthropic

        if isinstance(exc, anthropic.APITimeoutError):
            return _sdk.timed_out("anthropic")
        if isinstance(exc, anthropic.APIStatusError):
            body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
            detail: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
            kind = detail.get("type")
            status = exc.status_code if exc.status_code >= 400 else None  # 200: an error event
            message = getattr(exc, "api_message", None) or detail.get("message") or exc.message
            return _sdk.api_error("anthropic", status, message, code=kind, auth=kind in _AUTH,
                                  rate=kind in _RATE, key_hint=" (ANTHROPIC_API_KEY or api_key=)")
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__
            if cause is not None and (error := _sdk.transport_error(cause, "anthropic",
                                                                    phase.started)):
                return error
            return ModelError(f"could not reach Anthropic: {exc.message}", provider="anthropic")
        if isinstance(exc, anthropic.AnthropicError):
            return ModelError(f"Anthropic: {exc}", provider="anthropic")
        return _sdk.transport_error(exc, "anthropic", phase.started)


def _turn(msg: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    role = msg.get("role")
    content = msg.get("content")
    if role == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": msg.get("tool_call_id") or "",
                         "content": _text(content)}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": _text(content)}] if _text(content) \
        else []
    if role == "assistant":
        blocks += [{"type": "tool_use", "id": c["id"], "name": c["name"],
                    "input": c.get("arguments") or {}} for c in msg.get("tool_calls") or []]
        return "assistant", blocks
    return "user", blocks


def _text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _usage(usage: Any, before: dict[str, int] | None = None) -> dict[str, int]:
    before = before or {}
    if usage is None:
        return before
    cached = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
        getattr(usage, "cache_read_input_tokens", None) or 0)
    given = getattr(usage, "input_tokens", None)
    inputs = given + cached if given is not None else before.get("input_tokens", 0)
    outputs = getattr(usage, "output_tokens", None)
    outputs = outputs if outputs is not None else before.get("output_tokens", 0)
    return {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs}


def _finish(reason: str | None, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    return _FINISH.get(reason or "end_turn", reason or "stop")
