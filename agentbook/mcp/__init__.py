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
imported only when MCP is first used. Errors::

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

import logging
from typing import TYPE_CHECKING, Any

from ..errors import AgentbookError, UsageError

if TYPE_CHECKING:
    from ..core.runtime import Runtime
    from .http import MCPApp

__all__ = [
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

_INSTALL = 'pip install "agentbook[mcp]"  (or: pip install "mcp>=2.3")'


class MCPError(AgentbookError):
    """An MCP server could not do what was asked. ``server`` names the server."""

    def __init__(self, message: str, server: str = "") -> None:
        super().__init__(message)
        self.server = server


class MCPNotInstalledError(MCPError, UsageError, ImportError):
    """The official ``mcp`` SDK is an optional extra that is not installed."""


class MCPTargetError(MCPError, UsageError):
    """A server name, URL, command, headers or env that can't be used."""


class MCPServerNotFoundError(MCPError, UsageError, KeyError):
    """The agent has no MCP server by that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MCPConnectionError(MCPError):
    """The server did not start, died, or can't be reached; its state says why."""


class MCPTimeoutError(MCPError, TimeoutError):
    """The server gave no answer in time."""


class MCPProtocolError(MCPError):
    """The server's answer did not follow the protocol (a malformed result or schema)."""


class MCPToolError(MCPError):
    """The tool reported an error (``is_error``), or the server has no such tool."""


#: Error types by name, to raise again what the effect journal recorded.
ERRORS: dict[str, type[MCPError]] = {
    cls.__name__: cls for cls in (MCPConnectionError, MCPTimeoutError, MCPProtocolError,
                                  MCPToolError, MCPServerNotFoundError, MCPError)
}


def require_sdk() -> None:
    """Import the ``mcp`` SDK, or raise :class:`MCPNotInstalledError` saying what to install."""
    try:
        import mcp  # noqa: F401
    except ImportError as exc:
        raise MCPNotInstalledError(
            f"MCP needs the official mcp SDK, which is not installed: {_INSTALL}") from exc
    # The SDK logs through "mcp.*"; without a handler of the user's, Python's last-resort
    # handler would print those lines into notebook cells. A NullHandler keeps them quiet
    # and still lets them reach handlers the user configures on the root logger.
    logger = logging.getLogger("mcp")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def asgi_app(rt: Runtime, **options: Any) -> MCPApp:
    """The MCP ASGI app to mount inside agentbook's serve app: ``Mount("/mcp",
    app=asgi_app(rt))``. The serve app's guard checks the token, Host and Origin, so by
    default this app checks none itself; it needs no lifespan (see
    :func:`agentbook.mcp.http.mcp_app` for the options and for serving it alone)."""
    from .http import mcp_app

    options.setdefault("check_hosts", False)
    return mcp_app(rt, **options)


def agentbook_version() -> str:
    """agentbook's version as MCP peers see it (client and server info), read from the
    installed package's metadata: a face never imports the root package, which imports
    every layer."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentbook")
    except PackageNotFoundError:  # (a source tree that was never installed)
        return "0+unknown"
