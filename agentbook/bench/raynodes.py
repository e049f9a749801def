"""The Ray backend across machines (issue 23): node-local stores on a local cluster.

One ``ray.cluster_utils.Cluster`` of three nodes on this machine (each a set of Ray
processes with one CPU), started once for the group. Every runtime keeps its stores per
node (``host_dir=.../agentbook-{node}``) with a coordinator actor on the head.

``ray_nodes_msgs_1`` / ``_2`` / ``_3``
    ``ray_flight_n // 2`` calls per round, 100 in flight, to 100 agents spread over the
    hosts of a runtime with 1, 2 or 3 hosts, one per node (``replicas=0``), vs the same
    calls to as many bare async Ray actors on the same nodes doing the same commits by
    hand (``raybench.BareHost``: apsw, state row + history row, one commit per call),
    each agent on the actor of its host. Target: ratio at least 0.8. All the nodes share
    this machine's cores, so 2 and 3 nodes show the cost of more processes, not scaling.

``ray_replicated_cost``
    The same load on 2 hosts on 2 nodes with ``replicas=1, durability="replicated"``
    (value; each answer waits until its version is on the replica on the other node)
    vs ``replicas=0`` (floor). ``ray_async_cost``: the same with ``durability="async"``.

``ray_failover_s``
    3 hosts on 3 nodes, ``replicas=1``, ``lease_seconds=2``; a worker node is removed
    (``cluster.remove_node``): seconds until every agent of the lost host answered again
    (on the survivors). Dominated by the lease: a host missing its renewals for 1.5
    leases is taken for lost (default ``lease_seconds=10``: expect about 15 s).

``ray_move_s_per_1000``
    Seconds to move 1 000 agents between hosts: ``ray_move_agents`` agents with one
    version each on 2 hosts, a node added, ``rt.add_hosts(1)`` moves whole shards to it
    (stop, close, read the store files and the agents' catalog rows, ship them through the
    object store to the new owner and the shard's replica, write them; no store is opened):
    total seconds of the moves per 1 000 agents moved.

``--quick`` skips the group (starting three Ray nodes takes 30-90 s here).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import agentbook as ab

from .raybench import BareHost
from .report import Result, Target
from .timing import Sizes, check, in_flight, interleave

__all__ = ["NAMES", "bench_ray_nodes"]

NAMES = ("ray_nodes_msgs_1", "ray_nodes_msgs_2", "ray_nodes_msgs_3", "ray_replicated_cost",
         "ray_async_cost", "ray_failover_s", "ray_move_s_per_1000")
_AGENTS = 100
_WIDTH = 100
_UNITS = {"ray_failover_s": "s", "ray_move_s_per_1000": "s"}
_TARGETS = {f"ray_nodes_msgs_{n}": Target("ratio", ">=", 0.8) for n in (1, 2, 3)}


def _skip(reason: str) -> list[Result]:
    return [Result.skip(n, _UNITS.get(n, "msg/s"), reason, _TARGETS.get(n)) for n in NAMES]


async def bench_ray_nodes(sz: Sizes, folder: str) -> list[Result]:
    """Node-local stores on a three-node local cluster: throughput on 1-3 nodes vs bare
    actors, the cost of replication, failover time, shard move time."""
    if not sz.ray:
        return _skip("quick mode skips Ray across nodes (starting three nodes takes 30-90 s)")
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return _skip("Ray is not installed; pip install 'agentbook[ray]' to measure the backend")
    if ray.is_initialized():
        return _skip("Ray is already running in this process; this group starts its own "
                     "cluster of three nodes")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    for attempt in range(3):  # (a node may time out starting on a busy machine: again)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(num_cpus=1, gcs_server_port=port, include_dashboard=False)
            workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
            break
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False,
                 namespace="agentbook-bench")
        init = f"3 nodes started in {time.perf_counter() - t0:.0f} s"
        results = []
        for n in (1, 2, 3):
            results.append(await _throughput(sz, folder, n, init))
        results += await _replication(sz, folder)
        results.append(await _failover(folder, cluster, workers))
        results.append(await _move(sz, folder, cluster))
        return results
    finally:
        ray.shutdown()
        cluster.shutdown()


def _runtime(folder: str, name: str, hosts: int, **options: Any) -> ab.Runtime:
    return ab.Runtime(os.path.join(folder, name), backend="ray", hosts=hosts, shards=12,
                      host_dir=os.path.join(folder, f"{name}-nodes", "agentbook-{node}"),
                      **options)


def _names(rt: ab.Runtime) -> list[str]:
    """100 agent names spread as evenly as the shards allow over the runtime's hosts."""
    router = rt.router
    by_host: dict[int, list[str]] = {}
    for i in range(50 * _AGENTS):
        name = f"node-{i}"
        by_host.setdefault(router.host_of(("BenchCounter", name)), []).append(name)
    names: list[str] = []
    while len(names) < _AGENTS:
        for host in sorted(by_host):
            if by_host[host] and len(names) < _AGENTS:
                names.append(by_host[host].pop(0))
    return names


