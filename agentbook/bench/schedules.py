"""Pending schedules at scale: process memory per pending schedule, and what adding one costs.

Both figures come from one fresh child process (``python -m agentbook.bench.schedules``),
so the memory baseline is clean:

``schedules_pending_memory``
    A file runtime (``durability="normal"``, the system clock) where 10 000 agents each
    schedule 10 one-shot callbacks due between 1 hour and 1 day ahead - 100 000 pending
    schedules - then hibernate. The figure is the RSS delta over the number of schedules,
    after ``gc.collect()`` and ``malloc_trim(0)`` (as ``hibernated_memory``). The schedules
    themselves are rows in each agent's store; the process keeps one timer entry per agent
    with work pending. Reported, no floor.

``schedule_add_cost``
    Microseconds for one awaited message that adds one schedule (same due-time spread),
    to 10 awake agents in turn, when 100 000 are pending (the runtime above) vs when
    1 000 are (100 agents x 10, a second runtime in the same process), interleaved.
    Target: the ratio at most 2 (adding must not cost more as more are pending).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import agentbook as ab

from .report import Result, Target
from .timing import Sizes, check, interleave

__all__ = ["BenchPlanner", "bench_schedules"]

_LOW, _HIGH = 3600.0, 86400.0
_ADDERS = 10


class BenchPlanner(ab.Agent):
    """Schedules reminders; each reminder, when it comes, counts down."""

    initial_state = {"n": 0}

    @ab.callable
    async def plan(self, delays: list[float]) -> int:
        """Schedule ``remind`` after each of *delays* seconds; returns how many are pending."""
        for delay in delays:
            await self.schedule(delay, "remind")
        self.set_state({"n": self.state["n"] + len(delays)})
        return self.state["n"]

    async def remind(self) -> None:
        """A reminder came."""
        self.set_state({"n": self.state["n"] - 1})


async def _fill(rt: ab.Runtime, agents: int, per: int, rng: random.Random,
                show: bool = False) -> list[ab.AgentRef]:
    refs = [rt.get(BenchPlanner, f"planner-{i}") for i in range(agents)]
    t0 = time.perf_counter()
    for start in range(0, agents, 100):
        chunk = refs[start:start + 100]
        await asyncio.gather(*(r.plan([rng.uniform(_LOW, _HIGH) for _ in range(per)])
                               for r in chunk))
        done = start + len(chunk)
        if show and (done == agents or done % max(agents // 10, 100) == 0):
            print(f"    {done:>6}/{agents} agents ({done / (time.perf_counter() - t0):.0f}/s)",
                  file=sys.stderr, flush=True)
    return refs


async def _child(folder: str, agents: int, per: int, small: int, adds: int, rounds: int,
                 warmup: bool, show: bool) -> dict[str, Any]:
    from .memory import _settled

    rng = random.Random(11)
    big = ab.Runtime(os.path.join(folder, "big"), durability="normal")
    little = ab.Runtime(os.path.join(folder, "small"), durability="normal")
    try:
        await big.get(BenchPlanner, "warm").plan([_HIGH])
        big.hibernate()
        before = _settled()
        t0 = time.perf_counter()
        refs = await _fill(big, agents, per, rng, show)
        created = time.perf_counter() - t0
        big.hibernate()
        after = _settled()
        pending = agents * per
        check(len(big.timers) == agents + 1, "every agent with schedules has a timer entry")
        check(len(refs[-1].schedules()) == per, "every agent holds its schedules")
        out: dict[str, Any] = {k: (after[k] - before[k]) / pending for k in before}
        out.update(pending=pending, created_s=created)
        small_refs = await _fill(little, small, per, rng)

        def adder(refs: list[ab.AgentRef]) -> Any:
            async def side() -> float:
                t = time.perf_counter()
                for i in range(adds):
                    await refs[i % _ADDERS].plan([rng.uniform(_LOW, _HIGH)])
                return (time.perf_counter() - t) * 1e6 / adds
            return side

        for ref in refs[:_ADDERS] + small_refs[:_ADDERS]:
            await ref.plan([])  # wake them: the adds go to awake agents
        out["pairs"] = await interleave(adder(refs[:_ADDERS]), adder(small_refs[:_ADDERS]),
                                        rounds, warmup)
        out["pending_small"] = small * per
        return out
    finally:
        await big.aclose()
        await little.aclose()


def _run_child(sz: Sizes, folder: str) -> dict[str, Any]:
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    args = [folder, sz.sched_agents, sz.sched_per_agent, sz.sched_small_agents, sz.sched_adds,
            sz.rounds, int(sz.warmup), int(sz.progress)]
    proc = subprocess.run([sys.executable, "-m", "agentbook.bench.schedules", *map(str, args)],
                          stdout=subprocess.PIPE, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the schedules child exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def bench_schedules(sz: Sizes, folder: str) -> list[Result]:
    """Memory per pending schedule, and the cost of adding one at two scales."""
    if sz.progress:
        print(f"  schedules: {sz.sched_agents} agents x {sz.sched_per_agent} schedules",
              file=sys.stderr, flush=True)
    out = await asyncio.to_thread(_run_child, sz, folder)
    pending, small = out["pending"], out["pending_small"]
    memory = Result(
        "schedules_pending_memory", out["rss"], "B/sched", None, None, None, 1,
        f"{pending:,} pending one-shot schedules on {sz.sched_agents:,} hibernated agents of a "
        f"file runtime (durability normal); RSS delta/schedule after gc + malloc_trim (before "
        f"trim {out['raw']:.0f}, Python blocks {out['blocks']:.3f}/schedule); made in "
        f"{out['created_s']:.1f} s")
    pairs = [tuple(p) for p in out["pairs"]]
    cost = Result.from_rounds(
        "schedule_add_cost", "us", pairs, Target("ratio", "<=", 2),
        f"one awaited message adding one schedule, {sz.sched_adds} per round over "
        f"{_ADDERS} awake agents; value with {pending:,} pending, floor with {small:,} pending"
        " (another runtime, same process), interleaved")
    return [memory, cost]


def _main(argv: list[str]) -> None:
    folder, agents, per, small, adds, rounds, warmup, show = argv
    os.makedirs(folder, exist_ok=True)
    out = asyncio.run(_child(folder, int(agents), int(per), int(small), int(adds), int(rounds),
                             warmup == "1", show == "1"))
    print(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1:])
