"""Schedules that fire: a simulated day of cron jobs, and lateness on the real clock.

``cron_day_firings``
    1 000 agents each with a ``"*/5 * * * *"`` cron job, a whole day on an
    ``ab.VirtualClock`` (288 000 firings), on a file runtime (``durability="normal"``)
    with the default ``max_open=256`` (the agents due at one instant take turns being
    open). The day is cut into ``cron_rounds`` slices, each a round: firings per second
    of ``await clock.advance(hours=...)``. Floor (issue 20): the same firings written by
    hand on the same kind of files (:class:`~agentbook.bench.floors.HandCron`): one
    apsw file per agent, WAL + ``synchronous=NORMAL``, each firing UPDATE state + INSERT
    history + COMMIT, at most 256 files open (least recently used closed first), so with
    1 000 agents due at once every firing opens its file, commits one versioned row and
    closes a file. Until issue 20 this ran on ``":memory:"`` against the bodies in a
    plain loop, which was not a floor of the same work. Target: ratio >= 0.5.

``lateness_real_clock_p50`` / ``_p99``
    The system clock, a file runtime (``durability="normal"``): 1 000 agents each arm
    one schedule due at the same instant; lateness is when the callback started minus
    when it was due, in milliseconds; the median over rounds of each round's p50 and p99.
    Reported as values, no floor.

``lateness_awake_p99``
    The same with the agents awake: ``max_open`` above the agent count and every agent
    woken (a message) before arming, so no store opens when the schedules come due.
    Target: <= 10 ms. Floor (issue 20): the same firings written by hand on awake files
    (:class:`~agentbook.bench.floors.HandAlarms`): each agent in turn takes its due row,
    runs the callback and commits, so the k-th callback starts after k-1 commits; its p99
    is what serial durable firings cost on the machine.

``firing_us``
    What one firing costs, and how much of it is SQLite (issue 20's profile): 1 000 awake
    agents as for ``lateness_awake``, one schedule each due at one instant; the figure is
    the time between the first and the last callback's start over the firings between
    them, in microseconds (firings run one after another, so this is one firing's whole
    cost). Floor: the same firings' SQL - the statements agentbook's connections ran in an
    extra round, recorded with their bindings, replayed by hand on copies of the files
    taken before that round (:class:`~agentbook.bench.floors.ReplayedSql`). The ratio is
    how many times the SQL alone agentbook's firing takes. Reported, no target.

``call_p99_during_storm_ms``
    Fairness (issue 20): 1 000 agents (default settings: file runtime, ``max_open=256``)
    each arm 10 one-shot schedules due at the same instant - a storm of 10 000 firings -
    while a cell awaits ``probe.inc()`` on an unrelated agent again and again, from the
    instant they are due until the last one has run; the figure is the p99 of those calls
    in milliseconds. Floor: the same calls' p99 with no storm (a fixed number of calls).
    Interleaved rounds, medians. Target: <= 5 ms (the issue: "never delays an unrelated
    awaited call by more than a few ms").
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from typing import Any

import agentbook as ab

from .agents import BenchCounter
from .floors import HandAlarms, HandCron, ReplayedSql
from .report import Result, Target
from .timing import Sizes, check, interleave

__all__ = ["BenchAlarm", "BenchCron", "bench_cron_day", "bench_firing_split", "bench_lateness",
           "bench_lateness_awake", "bench_storm", "tick_body"]

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

    @ab.callable
    async def storm(self, at: float, count: int) -> None:
        """Ring *count* times at epoch second *at* (one schedule each)."""
        for _ in range(count):
            await self.schedule(max(0.0, at - self.now()), "ring", idempotent=False)

    @ab.callable
    async def ping(self) -> int:
        """Wake up (open the store); returns the rings so far."""
        return int(self.state["rings"])

    async def ring(self) -> None:
        """Record the lateness (now - due) of this occurrence."""
        occurrence = self.occurrence
        assert occurrence is not None
        _LATE.append(time.time() - occurrence.due)
        self.set_state({"rings": self.state["rings"] + 1})


async def bench_cron_day(sz: Sizes, folder: str) -> list[Result]:
    """A simulated day of cron firings on files vs the same firings written by hand."""
    agents, hours, rounds = sz.cron_agents, sz.cron_hours, sz.cron_rounds
    check(hours % rounds == 0, "the day splits into whole-hour rounds")
    step = hours // rounds
    ticks = step * 12  # every five minutes
    clock = ab.VirtualClock()
    rt = ab.Runtime(os.path.join(folder, "cron"), clock=clock, durability="normal")
    hand = HandCron(os.path.join(folder, "cron-floor"), agents, rt.max_open)
    try:
        refs = [rt.get(BenchCron, f"cron-{i}") for i in range(agents)]
        for start in range(0, agents, 100):
            await asyncio.gather(*(r.start() for r in refs[start:start + 100]))
        floor_now = [clock.now()]

        async def mine() -> float:
            t0 = time.perf_counter()
            await clock.advance(hours=step)
            return agents * ticks / (time.perf_counter() - t0)

        def floor() -> float:
            t0 = time.perf_counter()
            floor_now[0] = hand.day(ticks, floor_now[0])
            return agents * ticks / (time.perf_counter() - t0)

        pairs = await interleave(mine, floor, rounds, warmup=False)
        fired = sum(r.state["n"] for r in refs)
        check(fired == agents * ticks * rounds, f"every agent fired every 5 minutes ({fired})")
        check(hand.fired() == fired, "the floor committed as many firings")
    finally:
        await rt.aclose()
        hand.close()
    return [Result.from_rounds(
        "cron_day_firings", "firings/s", pairs, Target("ratio", ">=", 0.5),
        f"{agents:,} agents x '{_EVERY_5}' over {hours} simulated hours ({fired:,} firings), "
        f"{rounds} rounds of {step} h on a VirtualClock; file runtime (durability normal), "
        f"max_open={rt.max_open}; floor: the same firings by hand, a file per agent (WAL, "
        f"NORMAL), UPDATE state + INSERT history + COMMIT each, at most {rt.max_open} files "
        "open (LRU: open, commit, close per firing)")]


async def _arm_rounds(refs: list[ab.AgentRef], rounds: int, arm: str, count: int,
                      during: Any = None) -> list[list[float]]:
    """Rounds of: every ref arms *count* schedules due at one instant (``ref.<arm>``),
    then wait until they all rang. Returns each round's lateness in ms (sorted).
    *during*: an async function run from the due instant until the last ring, whose
    result is appended to the round's list instead of the lateness."""
    n = len(refs) * count
    out: list[list[float]] = []
    arm_time = 0.003 * n
    while len(out) < rounds:
        _LATE.clear()
        at = time.time() + max(0.2, 2 * arm_time + 0.2)
        t0 = time.perf_counter()
        for start in range(0, len(refs), 100):
            chunk = refs[start:start + 100]
            if count == 1:
                await asyncio.gather(*(getattr(r, arm)(at) for r in chunk))
            else:
                await asyncio.gather(*(getattr(r, arm)(at, count) for r in chunk))
        arm_time = time.perf_counter() - t0
        armed_in_time = time.time() < at
        deadline = at + 300
        figure = math.nan
        if during is not None:
            await asyncio.sleep(max(0.0, at - time.time()))
            figure = await during(lambda end=deadline: len(_LATE) >= n or time.time() > end)
        while len(_LATE) < n and time.time() < deadline:
            await asyncio.sleep(0.01)
        check(len(_LATE) == n, f"every alarm rang ({len(_LATE)} of {n})")
        if not armed_in_time:
            continue  # arming ran past the due time: redo the round with more margin
        out.append([figure] if during is not None else sorted(x * 1000 for x in _LATE))
    return out


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


