"""Agents for the MCP tests (class names are global: keep the ``Mcp`` prefix)."""

from __future__ import annotations

from typing import Any

import agentbook as ab


class McpUser(ab.Agent):
    """Adds, removes and calls MCP servers on request; errors come back as values."""

    initial_state = {"calls": 0}

    @ab.callable
    async def add(self, name: str, target: Any, headers: dict | None = None,
                  env: dict | None = None) -> dict:
        return await self.add_mcp_server(name, target, headers=headers, env=env)

    @ab.callable
    async def drop(self, name: str) -> None:
        await self.remove_mcp_server(name)

    @ab.callable
    async def use(self, server: str, tool: str, args: dict | None = None,
                  timeout: float = 30.0) -> Any:
        """Call a tool; a typed MCP error comes back as ``{"error": type, "message": ...}``."""
        self.set_state({"calls": self.state["calls"] + 1})
        try:
            return await self.mcp.call(server, tool, args, timeout=timeout)
        except ab.AgentbookError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    @ab.callable
    async def use_or_raise(self, server: str, tool: str, args: dict | None = None) -> Any:
        return await self.mcp.call(server, tool, args)

    @ab.callable
    async def servers(self) -> list:
        return self.get_mcp_servers()

    @ab.callable
    async def ready(self, timeout: float | None = None) -> list:
        return await self.mcp.ready(timeout)

    @ab.callable
    async def tools(self) -> list:
        await self.mcp.ready()
        return self.mcp.tools()

    @ab.callable
    async def chat_tool_names(self) -> list:
        return sorted(t.name for t in await self.mcp.chat_tools())

    @ab.callable
    async def bump(self) -> int:
        """Works whatever the MCP servers do."""
        self.set_state({"calls": self.state["calls"] + 1})
        return self.state["calls"]


class McpChat(ab.ChatAgent):
    """A chat agent (builtin model) whose tools come from MCP servers."""

    system = "You answer with the tools you have."

    @ab.callable
    async def add(self, name: str, target: Any, env: dict | None = None) -> dict:
        return await self.add_mcp_server(name, target, env=env)


class McpGatedChat(ab.ChatAgent):
    """Every tool of server ``time`` needs a person's approval."""

    mcp_needs_approval = ["time"]

    @ab.callable
    async def add(self, name: str, target: Any) -> dict:
        return await self.add_mcp_server(name, target)


class McpScriptedChat(ab.ChatAgent):
    """A chat agent whose model is set per test (scripted)."""

    @ab.callable
    async def add(self, name: str, target: Any) -> dict:
        return await self.add_mcp_server(name, target)
