"""The Ray backend across machines (issue 23): node-local stores, a coordinator with
fencing, replicas, a lost node. A real Ray cluster of three nodes on this machine
(``ray.cluster_utils.Cluster``); each node has its own store folder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

import pytest

import agentbook as ab

from .ray_agents import RayTally
from .ray_start import SHARED, start_cluster
from .waiting import eventually

pytestmark = pytest.mark.ray

LEASE = 2.0  # seconds (short, so a failover happens within a test)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and two more nodes; each node's stores under ``nodes/agentbook-<node id>``."""
    ray = pytest.importorskip("ray", reason="the Ray backend is tested when ray is installed "
                                             "(pip install 'agentbook[ray]')")
    SHARED.shutdown(ray)  # (the other Ray tests' cluster: they ran before, see conftest)
    if ray.is_initialized():
        ray.shutdown()
    cluster = start_cluster(ray, nodes=3, cpus=1)
    workers = list(cluster.worker_nodes)
    cluster.nodes_dir = tmp_path_factory.mktemp("nodes")
    cluster.workers = workers
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _runtime(cluster, tmp_path, **options):
    """A runtime whose hosts keep their stores in ``<nodes>/<test>/agentbook-<node>``."""
    cluster.host_dir = cluster.nodes_dir / tmp_path.name
    return ab.Runtime(tmp_path / "driver", backend="ray", shards=12,
                      host_dir=str(cluster.host_dir / "agentbook-{node}"), **options)


def _hellos(rt) -> list[dict]:
    import ray

    router = rt.router
    return ray.get([router.handle(i).hello.remote() for i in range(router.hosts)])


def _on_a_worker(rt, cluster) -> tuple[list[dict], dict, int]:
    """The hosts' hellos, the worker nodes by id, and a host on a worker node (the victim
    of a lost or drained node: never the head, where the coordinator lives)."""
    hellos = _hellos(rt)
    workers = {node.node_id: node for node in cluster.workers}
    return hellos, workers, next(i for i, h in enumerate(hellos) if h["node"] in workers)


def _open_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


async def test_each_host_keeps_its_stores_in_its_own_node_folder(cluster, tmp_path):
    rt = _runtime(cluster, tmp_path, hosts=3, replicas=1)
    try:
        refs = [rt.get(RayTally, f"n{i}") for i in range(12)]
        assert [await r.mark("one") for r in refs] == [1] * 12
        hellos = _hellos(rt)
        nodes = {h["node"] for h in hellos}
        assert len(nodes) == 3, "the hosts spread over the three nodes"
        root = str(cluster.host_dir)
        for hello in hellos:
            own = os.path.join(root, f"agentbook-{hello['node']}")
            assert hello["folder"].startswith(own + os.sep)
            opened = [p for p in _open_files(hello["pid"]) if p.startswith(root)]
            assert opened, "the host has its stores open"
            strays = [p for p in opened if not p.startswith(own + os.sep)]
            assert not strays, f"host on {hello['node']} opened files of another node: {strays}"
            assert not [p for p in _open_files(hello["pid"]) if p.startswith(str(tmp_path))]
        # every agent's store is on its owner's node, and a copy on its replica's (another)
        owners = rt.router.owners
        for r in refs:
            holding = [h["node"] for h in hellos
                       if os.path.exists(os.path.join(h["folder"], "agents", "RayTally",
                                                      f"{r.name}.db"))]
            assert len(holding) == 2 and len(set(holding)) == 2, (r.name, holding)
        assert owners is not None and sorted(set(owners)) == [0, 1, 2]
        assert not os.path.exists(tmp_path / "driver" / "agents"), "the driver keeps no stores"
    finally:
        rt.close()


