"""OpenAI's Chat Completions API through the official ``openai`` SDK (``AsyncOpenAI``).

The same wire code serves every OpenAI-compatible host (Ollama, vLLM, llama.cpp's server):
give a ``base_url``. The SDK is imported when a model is made, never by ``import agentbook``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ...errors import ModelAuthError, ModelError, ModelResponseError
from ..base import Chunk, Response, ToolCall
from . import sdk as _sdk

__all__ = ["OpenAIModel"]

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
           "function_call": "tool_calls", "content_filter": "content_filter"}


class OpenAIModel(_sdk.SDKModel):
    """A chat model served by OpenAI, or by any host that speaks its Chat Completions API.

    Args:
        model: The model name, such as ``"gpt-4o-mini"``.
        api_key: The key; by default ``OPENAI_API_KEY`` is read when the first call is made.
            It is kept in memory only: never shown, pickled or journaled.
        base_url: Another host's ``.../v1`` URL (Ollama, vLLM, llama.cpp, a proxy).
        provider: The provider name errors and history carry.
        timeout: Seconds to wait for the provider before :class:`ModelTimeoutError`.
        **client_options: Passed to ``openai.AsyncOpenAI`` (``max_retries``, ``organization``,
            ``default_headers``, ...).

    Raises:
        ModelNotInstalledError: The ``openai`` package is missing.
    """

    provider = "openai"
    _package = ("openai", "openai", "openai")

    def __init__(self, model: str, api_key: str | None = None, base_url: str | None = None,
                 provider: str = "openai", timeout: float = 60, **client_options: Any) -> None:
        super().__init__(model, api_key, base_url, timeout, client_options)
        self.provider = provider

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Response:
        """Answer *messages* (see :class:`~agentbook.models.base.Model`)."""
        request = self._request(messages, tools, options)
        with _sdk.translated(self._translate) as phase:
            completion = await self._clients.get().chat.completions.create(**request)
            phase.started = True
            return self._response(completion)

    async def stream(self, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None,
                     **options: Any) -> AsyncIterator[Chunk]:
        """Stream the answer: text as it arrives, then one chunk with the full response."""
        request = self._request(messages, tools, options)
        request["stream"] = True
        request.setdefault("stream_options", {"include_usage": True})
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: dict[str, int] = {}
        model, finish = self.name, None
        with _sdk.translated(self._translate) as phase:
            stream = await self._clients.get().chat.completions.create(**request)
            phase.started = True
            try:
                async for chunk in stream:
                    model = getattr(chunk, "model", None) or model
                    if getattr(chunk, "usage", None):
                        usage = _usage(chunk.usage)
                    for choice in getattr(chunk, "choices", None) or []:
                        if choice.index:
                            continue
                        delta = choice.delta
                        piece = (delta.content or "") + (getattr(delta, "refusal", None) or "")
                        if piece:
                            text.append(piece)
                            yield Chunk(piece)
                        for part in delta.tool_calls or []:
                            index = part.index if part.index is not None else len(calls)
                            call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                            call["id"] = call["id"] or part.id or ""
                            function = part.function
                            if function is not None:
                                call["name"] = call["name"] or function.name or ""
                                call["arguments"] += function.arguments or ""
                        if choice.finish_reason:
                            finish = choice.finish_reason
            finally:
                await stream.close()
        if finish is None:
            raise ModelResponseError(f"{_sdk.label(self.provider)}'s stream ended before the model "
                                     "finished; try again", provider=self.provider)
        tool_calls = [ToolCall(c["id"] or f"call_{i}", c["name"],
                               _sdk.arguments(c["arguments"], self.provider, c["name"]))
                      for i, c in sorted(calls.items())]
        yield Chunk("", Response("".join(text), tool_calls, usage, model,
                                 _finish(finish, bool(tool_calls))))

    # -- the wire ---------------------------------------------------------------------
    def _connect(self) -> Any:
        openai = _sdk.require("openai", "openai", "openai")
        key = _sdk.key_from(self._api_key, "OPENAI_API_KEY")
        if not key:
            raise ModelAuthError(f"No API key for {_sdk.label(self.provider)}: set OPENAI_API_KEY or "
                                 "pass api_key= to the model.", provider=self.provider)
        return openai.AsyncOpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout,
                                  **self._client_options)

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 options: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.name,
                                   "messages": [_message(m) for m in messages], **options}
        if tools:
            request["tools"] = [{"type": "function", "function": {
                "name": t["name"], "description": t.get("description") or "",
                "parameters": t.get("parameters") or {"type": "object", "properties": {}}}}
                for t in tools]
        return request

    def _response(self, completion: Any) -> Response:
        choices = getattr(completion, "choices", None)
        if not choices:
            raise ModelResponseError(f"{_sdk.label(self.provider)} answered without any choices: "
                                     f"{str(completion)[:200]}", provider=self.provider)
        message = choices[0].message
        calls = [ToolCall(c.id, c.function.name,
                          _sdk.arguments(c.function.arguments, self.provider, c.function.name))
                 for c in message.tool_calls or [] if getattr(c, "function", None) is not None]
        content = message.content or getattr(message, "refusal", None) or ""
        usage = _usage(completion.usage) if getattr(completion, "usage", None) else {}
        return Response(content, calls, usage, completion.model or self.name,
                        _finish(choices[0].finish_reason, bool(calls)))

    def _translate(self, exc: Exception, phase: _sdk.Phase) -> ModelError | None:
        import openai

        provider = self.provider
        if isinstance(exc, openai.APITimeoutError):
            return _sdk.timed_out(provider)
        if isinstance(exc, openai.APIStatusError):
            body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
            message: str = body["message"] if isinstance(body.get("message"), str) else exc.message
            return _sdk.api_error(provider, exc.status_code, message,
                                  key_hint=" (OPENAI_API_KEY or api_key=)")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            if cause is not None and (error := _sdk.transport_error(cause, provider, phase.started)):
                return error
            return ModelError(f"could not reach {_sdk.label(provider)}: {exc.message}",
                              provider=provider)
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            return _sdk.api_error(provider, None, exc.message)
        if isinstance(exc, openai.OpenAIError):
            return ModelError(f"{_sdk.label(provider)}: {exc}", provider=provider)
        return _sdk.transport_error(exc, provider, phase.started)


def _message(msg: dict[str, Any]) -> dict[str, Any]:
    role = msg.get("role")
    if role == "tool":
        return {"role": "tool", "tool_call_id": msg.get("tool_call_id") or "",
                "content": _text(msg.get("content"))}
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": _text(msg.get("content")) or None}
        if msg.get("tool_calls"):
            out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                "name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
                for c in msg["tool_calls"]]
        return out
    return {"role": role, "content": _text(msg.get("content"))}


def _text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _usage(usage: Any) -> dict[str, int]:
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    return {"input_tokens": prompt, "output_tokens": completion,
            "total_tokens": usage.total_tokens or prompt + completion}


def _finish(reason: str | None, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    return _FINISH.get(reason or "stop", reason or "stop")
