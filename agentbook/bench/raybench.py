"""The Ray backend: messages through ``ab.Runtime(folder, backend="ray", hosts=2)``.

Ray starts once for the group (``ray.init(num_cpus=2, include_dashboard=False,
log_to_driver=False)``, ``RAY_AUTH_MODE=disabled``: loopback only). With two hosts the
Ray cluster's two CPUs are taken, so the bare actor asks for none.

``ray_msgs_sequential`` / ``ray_msgs_inflight``
    ``await ref.inc()`` to 100 agents living on host 0, one at a time, and with 100 calls
    in flight; vs the same calls to one bare async Ray actor (:class:`BareHost`) that
    does the same work by hand: one apsw commit per call of a state row and a history row
    (WAL, NORMAL). Target: ratio at least 0.8.

``ray_scaling``
    100 in flight to 100 agents spread over both hosts vs to 100 agents all on host 0 (the
    same cluster, interleaved): what the second host adds. Reported, no target.

``ray_host_memory``
    RSS of the host processes (psutil, from the pids ``ready()`` returns) before and after
    ``ray_mem_agents`` agents got one message each and hibernated, per agent; agents per
    host in the note. The hosts can't be asked to ``malloc_trim``, so this is the raw delta.

``--quick`` skips the group: ``ray.init`` alone takes 10-20 s on these machines.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

import agentbook as ab

from .report import Result, Target
from .timing import Sizes, check, in_flight, interleave, interleave_many

__all__ = ["NAMES", "BareHost", "bench_ray"]

NAMES = ("ray_msgs_sequential", "ray_msgs_inflight", "ray_scaling", "ray_host_memory")
_AGENTS = 100
_WIDTH = 100


class BareHost:
    """The floor: a bare async Ray actor doing each message's work by hand."""

    def __init__(self, path: str) -> None:
        import apsw

        self.conn = apsw.Connection(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY,"
                          " version INTEGER NOT NULL, state TEXT NOT NULL)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS history(key TEXT, version INTEGER,"
                          " ts REAL, method TEXT, args TEXT, state TEXT,"
                          " PRIMARY KEY (key, version))")
        self.agents: dict[str, list[Any]] = {}

    async def ready(self) -> int:
        """The actor's process id."""
        return os.getpid()

    async def inc(self, key: str, by: int = 1) -> int:
        """Add *by* to agent *key*'s counter: state row + history row, one commit."""
        import json

        entry = self.agents.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += by
        text = json.dumps({"n": entry[1]})
        execute = self.conn.execute
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO state VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
                " version = excluded.version, state = excluded.state", (key, entry[0], text))
        execute("INSERT INTO history VALUES (?, ?, ?, 'inc', ?, ?)",
                (key, entry[0], time.time(), json.dumps([by]), text))
        execute("COMMIT")
        return entry[1]

    async def total(self) -> int:
        """The sum of every counter."""
        return sum(n for _, n in self.agents.values())


def _cpu(pids: list[int]) -> list[float]:
    """CPU seconds (user + system) of each process so far (zeros without psutil)."""
    try:
        import psutil
    except ImportError:
        return [0.0] * len(pids)
    return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids]


def _skip(reason: str) -> list[Result]:
    targets = {"ray_msgs_sequential": Target("ratio", ">=", 0.8),
               "ray_msgs_inflight": Target("ratio", ">=", 0.8)}
    units = {"ray_host_memory": "B/agent"}
    return [Result.skip(n, units.get(n, "msg/s"), reason, targets.get(n)) for n in NAMES]


async def bench_ray(sz: Sizes, folder: str) -> list[Result]:
    """Messages through the Ray backend vs bare Ray actors; scaling; memory on the hosts."""
    if not sz.ray:
        return _skip("quick mode skips Ray (ray.init alone takes 10-20 s here); "
                     "the full suite measures it")
    try:
        import ray
    except ImportError:
        return _skip("Ray is not installed; pip install 'agentbook[ray]' to measure the backend")
    started = not ray.is_initialized()
    init = "Ray was already running"
    if started:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 namespace="agentbook")
        init = f"ray.init took {time.perf_counter() - t0:.1f} s"
    rt = None
    bare = None
    try:
        rt = ab.Runtime(os.path.join(folder, "ray"), backend="ray", hosts=2,
                        durability="normal")
        host_class: Any = ray.remote(num_cpus=0)(BareHost)  # (ray's stubs lose .remote)
        bare = host_class.remote(os.path.join(folder, "bare.db"))
        await bare.ready.remote()
        return await _measure(sz, rt, bare, init)
    finally:
        if rt is not None:
            rt.close()
        if bare is not None:
            ray.kill(bare)
        if started:
            ray.shutdown()


