"""An agent as an MCP server: its ``@ab.callable`` methods become MCP tools.

Tool schemas come from the methods' signatures, the way ``@ab.tool`` makes them (type
hints, defaults, the docstring's ``Args:``); a parameter without a usable hint accepts any
JSON value. A call goes to the agent as a message (``rt.get(cls, name).call(method,
**args)``), so it is checked, queued, committed and recorded like any other; its result
comes back as JSON text and as structured content. Errors come back as tool errors
(``is_error``), never as a crashed session. Streaming methods are not offered.

The class is looked up at every request, so redefining it in a notebook cell changes
the tools at once.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from .. import jsonvalue
from .sdk import agentbook_version

__all__ = ["agent_server", "callable_tools", "resolve_class"]


def callable_tools(cls: type) -> dict[str, dict[str, Any]]:
    """The MCP tools of an agent class: ``{method: {"name", "description", "parameters"}}``."""
    from ..methods import FRAMEWORK_NAMES, method_info

    tools = {}
    for name in sorted(dir(cls)):
        if name.startswith("_") or name in FRAMEWORK_NAMES:
            continue
        fn, ok = method_info(cls, name)
        if fn is None or not ok or getattr(fn, "_ab_streaming", False):
            continue
        doc = (getattr(fn, "_ab_description", "") or "").split("\n\n")[0]
        description = " ".join(doc.split()) or name.replace("_", " ")
        tools[name] = {"name": name, "description": description,
                       "parameters": method_schema(fn)}
    return tools


def method_schema(fn: Any) -> dict[str, Any]:
    """A JSON schema of *fn*'s parameters (as ``@ab.tool`` makes it, leniently)."""
    from ..chat.tools import as_tool

    try:
        return as_tool(fn).parameters
    except Exception:  # a missing or exotic hint: that parameter takes any JSON value
        pass
    props: dict[str, Any] = {}
    required = []
    for pname, param in inspect.signature(fn).parameters.items():
        if pname in ("self", "cls") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        props[pname] = {}
        if param.default is param.empty:
            required.append(pname)
        elif _is_json(param.default):
            props[pname]["default"] = param.default
    return {"type": "object", "properties": props, "required": required}


def resolve_class(segment: str) -> str | None:
    """The agent class named by a URL segment: its name, or its kebab-case form. Only
    the user's classes are offered, as on the serve path (not ``ab.ChatAgent`` nor any
    class defined inside agentbook: see :mod:`agentbook.serve.classes`)."""
    from ..serve.classes import served_classes
    from ..serve.protocol import kebab

    classes = served_classes()
    if segment in classes:
        return segment
    return next((name for name in classes if kebab(name) == segment), None)


def agent_server(rt: Any, class_name: str, name: str) -> Any:
    """A low-level ``mcp`` ``Server`` whose tools are agent ``class_name/name``'s callables."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    from ..chat.tools import validate

    def tools() -> dict[str, dict[str, Any]]:
        cls = rt.class_for(class_name)
        return {} if cls is None else callable_tools(cls)

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=[
            types.Tool(name=t["name"], description=t["description"], input_schema=t["parameters"])
            for t in tools().values()])

    async def call_tool(ctx: Any, params: Any) -> Any:
        method, args = params.name, dict(params.arguments or {})
        offered = tools()
        if method not in offered:
            return _error(f"{class_name} has no callable method {method!r}; tools: "
                          f"{', '.join(offered) or 'none'}")
        problems = validate(args, offered[method]["parameters"])
        if problems:
            return _error("; ".join(problems))
        try:
            result = await rt.get(class_name, name).call(method, **args)
        except Exception as exc:  # the client hears about it; the session goes on
            return _error(f"{type(exc).__name__}: {exc}")
        return _ok(result)

    doc = inspect.getdoc(rt.class_for(class_name)) or None
    return Server(f"agentbook {class_name}/{name}", version=agentbook_version(),
                  instructions=doc, on_list_tools=list_tools, on_call_tool=call_tool)


def _ok(result: Any) -> Any:
    import mcp_types as types

    value = jsonvalue.thaw(result)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                          default=jsonvalue.redact_secret)
    structured = value if isinstance(value, dict) else {"result": value}
    structured = json.loads(json.dumps(structured, default=jsonvalue.redact_secret))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structured_content=structured)


def _error(message: str) -> Any:
    import mcp_types as types

    return types.CallToolResult(content=[types.TextContent(type="text", text=message)],
                                is_error=True)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
