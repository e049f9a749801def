"""OpenAI Chat Completions on the wire: ``chat.completion`` bodies, ``chat.completion.chunk``
server-sent events ending in ``data: [DONE]``, and ``{"error": {...}}`` answers."""

from __future__ import annotations

import json
from typing import Any

from .server import Reply, sse

MODEL = "gpt-4o-mini-2024-07-18"
PATH = "/v1/chat/completions"
HEADERS = {"x-request-id": "req_loopback", "openai-version": "2020-10-01",
           "openai-processing-ms": "12"}
ERRORS = {
    401: ("Incorrect API key provided: sk-test. You can find your API key at "
          "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached for gpt-4o-mini in organization org-loopback on requests per min "
          "(RPM): Limit 3, Used 3, Requested 1.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
}
Call = tuple[str, str, dict[str, Any]]   # (id, name, arguments)


def _usage(usage: tuple[int, int]) -> dict[str, Any]:
    prompt, completion = usage
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _completion(message: dict[str, Any], finish: str, usage: tuple[int, int]) -> Reply:
    return Reply(headers=HEADERS, json={
        "id": "chatcmpl-loopback1", "object": "chat.completion", "created": 1767225600,
        "model": MODEL, "choices": [{"index": 0, "message": message, "logprobs": None,
                                     "finish_reason": finish}],
        "usage": _usage(usage), "service_tier": "default", "system_fingerprint": "fp_loopback"})


def text(content: str, usage: tuple[int, int] = (12, 5)) -> Reply:
    """A plain answer."""
    return _completion({"role": "assistant", "content": content, "refusal": None,
                        "annotations": []}, "stop", usage)


def tool_calls(calls: list[Call], content: str | None = None,
               usage: tuple[int, int] = (40, 18)) -> Reply:
    """An answer that calls tools (arguments as a JSON string, as OpenAI sends them)."""
    return _completion({"role": "assistant", "content": content, "refusal": None, "annotations": [],
                        "tool_calls": [{"id": i, "type": "function", "function": {
                            "name": n, "arguments": json.dumps(a, separators=(",", ":"))}}
                            for i, n, a in calls]}, "tool_calls", usage)


def _chunk(delta: dict[str, Any] | None, finish: str | None = None,
           usage: tuple[int, int] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}]
    return sse({"id": "chatcmpl-loopback2", "object": "chat.completion.chunk",
                "created": 1767225600, "model": MODEL, "service_tier": "default",
                "system_fingerprint": "fp_loopback", "choices": choices,
                "usage": _usage(usage) if usage else None, "obfuscation": "xyz"})


def text_stream(pieces: list[str], usage: tuple[int, int] = (12, 5)) -> Reply:
    """A streamed answer: a role chunk, one chunk per piece, the finish, usage, ``[DONE]``."""
    frames = [_chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [_chunk({"content": p}) for p in pieces]
    frames += [_chunk({}, "stop"), _chunk(None, usage=usage), sse("[DONE]")]
    return Reply(headers=HEADERS, events=frames)


def tool_call_stream(calls: list[Call], content: str = "", fragment: int = 5,
                     usage: tuple[int, int] = (40, 18)) -> Reply:
    """Streamed tool calls: ``delta.tool_calls[index]`` with id and name first, then the
    arguments' JSON in fragments of *fragment* characters."""
    frames = [_chunk({"role": "assistant", "content": content or None, "refusal": None})]
    for index, (call_id, name, args) in enumerate(calls):
        frames.append(_chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
        raw = json.dumps(args, separators=(",", ":"))
        for start in range(0, len(raw), fragment):
            frames.append(_chunk({"tool_calls": [{"index": index, "function": {
                "arguments": raw[start:start + fragment]}}]}))
    frames += [_chunk({}, "tool_calls"), _chunk(None, usage=usage), sse("[DONE]")]
    return Reply(headers=HEADERS, events=frames)


def error(status: int) -> Reply:
    """OpenAI's error answer for *status* (401, 429 or 500)."""
    message, kind, code = ERRORS[status]
    return Reply(status=status, headers=HEADERS,
                 json={"error": {"message": message, "type": kind, "param": None, "code": code}})


def bad_arguments() -> Reply:
    """A tool call whose arguments are not JSON (models do produce this)."""
    reply = tool_calls([("call_bad", "lookup", {})])
    reply.json["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Par'
    return reply


def malformed_stream() -> Reply:
    """A stream whose second event is not JSON."""
    return Reply(headers=HEADERS, events=[_chunk({"role": "assistant", "content": "Hel"}),
                                          sse('{"id": "chatcmpl-loopback2", "choices": [')])


def cut_stream() -> Reply:
    """A stream whose connection drops after two events."""
    reply = text_stream(["Hel", "lo", " there"])
    reply.cut_after = 2
    return reply


def unfinished_stream() -> Reply:
    """A stream that ends cleanly but without a finish reason."""
    return Reply(headers=HEADERS, events=[_chunk({"role": "assistant", "content": "Hel"})])
