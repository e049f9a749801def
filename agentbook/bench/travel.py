"""Time travel at any history length: ``at(k)``, ``rewind(k)``, ``fork(at=k)``.

Agents with 100, 1 000 and 10 000 versions (``Sizes.tt_versions``), every version changing
the state *and* one row of a 100-row table (so the tables stay the same size and only the
history grows). Each operation goes to ``k = head - 50`` (``tt_distance``) and is timed
on the three agents in the same round, in rotating order; figures are milliseconds per
operation, and the ratio is cost at the longest history over cost at the shortest
(target: at most 2 - the cost must not follow the history's length).

* ``at_state_ms``: ``ref.at(k).state``;
* ``at_sql_ms``: ``ref.at(k).sql("SELECT v FROM items WHERE id = ?")`` on a fresh view
  (the tables as they were at k are made in memory);
* ``rewind_ms``: ``await ref.rewind(k)`` - each on a fresh (awake) copy of the agent, so
  every rewind crosses the same 50 ordinary versions;
* ``fork_ms``: ``await ref.fork(name, at=k)``.

What-if tools (group ``whatif``, issue 22):

* ``bisect_ms``: ``await ref.bisect(lambda v: v.state["n"] >= bad)`` over the longest
  history (10 000 versions), ``bad`` drawn anew each round; the floor is a linear scan
  (``ref.at(k).state`` from the first version until it holds) for the same ``bad``, in the
  same round (target: ratio at most 0.05);
* ``sweep_step_ms``: ``ab.sweep`` of 3 variants (two state patches and the recorded run)
  over the first ``tt_versions[0]`` versions, per replayed step; the floor is one plain
  ``ref.replay`` of the same versions, per step (target: ratio at most 1.5 - a variant's
  step costs no more than a replayed one).

``at_state_vs_langgraph``: "the state at step k" at the longest history against
LangGraph walking ``get_state_history`` to that step over a thread of as many
checkpoints (``tt_lg_checkpoints``), k in the middle of the history (where a walk from the
newest ends on average), in look-ups per second (target: at least 50x).
``at_state_vs_langgraph_filter`` is the same against ``get_state_history(filter={"step":
k})``, which SqliteSaver runs as a scan in SQL (reported, no target).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import agentbook as ab

from .report import Result, Target
from .timing import Sizes, check, interleave_many

__all__ = ["BenchLedger", "bench_time_travel", "bench_whatif", "grow"]

_ROWS = 100
_TARGET = Target("ratio", "<=", 2)


class BenchLedger(ab.Agent):
    """Every step changes the state and one row of ``items`` (100 rows at most)."""

    initial_state = {"n": 0}

    async def on_start(self) -> None:
        """The agent's table."""
        self.sql("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")

    @ab.callable
    async def step(self) -> int:
        """Count one more and write it into row ``n % 100``."""
        n = self.state["n"] + 1
        self.sql("INSERT INTO items(id, v) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET"
                 " v = excluded.v", n % _ROWS, n)
        self.set_state({"n": n})
        return n


async def grow(ref: ab.AgentRef, versions: int) -> None:
    """Bring *ref* to exactly *versions* versions (sent in bursts, one awaited at the end)."""
    await ref.step()
    for _ in range(versions - ref.version - 1):
        ref.send("step")
    await ref.step()
    check(ref.version == versions, f"{ref!r} has {versions} versions")


def _per_op(count: int, fn: Callable[[int], Any]) -> Callable[[], float]:
    def side() -> float:
        t0 = time.perf_counter()
        for i in range(count):
            fn(i)
        return (time.perf_counter() - t0) * 1000 / count

    return side


def _per_op_async(count: int, fn: Callable[[int], Awaitable[Any]]) -> Callable[[], Awaitable[float]]:
    async def side() -> float:
        t0 = time.perf_counter()
        for i in range(count):
            await fn(i)
        return (time.perf_counter() - t0) * 1000 / count

    return side


def _result(name: str, rounds: list[tuple[float, ...]], sizes: tuple[int, ...], what: str,
            ops: int) -> Result:
    """Rounds are ordered like *sizes*; value = longest history, floor = shortest."""
    middle = "; ".join(f"{v:,} versions: {statistics.median(r[i] for r in rounds):.3g} ms"
                       for i, v in enumerate(sizes))
    return Result.from_rounds(
        name, "ms", [(r[-1], r[0]) for r in rounds], _TARGET,
        f"{what}, {ops} ops/round; value at {sizes[-1]:,} versions, floor at {sizes[0]:,} "
        f"({middle})")


