"""The MCP half of :class:`~agentbook.agent.Agent`: the servers an agent connects to and
remembers (see :mod:`agentbook.mcp.agentside`)."""

from __future__ import annotations

from typing import Any


class MCPMixin:
    """MCP servers of one agent (mixed into ``ab.Agent``)."""

    async def add_mcp_server(self, name: str, target: str | list[str], *,
                             headers: dict[str, str] | None = None,
                             env: dict[str, str] | None = None) -> dict[str, Any]:
        """Connect this agent to an MCP server, and remember it (it reconnects on wake).

        Args:
            name: What the agent calls the server; prefixes its tools on name clashes.
            target: A streamable-HTTP URL, or a command (list or string) for stdio.
            headers: HTTP headers (e.g. Authorization); kept apart as secrets, never in
                history, events, views or forks.
            env: Environment for a stdio server; kept apart as secrets too.

        Returns:
            The server's state: ``{"name", "state": "ready"|"connecting"|"failed", "error",
            "tools", ...}``. Adding the same name and target again changes nothing.
        """
        from ..mcp import agentside

        return await agentside.add(self, name, target, headers or {}, env or {})

    async def remove_mcp_server(self, name: str) -> None:
        """Disconnect from and forget an MCP server."""
        from ..mcp import agentside

        await agentside.remove(self, name)

    def get_mcp_servers(self) -> list[dict[str, Any]]:
        """The agent's MCP servers: state, tools, last sync, error."""
        from ..mcp import agentside

        return agentside.servers(self)

    @property
    def mcp(self) -> Any:
        """MCP access: ``await self.mcp.ready()``, ``await self.mcp.call(server, tool, args)``."""
        from ..mcp import agentside

        return agentside.MCPAccess(self)