async def test_a_host_paused_past_its_lease_commits_nothing(cluster, tmp_path):
    """SIGSTOP a host in the middle of a call, past its lease; its shard is promoted on its
    replica; SIGCONT: the handler finishes, its commit is refused (fenced), and the driver
    sends the call to the new owner, where it runs once."""
    import ray

    rt = _runtime(cluster, tmp_path, hosts=2, replicas=1, lease_seconds=LEASE)
    try:
        ref = rt.get(RayTally, "paused")
        assert await ref.mark("before") == 1
        router = rt.router
        victim = router.host_of(ref._ab_key)
        hello = _hellos(rt)[victim]
        started = tmp_path / "started"
        call = asyncio.ensure_future(ref.slow_mark("during", 2.0, str(started)))
        # pause it once the handler is in its sleep (a fixed wait could pause the host
        # before the call arrived, or, on a loaded machine, after the handler wrote)
        await eventually(started.exists, timeout=60, what="the handler began its sleep")
        os.kill(hello["pid"], signal.SIGSTOP)
        try:
            coordinator = router.coordinator
            shard = _shard(ref, router)

            async def view() -> dict:
                return await coordinator.view.remote()

            await eventually(view, until=lambda v: v["owners"][shard] != victim,
                             timeout=30, interval=0.2,
                             what="the paused host's shard was promoted on its replica")
        finally:
            os.kill(hello["pid"], signal.SIGCONT)
        assert await asyncio.wait_for(call, 60) == 2, "run once, by the new owner"
        marks = await ref.marks()
        assert [m[0] for m in marks] == ["before", "during"]
        assert marks[0][1] == hello["pid"] and marks[1][1] != hello["pid"]
        assert ray.get(router.handle(victim).check.remote("RayTally", "paused")) is False
    finally:
        rt.close()


async def test_reads_after_a_failover_ask_the_new_owner(cluster, tmp_path):
    """A host paused past its lease; its shard is promoted on its replica, which commits a
    message there (sent by an agent of its own, so the driver hears of no move); SIGCONT.
    The driver's next reads of the agent - no message in between - give what the new owner
    has, at once: not the paused host's old copy, and not 'not hosted here' ever after."""
    import ray

    rt = _runtime(cluster, tmp_path, hosts=2, replicas=1, lease_seconds=LEASE)
    try:
        router = rt.router
        names = [f"f{i}" for i in range(40)]
        ref = rt.get(RayTally, names[0])
        assert await ref.mark("before") == 1
        victim = router.host_of(ref._ab_key)
        other = rt.get(RayTally, next(n for n in names if router.host_of(("RayTally", n))
                                      != victim))
        assert await other.mark("here") == 1
        pid = _hellos(rt)[victim]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            shard, survivor = _shard(ref, router), router.host_of(other._ab_key)

            async def holds() -> bool:
                return await router.handle(survivor).check.remote("RayTally", ref.name)

            await eventually(holds, timeout=30, interval=0.2,
                             what="the survivor holds the paused host's shard")
            view = ray.get(router.coordinator.view.remote())
            assert view["owners"][shard] == survivor
            # (host to host: the survivor routes by its own map, the driver's is unchanged)
            assert await other.ask(ref.name, "promoted") == 2
        finally:
            os.kill(pid, signal.SIGCONT)
        assert router.host_of(ref._ab_key) == victim, "the driver has not heard of the move"
        assert ref.version == 3  # (on_start, before, promoted) - asked of the paused host
        assert list(ref.sql("SELECT id FROM marks ORDER BY rowid").id) == ["before", "promoted"]
        assert ref.state["n"] == 2
        assert router.host_of(ref._ab_key) == survivor
    finally:
        rt.close()


async def _start_traffic(refs) -> tuple[dict[str, list[str]], list[tuple[str, str]],
                                         asyncio.Event, list[asyncio.Future]]:
    """The driver marks *refs* without pause (until the event is set), once it flows to
    every agent: ``(acked, failed, stop, tasks)``."""
    acked: dict[str, list[str]] = {r.name: [] for r in refs}
    failed: list[tuple[str, str]] = []
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(_traffic(r, acked, failed, stop)) for r in refs]
    await eventually(lambda: min(len(v) for v in acked.values()), until=lambda n: n >= 3,
                     timeout=60, interval=0.1, what="traffic flows to every agent")
    return acked, failed, stop, tasks


