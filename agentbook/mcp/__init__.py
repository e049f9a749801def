"""MCP (Model Context Protocol), both ways: agents as clients of MCP servers, and agents
served as MCP servers.

As a client, an agent keeps a durable relationship with each server it was given
(``await self.add_mcp_server(name, url_or_command)``): the registration lives in the
agent's store and survives restarts; credentials (headers, env) live in the untracked
``_ab_secrets`` table, so no history row, changeset, fork, event or view ever holds them;
the runtime's connection manager (``rt.mcp_clients``, :mod:`agentbook.mcp.client`) reconnects on
wake and after failures (with backoff) and refreshes the tools on every connect. Tool
calls go through the effect journal (``self.mcp.call``) or join a ChatAgent's tools.

As a server, :func:`agentbook.mcp.http.mcp_app` serves each agent's ``@ab.callable``
methods as MCP tools at ``/mcp/{class}/{name}`` (streamable HTTP) and
``agentbook mcp MODULE:ATTR --agent CLASS/NAME`` serves one agent over stdio.

Everything here needs the official ``mcp`` SDK (``pip install "agentbook[mcp]"``); it is
imported only when MCP is first used. Its errors live in :mod:`agentbook.errors`::

    MCPError                      an MCP server could not do what was asked (.server names it)
     ├── MCPNotInstalledError     (also UsageError, ImportError) the mcp SDK is missing
     ├── MCPTargetError           (also UsageError) a bad name, URL, command, headers or env
     ├── MCPServerNotFoundError   (also UsageError, KeyError) no server by that name
     ├── MCPConnectionError       the server did not start, died, or can't be reached
     ├── MCPTimeoutError          (also TimeoutError) no answer in time
     ├── MCPProtocolError         the server's answer was malformed
     └── MCPToolError             the tool reported an error, or has no such tool
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import (
    MCPConnectionError,
    MCPError,
    MCPNotInstalledError,
    MCPProtocolError,
    MCPServerNotFoundError,
    MCPTargetError,
    MCPTimeoutError,
    MCPToolError,
)
from .sdk import ERRORS, agentbook_version, require_sdk

if TYPE_CHECKING:
    from ..core.runtime import Runtime
    from .http import MCPApp

__all__ = [
    "ERRORS",
    "MCPConnectionError",
    "MCPError",
    "MCPNotInstalledError",
    "MCPProtocolError",
    "MCPServerNotFoundError",
    "MCPTargetError",
    "MCPTimeoutError",
    "MCPToolError",
    "agentbook_version",
    "asgi_app",
    "require_sdk",
]

def asgi_app(rt: Runtime, **options: Any) -> MCPApp:
    """The MCP ASGI app to mount inside agentbook's serve app: ``Mount("/mcp",
    app=asgi_app(rt))``. The serve app's guard checks the token, Host and Origin, so by
    default this app checks none itself; it needs no lifespan (see
    :func:`agentbook.mcp.http.mcp_app` for the options and for serving it alone)."""
    from .http import mcp_app

    options.setdefault("check_hosts", False)
    return mcp_app(rt, **options)
