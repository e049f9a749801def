"""What every MCP module needs: the SDK itself (imported on first use, with an install hint),
agentbook's version as peers see it, and the error types the effect journal raises again."""

from __future__ import annotations

import logging

from ..errors import (
    MCPConnectionError,
    MCPError,
    MCPNotInstalledError,
    MCPProtocolError,
    MCPServerNotFoundError,
    MCPTimeoutError,
    MCPToolError,
)
from ..version import __version__

__all__ = ["ERRORS", "agentbook_version", "require_sdk"]

_INSTALL = 'pip install "agentbook[mcp]"  (or: pip install "mcp>=2.3")'

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


def agentbook_version() -> str:
    """agentbook's version as MCP peers see it (client and server info)."""
    return __version__