async def _answering_again(acked: dict[str, list[str]], timeout: float) -> None:
    """Until every agent has acknowledged three more marks (after a node went)."""
    since = {name: len(marks) for name, marks in acked.items()}
    await eventually(lambda: {n for n, m in acked.items() if len(m) < since[n] + 3},
                     until=lambda behind: not behind, timeout=timeout, interval=0.2,
                     what="every agent answers again after the node went")


async def _check_marks(refs, acked: dict[str, list[str]]) -> None:
    """Every acknowledged mark is there, and no agent went back to a host it left."""
    for ref in refs:
        marks = await ref.marks()
        missing = set(acked[ref.name]) - {m[0] for m in marks}
        assert not missing, f"{ref.name} lost acknowledged marks {sorted(missing)}"
        writers = [m[1] for m in marks]
        turns = [p for i, p in enumerate(writers) if i == 0 or p != writers[i - 1]]
        assert len(turns) == len(set(turns)), f"{ref.name} went back to a host: {turns}"


async def _traffic(ref, acked: dict[str, list[str]], failed: list[tuple[str, str]],
                   stop: asyncio.Event) -> None:
    """Mark *ref* without pause until *stop*: the acknowledged marks in *acked*, the calls
    that raised (they may or may not have run) in *failed*."""
    n = 0
    while not stop.is_set():
        n += 1
        mark = f"{ref.name}-{n}"
        try:
            await asyncio.wait_for(ref.mark(mark), 60)
            acked[ref.name].append(mark)
        except (ab.HostUnavailableError, asyncio.TimeoutError) as exc:
            failed.append((mark, type(exc).__name__))
            await asyncio.sleep(0.05)  # (not a wait for the test: a pause between tries)


def _shard(ref, router) -> int:
    from agentbook.backends.shards import shard_of

    return shard_of(ref._ab_key, router.shards)


async def test_losing_a_node_under_traffic_loses_no_acknowledged_version(cluster, tmp_path):
    """replicas=1, durability='replicated': the driver marks 12 agents without pause; a
    worker node is removed and its disk deleted; its shards come back on the survivors,
    every acknowledged mark is there, and no agent was written by two hosts in turn."""
    import ray

    rt = _runtime(cluster, tmp_path, hosts=3, replicas=1, lease_seconds=LEASE)
    try:
        refs = [rt.get(RayTally, f"l{i}") for i in range(12)]
        hellos, workers, victim = _on_a_worker(rt, cluster)
        assert victim in rt.router.owners
        acked, _failed, stop, tasks = await _start_traffic(refs)
        node = workers[hellos[victim]["node"]]
        cluster.remove_node(node, allow_graceful=False)
        cluster.workers.remove(node)
        shutil.rmtree(cluster.host_dir / f"agentbook-{node.node_id}")  # its disk is lost
        # (the lost node's host process may outlive its raylet for a moment and answer from
        # its open files, like a partitioned host: its lease runs out and it is fenced; what
        # it acknowledged is on its replica - durability="replicated" - and is checked below)
        await eventually(lambda: ray.get(rt.router.coordinator.view.remote())["owners"],
                         until=lambda owners: victim not in owners, timeout=60, interval=0.2,
                         what="the lost host's shards are on the survivors")
        await _answering_again(acked, timeout=120)
        stop.set()
        await asyncio.gather(*tasks)
        await _check_marks(refs, acked)
    finally:
        rt.close()


