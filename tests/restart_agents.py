"""Agents shared by restart tests and the child processes they kill."""

from __future__ import annotations

import agentbook as ab


class Nightly(ab.Agent):
    """Counts how often each of its schedules ran."""

    initial_state = {"runs": {}}

    @ab.callable
    async def plan(self, missed: str = "once") -> dict:
        ids = {
            "once": (await self.schedule(3600, "ran", "once")).id,
            "cron": (await self.schedule("0 * * * *", "ran", "cron", missed=missed)).id,
            "every": (await self.schedule_every(1800, "ran", "every", missed=missed)).id,
        }
        return ids

    async def ran(self, label):
        runs = dict(self.state["runs"])
        runs[label] = runs.get(label, 0) + 1
        self.set_state({"runs": runs})


if __name__ == "__main__":  # the child: plan, report, then wait to be killed
    import asyncio
    import sys

    async def main() -> None:
        clock = ab.VirtualClock(float(sys.argv[2]))
        rt = ab.Runtime(sys.argv[1], clock=clock)
        await rt.get(Nightly, "n").plan(sys.argv[3])
        print("planned", flush=True)
        await asyncio.Event().wait()  # until the test kills this process

    asyncio.run(main())
