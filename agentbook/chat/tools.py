"""``@ab.tool``: a Python function a model may call, described by a JSON schema.

The schema comes from the type hints (``str``, ``int``, ``float``, ``bool``, ``list[...]``,
``dict[str, ...]``, ``Literal[...]``, ``Enum``, ``X | None``, defaults) and the docstring
(first paragraph: the description; ``Args:`` lines: parameter descriptions). Arguments
are checked against it before the call; a call that doesn't fit goes back to the model as
a tool error, as does an exception the tool raises.

Options: ``needs_approval=True`` routes every call through a person's approval;
``ttl=seconds`` caches results per argument set; ``client=True`` declares a tool that
runs on the connected client (a function the notebook passes in, or a WebSocket client).
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ToolError

__all__ = ["Tool", "tool", "validate"]

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass
class Tool:
    """A tool: its callable, name, description, JSON schema and options."""

    fn: Callable[..., Any] | None
    name: str
    description: str
    parameters: dict[str, Any]
    needs_approval: bool = False
    ttl: float | None = None
    client: bool = False

    def spec(self) -> dict[str, Any]:
        """What a model is shown."""
        return {"name": self.name, "description": self.description,
                "parameters": self.parameters}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise ToolError(f"{self.name} is a client tool: the client runs it")
        return self.fn(*args, **kwargs)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, needs_approval: bool = False, ttl: float | None = None,
         client: bool = False) -> Any:
    """Declare a tool (``@ab.tool`` or ``@ab.tool(needs_approval=True, ttl=60)``)."""

    def make(f: Callable[..., Any]) -> Tool:
        return as_tool(f, name=name, description=description, needs_approval=needs_approval,
                       ttl=ttl, client=client)

    return make(fn) if fn is not None else make


def as_tool(f: Any, **options: Any) -> Tool:
    """A :class:`Tool` from a function (or a Tool, returned as it is)."""
    if isinstance(f, Tool):
        return f
    if not callable(f):
        raise ToolError(f"a tool is a function, not {f!r}")
    doc = inspect.getdoc(f) or ""
    summary, arg_docs = _parse_doc(doc)
    hints = typing.get_type_hints(f)
    props: dict[str, Any] = {}
    required = []
    for pname, param in inspect.signature(f).parameters.items():
        if pname in ("self", "cls") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if pname not in hints:
            raise ToolError(f"tool {f.__name__}: parameter {pname!r} needs a type hint")
        schema = _schema(hints[pname], f"{f.__name__}({pname})")
        if pname in arg_docs:
            schema["description"] = arg_docs[pname]
        if param.default is param.empty:
            required.append(pname)
        else:
            schema["default"] = param.default
        props[pname] = schema
    parameters = {"type": "object", "properties": props, "required": required,
                  "additionalProperties": False}
    return Tool(f, options.get("name") or f.__name__, options.get("description") or summary
                or f.__name__.replace("_", " "), parameters, options.get("needs_approval", False),
                options.get("ttl"), options.get("client", False))


def _parse_doc(doc: str) -> tuple[str, dict[str, str]]:
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    match = re.search(r"^Args:\s*\n((?:[ \t]+.*\n?)+)", doc, re.MULTILINE)
    if match:
        for line in match.group(1).splitlines():
            m = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)", line)
            if m:
                args[m.group(1)] = m.group(2).strip()
    return summary, args


def _schema(hint: Any, where: str) -> dict[str, Any]:
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if hint is Any:
        return {}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "string", "enum": [str(m.value) for m in hint]}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            schema = _schema(inner[0], where)
            return {"anyOf": [schema, {"type": "null"}]}
        return {"anyOf": [_schema(a, where) for a in args]}
    if origin in (list, tuple, set) or hint in (list, tuple):
        return {"type": "array", "items": _schema(args[0], where) if args else {}}
    if origin is dict or hint is dict:
        return {"type": "object", "additionalProperties": _schema(args[1], where) if args else {}}
    raise ToolError(f"tool {where}: {hint!r} has no JSON type; use str, int, float, bool, "
                    "list, dict, Literal or an Enum")


def validate(value: Any, schema: dict[str, Any], path: str = "arguments") -> list[str]:
    """Problems with *value* against a schema produced by this module (empty: fine)."""
    problems: list[str] = []
    if "anyOf" in schema:
        if all(validate(value, s, path) for s in schema["anyOf"]):
            problems.append(f"{path} does not match any allowed type")
        return problems
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path} must be one of {schema['enum']}, not {value!r}"]
    kind = schema.get("type")
    checks = {"string": lambda v: isinstance(v, str),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
              "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}
    if kind and not checks[kind](value):
        return [f"{path} must be a {kind}, not {type(value).__name__}"]
    if kind == "array":
        for i, item in enumerate(value):
            problems += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if kind == "object":
        props = schema.get("properties")
        if props is not None:
            for name in schema.get("required", []):
                if name not in value:
                    problems.append(f"{path} is missing {name!r}")
            for name, item in value.items():
                if name in props:
                    problems += validate(item, props[name], f"{path}.{name}")
                elif schema.get("additionalProperties") is False:
                    problems.append(f"{path} has an unexpected {name!r}")
        elif isinstance(schema.get("additionalProperties"), dict):
            for name, item in value.items():
                problems += validate(item, schema["additionalProperties"], f"{path}.{name}")
    return problems
