"""MCP tools as a ChatAgent sees them.

Each ready server's usable tools become :class:`MCPTool` objects (fresh ones every turn:
the turn may rename them to prefix the server on a clash). Their ``fn(**args)`` calls the
server without journaling - the turn journals the call as ``tool:<name>``. A class
attribute ``mcp_needs_approval = ["server", "server:tool_*"]`` (shell patterns) puts
matching tools behind a person's approval. While a turn is replayed, no server is
contacted: stand-ins named after the recorded calls let the journal serve them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import jsonvalue
from ..chat.tools import Tool
from ..errors import MCPToolError
from .shapes import model_tool_name

__all__ = ["MCPTool", "build", "recorded", "replaying"]


@dataclass
class MCPTool(Tool):
    """A tool of an MCP server, as a ChatAgent sees it (``server``: whose; ``tool``: its
    name on the server, which ``name`` may have had to change for models)."""

    server: str = ""
    tool: str = ""


def build(agent: Any, server: str, spec: dict[str, Any],
          call: Callable[[str, str], Callable[..., Any]]) -> MCPTool:
    """The chat tool for *spec* (a discovered tool) of *server*; ``call(server, tool)``
    makes its function."""
    patterns = list(getattr(type(agent), "mcp_needs_approval", ()) or ())
    gated = any(fnmatch.fnmatchcase(server, p) if ":" not in p else
                fnmatch.fnmatchcase(f"{server}:{spec['name']}", p) for p in patterns)
    return MCPTool(call(server, spec["name"]), model_tool_name(spec["name"]),
                   spec["description"], jsonvalue.thaw(spec["parameters"]),
                   needs_approval=gated, server=server, tool=spec["name"])


def replaying(ctx: Any) -> bool:
    """Whether the running handler replays recorded effects (rather than calling tools)."""
    replay = ctx.replay
    if replay is None or replay.live is True:
        return False
    return not any(k.startswith(("tool:", "mcp:")) for k in (replay.live or ()))


def recorded(agent: Any, ctx: Any) -> list[MCPTool]:
    """Stand-ins for the MCP tools a replayed turn called: the turn finds them by name and
    its calls are served from the journal, so no server is contacted."""
    own: dict[str, Any] = getattr(type(agent), "_ab_tools", dict)()
    names = sorted({key[5:] for key, _ in ctx.replay.journal if key.startswith("tool:")}
                   - set(own))

    async def not_recorded(**arguments: Any) -> Any:
        raise MCPToolError("this tool call was not recorded; replay with live={'tool:...'}")

    return [MCPTool(not_recorded, name, f"{name} (recorded)", {"type": "object"}, tool=name)
            for name in names]