async def bench_lateness(sz: Sizes, folder: str) -> list[Result]:
    """Lateness of many schedules due in the same second, on the real clock."""
    n = sz.late_n
    rt = ab.Runtime(os.path.join(folder, "lateness"), durability="normal")
    try:
        refs = [rt.get(BenchAlarm, f"alarm-{i}") for i in range(n)]
        rounds = await _arm_rounds(refs, sz.late_rounds, "arm", 1)
    finally:
        await rt.aclose()
    p50s = [statistics.median(r) for r in rounds]
    p99s = [_p99(r) for r in rounds]
    note = (f"{n:,} schedules on {n:,} agents due in the same second; file runtime "
            f"(durability normal), system clock, default max_open={rt.max_open}; median of "
            f"{len(p50s)} rounds")
    return [Result("lateness_real_clock_p50", statistics.median(p50s), "ms", None, None, None,
                   len(p50s), note, samples=[(x, math.nan) for x in p50s]),
            Result("lateness_real_clock_p99", statistics.median(p99s), "ms", None, None, None,
                   len(p99s), note + "; p99 of each round (statistics.quantiles)",
                   samples=[(x, math.nan) for x in p99s])]


async def bench_lateness_awake(sz: Sizes, folder: str) -> list[Result]:
    """Lateness of many schedules due in the same second, every agent awake, vs the same
    firings written by hand (:class:`~agentbook.bench.floors.HandAlarms`), interleaved."""
    n = sz.late_n
    rt = ab.Runtime(os.path.join(folder, "awake"), durability="normal", max_open=n + 16)
    hand = await asyncio.to_thread(HandAlarms, os.path.join(folder, "awake-floor"), n)
    try:
        refs = [rt.get(BenchAlarm, f"alarm-{i}") for i in range(n)]
        for start in range(0, n, 100):  # wake them all before arming
            await asyncio.gather(*(r.ping() for r in refs[start:start + 100]))

        async def mine() -> float:
            (late,) = await _arm_rounds(refs, 1, "arm", 1)
            p50s.append(statistics.median(late))
            return _p99(late)

        def floor() -> float:
            at = time.time() + 0.2 + 0.003 * n
            hand.arm(at)
            return _p99(hand.ring(at))

        p50s: list[float] = []
        pairs = await interleave(mine, floor, sz.late_rounds, warmup=False)
    finally:
        await rt.aclose()
        hand.close()
    return [Result.from_rounds(
        "lateness_awake_p99", "ms", pairs, Target("value", "<=", 10),
        f"{n:,} schedules on {n:,} awake agents (max_open={n + 16}, each woken before "
        f"arming) due in the same second; file runtime (durability normal), system clock; "
        f"median of {len(pairs)} rounds' p99 (p50 {statistics.median(p50s):.1f} ms); floor: "
        "the same firings by hand, one open file per agent, each SELECT due + DELETE + "
        "UPDATE state + INSERT history + COMMIT in turn (the k-th starts after k-1 commits)")]


