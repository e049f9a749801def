"""The child process of ``test_firing_crash.py``: fires a state-only agent's schedules
until a crash point.

    AGENTBOOK_CRASH_AT=<point> python firing_child.py FOLDER START

It opens ``ab.Runtime(FOLDER)`` on a virtual clock at START and advances it 60 s, so the
schedules ``Chime.plan`` made fire (their callbacks write no SQL: the firing path records
the schedule rows' changes without a session). It should exit with status 137 at the
crash point; ``done`` means it was never reached.
"""

from __future__ import annotations

import asyncio
import os
import sys

from firing_agents import Chime

import agentbook as ab


async def main(folder: str, start: float) -> None:
    clock = ab.VirtualClock(start)
    rt = ab.Runtime(folder, clock=clock)
    rt.get(Chime, "c")
    await clock.advance(60)
    os.write(1, b"done\n")
    await rt.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
