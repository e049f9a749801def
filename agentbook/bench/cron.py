"""Schedules that fire: a simulated day of cron jobs, and lateness on the real clock.

``cron_day_firings``
    1 000 agents each with a ``"*/5 * * * *"`` cron job, a whole day on an
    ``ab.VirtualClock`` (288 000 firings), on a ``":memory:"`` runtime with the default
    settings (``max_open=256``: the agents due at one instant take turns being open).
    The day is cut into ``cron_rounds`` slices, each a round: firings per second of
    ``await clock.advance(hours=...)``. Floor: the same handler bodies (:func:`tick_body`)
    called in a plain loop, in the same order - what the firings cost beyond the work
    itself. Reported, no target.

``lateness_real_clock_p50`` / ``_p99``
    The system clock, a file runtime (``durability="normal"``): 1 000 agents each arm
    one schedule due at the same instant; lateness is when the callback started minus
    when it was due, in milliseconds; the median over rounds of each round's p50 and p99.
    Reported as values, no floor.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from typing import Any

import agentbook as ab

from .report import Result
from .timing import Sizes, check, interleave

__all__ = ["BenchAlarm", "BenchCron", "bench_cron_day", "bench_lateness", "tick_body"]

_EVERY_5 = "*/5 * * * *"
#: Lateness of each ring of the current round, in seconds (filled by BenchAlarm.ring).
_LATE: list[float] = []


def tick_body(state: dict[str, Any], now: float) -> dict[str, Any]:
    """The cron job's work: count the tick and remember when it ran."""
    return {"n": state["n"] + 1, "last": now}


class BenchCron(ab.Agent):
    """An agent with one cron job every five minutes."""

    initial_state = {"n": 0, "last": None}

    @ab.callable
    async def start(self) -> str:
        """Schedule the job; returns the schedule's id."""
        return (await self.schedule(_EVERY_5, "tick")).id

    async def tick(self) -> None:
        """The job."""
        self.set_state(tick_body(self.state, self.now()))


class BenchAlarm(ab.Agent):
    """Arms one alarm at an absolute time; records how late it rang."""

    initial_state = {"rings": 0}

    @ab.callable
    async def arm(self, at: float) -> None:
        """Ring at epoch second *at*."""
        await self.schedule(max(0.0, at - self.now()), "ring")

    async def ring(self) -> None:
        """Record the lateness (now - due) of this occurrence."""
        occurrence = self.occurrence
        assert occurrence is not None
        _LATE.append(time.time() - occurrence.due)
        self.set_state({"rings": self.state["rings"] + 1})


async def bench_cron_day(sz: Sizes, folder: str) -> list[Result]:
    """A simulated day of cron firings vs the handler bodies in a plain loop."""
    agents, hours, rounds = sz.cron_agents, sz.cron_hours, sz.cron_rounds
    check(hours % rounds == 0, "the day splits into whole-hour rounds")
    step = hours // rounds
    ticks = step * 12  # every five minutes
    clock = ab.VirtualClock()
    rt = ab.Runtime(":memory:", clock=clock)
    try:
        refs = [rt.get(BenchCron, f"cron-{i}") for i in range(agents)]
        for start in range(0, agents, 100):
            await asyncio.gather(*(r.start() for r in refs[start:start + 100]))
        states = [dict(BenchCron.initial_state) for _ in range(agents)]
        floor_now = [clock.now()]

        async def mine() -> float:
            t0 = time.perf_counter()
            await clock.advance(hours=step)
            return agents * ticks / (time.perf_counter() - t0)

        def floor() -> float:
            t0 = time.perf_counter()
            for _ in range(ticks):
                floor_now[0] += 300.0
                now = floor_now[0]
                for i in range(agents):
                    states[i] = tick_body(states[i], now)
            return agents * ticks / (time.perf_counter() - t0)

        pairs = await interleave(mine, floor, rounds, warmup=False)
        fired = sum(r.state["n"] for r in refs)
        check(fired == agents * ticks * rounds, f"every agent fired every 5 minutes ({fired})")
        check(sum(s["n"] for s in states) == fired, "the floor ran as many bodies")
    finally:
        await rt.aclose()
    return [Result.from_rounds(
        "cron_day_firings", "firings/s", pairs, None,
        f"{agents:,} agents x '{_EVERY_5}' over {hours} simulated hours ({fired:,} firings), "
        f"{rounds} rounds of {step} h on a VirtualClock; ':memory:' runtime, default settings"
        " (max_open=256); floor: the handler bodies in a plain loop")]


async def bench_lateness(sz: Sizes, folder: str) -> list[Result]:
    """Lateness of many schedules due in the same second, on the real clock."""
    n = sz.late_n
    rt = ab.Runtime(os.path.join(folder, "lateness"), durability="normal")
    p50s: list[float] = []
    p99s: list[float] = []
    arm_time = 0.003 * n
    try:
        refs = [rt.get(BenchAlarm, f"alarm-{i}") for i in range(n)]
        while len(p50s) < sz.late_rounds:
            _LATE.clear()
            at = time.time() + max(0.2, 2 * arm_time + 0.2)
            t0 = time.perf_counter()
            for start in range(0, n, 100):
                await asyncio.gather(*(r.arm(at) for r in refs[start:start + 100]))
            arm_time = time.perf_counter() - t0
            armed_in_time = time.time() < at
            deadline = at + 120
            while len(_LATE) < n and time.time() < deadline:
                await asyncio.sleep(0.01)
            check(len(_LATE) == n, f"every alarm rang ({len(_LATE)} of {n})")
            if not armed_in_time:
                continue  # arming ran past the due time: redo the round with more margin
            late_ms = sorted(x * 1000 for x in _LATE)
            p50s.append(statistics.median(late_ms))
            p99s.append(statistics.quantiles(late_ms, n=100)[98])
    finally:
        await rt.aclose()
    note = (f"{n:,} schedules on {n:,} agents due in the same second; file runtime "
            f"(durability normal), system clock, default max_open=256; median of "
            f"{len(p50s)} rounds")
    return [Result("lateness_real_clock_p50", statistics.median(p50s), "ms", None, None, None,
                   len(p50s), note, samples=[(x, math.nan) for x in p50s]),
            Result("lateness_real_clock_p99", statistics.median(p99s), "ms", None, None, None,
                   len(p99s), note + "; p99 of each round (statistics.quantiles)",
                   samples=[(x, math.nan) for x in p99s])]
