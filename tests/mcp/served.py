"""Agents served as MCP servers in the tests; ``python -m agentbook.mcp.stdio
tests.mcp.served:McpNotes --agent McpNotes/NAME`` imports this module (class names are
global: keep the ``Mcp`` prefix)."""

from __future__ import annotations

from typing import Literal

import agentbook as ab


class McpNotes(ab.Agent):
    """Keeps notes; every callable method is an MCP tool."""

    initial_state = {"notes": []}

    @ab.callable
    async def add_note(self, text: str, priority: Literal["low", "high"] = "low",
                       tags: list[str] | None = None) -> dict:
        """Add a note.

        Args:
            text: What to remember.
            priority: How much it matters.
        """
        notes = [*self.state["notes"], {"text": text, "priority": priority, "tags": tags or []}]
        self.set_state({"notes": notes})
        return {"count": len(notes)}

    @ab.callable
    def count(self) -> int:
        """How many notes there are."""
        return len(self.state["notes"])

    @ab.callable
    def echo(self, value, twice=False):  # no hints: any JSON value
        return [value, value] if twice else value

    @ab.callable
    def fail(self) -> str:
        raise ValueError("this tool always fails")

    @ab.callable(streaming=True)
    async def stream_notes(self, stream) -> None:
        for note in self.state["notes"]:
            stream.send(note)

    def not_callable(self) -> str:
        return "hidden"

    def _private(self) -> str:
        return "hidden"


def make_runtime() -> ab.Runtime:
    """A factory ``agentbook mcp tests.mcp.served:make_runtime`` can use."""
    import os

    return ab.Runtime(os.environ["MCP_TEST_STORE"])
