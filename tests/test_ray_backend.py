"""The Ray backend: routing, cross-host messages, leases, and a host killed mid-run."""

from __future__ import annotations

import asyncio
import functools

import pytest

import agentbook as ab
from agentbook.backends.ray import shard_of

from .ray_agents import RayTally
from .waiting import eventually

pytestmark = pytest.mark.ray


@pytest.fixture
async def ray_rt(tmp_path, ray_cluster):
    rt = ab.Runtime(tmp_path / "store", backend="ray", hosts=2, shards=8)
    yield rt
    rt.close()


def test_routing_is_stable_and_spreads_agents():
    shards = [shard_of(("RayTally", f"a{i}"), 64) for i in range(1000)]
    assert shards == [shard_of(("RayTally", f"a{i}"), 64) for i in range(1000)]
    assert len(set(shards)) == 64


async def test_agents_live_on_their_hosts_and_message_across_hosts(ray_rt):
    refs = [ray_rt.get(RayTally, f"t{i}") for i in range(8)]
    assert [await r.mark(f"{r.name}-1") for r in refs] == [1] * 8
    pids = {r.state["pid"] for r in refs}
    assert len(pids) == 2, "two hosts share the agents"
    router = ray_rt.router
    by_host = {}
    for r in refs:
        by_host.setdefault(router.host_of(r._ab_key), set()).add(r.state["pid"])
    assert all(len(p) == 1 for p in by_host.values())
    assert await refs[0].ask("t7", "asked") == 2
    await refs[1].pass_on("t6", "passed")  # host to host: the driver has no answer to await
    await eventually(lambda: refs[6].version, until=lambda v: v == 3,
                     what="t1's host delivered the passed-on mark to t6's host")
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
    victim = ray_rt.router.host_of(refs[0]._ab_key)
    ray_cluster.kill(ray_rt.router.handle(victim), no_restart=False)

    async def marked(r) -> bool:
        try:
            await r.mark("after")
            return True
        except ab.HostUnavailableError:  # maybe ran, maybe not: look, then decide
            return "after" in set(r.sql("SELECT id FROM marks").id)
        except ab.SQLError:  # the first try did run: the mark is there once
            return True

    for r in refs:  # each mark is sent until it is known to be in, exactly once
        # (while the restarted host takes its shards back, sends fail: poll until in)
        await eventually(functools.partial(marked, r), timeout=30, interval=0.2,
                         what=f"the mark on {r.name} got in after the host restarted")
    marks = {r.name: sorted(r.sql("SELECT id FROM marks").id) for r in refs}
    assert all(m == ["after", "before"] for m in marks.values()), marks
    assert all(r.state["n"] == 2 for r in refs)


async def _hosts_listening(rt, ray_cluster) -> list[bool]:
    router = rt.router
    return [await router.handle(i).listening.remote() for i in range(router.hosts)]


async def test_host_events_reach_the_driver_only_while_someone_listens(ray_rt, ray_cluster):
    refs = [ray_rt.get(RayTally, f"e{i}") for i in range(8)]
    await refs[0].mark("quiet")  # nobody listens: the hosts' buses stay inactive
    assert await _hosts_listening(ray_rt, ray_cluster) == [False, False]
    seen = []
    unsubscribe = ray_rt.events.subscribe(seen.append, types=["rpc", "state:update"])
    for r in refs:
        await r.mark("heard")
    await eventually(lambda: {e["name"] for e in seen if e["type"] == "state:update"},
                     until=lambda names: len(names) == 8,
                     what="host events (they come after the answers) reached the driver")
    updates = [e for e in seen if e["type"] == "state:update"]
    assert {e["name"] for e in updates} == {r.name for r in refs}, seen
    assert {e["type"] for e in seen} <= {"rpc", "state:update"}
    assert all(e["agent"] == "RayTally" and isinstance(e["timestamp"], int) for e in seen)
    assert await _hosts_listening(ray_rt, ray_cluster) == [True, True]
    hosts = {ray_rt.router.host_of(r._ab_key) for r in refs}
    assert hosts == {0, 1}, "events came from both hosts"

    unsubscribe()
    await eventually(lambda: _hosts_listening(ray_rt, ray_cluster),
                     until=lambda listening: listening == [False, False],
                     what="the hosts were muted once nobody listened")
    assert await _hosts_listening(ray_rt, ray_cluster) == [False, False]
    count = len(seen)
    await refs[1].mark("unheard")
    # Host events reach the driver only through the relay's polls. With no poll running
    # and no host collecting, nothing sent now can arrive later: no need to wait and see.
    relay = ray_rt.router.events
    assert relay is not None and all(task.done() for task in relay.tasks)
    assert await _hosts_listening(ray_rt, ray_cluster) == [False, False]
    assert len(seen) == count

    again = []
    unsubscribe = ray_rt.events.subscribe(again.append, agent=refs[2])  # a second spell
    await refs[2].mark("again")
    await refs[3].mark("other")
    await eventually(lambda: [e for e in again if e["type"] == "state:update"],
                     what="refs[2]'s state:update reached the second spell's subscriber")
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
    router = ray_rt.router
    names = [f"g{i}" for i in range(16)]
    owner = names[0]
    thief = next(n for n in names
                 if router.host_of(("RayTally", n)) != router.host_of(("RayTally", owner)))
    vault, mallory = ray_rt.get(RayTally, owner), ray_rt.get(RayTally, thief)
    await vault.propose(5)
    with pytest.raises(ab.AgentbookError, match="runs only when a person approves it"):
        await mallory.steal(owner)
    assert vault.state["n"] == 0
