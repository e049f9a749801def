"""The builtin model: offline, deterministic, and honest about being a stand-in.

It is not a language model. It follows a few rules so that notebooks, workshops and tests
run without keys or network and always give the same answer:

* if the latest message is from the user and a tool fits it - by the words the request
  shares with the tool's name, description and parameter names - it calls that tool,
  taking arguments from the text: numbers for numeric parameters; ids such as ``o17``
  or ``A-3`` for ``..._id`` parameters, or, without one, a bare number (the one after
  the id's word, as in "order 4217" or "order #4217" for ``order_id``, else a
  ``#4217``, else the first whole number that follows no numeric parameter's name); an
  enum value that is mentioned; quoted text; or the words after "for", "about", "in"
  or the parameter's name;
* after tool results it phrases a short reply from them, and when a person rejected a
  tool call (or let its approval expire) since the user's last message, it says so;
* otherwise it answers from a handful of rules (greetings, help) or says what it is.

``scripted([...])`` replays a fixed list of responses instead: the tool of choice for
tests of a conversation's shape.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..errors import ModelResponseError
from .base import Model, Response, ToolCall

__all__ = ["BuiltinModel", "ScriptedModel"]

_STOP = frozenset([
    "a", "an", "the", "to", "of", "for", "and", "or", "in", "on", "at", "by", "is", "are",
    "be", "me", "my", "i", "you", "your", "it", "this", "that", "with", "please", "can",
    "could", "would", "will", "do", "does", "what", "which", "who", "how", "get", "make",
    "give", "tell", "show", "from", "about", "some", "any",
])
_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?![\w.])")  # not the digits of "o-17"
_ID = re.compile(r"\b[A-Za-z]{1,6}-?\d+[A-Za-z0-9-]*\b")
_QUOTED = re.compile(r"[\"“']([^\"”']+)[\"”']")
#: A whole number standing alone ("4217", "#4217"; not "o-17", "4.5" or "-3").
_BARE = re.compile(r"(?<![\w.#-])(\d+)(?!\w|\.\d)")
_HASH = re.compile(r"(?<![\w&#])#(\d+)(?!\w|\.\d)")


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


class BuiltinModel(Model):
    """Offline, deterministic rules that can call tools (see the module docstring)."""

    name = "builtin"
    provider = "builtin"

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Response:
        if not messages:
            return Response("Say something and I'll answer.", model=self.name)
        last = messages[-1]
        if last.get("role") == "tool":
            return Response(self._phrase(messages), model=self.name)
        text = str(last.get("content") or "")
        declined = _declined_since_last_turn(messages)
        if declined:  # a person said no to a tool call: say so rather than try it again
            return Response(" ".join(_describe(m.get("name") or "the tool", m.get("content"))
                                     for m in declined), model=self.name)
        if tools:
            picked = self._pick(text, tools)
            if picked is not None:
                name, args = picked
                digest = hashlib.sha1(f"{len(messages)}:{text}:{name}".encode()).hexdigest()[:10]
                return Response("", [ToolCall(f"call_{digest}", name, args)], model=self.name,
                                finish_reason="tool_calls")
        return Response(self._reply(text, tools or []), model=self.name)

    # -- choosing a tool ----------------------------------------------------------------
    def _pick(self, text: str, tools: list[dict[str, Any]]) -> tuple[str, dict] | None:
        asked = {_stem(w) for w in _words(text)}
        best, best_score = None, 0
        for spec in tools:
            name_words = {_stem(w) for w in _words(spec["name"].replace("_", " "))}
            desc_words = {_stem(w) for w in _words(spec.get("description") or "")}
            params = set((spec.get("parameters") or {}).get("properties") or {})
            score = 3 * len(asked & name_words) + len(asked & desc_words) + len(
                asked & {_stem(p) for p in params})
            if score > best_score:
                best, best_score = spec, score
        if best is None or best_score < 2:
            return None
        return best["name"], self._arguments(text, best.get("parameters") or {})

    def _arguments(self, text: str, schema: dict[str, Any]) -> dict[str, Any]:
        props = schema.get("properties") or {}
        numbers = [float(n) for n in _NUMBER.findall(text)]
        ids = [m for m in _ID.findall(text) if any(c.isdigit() for c in m)]
        quoted = _QUOTED.findall(text)
        args: dict[str, Any] = {}
        bare = self._bare_ids(text, props, len(ids), bool(quoted))
        for number in bare.values():  # (numeric parameters take the other numbers)
            if float(number) in numbers:
                numbers.remove(float(number))
        for pname, pschema in props.items():
            kind = _kind(pschema)
            value: Any = None
            options = pschema.get("enum") or next(
                (s.get("enum") for s in pschema.get("anyOf", []) if s.get("enum")), None)
            if options:
                value = next((o for o in options if str(o).lower() in text.lower()), None)
            elif kind in ("integer", "number"):
                after = re.search(rf"{pname}\D{{0,12}}?(-?\d+(?:\.\d+)?)", text, re.IGNORECASE)
                raw = float(after.group(1)) if after else (numbers.pop(0) if numbers else None)
                if raw is not None:
                    if after and raw in numbers:
                        numbers.remove(raw)
                    value = int(raw) if kind == "integer" else raw
            elif kind == "boolean":
                low = text.lower()
                value = True if re.search(r"\b(yes|true|on)\b", low) else (
                    False if re.search(r"\b(no|false|off)\b", low) else None)
            elif kind == "string":
                if _is_id(pname) and ids:
                    value = ids.pop(0)
                elif pname in bare:
                    value = bare[pname]
                elif quoted:
                    value = quoted.pop(0)
                else:
                    m = re.search(rf"\b{pname}\s*[:=]?\s+([\w@.-]+)", text, re.IGNORECASE) or \
                        re.search(r"\b(?:for|about|in|of|to)\s+([A-Z]?[\w@.-]+(?:\s+[A-Z][\w-]+)*)", text)
                    value = m.group(1).strip(" .,!?") if m else None
            if value is None and "default" in pschema:
                continue
            if value is None and pname in (schema.get("required") or []):
                value = text.strip() if kind == "string" else value
            if value is not None:
                args[pname] = value
        return args

    def _bare_ids(self, text: str, props: dict[str, Any], prefixed: int,
                  quoted: bool) -> dict[str, str]:
        """Bare numbers for the string id parameters left without a prefixed id (the
        first *prefixed* id parameters take those), found before any parameter takes a
        number, so that "refund 20 for order 4217" gives ``order_id`` 4217 whatever the
        parameters' order."""
        numeric = [p for p, s in props.items() if _kind(s) in ("integer", "number")]
        wanting = [p for p, s in props.items() if _is_id(p) and _kind(s) == "string"
                   and not s.get("enum")][prefixed:]
        found: dict[str, str] = {}
        used: set[int] = set()
        for pname in wanting:
            match = _bare_id(pname, text, quoted, numeric, used)
            if match is not None:
                used.add(match.start(1))
                found[pname] = match.group(1)
        return found

    # -- phrasing -----------------------------------------------------------------------
    def _phrase(self, messages: list[dict[str, Any]]) -> str:
        results = []
        for msg in reversed(messages):
            if msg.get("role") != "tool":
                break
            results.append(msg)
        parts = []
        for msg in reversed(results):
            parts.append(_describe(msg.get("name") or "the tool", msg.get("content")))
        return " ".join(parts)

    def _reply(self, text: str, tools: list[dict[str, Any]]) -> str:
        low = text.lower().strip()
        if re.match(r"^(hi|hello|hey|good (morning|afternoon|evening))\b", low):
            return "Hello! I'm the builtin offline model. How can I help?"
        if "help" in low or "what can you do" in low:
            if tools:
                names = ", ".join(t["name"] for t in tools)
                return f"I can use these tools: {names}. Ask me something that needs one."
            return "I'm the builtin offline model: I follow simple rules and can call tools."
        if not low:
            return "Say something and I'll answer."
        return (f"I'm the builtin offline model, so I only follow simple rules. "
                f"You said: \u201c{text.strip()}\u201d")


