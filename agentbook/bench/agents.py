"""The benchmark's own agent, shared by the groups that message agents."""

from __future__ import annotations

import agentbook as ab

__all__ = ["BenchCounter"]


class BenchCounter(ab.Agent):
    """The benchmark agent: every message changes the state (so every message is a version)."""

    initial_state = {"n": 0}

    @ab.callable
    async def inc(self, by: int = 1) -> int:
        """Add *by* to the counter; return the new value."""
        self.set_state({"n": self.state["n"] + by})
        return self.state["n"]
