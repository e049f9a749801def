"""The child process of ``test_crash_points.py``: runs one scenario until a crash point.

    AGENTBOOK_CRASH_AT=<point> python points_child.py FOLDER SCENARIO START WARMUP [ARG]

It opens ``ab.Runtime(FOLDER)`` on a virtual clock at START and, if WARMUP is ``1``, first
applies two messages (each acknowledged with ``ack <agent> <id> <n>`` after the awaited
call returned), then does SCENARIO:

    message    a burst of messages to two agents (``asyncio.gather``)
    schedule   advance the clock 60 s, so the planned schedules fire
    approval   approve approval ARG
    ask        request an approval (agent p1)
    rewind     rewind agent p1 to version ARG

Each line goes out in one ``write(2)``. The process should never get past its scenario:
it exits with status 137 at the crash point; ``done`` means it was never reached.
"""

from __future__ import annotations

import asyncio
import os
import sys

from points_agents import RelPoints

import agentbook as ab


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def apply(ref: ab.AgentRef, msg_id: str) -> None:
    n = await ref.apply(msg_id, 2)
    say(f"ack {ref.name} {msg_id} {n}")


async def main(folder: str, scenario: str, start: float, warmup: bool, arg: str) -> None:
    clock = ab.VirtualClock(start)
    rt = ab.Runtime(folder, clock=clock)
    p1, p2 = rt.get(RelPoints, "p1"), rt.get(RelPoints, "p2")
    if warmup:
        await apply(p1, "w1")
        await apply(p2, "w2")
    if scenario == "message":
        await asyncio.gather(*(apply(ref, f"{ref.name}-burst-{i}") for ref in (p1, p2)
                               for i in range(3)))
    elif scenario == "schedule":
        await clock.advance(60)
    elif scenario == "approval":
        result = await rt.approvals.approve(arg, by="child")
        say(f"approved {arg} {result}")
    elif scenario == "ask":
        say(f"asked {await p1.ask('o2')}")
    elif scenario == "rewind":
        await p1.rewind(int(arg))
        say(f"rewound p1 {arg}")
    say("done")
    await rt.aclose()


if __name__ == "__main__":
    folder, scenario, start, warmup = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
    asyncio.run(main(folder, scenario, start, warmup, sys.argv[5] if len(sys.argv) > 5 else ""))
