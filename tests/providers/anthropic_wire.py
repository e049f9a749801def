"""Anthropic Messages on the wire: ``message`` bodies, the named event stream
(``message_start``, ``content_block_start``/``_delta``/``_stop`` with ``text_delta`` and
``input_json_delta``, ``message_delta``, ``message_stop``, ``ping``), and
``{"type": "error", "error": {...}}`` answers."""

from __future__ import annotations

import json
from typing import Any

from .server import Reply, sse

MODEL = "claude-sonnet-4-6"
PATH = "/v1/messages"
HEADERS = {"request-id": "req_loopback", "anthropic-organization-id": "org-loopback"}
ERRORS = {
    401: ("invalid x-api-key", "authentication_error"),
    429: ("This request would exceed the rate limit for your organization of 50 requests per "
          "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
          "rate_limit_error"),
    500: ("Internal server error", "api_error"),
}
Call = tuple[str, str, dict[str, Any]]


def _usage(usage: tuple[int, int]) -> dict[str, Any]:
    return {"input_tokens": usage[0], "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "output_tokens": usage[1], "service_tier": "standard"}


def _message(content: list[dict[str, Any]], stop: str, usage: tuple[int, int]) -> Reply:
    return Reply(headers=HEADERS, json={
        "id": "msg_01Loopback", "type": "message", "role": "assistant", "model": MODEL,
        "content": content, "stop_reason": stop, "stop_sequence": None, "usage": _usage(usage)})


def text(content: str, usage: tuple[int, int] = (12, 5)) -> Reply:
    """A plain answer."""
    return _message([{"type": "text", "text": content}], "end_turn", usage)


def tool_calls(calls: list[Call], content: str | None = None,
               usage: tuple[int, int] = (40, 18)) -> Reply:
    """An answer with ``tool_use`` blocks (after an optional text block)."""
    blocks = [{"type": "text", "text": content}] if content else []
    blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
    return _message(blocks, "tool_use", usage)


def _start(usage: tuple[int, int]) -> bytes:
    return sse({"type": "message_start", "message": {
        "id": "msg_01Loopback", "type": "message", "role": "assistant", "model": MODEL,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": _usage((usage[0], 1))}}, "message_start")


def _end(stop: str, usage: tuple[int, int]) -> list[bytes]:
    return [sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                 "usage": {"output_tokens": usage[1]}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]


def _text_block(index: int, pieces: list[str]) -> list[bytes]:
    frames = [sse({"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}}, "content_block_start")]
    frames += [sse({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": p}}, "content_block_delta")
               for p in pieces]
    return [*frames, sse({"type": "content_block_stop", "index": index}, "content_block_stop")]


def text_stream(pieces: list[str], usage: tuple[int, int] = (12, 5)) -> Reply:
    """A streamed answer with one text block (and a ``ping``, as Anthropic sends)."""
    frames = [_start(usage), sse({"type": "ping"}, "ping"), *_text_block(0, pieces),
              *_end("end_turn", usage)]
    return Reply(headers=HEADERS, events=frames)


def tool_call_stream(calls: list[Call], content: str = "", fragment: int = 5,
                     usage: tuple[int, int] = (40, 18), raw: list[str] | None = None) -> Reply:
    """Streamed ``tool_use`` blocks whose input arrives as ``input_json_delta`` fragments
    (*raw* replaces the arguments' JSON text, for malformed input)."""
    frames = [_start(usage), sse({"type": "ping"}, "ping")]
    index = 0
    if content:
        frames += _text_block(0, [content])
        index = 1
    for n, (call_id, name, args) in enumerate(calls):
        frames.append(sse({"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": call_id, "name": name, "input": {}}}, "content_block_start"))
        text = raw[n] if raw else json.dumps(args, separators=(",", ":"))
        pieces = [""] + [text[s:s + fragment] for s in range(0, len(text), fragment)]
        frames += [sse({"type": "content_block_delta", "index": index, "delta": {
            "type": "input_json_delta", "partial_json": p}}, "content_block_delta") for p in pieces]
        frames.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    return Reply(headers=HEADERS, events=[*frames, *_end("tool_use", usage)])


def error(status: int) -> Reply:
    """Anthropic's error answer for *status* (401, 429 or 500)."""
    message, kind = ERRORS[status]
    return Reply(status=status, headers=HEADERS, json={
        "type": "error", "error": {"type": kind, "message": message}, "request_id": "req_loopback"})


def error_event() -> Reply:
    """A stream that starts, then reports ``overloaded_error`` in an ``error`` event."""
    return Reply(headers=HEADERS, events=[
        _start((12, 5)), sse({"type": "ping"}, "ping"),
        sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "error")])


def bad_arguments() -> Reply:
    """Streamed tool input that never becomes valid JSON."""
    return tool_call_stream([("toolu_bad", "lookup", {})], raw=['{"city": "Par'])


def malformed_stream() -> Reply:
    """A stream whose third event is not JSON."""
    return Reply(headers=HEADERS, events=[_start((12, 5)), *_text_block(0, ["Hel"])[:2],
                                          b"event: content_block_delta\ndata: {\"type\": \n\n"])


def cut_stream() -> Reply:
    """A stream whose connection drops after three events."""
    reply = text_stream(["Hel", "lo", " there"])
    reply.cut_after = 3
    return reply


def unfinished_stream() -> Reply:
    """A stream that ends cleanly but without ``message_stop``."""
    return Reply(headers=HEADERS, events=[_start((12, 5)), *_text_block(0, ["Hel"])])
