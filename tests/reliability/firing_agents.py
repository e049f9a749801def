"""The agent of ``test_firing_crash.py`` (imported by its child process too)."""

from __future__ import annotations

import agentbook as ab


class Chime(ab.Agent):
    """A one-shot and an interval whose callbacks change the state only."""

    initial_state = {"fired": []}

    @ab.callable
    async def plan(self) -> None:
        await self.schedule(60, "ring", "once")
        await self.schedule_every(60, "ring", "every")

    async def ring(self, label: str) -> None:
        self.set_state({"fired": [*self.state["fired"], label]})
