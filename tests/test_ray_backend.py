"""The Ray backend: routing, cross-host messages, leases, and a host killed mid-run."""

from __future__ import annotations

import asyncio

import pytest

import agentbook as ab
from agentbook.backends.ray import shard_of

from .ray_agents import RayTally

pytestmark = pytest.mark.ray


@pytest.fixture
async def ray_rt(tmp_path, ray_cluster):
    rt = ab.Runtime(tmp_path / "store", backend="ray", hosts=2, shards=8)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray backend is tested when ray is installed")
    import os

    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="agentbook")
    yield ray
    ray.shutdown()


def test_routing_is_stable_and_spreads_agents():
    shards = [shard_of(("RayTally", f"a{i}"), 64) for i in range(1000)]
    assert shards == [shard_of(("RayTally", f"a{i}"), 64) for i in range(1000)]
    assert len(set(shards)) == 64


async def test_agents_live_on_their_hosts_and_message_across_hosts(ray_rt):
    refs = [ray_rt.get(RayTally, f"t{i}") for i in range(8)]
    assert [await r.mark(f"{r.name}-1") for r in refs] == [1] * 8
    pids = {r.state["pid"] for r in refs}
    assert len(pids) == 2, "two hosts share the agents"
    router = ray_rt._router
    by_host = {}
    for r in refs:
        by_host.setdefault(router.host_of(r._ab_key), set()).add(r.state["pid"])
    assert all(len(p) == 1 for p in by_host.values())
    assert await refs[0].ask("t7", "asked") == 2
    await refs[1].pass_on("t6", "passed")
    for _ in range(200):
        if refs[6].version == 3:
            break
        await asyncio.sleep(0.01)
    assert refs[6].sql("SELECT id FROM marks ORDER BY id").id.tolist() == ["passed", "t6-1"]


async def test_the_driver_reads_states_history_and_views_from_the_stores(ray_rt):
    ref = ray_rt.get(RayTally, "reads")
    for i in range(3):
        await ref.mark(f"m{i}")
    assert ref.state["n"] == 3 and ref.version == 4
    assert ref.history(limit=2).method.tolist() == ["mark", "mark"]
    frame = ray_rt.sql("SELECT count(*) AS n FROM history WHERE name = 'reads'")
    assert frame.n[0] == 4


async def test_a_killed_host_comes_back_and_nothing_committed_is_lost(ray_rt, ray_cluster):
    refs = [ray_rt.get(RayTally, f"k{i}") for i in range(6)]
    for r in refs:
        await r.mark("before")
    victim = ray_rt._router.host_of(refs[0]._ab_key)
    ray_cluster.kill(ray_rt._router.handle(victim), no_restart=False)
    for r in refs:  # each mark is sent until it is known to be in, exactly once
        for _ in range(100):
            try:
                await r.mark("after")
                break
            except ab.HostUnavailableError:  # maybe ran, maybe not: look, then decide
                if "after" in set(r.sql("SELECT id FROM marks").id):
                    break
                await asyncio.sleep(0.2)  # the restarted host is taking its shards back
            except ab.SQLError:  # the first try did run: the mark is there once
                break
    marks = {r.name: sorted(r.sql("SELECT id FROM marks").id) for r in refs}
    assert all(m == ["after", "before"] for m in marks.values()), marks
    assert all(r.state["n"] == 2 for r in refs)


async def _hosts_listening(rt, ray_cluster) -> list[bool]:
    router = rt._router
    return [await router.handle(i).listening.remote() for i in range(router.hosts)]


async def test_host_events_reach_the_driver_only_while_someone_listens(ray_rt, ray_cluster):
    refs = [ray_rt.get(RayTally, f"e{i}") for i in range(8)]
    await refs[0].mark("quiet")  # nobody listens: the hosts' buses stay inactive
    assert await _hosts_listening(ray_rt, ray_cluster) == [False, False]
    seen = []
    unsubscribe = ray_rt.events.subscribe(seen.append, types=["rpc", "state:update"])
    for r in refs:
        await r.mark("heard")
    for _ in range(300):
        if len({e["name"] for e in seen if e["type"] == "state:update"}) == 8:
            break
        await asyncio.sleep(0.02)
    updates = [e for e in seen if e["type"] == "state:update"]
    assert {e["name"] for e in updates} == {r.name for r in refs}, seen
    assert {e["type"] for e in seen} <= {"rpc", "state:update"}
    assert all(e["agent"] == "RayTally" and isinstance(e["timestamp"], int) for e in seen)
    assert await _hosts_listening(ray_rt, ray_cluster) == [True, True]
    hosts = {ray_rt._router.host_of(r._ab_key) for r in refs}
    assert hosts == {0, 1}, "events came from both hosts"

    unsubscribe()
    for _ in range(300):
        if await _hosts_listening(ray_rt, ray_cluster) == [False, False]:
            break
        await asyncio.sleep(0.02)
    assert await _hosts_listening(ray_rt, ray_cluster) == [False, False]
    count = len(seen)
    await refs[1].mark("unheard")
    await asyncio.sleep(0.2)
    assert len(seen) == count

    again = []
    unsubscribe = ray_rt.events.subscribe(again.append, agent=refs[2])  # a second spell
    await refs[2].mark("again")
    await refs[3].mark("other")
    for _ in range(300):
        if any(e["type"] == "state:update" for e in again):
            break
        await asyncio.sleep(0.02)
    assert {e["name"] for e in again} == {refs[2].name}
    unsubscribe()


async def test_answers_settle_in_batches_and_in_order(ray_rt):
    refs = [ray_rt.get(RayTally, f"b{i}") for i in range(4)]
    calls = [refs[i % 4].mark(f"m{i}") for i in range(200)]
    results = await asyncio.gather(*calls)
    assert results == [i // 4 + 1 for i in range(200)]
    sends = [refs[0].mark(f"s{i}") for i in range(3)]
    await ray_rt.settle()
    assert all(f.done() for f in sends)
    assert refs[0].state["n"] == 53


async def test_an_agent_on_another_host_cannot_call_a_guarded_method(ray_rt):
    """The owner's host checks too: the caller's host may not know yet that an approval
    guards the method (its catalog opened before the request)."""
    router = ray_rt._router
    names = [f"g{i}" for i in range(16)]
    owner = names[0]
    thief = next(n for n in names
                 if router.host_of(("RayTally", n)) != router.host_of(("RayTally", owner)))
    vault, mallory = ray_rt.get(RayTally, owner), ray_rt.get(RayTally, thief)
    await vault.propose(5)
    with pytest.raises(ab.AgentbookError, match="runs only when a person approves it"):
        await mallory.steal(owner)
    assert vault.state["n"] == 0
