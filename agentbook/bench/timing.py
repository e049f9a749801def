"""Sizes and timing helpers shared by the benchmarks: interleaved rounds, rates, checks."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Side", "Sizes", "check", "in_flight", "interleave", "interleave_many", "rate",
           "run_coroutine"]

#: One side of a comparison: a function returning a figure, or an awaitable of one.
Side = Callable[[], "float | Awaitable[float]"]


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does (``Sizes.full()`` or ``Sizes.quick()``)."""

    rounds: int
    durable_n: int
    langgraph_rounds: int
    langgraph_n: int
    burst_n: int
    rr_agents: int
    rr_open: int
    rr_n: int
    rr_rounds: int
    memory_agents: int
    memory_floor_agents: int
    events_rounds: int
    events_n: int
    import_rounds: int
    #: schedules: agents x schedules each for the big and the small pending set; adds/round.
    sched_agents: int
    sched_per_agent: int
    sched_small_agents: int
    sched_adds: int
    #: cron: agents, simulated hours (split into cron_rounds slices).
    cron_agents: int
    cron_hours: int
    cron_rounds: int
    #: real-clock lateness: schedules due in the same second, rounds.
    late_n: int
    late_rounds: int
    #: approvals: round trips per round (agentbook and floor; LangGraph).
    approval_n: int
    approval_lg_n: int
    #: time travel: history lengths, distance from head, ops per round, LangGraph checkpoints.
    tt_versions: tuple[int, ...]
    tt_distance: int
    tt_ops: int
    tt_lg_checkpoints: int
    #: Ray: run it at all, messages per round (sequential, in flight), agents for memory.
    ray: bool
    ray_seq_n: int
    ray_flight_n: int
    ray_mem_agents: int
    #: chat turns per round.
    chat_n: int
    #: workflows: runs per round (one after another) and do-steps per run; recovery: runs
    #: in flight at the kill, the agents they are spread over, kill-and-restart rounds.
    wf_runs: int
    wf_steps: int
    wf_recovery_runs: int
    wf_recovery_agents: int
    wf_recovery_rounds: int
    #: storm: agents x one-shot schedules each due at one instant, rounds, and the calls
    #: the floor (no storm) makes per round.
    storm_agents: int = 1000
    storm_per_agent: int = 10
    storm_rounds: int = 5
    storm_quiet_n: int = 2000
    warmup: bool = True
    progress: bool = True

    @classmethod
    def full(cls) -> Sizes:
        """The sizes of the issue (a few minutes in all)."""
        return cls(rounds=7, durable_n=4000, langgraph_rounds=5, langgraph_n=300,
                   burst_n=10_000, rr_agents=1000, rr_open=256, rr_n=1000, rr_rounds=5,
                   memory_agents=100_000, memory_floor_agents=20_000, events_rounds=21,
                   events_n=4000, import_rounds=9,
                   sched_agents=10_000, sched_per_agent=10, sched_small_agents=100,
                   sched_adds=300, cron_agents=1000, cron_hours=24, cron_rounds=6,
                   late_n=1000, late_rounds=5, approval_n=200, approval_lg_n=40,
                   tt_versions=(100, 1000, 10_000), tt_distance=50, tt_ops=20,
                   tt_lg_checkpoints=10_000, ray=True, ray_seq_n=400, ray_flight_n=1500,
                   ray_mem_agents=10_000, chat_n=100, wf_runs=100, wf_steps=10,
                   wf_recovery_runs=1000, wf_recovery_agents=10, wf_recovery_rounds=3,
                   storm_agents=1000, storm_per_agent=10, storm_rounds=5, storm_quiet_n=2000)

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes that only check every benchmark still runs (about half a minute on
        two shared cores, most of it starting processes and peers); the figures mean
        nothing, so no target is judged."""
        return cls(rounds=2, durable_n=100, langgraph_rounds=2, langgraph_n=10,
                   burst_n=300, rr_agents=30, rr_open=8, rr_n=60, rr_rounds=2,
                   memory_agents=50, memory_floor_agents=50, events_rounds=2,
                   events_n=100, import_rounds=2,
                   sched_agents=100, sched_per_agent=10, sched_small_agents=10,
                   sched_adds=20, cron_agents=50, cron_hours=2, cron_rounds=2,
                   late_n=50, late_rounds=2, approval_n=10, approval_lg_n=3,
                   tt_versions=(60, 120, 300), tt_distance=50, tt_ops=2,
                   tt_lg_checkpoints=300, ray=False, ray_seq_n=20, ray_flight_n=100,
                   ray_mem_agents=100, chat_n=5, wf_runs=5, wf_steps=10,
                   wf_recovery_runs=20, wf_recovery_agents=2, wf_recovery_rounds=1,
                   storm_agents=40, storm_per_agent=5, storm_rounds=2, storm_quiet_n=50,
                   warmup=False, progress=False)


def rate(count: int, t0: float) -> float:
    """*count* operations since ``t0 = time.perf_counter()``, per second."""
    return count / max(time.perf_counter() - t0, 1e-9)


async def _call(side: Side) -> float:
    gc.collect()
    value = side()
    if inspect.isawaitable(value):
        value = await value
    return float(value)


async def interleave(a: Side, b: Side, rounds: int,
                     warmup: bool = True) -> list[tuple[float, float]]:
    """Run *a* and *b* alternately, *rounds* times each; returns ``[(a_i, b_i), ...]``.

    Round *i* runs ``a`` then ``b`` when *i* is even and ``b`` then ``a`` when it is odd.
    With *warmup*, one untimed round of each comes first.
    """
    if warmup:
        await _call(a)
        await _call(b)
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            x = await _call(a)
            y = await _call(b)
        else:
            y = await _call(b)
            x = await _call(a)
        pairs.append((x, y))
    return pairs


async def interleave_many(sides: Sequence[Side], rounds: int,
                          warmup: bool = True) -> list[tuple[float, ...]]:
    """Like :func:`interleave` for any number of sides: round *i* starts with side
    ``i % len(sides)`` and goes on in order, so each side runs first equally often.

    Returns one tuple per round, figures in the order of *sides*.
    """
    count = len(sides)
    if warmup:
        for side in sides:
            await _call(side)
    out = []
    for i in range(rounds):
        figures = [0.0] * count
        for j in range(count):
            k = (i + j) % count
            figures[k] = await _call(sides[k])
        out.append(tuple(figures))
    return out


async def in_flight(call: Callable[[int], Awaitable[object]], n: int, width: int) -> None:
    """Make *n* calls ``call(0) .. call(n-1)`` keeping *width* of them in flight."""
    numbers = iter(range(n))

    async def worker() -> None:
        for i in numbers:
            await call(i)

    await asyncio.gather(*(worker() for _ in range(min(width, n))))


def check(ok: bool, what: str) -> None:
    """Raise unless *ok*: a benchmark that did not do its work must not report a figure."""
    if not ok:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


def run_coroutine(coro: Any) -> Any:
    """``asyncio.run`` - in a helper thread when an event loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="agentbook-bench")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
