"""Google's Gemini API through the official ``google-genai`` SDK (``genai.Client(...).aio``).

Assistant turns become ``model`` contents with ``functionCall`` parts, tool results one
``user`` content of ``functionResponse`` parts. Gemini may not name its function calls, so
calls without an id get one here (and it is never sent back). Gemini 3 wants each call's
``thoughtSignature`` back: the model remembers them in memory, and a call it never saw
(history from before a restart, or from another model) gets Google's documented
placeholder. The SDK is imported when a model is made, never by ``import agentbook``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from ...errors import ModelAuthError, ModelError, ModelResponseError
from ..base import Chunk, Response, ToolCall
from . import sdk as _sdk

__all__ = ["GeminiModel"]

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
           "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
           "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
           "IMAGE_SAFETY": "content_filter", "IMAGE_PROHIBITED_CONTENT": "content_filter"}
_BAD_CALL = {"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"}
# Google's documented stand-in for a call whose signature is unknown (it is its wire form).
_SKIP_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
_REMEMBERED = 4096


class GeminiModel(_sdk.SDKModel):
    """A Gemini model through the Gemini Developer API.

    Args:
        model: The model name, such as ``"gemini-2.5-flash"``.
        api_key: The key; by default ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``) is read when
            the first call is made. It is kept in memory only: never shown, pickled or journaled.
        base_url: Another endpoint (a proxy or gateway).
        timeout: Seconds to wait for the provider before :class:`ModelTimeoutError`.
        **client_options: Passed to ``google.genai.Client`` (``http_options``, ``vertexai``,
            ``project``, ``location``, ...).

    Raises:
        ModelNotInstalledError: The ``google-genai`` package is missing.
    """

    provider = "gemini"
    _package = ("google.genai", "gemini", "google-genai")

    def __init__(self, model: str, api_key: str | None = None, base_url: str | None = None,
                 timeout: float = 60, **client_options: Any) -> None:
        super().__init__(model, api_key, base_url, timeout, client_options)
        self._calls: OrderedDict[str, tuple[bytes | None, bool]] = OrderedDict()

    async def _close_client(self, client: Any) -> None:
        await client.aio.aclose()
        client.close()

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Response:
        """Answer *messages* (see :class:`~agentbook.models.base.Model`)."""
        contents, config = self._request(messages, tools, options)
        with _sdk.translated(self._translate) as phase:
            answer = await self._clients.get().aio.models.generate_content(
                model=self.name, contents=contents, config=config)
            phase.started = True
            text, calls, finish = self._read(answer)
            if finish is None:
                finish = _blocked(answer)
            return Response("".join(text), calls, _usage(answer.usage_metadata),
                            answer.model_version or self.name, _finish(finish, bool(calls)))

    async def stream(self, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None,
                     **options: Any) -> AsyncIterator[Chunk]:
        """Stream the answer: text as it arrives, then one chunk with the full response."""
        contents, config = self._request(messages, tools, options)
        text: list[str] = []
        calls: list[ToolCall] = []
        usage: dict[str, int] = {}
        model, finish = self.name, None
        with _sdk.translated(self._translate) as phase:
            stream = await self._clients.get().aio.models.generate_content_stream(
                model=self.name, contents=contents, config=config)
            phase.started = True
            try:
                async for answer in stream:
                    pieces, more, done = self._read(answer)
                    for piece in pieces:
                        text.append(piece)
                        yield Chunk(piece)
                    calls += more
                    finish = done or finish or _blocked(answer)
                    usage = _usage(answer.usage_metadata) or usage
                    model = answer.model_version or model
            finally:
                await stream.aclose()
        if finish is None:
            raise ModelResponseError("Gemini's stream ended before the model finished; try again",
                                     provider="gemini")
        yield Chunk("", Response("".join(text), calls, usage, model, _finish(finish, bool(calls))))

    # -- the wire ---------------------------------------------------------------------
    def _connect(self) -> Any:
        genai = _sdk.require("google.genai", "gemini", "google-genai")
        options = dict(self._client_options)
        cloud = options.get("vertexai") or options.get("enterprise")
        key = _sdk.key_from(self._api_key, "GEMINI_API_KEY", "GOOGLE_API_KEY")
        if not key and not cloud:
            raise ModelAuthError("No API key for Gemini: set GEMINI_API_KEY (or GOOGLE_API_KEY) or "
                                 "pass api_key= to the model.", provider="gemini")
        given = options.pop("http_options", None) or {}
        http = (genai.types.HttpOptions.model_validate(given) if isinstance(given, dict)
                else given.model_copy())
        http.timeout = http.timeout or int(self.timeout * 1000)
        http.base_url = self.base_url or http.base_url
        if not cloud:
            options.setdefault("vertexai", False)
        return genai.Client(api_key=key or None, http_options=http, **options)

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 options: dict[str, Any]) -> tuple[list[Any], Any]:
        types = _sdk.require("google.genai", "gemini", "google-genai").types

        names = {c["id"]: c["name"] for m in messages for c in m.get("tool_calls") or []}
        system = [_text(m.get("content")) for m in messages if m.get("role") == "system"]
        contents: list[Any] = []
        for msg in messages:
            role = msg.get("role")
            if role == "system":
                continue
            parts = self._parts(msg, names, types)
            if not parts:
                continue
            wire_role = "model" if role == "assistant" else "user"
            if contents and contents[-1].role == wire_role:
                contents[-1].parts.extend(parts)
            else:
                contents.append(types.Content(role=wire_role, parts=parts))
        settings = dict(options)
        if "max_tokens" in settings:
            settings["max_output_tokens"] = settings.pop("max_tokens")
        if "stop" in settings:
            stop = settings.pop("stop")
            settings["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        settings.setdefault("automatic_function_calling",
                            types.AutomaticFunctionCallingConfig(disable=True))
        if system:
            settings["system_instruction"] = "\n\n".join(system)
        if tools:
            settings["tools"] = [types.Tool(function_declarations=[types.FunctionDeclaration(
                name=t["name"], description=t.get("description") or "",
                parameters_json_schema=t.get("parameters") or {"type": "object", "properties": {}})
                for t in tools])]
        return contents, types.GenerateContentConfig(**settings)

    def _parts(self, msg: dict[str, Any], names: dict[str, str], types: Any) -> list[Any]:
        content = _text(msg.get("content"))
        if msg.get("role") == "tool":
            call_id = msg.get("tool_call_id") or ""
            name = msg.get("name") or names.get(call_id) or "tool"
            known = self._calls.get(call_id)
            return [types.Part(function_response=types.FunctionResponse(
                id=call_id if known and known[1] else None, name=name, response=_result(content)))]
        parts = [types.Part(text=content)] if content else []
        for i, call in enumerate(msg.get("tool_calls") or []):
            known = self._calls.get(call["id"])
            signature = known[0] if known else (_SKIP_SIGNATURE if i == 0 else None)
            parts.append(types.Part(
                function_call=types.FunctionCall(id=call["id"] if known and known[1] else None,
                                                 name=call["name"], args=call.get("arguments") or {}),
                thought_signature=signature))
        return parts

    def _read(self, answer: Any) -> tuple[list[str], list[ToolCall], str | None]:
        """Text pieces, tool calls and finish reason of one (possibly partial) answer."""
        candidates = answer.candidates or []
        if not candidates:
            return [], [], None
        candidate = candidates[0]
        reason = candidate.finish_reason
        reason = getattr(reason, "value", reason)
        if reason in _BAD_CALL:
            detail = f": {candidate.finish_message}" if candidate.finish_message else ""
            raise ModelResponseError(f"Gemini could not make a valid tool call ({reason}){detail}; "
                                     "ask again or use a stronger model", provider="gemini")
        text: list[str] = []
        calls: list[ToolCall] = []
        for part in (candidate.content.parts if candidate.content else None) or []:
            if part.function_call is not None:
                call = part.function_call
                call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
                self._remember(call_id, part.thought_signature, bool(call.id))
                calls.append(ToolCall(call_id, call.name or "",
                                      _sdk.arguments(call.args, "gemini", call.name or "")))
            elif part.text and not part.thought:
                text.append(part.text)
        return text, calls, reason

    def _remember(self, call_id: str, signature: bytes | None, sent_id: bool) -> None:
        self._calls[call_id] = (signature, sent_id)
        while len(self._calls) > _REMEMBERED:
            self._calls.popitem(last=False)

    def _translate(self, exc: Exception, phase: _sdk.Phase) -> ModelError | None:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            code = exc.code if isinstance(exc.code, int) else None
            status = str(exc.status or "")
            details = json.dumps(exc.details, default=str) if exc.details else ""
            return _sdk.api_error(
                "gemini", code, str(exc.message or exc), code=status or None,
                rate=status == "RESOURCE_EXHAUSTED",
                auth=status in ("UNAUTHENTICATED", "PERMISSION_DENIED") or "API_KEY_INVALID" in details,
                key_hint=" (GEMINI_API_KEY or api_key=)")
        if isinstance(exc, errors.UnknownApiResponseError):
            return ModelResponseError(f"Gemini sent an answer that could not be read: {exc}",
                                      provider="gemini")
        return _sdk.transport_error(exc, "gemini", phase.started)


def _text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _result(content: str) -> dict[str, Any]:
    """A tool's result as the JSON object Gemini wants (``{"output": ...}`` unless it is one)."""
    try:
        value = json.loads(content)
    except ValueError:
        value = content
    return value if isinstance(value, dict) else {"output": value}


def _usage(meta: Any) -> dict[str, int]:
    if meta is None:
        return {}
    inputs = (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0)
    outputs = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return {"input_tokens": inputs, "output_tokens": outputs,
            "total_tokens": meta.total_token_count or inputs + outputs}


def _blocked(answer: Any) -> str | None:
    feedback = getattr(answer, "prompt_feedback", None)
    return "SAFETY" if feedback is not None and feedback.block_reason else None


def _finish(reason: str | None, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    reason = str(reason or "STOP")
    return _FINISH.get(reason, reason.lower())