async def test_adding_a_node_moves_shards_with_their_schedules(cluster, tmp_path):
    """A node joins; rt.add_hosts() starts a host there and moves whole shards to it
    (snapshots through the object store, a new epoch); the agents keep their data, and
    a schedule pending in a moved shard fires once, on its new host."""
    import ray

    # (the default lease: nothing is lost here, and a 2 s lease can run out while the new
    # node starts on a loaded machine - a host promoted away then, and the moves go back to it)
    rt = _runtime(cluster, tmp_path, hosts=2, replicas=1)
    try:
        refs = [rt.get(RayTally, f"m{i}") for i in range(24)]
        for r in refs:
            await r.mark("before")
        router = rt.router
        later = refs[0]
        before = {h["node"] for h in _hellos(rt)}
        new = cluster.add_node(num_cpus=1)
        cluster.workers.append(new)
        await later.mark_later(20.0, "scheduled")  # (pending while its shard moves)
        moves = rt.add_hosts(1)
        assert moves and all(m["to"] == 2 for m in moves), moves
        if _shard(later, router) not in {m["shard"] for m in moves}:  # move it too
            other = router.host_of(later._ab_key)
            moves.append(ray.get(router.handle(other).hand_over.remote(_shard(later, router), 2))
                         | {"shard": _shard(later, router)})
            router.refresh()
        view = ray.get(router.coordinator.view.remote())
        counts = [view["owners"].count(h) for h in range(3)]
        assert max(counts) - min(counts) <= 2, counts
        # (the new host goes to a live node with the fewest hosts: the new one, or a node
        # of the cluster that had none - with three nodes and two hosts there is one)
        assert _hellos(rt)[2]["node"] not in before, (before, new.node_id)
        moved = {m["shard"] for m in moves}
        new_pid = _hellos(rt)[2]["pid"]
        for r in refs:
            assert await r.mark("after") == 2
            marks = [m for m in await r.marks() if m[0] != "scheduled"]
            assert [m[0] for m in marks] == ["before", "after"]
            if _shard(r, router) in moved:
                assert marks[1][1] == new_pid, "a moved agent runs on the new host"
        await eventually(lambda: later.marks(), until=lambda m: len(m) == 3, timeout=60,
                         interval=0.3, what="the scheduled mark fired after the move")
        marks = await later.marks()
        assert [m[0] for m in marks] == ["before", "after", "scheduled"], "fired once"
        assert marks[2][1] == new_pid
    finally:
        rt.close()


async def test_a_lost_node_keeps_pending_approvals_the_outbox_and_events(cluster, tmp_path):
    """What a changeset leaves out travels to the replica too: an agent on a worker node
    records an event, sends a mark to an agent of its shard (which stalls there, so the
    message stays in the sender's outbox) and asks for an approval; the node is removed
    and its disk deleted. On the survivors the approval is pending in rt.approvals and is
    approved once, the mark arrives exactly once, and the event is on record."""
    import ray

    rt = _runtime(cluster, tmp_path, hosts=3, replicas=1, lease_seconds=LEASE)
    try:
        router = rt.router
        hellos, workers, victim = _on_a_worker(rt, cluster)
        giver = next(ref for ref in (rt.get(RayTally, f"g{i}") for i in range(200))
                     if router.host_of(ref._ab_key) == victim)
        taker = next(ref for ref in (rt.get(RayTally, f"t{i}") for i in range(500))
                     if _shard(ref, router) == _shard(giver, router))
        assert await giver.mark("before") == 1
        assert await taker.mark("before") == 1
        approval_id = await giver.give(taker.name, "sent", hellos[victim]["pid"], 7)
        assert [a.id for a in rt.approvals.list()] == [approval_id]

        node = workers[hellos[victim]["node"]]
        cluster.remove_node(node, allow_graceful=False)
        cluster.workers.remove(node)
        shutil.rmtree(cluster.host_dir / f"agentbook-{node.node_id}")  # its disk is lost
        shard = _shard(giver, router)
        await eventually(lambda: ray.get(router.coordinator.view.remote())["owners"][shard],
                         until=lambda owner: owner != victim, timeout=60, interval=0.2,
                         what="the lost host's shard was promoted on its replica")
        router.refresh()

        async def marks_of_taker() -> list:
            try:
                return await asyncio.wait_for(taker.marks(), 30)
            except (ab.HostUnavailableError, asyncio.TimeoutError):
                return []

        await eventually(marks_of_taker, until=lambda m: len(m) == 2, timeout=60,
                         interval=0.3, what="the mark in the outbox arrived after promotion")
        assert [m[0] for m in await taker.marks()] == ["before", "sent"], "exactly once"

        def pending() -> list:
            try:
                return [a.id for a in rt.approvals.list()]
            except ab.HostUnavailableError:  # (the lost host, restarting elsewhere)
                return []

        await eventually(pending, until=lambda ids: ids == [approval_id], timeout=60,
                         interval=0.3, what="the approval is still pending, on the new owner")
        assert await rt.approvals.approve(approval_id) == 1 + 7
        with pytest.raises(ab.ApprovalDecidedError):
            rt.approvals.approve(approval_id)
        assert rt.approvals.get(approval_id).status == "approved"
        assert await giver.marks() == [["before", hellos[victim]["pid"]]]
        assert [m[0] for m in await taker.marks()] == ["before", "sent"], "still once"

        def events() -> list:
            try:
                frame = rt.sql("SELECT type FROM events WHERE agent = 'RayTally' AND name = ?"
                               " ORDER BY seq", giver.name)
            except ab.HostUnavailableError:
                return []
            return list(frame["type"])

        # (the value that held: a second read could meet the restarting host and be [])
        types = await eventually(events, until=lambda types: "giving" in types, timeout=30,
                                 interval=0.3,
                                 what="the giver's event is on record after promotion")
        assert types.count("giving") == 1
        assert any(t.startswith("approval:request") for t in types), types
    finally:
        rt.close()