async def _measure(sz: Sizes, rt: ab.Runtime, bare: Any, init: str) -> list[Result]:
    from .agents import BenchCounter

    router = rt.router
    names = [f"ray-{i}" for i in range(20 * _AGENTS)]
    half = _AGENTS // 2
    first = [n for n in names if router.host_of(("BenchCounter", n)) == 0][:_AGENTS + half]
    on0, on1 = first[:_AGENTS], [n for n in names if router.host_of(("BenchCounter", n)) == 1]
    refs0 = [rt.get(BenchCounter, n) for n in on0]
    spread = [rt.get(BenchCounter, n) for n in first[_AGENTS:] + on1[:half]]  # both hosts
    await asyncio.gather(*(r.inc() for r in refs0 + spread))
    await asyncio.gather(*(bare.inc.remote(n) for n in on0))
    n, m = sz.ray_seq_n, sz.ray_flight_n

    async def seq_ab() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            await refs0[i % _AGENTS].inc()
        return n / (time.perf_counter() - t0)

    async def seq_bare() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            await bare.inc.remote(on0[i % _AGENTS])
        return n / (time.perf_counter() - t0)

    import ray

    pids = [os.getpid(), *(ray.get(router.handle(i).ready.remote()) for i in range(2)),
            await bare.ready.remote()]
    busy: dict[str, list[float]] = {}  # side -> [wall s, cpu s of: driver, host 0, 1, bare]

    def flight(label: str, call: Any) -> Any:
        async def side() -> float:
            cpu0 = _cpu(pids)
            t0 = time.perf_counter()
            await in_flight(call, m, _WIDTH)
            wall = time.perf_counter() - t0
            spent = [b - a for a, b in zip(cpu0, _cpu(pids), strict=True)]
            acc = busy.setdefault(label, [0.0] * (1 + len(pids)))
            for j, x in enumerate([wall, *spent]):
                acc[j] += x
            return m / wall
        return side

    seq = await interleave(seq_ab, seq_bare, sz.rounds, sz.warmup)
    rounds = await interleave_many(
        [flight("host 0", lambda i: refs0[i % _AGENTS].inc()),
         flight("bare", lambda i: bare.inc.remote(on0[i % _AGENTS])),
         flight("spread", lambda i: spread[i % _AGENTS].inc())], sz.rounds, sz.warmup)
    cores = "; ".join(f"{k}: " + "/".join(f"{100 * x / v[0]:.0f}" for x in v[1:])
                      for k, v in busy.items())
    sent = sum(r.state["n"] for r in refs0)
    total = await bare.total.remote()
    check(sent == total, f"both sides counted every message ({sent} vs {total})")
    runs = sz.rounds + (1 if sz.warmup else 0)
    check(sum(r.state["n"] for r in spread) == len(spread) + m * runs,
          "the spread agents counted every message")
    where = f"{_AGENTS} agents on host 0 of 2 (shards hash agents onto hosts)"
    results = [
        Result.from_rounds(
            NAMES[0], "msg/s", seq, Target("ratio", ">=", 0.8),
            f"{n} sequential awaited ref.inc()/round to {where}; floor: the same calls to one "
            f"bare async Ray actor, apsw commit per call (state row + history row); {init}"),
        Result.from_rounds(
            NAMES[1], "msg/s", [(r[0], r[1]) for r in rounds], Target("ratio", ">=", 0.8),
            f"{m} calls/round, {_WIDTH} in flight, to {where}; floor: the same to the bare "
            "actor"),
        Result.from_rounds(
            NAMES[2], "msg/s", [(r[2], r[0]) for r in rounds], None,
            f"{m} calls/round, {_WIDTH} in flight: to {_AGENTS} agents spread over 2 hosts "
            f"(value) vs all on host 0 (floor); the machine's 2 cores run the driver too. "
            f"CPU, % of a core, driver/host 0/host 1/bare actor - {cores}"),
    ]
    results.append(await _memory(sz, rt))
    return results


async def _memory(sz: Sizes, rt: ab.Runtime) -> Result:
    try:
        import psutil
    except ImportError:
        return Result.skip(NAMES[3], "B/agent", "psutil is not installed (pip install psutil)")
    import ray

    from .agents import BenchCounter

    router = rt.router
    pids = [ray.get(router.handle(i).ready.remote()) for i in range(router.hosts)]
    procs = [psutil.Process(pid) for pid in pids]
    count = sz.ray_mem_agents
    rt.hibernate()
    before = [p.memory_info().rss for p in procs]
    refs = [rt.get(BenchCounter, f"ray-mem-{i}") for i in range(count)]
    t0 = time.perf_counter()
    for start in range(0, count, 100):
        await asyncio.gather(*(r.inc() for r in refs[start:start + 100]))
    made = time.perf_counter() - t0
    rt.hibernate()
    after = [p.memory_info().rss for p in procs]
    per_host = Counter(router.host_of(r._ab_key) for r in refs)
    deltas = ", ".join(f"host {i}: {per_host[i]:,} agents, +{(after[i] - before[i]) / 2**20:.1f}"
                       f" MiB" for i in range(router.hosts))
    total = sum(after) - sum(before)
    return Result(NAMES[3], total / count, "B/agent", None, None, None, 1,
                  f"{count:,} agents, one message each (made at {count / made:.0f}/s), then "
                  f"hibernated; RSS delta of the host processes / agent, no trim ({deltas})")
