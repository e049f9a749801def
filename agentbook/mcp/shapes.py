"""Shapes that cross the MCP boundary: tool schemas, tool results, error reasons.

Kept apart from the connection manager so that both sides (client and server) and the
tests share one definition of "a usable tool schema" and "the JSON value of a result".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["model_tool_name", "result_value", "sanitize_schema", "scrub"]

_TYPES = frozenset({"string", "integer", "number", "boolean", "null", "array", "object"})
_MAX_DEPTH = 40
_MAX_SCHEMA_BYTES = 200_000
_MODEL_NAME = re.compile(r"[^A-Za-z0-9_-]")
#: Secret values shorter than this are not scrubbed from results (they would match noise).
_MIN_SECRET = 4


class SchemaProblem(ValueError):
    """A tool's input schema can't be used; the message says why."""


def sanitize_schema(schema: Any) -> dict[str, Any]:
    """A copy of an MCP tool's input schema that models and :func:`agentbook.tools.validate`
    can use, or :class:`SchemaProblem` saying why the tool can't be offered.

    ``"type": [a, b]`` becomes ``anyOf``; a top-level ``$schema`` is dropped.
    """
    if not isinstance(schema, dict):
        raise SchemaProblem(f"its input schema is a {type(schema).__name__}, not a JSON object")
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise SchemaProblem(f"its input schema is not JSON ({exc})") from None
    if size > _MAX_SCHEMA_BYTES:
        raise SchemaProblem(f"its input schema is {size} bytes (the limit is {_MAX_SCHEMA_BYTES})")
    out = _walk(schema, "schema", 0)
    out.pop("$schema", None)
    kind = out.get("type", "object")
    if kind != "object":
        raise SchemaProblem(f"its input schema describes a {kind}, but tool arguments are an object")
    out["type"] = "object"
    out.setdefault("properties", {})
    return out


def _walk(node: Any, path: str, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise SchemaProblem(f"its input schema nests deeper than {_MAX_DEPTH} levels")
    if isinstance(node, bool):  # JSON Schema allows true/false as schemas
        return {} if node else {"not": {}}
    if not isinstance(node, dict):
        raise SchemaProblem(f"{path} is a {type(node).__name__}, not a schema object")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if not isinstance(t, str) or t not in _TYPES]
            if bad or not types:
                raise SchemaProblem(f"{path}.type is {value!r}, not a JSON Schema type")
            if len(types) == 1:
                out["type"] = types[0]
            else:
                out.setdefault("anyOf", []).extend({"type": t} for t in types)
        elif key == "properties":
            if not isinstance(value, dict):
                raise SchemaProblem(f"{path}.properties is not an object")
            out[key] = {str(k): _walk(v, f"{path}.properties.{k}", depth + 1)
                        for k, v in value.items()}
        elif key == "required":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SchemaProblem(f"{path}.required is not a list of names")
            out[key] = list(value)
        elif key == "items":
            out[key] = _walk(value, f"{path}.items", depth + 1) if not isinstance(value, list) else {}
        elif key in ("anyOf", "oneOf", "allOf"):
            if not isinstance(value, list) or not value:
                raise SchemaProblem(f"{path}.{key} is not a non-empty list of schemas")
            subs = [_walk(v, f"{path}.{key}[{i}]", depth + 1) for i, v in enumerate(value)]
            out[key] = out.get(key, []) + subs
        elif key == "additionalProperties":
            out[key] = value if isinstance(value, bool) else _walk(value, f"{path}.{key}",
                                                                   depth + 1)
        elif key == "enum":
            if not isinstance(value, list):
                raise SchemaProblem(f"{path}.enum is not a list")
            out[key] = list(value)
        elif key in ("$defs", "definitions") and isinstance(value, dict):
            out[key] = {str(k): _walk(v, f"{path}.{key}.{k}", depth + 1) for k, v in value.items()}
        else:
            out[key] = value
    if "anyOf" in out and "type" in out:  # {"type": "string", "anyOf": [...]}: keep both meanings
        out["allOf"] = [*out.pop("allOf", []), {"anyOf": out.pop("anyOf")}]
    return out


def model_tool_name(name: str) -> str:
    """*name* as model providers accept a function name (``[A-Za-z0-9_-]{1,64}``)."""
    cleaned = _MODEL_NAME.sub("_", name)[:64]
    return cleaned or "tool"


def result_value(result: Any) -> tuple[bool, Any]:
    """``(is_error, value)`` of an SDK ``CallToolResult``.

    The value is the structured content when the server gave one, else the text of the
    content (one string, blocks joined by newlines) when it is all text, else the content
    blocks as JSON objects (images, resources...).
    """
    is_error = bool(getattr(result, "is_error", False))
    structured = getattr(result, "structured_content", None)
    blocks = list(getattr(result, "content", None) or [])
    if structured is not None and not is_error:
        return False, structured
    texts = [getattr(b, "text", None) for b in blocks]
    if all(isinstance(t, str) for t in texts):
        text = "\n".join(texts)  # type: ignore[arg-type]
        return is_error, (text if text or not is_error else "the tool reported an error")
    return is_error, [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in blocks]


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """*value* with every secret string in it replaced by ``[secret]``.

    Credentials are kept out of history by design (they are never written anywhere but
    ``_ab_secrets``); this is for what a third-party server says back - a server that
    echoes its environment or a header must not carry a token into the journal.
    """
    words = sorted({s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET},
                   key=len, reverse=True)
    if not words:
        return value
    return _scrub(value, words)


def _scrub(value: Any, words: list[str]) -> Any:
    if isinstance(value, str):
        for word in words:
            if word in value:
                value = value.replace(word, "[secret]")
        return value
    if isinstance(value, dict):
        return {_scrub(k, words): _scrub(v, words) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, words) for v in value]
    return value