async def bench_firing_split(sz: Sizes, folder: str) -> list[Result]:
    """One firing's whole cost on awake agents vs its own SQL replayed by hand."""
    n = sz.late_n
    replay = ReplayedSql(os.path.join(folder, "split-sql"))
    replay.watch()
    rt = ab.Runtime(os.path.join(folder, "split"), durability="normal", max_open=n + 16)
    try:
        refs = [rt.get(BenchAlarm, f"alarm-{i}") for i in range(n)]
        for start in range(0, n, 100):  # wake them all before arming
            await asyncio.gather(*(r.ping() for r in refs[start:start + 100]))
        replay.unwatch()
        # a round whose statements are recorded: the files copied once armed (the event
        # loop blocked meanwhile: nothing fires), then every statement until the last commit
        _LATE.clear()
        at = time.time() + 0.5 + 0.004 * n
        for start in range(0, n, 100):
            await asyncio.gather(*(r.arm(at) for r in refs[start:start + 100]))
        check(replay.copy(os.sep + BenchAlarm.__name__ + os.sep) == n,
              "every agent's file was copied")
        replay.recording(True)
        try:
            deadline = time.time() + 300
            while len(_LATE) < n and time.time() < deadline:
                await asyncio.sleep(0.01)
            check(len(_LATE) == n, f"every alarm rang ({len(_LATE)} of {n})")
            await rt.settle()  # (until the last callback's batch committed)
        finally:
            replay.recording(False)

        async def mine() -> float:
            (late,) = await _arm_rounds(refs, 1, "arm", 1)
            return (late[-1] - late[0]) * 1000 / (n - 1)

        pairs, per = await _against_replay(mine, replay, n, min(3, sz.late_rounds))
    finally:
        await rt.aclose()
        replay.close()
    cron = await _cron_split(sz, folder)
    return [Result.from_rounds(
        "firing_us", "us", pairs, None,
        f"one firing's whole cost: {n:,} awake agents, one schedule each due at one instant, "
        f"the time from the first callback's start to the last's over the firings between "
        f"(median of {len(pairs)} rounds); floor: the same firings' SQL ({per:.1f} "
        "statements a firing, recorded with their bindings from agentbook's connections) "
        "replayed by hand on copies of the files"), cron]