def _pin(path) -> bool:
    """Make the file *path* impossible to delete (its folder read-only; as root, which
    ignores that, the file immutable); whether it worked."""
    import subprocess

    if os.geteuid() != 0:
        os.chmod(os.path.dirname(path), 0o555)
        return True
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:  # (no chattr)
        return False


def _unpin(path) -> None:
    import subprocess

    os.chmod(os.path.dirname(path), 0o755)
    if os.geteuid() == 0:
        with contextlib.suppress(FileNotFoundError):
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)


async def test_a_removed_host_that_cannot_delete_its_folder_says_so(cluster, tmp_path, caplog):
    """A host that leaves deletes its folder; what it could not delete is logged on the
    driver as a warning naming the host, its node and the file, and the moves still go."""
    rt = _runtime(cluster, tmp_path, hosts=2)
    pinned = None
    try:
        refs = [rt.get(RayTally, f"p{i}") for i in range(4)]
        for r in refs:
            await r.mark("before")
        hello = _hellos(rt)[1]
        os.makedirs(os.path.join(hello["folder"], "kept"))
        pinned = os.path.join(hello["folder"], "kept", "file")
        open(pinned, "w").close()
        if not _pin(pinned):
            pytest.skip("root can't make a file undeletable here: it needs chattr +i (apt-get "
                        "install e2fsprogs) on a file system that keeps the flag, or a "
                        "non-root user")
        with caplog.at_level("WARNING", logger="agentbook.ray"):
            moves = rt.remove_hosts(1)
        assert {m["from"] for m in moves} <= {1}
        [warned] = [r.getMessage() for r in caplog.records if "left files behind" in r.message]
        assert "host 1 " in warned and hello["node"] in warned and pinned in warned, warned
        assert "delete them by hand" in warned
        for r in refs:
            assert await r.mark("after") == 2
    finally:
        if pinned is not None:
            _unpin(pinned)
        rt.close()


async def test_removing_hosts_refuses_bad_input_and_keeps_every_agent(cluster, tmp_path):
    """rt.remove_hosts(n) / rt.drain_node(id): typed errors for a bad count, the last host
    and an unknown node; then the newest host is drained and stopped - its agents answer
    from the others with their data, pending approvals and failures - and the driver wrote
    no file all along (its catalog is in memory; the stores are on the hosts' nodes)."""
    import ray

    rt = _runtime(cluster, tmp_path, hosts=3, replicas=1, lease_seconds=LEASE)
    try:
        for bad in (0, -1, True, "1", 1.0):
            with pytest.raises(ab.UsageError, match="count"):
                rt.remove_hosts(bad)
        with pytest.raises(ab.UsageError, match="no host to own"):
            rt.remove_hosts(3)
        with pytest.raises(ab.UsageError, match="no live Ray node"):
            rt.drain_node("0" * 56)
        with pytest.raises(ab.UsageError, match="node_id"):
            rt.drain_node(None)  # type: ignore[arg-type]
        refs = [rt.get(RayTally, f"r{i}") for i in range(12)]
        for r in refs:
            assert await r.mark("before") == 1
        router = rt.router
        leaving = [r for r in refs if router.host_of(r._ab_key) == 2]
        assert leaving, "some agents live on the host that leaves"
        asked = await leaving[0].propose(5)
        pid = _hellos(rt)[2]["pid"]
        folder = _hellos(rt)[2]["folder"]
        moves = rt.remove_hosts(1)
        assert moves and {m["from"] for m in moves} == {2}, moves
        view = ray.get(router.coordinator.view.remote())
        assert 2 not in view["owners"] and 2 not in view["replicas"] and view["gone"] == [2]
        assert router.live_hosts() == [0, 1]
        assert list(rt.approvals.pending()["id"]) == [asked], "the approval moved along"
        for r in refs:
            assert await r.mark("after") == 2
            assert [m[0] for m in await r.marks()] == ["before", "after"]
        assert await rt.approvals.approve(asked) == 7
        assert len(rt.agents()) == 12
        import psutil

        await eventually(lambda: psutil.pid_exists(pid), until=lambda alive: not alive,
                         timeout=30, interval=0.2, what="the removed host's process exited")
        assert not os.path.exists(folder), "the removed host's folder is gone"
        with pytest.raises(ab.UsageError, match="no host to own"):
            rt.remove_hosts(2)
    finally:
        rt.close()
    assert not os.path.exists(tmp_path / "driver"), "the driver wrote no file"


