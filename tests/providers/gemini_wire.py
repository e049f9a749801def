"""Gemini on the wire: ``:generateContent`` bodies, ``:streamGenerateContent?alt=sse``
events (``data: {...}`` separated by CRLF, ``candidates[].content.parts[]`` with ``text``
and ``functionCall``), and ``{"error": {"code", "message", "status"}}`` answers."""

from __future__ import annotations

from typing import Any

from .server import Reply, sse

MODEL = "gemini-2.5-flash"
PATH = f"/v1/models/{MODEL}:generateContent"
STREAM_PATH = f"/v1/models/{MODEL}:streamGenerateContent"
HEADERS = {"x-goog-request-id": "loopback", "server-timing": "gfet4t7; dur=120"}
SIGNATURE = "Q2lRQnlqMmJFbG9vcGJhY2s="   # an opaque thoughtSignature, base64 as on the wire
ERRORS = {
    401: ("Request had invalid authentication credentials. Expected OAuth 2 access token, login "
          "cookie or other valid authentication credential.", "UNAUTHENTICATED"),
    429: ("You exceeded your current quota, please check your plan and billing details.",
          "RESOURCE_EXHAUSTED"),
    500: ("An internal error has occurred. Please retry or report in "
          "https://developers.generativeai.google/guide/troubleshooting", "INTERNAL"),
}
Call = tuple[str | None, str, dict[str, Any]]   # (id or None, name, arguments)


def _usage(usage: tuple[int, int] | None, done: bool = True) -> dict[str, Any]:
    prompt, candidates = usage or (0, 0)
    meta: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt,
                            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if done:
        meta.update(candidatesTokenCount=candidates, totalTokenCount=prompt + candidates)
    return meta


def _answer(parts: list[dict[str, Any]], finish: str | None, usage: tuple[int, int],
            done: bool = True) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": _usage(usage, done),
            "modelVersion": MODEL, "responseId": "loopback-response"}


def _call(call: Call, signed: bool) -> dict[str, Any]:
    call_id, name, args = call
    function: dict[str, Any] = {"name": name, "args": args}
    if call_id:
        function["id"] = call_id
    part: dict[str, Any] = {"functionCall": function}
    if signed:
        part["thoughtSignature"] = SIGNATURE
    return part


def text(content: str, usage: tuple[int, int] = (12, 5)) -> Reply:
    """A plain answer."""
    return Reply(headers=HEADERS, json=_answer([{"text": content}], "STOP", usage))


def tool_calls(calls: list[Call], content: str | None = None,
               usage: tuple[int, int] = (40, 18)) -> Reply:
    """An answer with ``functionCall`` parts; the first carries a ``thoughtSignature``."""
    parts = [{"text": content}] if content else []
    parts += [_call(c, signed=i == 0) for i, c in enumerate(calls)]
    return Reply(headers=HEADERS, json=_answer(parts, "STOP", usage))


def _stream(answers: list[dict[str, Any]]) -> Reply:
    return Reply(headers={**HEADERS, "Content-Type": "text/event-stream"},
                 events=[sse(a, sep="\r\n") for a in answers])


def text_stream(pieces: list[str], usage: tuple[int, int] = (12, 5)) -> Reply:
    """A streamed answer: one event per piece, the last with ``finishReason``."""
    last = len(pieces) - 1
    return _stream([_answer([{"text": p}], "STOP" if i == last else None, usage, i == last)
                    for i, p in enumerate(pieces)])


def tool_call_stream(calls: list[Call], content: str = "", fragment: int = 5,
                     usage: tuple[int, int] = (40, 18)) -> Reply:
    """Streamed function calls: Gemini sends each call whole, in the last event."""
    answers = [_answer([{"text": content}], None, usage, False)] if content else []
    answers.append(_answer([_call(c, signed=i == 0) for i, c in enumerate(calls)], "STOP", usage))
    return _stream(answers)


def error(status: int) -> Reply:
    """Gemini's error answer for *status* (401, 429 or 500)."""
    message, code = ERRORS[status]
    return Reply(status=status, headers=HEADERS,
                 json={"error": {"code": status, "message": message, "status": code}})


def bad_key() -> Reply:
    """What Gemini answers to a wrong API key: 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    message = "API key not valid. Please pass a valid API key."
    return Reply(status=400, headers=HEADERS, json={"error": {
        "code": 400, "message": message, "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": message}]}})


def bad_arguments() -> Reply:
    """Gemini's way of reporting a tool call it botched: ``MALFORMED_FUNCTION_CALL``."""
    answer = _answer([], "MALFORMED_FUNCTION_CALL", (40, 0))
    answer["candidates"][0]["finishMessage"] = "Malformed function call: lookup(city=Par"
    del answer["candidates"][0]["content"]
    return Reply(headers=HEADERS, json=answer)


def malformed_stream() -> Reply:
    """A stream whose second event is not JSON."""
    reply = _stream([_answer([{"text": "Hel"}], None, (12, 5), False)])
    reply.events.append(sse('{"candidates": [{"content": ', sep="\r\n"))
    return reply


def cut_stream() -> Reply:
    """A stream whose connection drops after one event."""
    reply = text_stream(["Hel", "lo", " there"])
    reply.cut_after = 1
    return reply


def unfinished_stream() -> Reply:
    """A stream that ends cleanly but without a finish reason."""
    return _stream([_answer([{"text": "Hel"}], None, (12, 5), False)])