async def _against_replay(mine: Any, replay: ReplayedSql, firings: int,
                          rounds: int) -> tuple[list[tuple[float, float]], float]:
    """Interleaved rounds of *mine* (us a firing) and of the recorded SQL replayed by hand
    (us a firing); also how many statements a firing ran."""
    statements = [0]

    def floor() -> float:
        statements[0], wall, _cpu = replay.replay()
        return wall * 1e6 / firings

    pairs = await interleave(mine, floor, rounds, warmup=False)
    return pairs, statements[0] / firings


async def _cron_split(sz: Sizes, folder: str) -> Result:
    """An hour of ``*/5`` cron jobs on awake agents (VirtualClock) per firing, against the
    same firings' SQL replayed by hand."""
    agents = sz.cron_agents
    replay = ReplayedSql(os.path.join(folder, "split-cron-sql"))
    replay.watch()
    clock = ab.VirtualClock()
    rt = ab.Runtime(os.path.join(folder, "split-cron"), clock=clock, durability="normal",
                    max_open=agents + 16)
    try:
        refs = [rt.get(BenchCron, f"cron-{i}") for i in range(agents)]
        for start in range(0, agents, 100):
            await asyncio.gather(*(r.start() for r in refs[start:start + 100]))
        replay.unwatch()
        await clock.advance(minutes=5)  # (every agent fired once: warm)
        check(replay.copy(os.sep + BenchCron.__name__ + os.sep) == agents,
              "every agent's file was copied")
        replay.recording(True)
        try:
            await clock.advance(hours=1)
        finally:
            replay.recording(False)
        firings = agents * 12

        async def mine() -> float:
            t0 = time.perf_counter()
            await clock.advance(hours=1)
            return (time.perf_counter() - t0) * 1e6 / firings

        pairs, per = await _against_replay(mine, replay, firings, min(3, sz.late_rounds))
    finally:
        await rt.aclose()
        replay.close()
    return Result.from_rounds(
        "firing_us_cron", "us", pairs, None,
        f"an hour of '{_EVERY_5}' jobs on {agents:,} awake agents (max_open={agents + 16}) on "
        f"a VirtualClock, per firing (median of {len(pairs)} rounds); floor: the same "
        f"firings' SQL ({per:.1f} statements a firing, recorded from "
        "agentbook's connections) replayed by hand on copies of the files")


async def bench_storm(sz: Sizes, folder: str) -> list[Result]:
    """p99 of an unrelated awaited call while a storm of due schedules fires, vs none."""
    agents, per = sz.storm_agents, sz.storm_per_agent
    rt = ab.Runtime(os.path.join(folder, "storm"), durability="normal")
    calls: list[int] = []
    try:
        refs = [rt.get(BenchAlarm, f"storm-{i}") for i in range(agents)]
        probe = rt.get(BenchCounter, "probe")
        await probe.inc()

        async def probe_until(done: Any) -> float:
            latencies: list[float] = []
            while not latencies or not done():  # (at least one call, however short the storm)
                t0 = time.perf_counter()
                await probe.inc()
                latencies.append((time.perf_counter() - t0) * 1000)
            calls.append(len(latencies))
            return _p99(latencies)

        async def storm() -> float:
            (figure,), = await _arm_rounds(refs, 1, "storm", per, during=probe_until)
            return figure

        async def quiet() -> float:
            latencies = []
            for _ in range(sz.storm_quiet_n):
                t0 = time.perf_counter()
                await probe.inc()
                latencies.append((time.perf_counter() - t0) * 1000)
            return _p99(latencies)

        pairs = await interleave(storm, quiet, sz.storm_rounds, warmup=False)
    finally:
        await rt.aclose()
    return [Result.from_rounds(
        "call_p99_during_storm_ms", "ms", pairs, Target("value", "<=", 5),
        f"p99 of a cell's sequential `await probe.inc()` (another agent) while {agents:,} "
        f"agents x {per} one-shot schedules due at one instant fire ({agents * per:,} "
        f"firings; file runtime, durability normal, max_open={rt.max_open}; median "
        f"{statistics.median(calls):.0f} calls per storm); floor: the same call's p99 with "
        f"no storm ({sz.storm_quiet_n} calls)")]