async def bench_time_travel(sz: Sizes, folder: str) -> list[Result]:
    """``at(k)``, ``rewind(k)`` and ``fork(at=k)`` at three history lengths, and LangGraph."""
    sizes, d, ops = sz.tt_versions, sz.tt_distance, sz.tt_ops
    rt = ab.Runtime(os.path.join(folder, "timetravel"), durability="normal")
    try:
        bases = [rt.get(BenchLedger, f"base-{v}") for v in sizes]
        for ref, v in zip(bases, sizes, strict=True):
            await grow(ref, v)
        heads = [ref.version - d for ref in bases]
        view = bases[-1].at(heads[-1])
        check(view.state["n"] == heads[-1] - 1, "at(k).state is the state after version k")
        row = view.sql("SELECT v FROM items WHERE id = ?", (heads[-1] - 1) % _ROWS)
        check(int(row.v[0]) == heads[-1] - 1, "at(k).sql sees the row as it was at k")

        n_state, n_sql, n_fork = ops * 10, ops, max(1, ops // 4)

        def state_side(i: int) -> Callable[[], float]:
            return _per_op(n_state, lambda _: bases[i].at(heads[i]).state)

        def sql_side(i: int) -> Callable[[], float]:
            def op(j: int) -> None:
                past = bases[i].at(heads[i])
                past.sql("SELECT v FROM items WHERE id = ?", j % _ROWS)
                past.close()
            return _per_op(n_sql, op)

        forks = [0] * len(sizes)

        def fork_side(i: int) -> Callable[[], Awaitable[float]]:
            async def op(_: int) -> None:
                forks[i] += 1
                await bases[i].fork(f"fork-{sizes[i]}-{forks[i]}", at=heads[i])
            return _per_op_async(n_fork, op)

        results = []
        for name, side, count, what in (
                ("at_state_ms", state_side, n_state, "ref.at(head - %d).state"),
                ("at_sql_ms", sql_side, n_sql, "ref.at(head - %d).sql(one row), a fresh view each"),
                ("fork_ms", fork_side, n_fork, "await ref.fork(new name, at=head - %d)")):
            rounds = await interleave_many([side(i) for i in range(len(sizes))], sz.rounds,
                                           sz.warmup)
            results.append(_result(name, rounds, sizes, what % d, count))
        results.insert(2, await _rewinds(rt, sz))
        results.extend(await _versus_langgraph(sz, folder, bases[-1]))
        return results
    finally:
        await rt.aclose()


async def _rewinds(rt: ab.Runtime, sz: Sizes) -> Result:
    """Rewinds on fresh copies (a rewind changes the agent, so each needs its own)."""
    sizes, d = sz.tt_versions, sz.tt_distance
    per_round = max(1, sz.tt_ops // 10)
    total = (sz.rounds + (1 if sz.warmup else 0)) * per_round
    copies: list[list[ab.AgentRef]] = []
    for v in sizes:
        refs = [rt.get(BenchLedger, f"rewind-{v}-{j}") for j in range(total)]
        for ref in refs:
            await grow(ref, v)
        copies.append(refs)

    def side(i: int) -> Callable[[], Awaitable[float]]:
        async def op(_: int) -> None:
            ref = copies[i].pop()
            done = await ref.rewind(ref.version - d)
            check(done["rewound_to"] == sizes[i] - d, "the rewind went back to head - d")
        return _per_op_async(per_round, op)

    rounds = await interleave_many([side(i) for i in range(len(sizes))], sz.rounds, sz.warmup)
    return _result("rewind_ms", rounds, sizes,
                   f"await ref.rewind(head - {d}), each on a fresh copy of the agent",
                   per_round)


async def _versus_langgraph(sz: Sizes, folder: str, ref: ab.AgentRef) -> list[Result]:
    from .peers import load_peer

    names = ("at_state_vs_langgraph", "at_state_vs_langgraph_filter")
    peer_mod = load_peer("langgraph")
    if isinstance(peer_mod, str):
        return [Result.skip(names[0], "lookups/s", peer_mod, Target("ratio", ">=", 50)),
                Result.skip(names[1], "lookups/s", peer_mod)]
    t0 = time.perf_counter()
    peer = peer_mod.HistoryPeer(os.path.join(folder, "langgraph-history.db"),
                                sz.tt_lg_checkpoints)
    built = time.perf_counter() - t0
    try:
        step = peer.newest_step() // 2
        k = ref.version // 2
        check(peer.scan(step) == peer.filtered(step), "LangGraph's two searches agree")
        check(ref.at(k).state["n"] == k - 1, "at(k).state is the state after version k")
        ops = sz.tt_ops * 10

        def rate(count: int, fn: Callable[[], Any]) -> Callable[[], float]:
            def side() -> float:
                t = time.perf_counter()
                for _ in range(count):
                    fn()
                return count / (time.perf_counter() - t)
            return side

        rounds = await interleave_many(
            [rate(ops, lambda: ref.at(k).state), rate(1, lambda: peer.scan(step)),
             rate(ops, lambda: peer.filtered(step))], sz.rounds, sz.warmup)
        checkpoints = peer.count()
    finally:
        peer.close()
    where = (f"{ref.version:,} versions, k = {k:,}; LangGraph thread of {checkpoints:,} "
             f"checkpoints (built in {built:.1f} s), step {step:,}")
    return [
        Result.from_rounds(names[0], "lookups/s", [(r[0], r[1]) for r in rounds],
                           Target("ratio", ">=", 50),
                           f"ref.at(k).state vs walking get_state_history to step k; {where}"),
        Result.from_rounds(names[1], "lookups/s", [(r[0], r[2]) for r in rounds], None,
                           "ref.at(k).state vs get_state_history(filter={'step': k}) "
                           f"(a SQL scan of the thread); {where}"),
    ]


async def bench_whatif(sz: Sizes, folder: str) -> list[Result]:
    """``bisect`` against a linear scan, and a sweep's step against a plain replay's."""
    rt = ab.Runtime(os.path.join(folder, "whatif"), durability="normal")
    try:
        long = rt.get(BenchLedger, "long")
        await grow(long, sz.tt_versions[-1])
        short = rt.get(BenchLedger, "short")
        await grow(short, sz.tt_versions[0])
        return [await _bisects(sz, long), await _sweeps(sz, short)]
    finally:
        await rt.aclose()


async def _bisects(sz: Sizes, ref: ab.AgentRef) -> Result:
    pick = random.Random(22)
    first, head = ref.history_range()
    bad = [pick.randrange(first + 2, head) for _ in range(sz.rounds + 1)]
    turn = {"bisect": 0, "scan": 0}

    async def bisect_side() -> float:
        target = bad[turn["bisect"]]
        turn["bisect"] += 1
        t0 = time.perf_counter()
        found = await ref.bisect(lambda v: v.state["n"] >= target - 1)
        took = (time.perf_counter() - t0) * 1000
        check(found.version == target, f"bisect finds version {target}")
        return took

    def scan_side() -> float:
        target = bad[turn["scan"]]
        turn["scan"] += 1
        t0 = time.perf_counter()
        k = first
        while not ref.at(k).state["n"] >= target - 1:
            k += 1
        took = (time.perf_counter() - t0) * 1000
        check(k == target, f"the scan finds version {target}")
        return took

    rounds = await interleave_many([bisect_side, scan_side], sz.rounds, sz.warmup)
    return Result.from_rounds(
        "bisect_ms", "ms", [(r[0], r[1]) for r in rounds], Target("ratio", "<=", 0.05),
        f"await ref.bisect(state predicate) over {head:,} versions, the first bad one drawn "
        "each round; floor: a linear scan of ref.at(k).state to the same version")


async def _sweeps(sz: Sizes, ref: ab.AgentRef) -> Result:
    steps = ref.version - 1  # (version 1 is on_start: not replayed)
    variants = {"patched-1": {"patch": {"n": 1_000}}, "patched-2": {"patch": {"n": 2_000}},
                "recorded": None}
    made = {"sweep": 0, "replay": 0}

    async def sweep_side() -> float:
        made["sweep"] += 1
        t0 = time.perf_counter()
        frame = await ab.sweep(ref, 2, variants, prefix=f"sweep-{made['sweep']}")
        took = (time.perf_counter() - t0) * 1000
        check(int(frame.steps.sum()) == 3 * steps, "every variant replayed every step")
        return took / (3 * steps)

    async def replay_side() -> float:
        made["replay"] += 1
        t0 = time.perf_counter()
        result = await ref.replay(2, on=f"replay-{made['replay']}")
        took = (time.perf_counter() - t0) * 1000
        check(result.identical, "a plain replay reproduces the recorded states")
        return took / steps

    rounds = await interleave_many([sweep_side, replay_side], sz.rounds, sz.warmup)
    return Result.from_rounds(
        "sweep_step_ms", "ms", [(r[0], r[1]) for r in rounds], Target("ratio", "<=", 1.5),
        f"ab.sweep of 3 variants (2 state patches, the recorded run) over {steps} versions, "
        "per replayed step; floor: one plain ref.replay of the same versions, per step")