def _declined_since_last_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results saying a person rejected (or let expire) a call, recorded between the
    user's previous message and this one."""
    found = []
    for msg in reversed(messages[:-1]):
        if msg.get("role") == "user":
            break
        if msg.get("role") == "tool" and '"status": "' in str(msg.get("content")):
            try:
                status = json.loads(msg["content"]).get("status")
            except (TypeError, ValueError, AttributeError):
                continue
            if status in ("rejected", "expired"):
                found.append(msg)
    return found[::-1]


def _is_id(pname: str) -> bool:
    """Whether a parameter names an id (``id``, ``order_id``, ``ticketId``)."""
    return pname.lower().endswith("id")


def _bare_id(pname: str, text: str, quoted: bool, numeric: list[str],
             used: set[int]) -> re.Match | None:
    """A bare number for id parameter *pname* (its match; the number is group 1): the
    one after the id's own word ("order 4217", "order #4217", "order number 4217" for
    ``order_id``), else a ``#4217``, else - unless there is quoted text to take - the
    first whole number that does not follow a *numeric* parameter's name. Numbers at
    the positions in *used* went to other id parameters. People quote most ids as
    numbers ("my order 4217"), and the whole sentence as an id is never right."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", re.sub(r"[_-]?id$", "", pname, flags=re.I))
    word = words.rsplit("_", 1)[-1]  # order_id, orderId, customer_order_id -> "order"
    label = r"(?:id|number|no\.?|nr\.?)"
    before = rf"{re.escape(word)}[\s_-]*{label}?" if word else label
    for found in (*re.finditer(rf"\b{before}\s*[:=]?\s*#?(\d+)(?!\w|\.\d)", text, re.I),
                  *_HASH.finditer(text)):
        if found.start(1) not in used:
            return found
    if quoted:
        return None
    taken = used | {m.start(1) for n in numeric
                    for m in re.finditer(rf"{re.escape(n)}\D{{0,12}}?(\d+)", text, re.I)}
    return next((m for m in _BARE.finditer(text) if m.start(1) not in taken), None)


def _kind(schema: dict[str, Any]) -> str | None:
    if "type" in schema:
        return schema["type"]
    for option in schema.get("anyOf", []):
        if option.get("type") not in (None, "null"):
            return option["type"]
    return None


def _describe(name: str, content: Any) -> str:
    try:
        value = json.loads(content) if isinstance(content, str) else content
    except (TypeError, ValueError):
        value = content
    if isinstance(value, dict):
        if "error" in value and len(value) <= 2:
            return f"I couldn't use {name}: {value['error']}."
        if value.get("status") == "awaiting approval":
            return f"I've asked a person to approve: {value.get('summary', name)}."
        if value.get("status") == "rejected":
            why = f": {value['reason']}" if value.get("reason") else ""
            who = f" ({value['by']})" if value.get("by") else ""
            return f"A person{who} rejected {name}{why}, so I did not do it."
        if value.get("status") == "expired":
            return f"Nobody approved {name} in time, so I did not do it."
        items = ", ".join(f"{k}: {_short(v)}" for k, v in value.items())
        return f"Here is what {name} says: {items}."
    if isinstance(value, list):
        return f"{name} found {len(value)} result{'s' if len(value) != 1 else ''}: " + \
            ", ".join(_short(v) for v in value[:5]) + ("..." if len(value) > 5 else "") + "."
    return f"{name} says: {_short(value)}."


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


class ScriptedModel(Model):
    """Replays a fixed list of responses, one per call, in order.

    Items are strings (a plain answer), dicts (``{"content": ..., "tool_calls":
    [{"name": ..., "arguments": {...}}]}``) or :class:`Response` objects.
    """

    name = "scripted"
    provider = "scripted"

    def __init__(self, responses: list[Any]) -> None:
        self.responses = [self._coerce(r, i) for i, r in enumerate(responses)]
        self.calls: list[list[dict[str, Any]]] = []

    @staticmethod
    def _coerce(item: Any, index: int) -> Response:
        if isinstance(item, Response):
            return item
        if isinstance(item, str):
            return Response(item, model="scripted")
        if isinstance(item, dict):
            calls = [ToolCall(c.get("id") or f"call_{index}_{j}", c["name"],
                              dict(c.get("arguments") or {}))
                     for j, c in enumerate(item.get("tool_calls") or [])]
            return Response(item.get("content") or "", calls, model="scripted",
                            finish_reason="tool_calls" if calls else "stop")
        raise TypeError(f"scripted responses are str, dict or Response, not {item!r}")

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Response:
        if len(self.calls) >= len(self.responses):
            raise ModelResponseError(
                f"the scripted model has only {len(self.responses)} responses and was asked "
                "for another; add more", provider="scripted")
        self.calls.append(list(messages))
        return self.responses[len(self.calls) - 1]