async def _throughput(sz: Sizes, folder: str, hosts: int, init: str) -> Result:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .agents import BenchCounter

    rt = _runtime(folder, f"msgs{hosts}", hosts)
    bares: list[Any] = []
    try:
        router = rt.router
        places = ray.get([router.handle(i).hello.remote() for i in range(hosts)])
        host_class: Any = ray.remote(num_cpus=0)(BareHost)
        bares = [host_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                     node_id=p["node"], soft=False)).remote(
                     os.path.join(p["folder"], "..", f"bare-{i}.db"))
                 for i, p in enumerate(places)]
        await asyncio.gather(*(b.ready.remote() for b in bares))
        names = _names(rt)
        refs = [rt.get(BenchCounter, n) for n in names]
        owner = [router.host_of(("BenchCounter", n)) for n in names]
        await asyncio.gather(*(r.inc() for r in refs))
        m = max(sz.ray_flight_n // 2, _WIDTH)

        async def ours() -> float:
            t0 = time.perf_counter()
            await in_flight(lambda i: refs[i % _AGENTS].inc(), m, _WIDTH)
            return m / (time.perf_counter() - t0)

        async def bare() -> float:
            t0 = time.perf_counter()
            await in_flight(lambda i: bares[owner[i % _AGENTS]].inc.remote(names[i % _AGENTS]),
                            m, _WIDTH)
            return m / (time.perf_counter() - t0)

        rounds = await interleave(ours, bare, sz.rounds, sz.warmup)
        runs = sz.rounds + (1 if sz.warmup else 0)
        last = await asyncio.gather(*(r.inc() for r in refs))
        check(sum(last) == _AGENTS * 2 + m * runs, "every message was counted")
    finally:
        rt.close()
        for b in bares:
            ray.kill(b)
    return Result.from_rounds(
        f"ray_nodes_msgs_{hosts}", "msg/s", rounds, _TARGETS[f"ray_nodes_msgs_{hosts}"],
        f"{m} calls/round, {_WIDTH} in flight, to {_AGENTS} agents over {hosts} host(s) on "
        f"{hosts} node(s), node-local stores; floor: {hosts} bare async Ray actor(s) on the "
        f"same nodes committing the same rows; one machine's cores for all nodes; {init}")


async def _replication(sz: Sizes, folder: str) -> list[Result]:
    from .agents import BenchCounter

    m = max(sz.ray_flight_n // 2, _WIDTH)
    rts = {"local": _runtime(folder, "repl-local", 2),
           "replicated": _runtime(folder, "repl-sync", 2, replicas=1),
           "async": _runtime(folder, "repl-async", 2, replicas=1, durability="async")}
    try:
        refs = {k: [rt.get(BenchCounter, n) for n in _names(rt)] for k, rt in rts.items()}
        for group in refs.values():
            await asyncio.gather(*(r.inc() for r in group))

        def side(kind: str) -> Any:
            group = refs[kind]

            async def run() -> float:
                t0 = time.perf_counter()
                await in_flight(lambda i: group[i % _AGENTS].inc(), m, _WIDTH)
                return m / (time.perf_counter() - t0)
            return run

        sync = await interleave(side("replicated"), side("local"), sz.rounds, sz.warmup)
        later = await interleave(side("async"), side("local"), sz.rounds, sz.warmup)
    finally:
        for rt in rts.values():
            rt.close()
    return [
        Result.from_rounds(
            "ray_replicated_cost", "msg/s", sync, None,
            f"{m} calls/round, {_WIDTH} in flight, 2 hosts on 2 nodes: replicas=1, "
            "durability='replicated' (each answer after its version is on the other node) "
            "vs replicas=0 (floor)"),
        Result.from_rounds(
            "ray_async_cost", "msg/s", later, None,
            "the same with durability='async' (shipped right after the answer) vs "
            "replicas=0 (floor)"),
    ]


async def _failover(folder: str, cluster: Any, workers: list[Any]) -> Result:
    import ray

    from .agents import BenchCounter

    rt = _runtime(folder, "failover", 3, replicas=1, lease_seconds=2)
    try:
        router = rt.router
        places = ray.get([router.handle(i).hello.remote() for i in range(3)])
        ids = {w.node_id: w for w in workers}
        victim = next(i for i, p in enumerate(places) if p["node"] in ids)
        names = [n for n in _names(rt) if router.host_of(("BenchCounter", n)) == victim]
        refs = [rt.get(BenchCounter, n) for n in names]
        await asyncio.gather(*(r.inc() for r in refs))
        node = ids[places[victim]["node"]]
        t0 = time.perf_counter()
        cluster.remove_node(node, allow_graceful=False)
        workers.remove(node)

        async def back(ref: Any) -> None:
            while True:
                try:
                    await ref.inc()
                    return
                except ab.HostUnavailableError:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(back(r) for r in refs))
        seconds = time.perf_counter() - t0
    finally:
        rt.close()
    return Result("ray_failover_s", seconds, "s", None, None, None, 1,
                  f"3 hosts on 3 nodes, replicas=1, lease_seconds=2: a worker node removed -> "
                  f"all {len(refs)} agents of its host answered again on the survivors; "
                  "a host is taken for lost after 1.5 leases (default lease 10 s: ~15 s)")


async def _move(sz: Sizes, folder: str, cluster: Any) -> Result:
    from .agents import BenchCounter

    count = sz.ray_move_agents
    rt = _runtime(folder, "move", 2, replicas=1)
    try:
        refs = [rt.get(BenchCounter, f"move-{i}") for i in range(count)]
        for start in range(0, count, 200):
            await asyncio.gather(*(r.inc() for r in refs[start:start + 200]))
        rt.hibernate()
        cluster.add_node(num_cpus=1)
        moves = rt.add_hosts(1)
        moved = sum(m["agents"] for m in moves)
        seconds = sum(m["seconds"] for m in moves)
        size = sum(m["bytes"] for m in moves)
        check(moved > 0, "shards moved to the new host")
        last = await asyncio.gather(*(r.inc() for r in refs[:200]))
        check(all(n == 2 for n in last), "moved agents kept their state")
    finally:
        rt.close()
    return Result("ray_move_s_per_1000", seconds / moved * 1000, "s", None, None, None, 1,
                  f"{count:,} agents on 2 hosts, replicas=1; a node added, rt.add_hosts(1): "
                  f"{len(moves)} shards, {moved:,} agents, {size / 2**20:.1f} MiB of snapshots "
                  f"moved in {seconds:.2f} s (stop, close, read the files and catalog rows, ship "
                  "via the object store to the new owner and the replica, write; no store reopened)")