async def test_draining_a_node_under_traffic_moves_its_shards_then_it_leaves(cluster, tmp_path):
    """rt.drain_node(id) while the driver marks 12 agents without pause: the node's host
    hands its shards (with a pending schedule and approval) to the survivors and exits;
    then cluster.remove_node. No acknowledged mark is lost, no agent went back to a host
    it left, the schedule fires once and the approval is still there to decide."""
    import ray

    rt = _runtime(cluster, tmp_path, hosts=3, replicas=1, lease_seconds=LEASE)
    try:
        router = rt.router
        hellos, workers, victim = _on_a_worker(rt, cluster)
        names = [f"d{i}" for i in range(60)]
        on_victim = [n for n in names[12:] if router.host_of(("RayTally", n)) == victim]
        refs = [rt.get(RayTally, n) for n in names[:12]]
        later = rt.get(RayTally, on_victim[0])
        asker = rt.get(RayTally, on_victim[1])
        await later.mark_later(6.0, "scheduled")
        asked = await asker.propose(5)
        acked, failed, stop, tasks = await _start_traffic(refs)
        node_id = hellos[victim]["node"]
        pid = hellos[victim]["pid"]
        before = {name: len(marks) for name, marks in acked.items()}
        moves = await asyncio.to_thread(rt.drain_node, node_id)  # (the loop keeps sending)
        assert moves and {m["from"] for m in moves} == {victim}, moves
        assert sum(m["agents"] for m in moves) >= 2
        view = ray.get(router.coordinator.view.remote())
        assert victim not in view["owners"] and victim not in view["replicas"]
        assert min(len(acked[n]) - before[n] for n in acked) >= 1, "traffic went on meanwhile"
        import psutil

        await eventually(lambda: psutil.pid_exists(pid), until=lambda alive: not alive,
                         timeout=30, interval=0.2, what="the drained host's process exited")
        node = workers[node_id]
        cluster.remove_node(node)
        cluster.workers.remove(node)
        await _answering_again(acked, timeout=60)
        stop.set()
        await asyncio.gather(*tasks)
        assert not [f for f in failed if f[1] == "LeaseLostError"], failed
        await _check_marks(refs, acked)
        await eventually(lambda: later.marks(), until=lambda m: "scheduled" in [x[0] for x in m],
                         timeout=60, interval=0.3, what="the scheduled mark fired after the move")
        assert [m[0] for m in await later.marks()].count("scheduled") == 1, "fired once"
        assert asked in list(rt.approvals.pending()["id"])
        assert await rt.approvals.approve(asked) == 5
    finally:
        rt.close()


