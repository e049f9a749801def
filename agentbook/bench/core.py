"""The measurements of ``agentbook bench``: agentbook against its floors, in one run.

Each benchmark builds both sides, then runs them interleaved - one round of agentbook,
one round of the floor, the order swapped every round so slow drift of a shared machine
cancels - and reports the medians and the median of the per-round ratios (BENCH.md).
Floors are in :mod:`agentbook.bench.floors`; peers (LangGraph) are optional.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import agentbook as ab

from .agents import BenchCounter
from .analytics import bench_analytics
from .approval import bench_approvals
from .chatbench import WIRE_NAMES, bench_chat, bench_chat_wire
from .cron import bench_cron_day, bench_firing_split, bench_lateness, bench_lateness_awake, bench_storm
from .floors import HandAgent, HandRoundRobin
from .raybench import NAMES as RAY_NAMES
from .raybench import bench_ray
from .raynodes import NAMES as RAY_NODE_NAMES
from .raynodes import bench_ray_nodes
from .report import Result, Target
from .schedules import bench_schedules
from .timing import Sizes, check, interleave, rate
from .travel import bench_time_travel, bench_whatif
from .workflows import NAMES as WF_NAMES
from .workflows import bench_recovery, bench_step_overhead, bench_steps

__all__ = ["GROUPS", "Sizes", "run_suite", "select_groups"]


# -- 1. durable messages through one agent ------------------------------------------------
def awaited(ref: ab.AgentRef, n: int) -> Callable[[], Awaitable[float]]:
    """A side sending *n* sequential ``await ref.inc()``; returns messages per second."""

    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await ref.inc()
        return rate(n, t0)

    return run


async def bench_durable(sz: Sizes, folder: str) -> list[Result]:
    """Sequential ``await ref.inc()`` on a file runtime vs raw SQLite, commit per message."""
    n = sz.durable_n
    rt = ab.Runtime(os.path.join(folder, "durable"), durability="normal")
    hand = HandAgent(os.path.join(folder, "durable-floor.db"))
    try:
        ref = rt.get(BenchCounter, "one")
        await ref.inc()

        def floor() -> float:
            t0 = time.perf_counter()
            hand.messages(n)
            return rate(n, t0)

        pairs = await interleave(awaited(ref, n), floor, sz.rounds, sz.warmup)
        check(ref.state["n"] == hand.state["n"] + 1, "both sides applied every message")
    finally:
        await rt.aclose()
        hand.close()
    return [Result.from_rounds(
        "durable_msgs", "msg/s", pairs, Target("ratio", ">=", 0.5),
        f"{n} sequential awaited messages/round; floor: apsw WAL NORMAL, "
        "UPDATE state + INSERT history, COMMIT per message")]


async def bench_langgraph(sz: Sizes, folder: str) -> list[Result]:
    """The same sequential durable messages against LangGraph + SqliteSaver invokes."""
    from .peers import load_peer

    target = Target("ratio", ">=", 30)
    peer_mod = load_peer("langgraph")
    if isinstance(peer_mod, str):
        return [Result.skip("durable_vs_langgraph", "msg/s", peer_mod, target)]
    n, m = sz.durable_n, sz.langgraph_n
    rt = ab.Runtime(os.path.join(folder, "vs-langgraph"), durability="normal")
    peer = peer_mod.LangGraphPeer(os.path.join(folder, "langgraph.db"))
    try:
        ref = rt.get(BenchCounter, "one")
        await ref.inc()

        def langgraph() -> float:
            t0 = time.perf_counter()
            peer.invoke(m)
            return rate(m, t0)

        pairs = await interleave(awaited(ref, n), langgraph, sz.langgraph_rounds, sz.warmup)
    finally:
        await rt.aclose()
        peer.close()
    return [Result.from_rounds(
        "durable_vs_langgraph", "msg/s", pairs, target,
        f"peer: LangGraph 1-node graph + SqliteSaver (WAL, NORMAL), {m} invokes/round")]


# -- 2. bursts to one agent ----------------------------------------------------------------
async def bench_burst(sz: Sizes, folder: str) -> list[Result]:
    """``ref.send("inc")`` N times then await the last one, vs raw SQLite per batch."""
    n = sz.burst_n
    rt = ab.Runtime(os.path.join(folder, "burst"), durability="normal")
    hand = HandAgent(os.path.join(folder, "burst-floor.db"))
    try:
        ref = rt.get(BenchCounter, "one")
        await ref.inc()

        async def mine() -> float:
            start = ref.version
            t0 = time.perf_counter()
            for _ in range(n - 1):
                ref.send("inc")
            await ref.inc()
            figure = rate(n, t0)
            check(ref.version == start + n, "every sent message was applied")
            return figure

        def floor() -> float:
            t0 = time.perf_counter()
            hand.burst(n, rt.max_batch)
            return rate(n, t0)

        pairs = await interleave(mine, floor, sz.rounds, sz.warmup)
    finally:
        await rt.aclose()
        hand.close()
    return [Result.from_rounds(
        "burst_send", "msg/s", pairs, Target("ratio", ">=", 0.5),
        f"{n} sends then the last awaited; floor: one COMMIT per {rt.max_batch} messages "
        "(max_batch), one history row each")]


# -- 3. round robin over many agents -------------------------------------------------------
async def bench_round_robin(sz: Sizes, folder: str) -> list[Result]:
    """Sequential awaited messages to agents 0, 1, 2 ... round robin, max_open files open."""
    count, n, max_open = sz.rr_agents, sz.rr_n, sz.rr_open
    rt = ab.Runtime(os.path.join(folder, "rr"), durability="normal", max_open=max_open)
    hand = HandRoundRobin(os.path.join(folder, "rr-floor"), count, max_open)
    try:
        refs = [rt.get(BenchCounter, f"rr-{i}") for i in range(count)]
        for start in range(0, count, 100):
            await asyncio.gather(*(r.inc() for r in refs[start:start + 100]))
        hand.messages(count)
        cursor = [0, 0]

        async def mine() -> float:
            k = cursor[0]
            t0 = time.perf_counter()
            for i in range(k, k + n):
                await refs[i % count].inc()
            cursor[0] += n
            return rate(n, t0)

        def floor() -> float:
            t0 = time.perf_counter()
            hand.messages(n, cursor[1])
            cursor[1] += n
            return rate(n, t0)

        pairs = await interleave(mine, floor, sz.rr_rounds, warmup=False)
    finally:
        await rt.aclose()
        hand.close()
    return [Result.from_rounds(
        "round_robin_1000", "msg/s", pairs, None,
        f"{count} agents, max_open={max_open} on both sides (LRU: every message reopens a "
        f"file), {n} awaited messages/round; floor: one file per agent, COMMIT per message")]


# -- 4. hibernated agents ------------------------------------------------------------------
async def bench_memory(sz: Sizes, folder: str) -> list[Result]:
    """N agents messaged once then hibernated: memory, disk and creation rate per agent."""
    from .memory import measure

    n, floor_n = sz.memory_agents, sz.memory_floor_agents
    mine, floor = await asyncio.to_thread(measure, n, floor_n, folder, sz.progress)
    check(mine["hibernated"] >= 1, "rt.hibernate() put the open agents to sleep")
    of = f" ({floor_n} floor agents)" if floor_n != n else ""
    mem = Result.from_rounds(
        "hibernated_memory", "B/agent", [(mine["rss"], floor["rss"])],
        Target("value", "<=", 1024),
        f"{n} agents; RSS delta/N after gc + malloc_trim (before trim {mine['raw']:.0f}, "
        f"Python blocks {mine['blocks']:.2f}/agent); floor: in-memory name+state registry{of}")
    disk = Result.from_rounds(
        "hibernated_disk", "B/agent", [(mine["disk"], floor["disk"])], None,
        f"allocated bytes of the runtime folder/N; floor: hand-made file (2 tables, 2 rows){of}")
    creation = Result.from_rounds(
        "agent_creation", "agents/s", [(mine["rate"], floor["rate"])], None,
        "first message to a new agent (file + catalog row), chunks of 100 awaited; "
        f"floor: create file, schema, 2 rows, close{of}")
    return [mem, disk, creation]


# -- 5. events with nobody listening --------------------------------------------------------
async def bench_events(sz: Sizes, folder: str) -> list[Result]:
    """Live delivery with nobody subscribed vs ``Runtime(events=False)`` (both keep no
    events on record), and events on record (the default) vs not (``events_keep=0``)."""
    n = sz.events_n
    results = []
    options: tuple[tuple[str, dict[str, Any], dict[str, Any], Target, str], ...] = (
        ("events_overhead", {"events": True, "events_keep": 0}, {"events": False},
         Target("ratio", ">=", 0.97), "live events unsubscribed; floor: events=False"),
        ("durable_events_overhead", {}, {"events_keep": 0}, Target("ratio", ">=", 0.8),
         "events on record (2 rows a message: rpc, state:update); floor: events_keep=0"),
    )
    for label, a, b, target, what in options:
        on = ab.Runtime(":memory:", **a)
        off = ab.Runtime(":memory:", **b)
        try:
            refs = (on.get(BenchCounter, "one"), off.get(BenchCounter, "one"))
            for ref in refs:
                await ref.inc()
            pairs = await interleave(awaited(refs[0], n), awaited(refs[1], n),
                                     sz.events_rounds, sz.warmup)
        finally:
            await on.aclose()
            await off.aclose()
        results.append(Result.from_rounds(
            label, "msg/s", pairs, target,
            f"{sz.events_rounds} rounds of {n} awaited messages on ':memory:' runtimes; {what}"))
    return results


# -- 6. import time ---------------------------------------------------------------------------
def _run_python(code: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0


async def bench_import(sz: Sizes, folder: str) -> list[Result]:
    """``python -c "import agentbook"`` vs ``python -c "pass"`` in fresh processes."""
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    pairs = await interleave(lambda: _run_python("import agentbook", env),
                             lambda: _run_python("pass", env), sz.import_rounds, sz.warmup)
    added = statistics.median(a - b for a, b in pairs)
    return [Result.from_rounds(
        "import_time", "s", pairs, Target("value", "<=", 0.25),
        f"wall time of the whole process; the import itself adds {added * 1000:.0f} ms")]


#: Benchmark groups, in the order they run; each yields one or more results.
GROUPS: dict[str, tuple[Callable[[Sizes, str], Awaitable[list[Result]]], tuple[str, ...]]] = {
    "durable_msgs": (bench_durable, ("durable_msgs",)),
    "durable_vs_langgraph": (bench_langgraph, ("durable_vs_langgraph",)),
    "burst_send": (bench_burst, ("burst_send",)),
    "round_robin_1000": (bench_round_robin, ("round_robin_1000",)),
    "hibernated_memory": (bench_memory, ("hibernated_memory", "hibernated_disk", "agent_creation")),
    "events_overhead": (bench_events, ("events_overhead", "durable_events_overhead")),
    "import_time": (bench_import, ("import_time",)),
    "schedules": (bench_schedules, ("schedules_pending_memory", "schedule_add_cost")),
    "cron_day_firings": (bench_cron_day, ("cron_day_firings",)),
    "lateness_real_clock": (bench_lateness, ("lateness_real_clock_p50",
                                             "lateness_real_clock_p99")),
    "lateness_awake": (bench_lateness_awake, ("lateness_awake_p99",)),
    "firing_split": (bench_firing_split, ("firing_us", "firing_us_cron")),
    "call_during_storm": (bench_storm, ("call_p99_during_storm_ms",)),
    "approval_round_trip": (bench_approvals, ("approval_round_trip", "approval_vs_langgraph")),
    "time_travel": (bench_time_travel, ("at_state_ms", "at_sql_ms", "rewind_ms", "fork_ms",
                                        "at_state_vs_langgraph", "at_state_vs_langgraph_filter")),
    "whatif": (bench_whatif, ("bisect_ms", "sweep_step_ms")),
    "ray_msgs": (bench_ray, RAY_NAMES),
    "ray_nodes": (bench_ray_nodes, RAY_NODE_NAMES),
    "chat_turn": (bench_chat, ("chat_turn",)),
    "chat_wire": (bench_chat_wire, WIRE_NAMES),
    "analytics": (bench_analytics, ("catchup_rows_per_s", "p99_by_method_ms")),
    "workflow_steps": (bench_steps, WF_NAMES["workflow_steps"]),
    "workflow_step_overhead": (bench_step_overhead, WF_NAMES["workflow_step_overhead"]),
    "workflow_recovery": (bench_recovery, WF_NAMES["workflow_recovery"]),
}


def select_groups(only: list[str] | None) -> list[str]:
    """The groups to run for ``--only`` names (group or result names).

    Raises:
        ValueError: a name is not a benchmark (the message lists the valid ones).
    """
    if not only:
        return list(GROUPS)
    by_result = {r: g for g, (_, results) in GROUPS.items() for r in results}
    chosen = set()
    for name in only:
        group = name if name in GROUPS else by_result.get(name)
        if group is None:
            raise ValueError(f"unknown benchmark {name!r}; choose from: {', '.join(by_result)}")
        chosen.add(group)
    return [g for g in GROUPS if g in chosen]


async def run_suite(sz: Sizes, folder: str, groups: list[str],
                    log: Callable[[str], Any] = lambda s: None) -> list[Result]:
    """Run the chosen groups one after another; a failing group is reported, not raised.

    Each group works in its own subfolder of *folder*, removed when the group is done.
    """
    results: list[Result] = []
    for group in groups:
        fn, names = GROUPS[group]
        log(f"{group} ...")
        t0 = time.perf_counter()
        where = os.path.join(folder, group)
        try:
            os.makedirs(where, exist_ok=True)
            results.extend(await fn(sz, where))
        except Exception as exc:  # one broken benchmark must not hide the rest
            import traceback

            traceback.print_exc()
            results.extend(Result.skip(name, "", f"error: {type(exc).__name__}: {exc}")
                           for name in names)
        log(f"{group} done in {time.perf_counter() - t0:.1f} s")
        await asyncio.to_thread(shutil.rmtree, where, True)
    return results
