"""The agent of ``test_restart.py`` and its child process (run it as a script).

    python night_agents.py FOLDER START

plans a one-shot, a cron and an interval schedule and asks for two approvals (one that
expires in 2 h, one in 10 h), prints ``planned <json>`` and waits to be SIGKILLed.
"""

from __future__ import annotations

import agentbook as ab


class RelNightly(ab.Agent):
    """Counts how often each schedule and each approved action ran."""

    initial_state = {"runs": {}, "paid": []}

    @ab.callable
    async def plan(self) -> dict:
        ids = {
            "once": (await self.schedule(3600, "ran", "once")).id,
            "cron": (await self.schedule("0 * * * *", "ran", "cron")).id,
            "every": (await self.schedule_every(1800, "ran", "every")).id,
        }
        for label, hours in (("soon", 2), ("late", 10)):
            approval = await self.request_approval(
                "pay", {"label": label}, summary=f"pay {label}", expires_in=hours * 3600)
            ids[label] = approval.id
        return ids

    async def ran(self, label: str) -> None:
        runs = dict(self.state["runs"])
        runs[label] = runs.get(label, 0) + 1
        self.set_state({**self.state, "runs": runs})

    async def pay(self, label: str) -> str:
        self.set_state({**self.state, "paid": [*self.state["paid"], label]})
        return f"paid {label}"


if __name__ == "__main__":
    import asyncio
    import json
    import sys

    async def main() -> None:
        rt = ab.Runtime(sys.argv[1], clock=ab.VirtualClock(float(sys.argv[2])))
        ids = await rt.get(RelNightly, "n").plan()
        expiries = {k: rt.approvals.get(ids[k]).expires for k in ("soon", "late")}
        print("planned", json.dumps({"ids": ids, "expires": expiries}), flush=True)
        await asyncio.Event().wait()  # until the test kills this process

    asyncio.run(main())