async def test_a_restarted_host_never_waits_for_a_turn_that_has_passed():
    """A host Ray restarted takes a sender's numbering up from the first call that arrives;
    calls numbered before it that arrive later run at once instead of waiting forever (a
    host placed on a node that had just died stalled a sender this way)."""
    from agentbook.backends.ray import AgentHost

    host = AgentHost.__new__(AgentHost)  # (the ordering alone: no runtime, no Ray)
    host._expected, host._waiting, host._restarted = {}, {}, True
    order = []

    async def call(seq: int) -> None:
        await host._turn("driver", seq)
        order.append(seq)
        host._next("driver", seq)

    await call(6)  # the first to arrive after the restart
    later = asyncio.ensure_future(call(8))
    await asyncio.sleep(0)
    assert not later.done(), "8 waits for 7"
    for seq in (0, 1, 2):  # sent before 6, arrived after it: their turn has passed
        await asyncio.wait_for(call(seq), 1)
    await call(7)
    await asyncio.wait_for(later, 1)
    assert order == [6, 0, 1, 2, 7, 8]
    assert host._expected["driver"] == 9 and not host._waiting


def test_removing_hosts_is_for_node_local_ray_runtimes(tmp_path):
    from agentbook.backends.ray import RayRouter

    # (the router says which arguments keep the stores on the hosts' nodes)
    assert not RayRouter.node_local(None, 0, None)
    assert RayRouter.node_local(str(tmp_path), 0, None)
    assert RayRouter.node_local(None, 1, None)
    assert RayRouter.node_local(None, 0, "ray://head:10001")
    rt = ab.Runtime(tmp_path / "local")
    try:
        with pytest.raises(ab.UsageError, match="host_dir"):
            rt.remove_hosts(1)
        with pytest.raises(ab.UsageError, match="host_dir"):
            rt.drain_node("ab" * 28)
    finally:
        rt.close()


def test_a_leaving_hosts_folder_deletion_says_what_it_left(tmp_path, monkeypatch):
    """host_removal.delete_folder deletes a folder whole (``""``), or says which file it
    could not delete and why (the folder stays)."""
    from agentbook.backends.host_removal import delete_folder

    for name in ("gone", "kept"):
        os.makedirs(tmp_path / name / "agents")
        (tmp_path / name / "agents" / "a.db").write_bytes(b"x")
        (tmp_path / name / "catalog.db").write_bytes(b"x")
    assert delete_folder(str(tmp_path / "gone")) == ""
    assert not os.path.exists(tmp_path / "gone")
    unlink = os.unlink

    def refuse(path, *args, **kwargs):
        if os.fspath(path).endswith("a.db"):
            raise PermissionError(1, "Operation not permitted")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse)
    left = delete_folder(str(tmp_path / "kept"))
    assert left.startswith(f"{tmp_path / 'kept'} is left: ") and "a.db" in left, left
    assert "PermissionError" in left
    assert os.path.exists(tmp_path / "kept" / "agents" / "a.db")


def test_a_call_to_a_restarting_host_is_asked_again_until_it_is_up():
    """rt.add_hosts asks every host where it runs; a host of a lost node, restarting on
    another, answers ActorUnavailableError until it is up (seen in notebook 11 right after
    a node loss). ask_restarting asks again, and gives up with the typed error. (No Ray:
    the timing of a real restart can't be chosen, so a stand-in for ray.get raises Ray's
    error, matched by its name as the backend matches it.)"""
    from agentbook.backends.shards import ask_restarting

    class ActorUnavailableError(Exception):
        pass

    class StandIn:  # ray.get: unavailable twice, then the answer
        def __init__(self, failures: int) -> None:
            self.failures, self.asked = failures, 0

        def get(self, ref):
            self.asked += 1
            if self.asked <= self.failures:
                raise ActorUnavailableError("The actor is temporarily unavailable")
            return ref

    ray = StandIn(2)
    assert ask_restarting(ray, lambda: {"node": "n1"}, "host 2", pause=0) == {"node": "n1"}
    assert ray.asked == 3
    with pytest.raises(ab.HostUnavailableError, match="host 2 is restarting.*try again"):
        ask_restarting(StandIn(10**9), lambda: None, "host 2", timeout=0.05, pause=0.01)
    with pytest.raises(ValueError):  # (anything else is not asked again)
        ask_restarting(StandIn(0), lambda: (_ for _ in ()).throw(ValueError("no")), "host 2")
