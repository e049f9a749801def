"""Reads through owners: on a Ray runtime whose hosts keep their stores in their own node's
folder (``host_dir=``), every read from the driver is answered by the agent's host, gives
what a local runtime gives, and the driver opens no store file."""

from __future__ import annotations

import asyncio
import os
import re

import pandas as pd
import pytest

import agentbook as ab
from agentbook.backends.ray_reads import HostReads, decode_frame, encode_frame

from .opened_files import sqlite_opens
from .ray_agents import RayLedger

pytestmark = pytest.mark.ray

#: Columns that hold times, durations or random ids: they differ between two runs.
_VOLATILE = {"ts", "due", "created", "updated", "expires", "time_left_s", "decided_at",
             "decided_by", "started", "ended", "until", "duration_ms", "timestamp", "id",
             "approval", "lateness_s", "duration_s", "failed_at", "run", "occurrence"}


def _host_dir(folder) -> str:
    return str(folder / "nodes" / "agentbook-{node}")


async def _scenario(rt: ab.Runtime) -> dict:
    """The same messages on every runtime: rows and blobs, a removal, a failure, a
    schedule, an approval (and one decided), a workflow run."""
    a, b = rt.get(RayLedger, "a"), rt.get(RayLedger, "d")  # (hosts 1 and 0)
    for item, qty in (("x", 1), ("y", 2), ("z", 3)):
        await a.add(item, qty)
    await a.remove("y")
    with pytest.raises(ValueError, match="nope"):
        await a.fail("nope")
    await a.plan(5)
    await b.propose(4)
    decided = await b.propose(6)
    await b.add("w", 7)
    assert await rt.approvals.approve(decided) == 13
    run = await b.count(2)
    assert await run.result(timeout=60) == 15
    await rt.settle()
    return {"a": a, "b": b, "run": run.id}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, ray_cluster):
    """A local runtime and a Ray one with node-local stores, after the same scenario."""
    folder = tmp_path_factory.mktemp("reads")

    async def build(rt: ab.Runtime) -> dict:
        return await _scenario(rt)

    local = ab.Runtime(folder / "local")
    remote = ab.Runtime(folder / "driver", backend="ray", hosts=2, shards=8,
                        host_dir=_host_dir(folder))
    try:
        made = {"local": asyncio.run(build(local)), "ray": asyncio.run(build(remote))}
        hosts = {remote.router.host_of(r._ab_key) for r in (made["ray"]["a"], made["ray"]["b"])}
        assert hosts == {0, 1}, "a and b live on different hosts"
        yield {"local": (local, made["local"]), "ray": (remote, made["ray"]), "folder": folder}
    finally:
        local.close()
        remote.close()


#: Random ids and wall-clock times inside values (a schedule's row in a diff, a run's id in
#: the arguments of its turns).
_SCRUB = re.compile(r"\b(?:wf-|ap-)?[0-9a-f]{12,32}\b|\b1[0-9]{9}\.[0-9]+\b")


def _scrub(value):
    if isinstance(value, str):
        return _SCRUB.sub("<>", value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def _plain(value):
    """A read's answer with what differs between two runs (times, random ids) left out."""
    if isinstance(value, pd.DataFrame):
        keep = [i for i, c in enumerate(value.columns) if c not in _VOLATILE
                and not isinstance(value.iloc[:, i].dtype, pd.DatetimeTZDtype)]
        value = value.iloc[:, keep].copy()
        for i in range(value.shape[1]):
            column = value.iloc[:, i]
            if column.dtype == object or isinstance(column.dtype, pd.StringDtype):
                value.isetitem(i, column.map(_scrub, na_action="ignore"))
        return value
    if isinstance(value, ab.Approval):
        return (value.agent, value.name, value.method, value.args, value.status)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return _scrub(value)


def _diff(d):
    # (not its repr: it cuts rows at a width, and a time's digits differ between two runs)
    return (d.a, d.b, d.state, d.rows, d.tables(), d.internals)


#: Every read, as the driver makes it: (runtime, agents, run id) -> answer.
READS = {
    "state": lambda rt, m: m["a"].state,
    "version": lambda rt, m: m["a"].version,
    "version of another host's agent": lambda rt, m: m["b"].version,
    "state of an agent never written": lambda rt, m: rt.get(RayLedger, "nobody").state,
    "history": lambda rt, m: m["a"].history(limit=100),
    "history page": lambda rt, m: m["a"].history(limit=2, before=4, failures=False),
    "history by method": lambda rt, m: m["b"].history(method="add"),
    "sql": lambda rt, m: m["a"].sql("SELECT * FROM items ORDER BY id"),
    "sql with a blob parameter": lambda rt, m: m["a"].sql(
        "SELECT id, qty, note FROM items WHERE blob = ? OR qty > ?", b"zz", 2),
    "sql with no rows": lambda rt, m: m["a"].sql("SELECT id FROM items WHERE qty < 0"),
    "sql of duplicate names": lambda rt, m: m["a"].sql("SELECT qty, qty FROM items"),
    "schedules": lambda rt, m: m["a"].schedules(),
    "workflows": lambda rt, m: m["b"].workflows(),
    "messages": lambda rt, m: m["a"].messages(),
    "failures": lambda rt, m: m["a"].failures(),
    "history_range": lambda rt, m: m["a"].history_range(),
    "verify": lambda rt, m: m["b"].verify(),
    "at: state": lambda rt, m: m["a"].at(2).state,
    "at: version counted from the newest": lambda rt, m: m["a"].at(-2).version,
    "at: sql": lambda rt, m: m["a"].at(2).sql("SELECT id, qty, blob FROM items ORDER BY id"),
    "at: schedules": lambda rt, m: m["a"].at(-1).schedules(),
    "at: workflows": lambda rt, m: m["b"].at(-1).workflows(),
    "diff": lambda rt, m: _diff(m["a"].diff(1)),
    "diff of two versions": lambda rt, m: _diff(m["a"].diff(3, 2)),
    "diff with another agent": lambda rt, m: _diff(m["a"].diff(2, 3, other=m["b"])),
    "workflow run": lambda rt, m: (m["b"].workflow(m["run"]).status,
                                   m["b"].workflow(m["run"]).method),
    "workflow steps": lambda rt, m: m["b"].workflow(m["run"]).steps(),
    "rt.agents()": lambda rt, m: rt.agents(),
    "rt.agents(cls)": lambda rt, m: rt.agents(RayLedger),
    "rt.workflows()": lambda rt, m: rt.workflows(),
    "rt.dead_letters()": lambda rt, m: rt.dead_letters(),
    "approvals pending": lambda rt, m: rt.approvals.pending(),
    "approvals history": lambda rt, m: rt.approvals.history(),
    "approvals list": lambda rt, m: rt.approvals.list(None),
    "an approval by id": lambda rt, m: rt.approvals.get(rt.approvals.list()[0].id),
    "views: history": lambda rt, m: rt.sql(
        "SELECT agent, name, version, method, args, outcome, error, result, state"
        " FROM history ORDER BY name, version NULLS LAST, method"),
    "views: events": lambda rt, m: rt.sql(
        "SELECT type, agent, name, version, count(*) AS n FROM events"
        " GROUP BY ALL ORDER BY ALL"),
    "views: agents, schedules, approvals": lambda rt, m: rt.sql(
        "SELECT (SELECT list(name ORDER BY name) FROM agents) AS agents,"
        " (SELECT list(callback) FROM schedules) AS scheduled,"
        " (SELECT list(status ORDER BY status) FROM approvals) AS approvals,"
        " (SELECT list(status) FROM workflows) AS runs,"
        " (SELECT count(*) FROM workflow_steps) AS steps"),
}

#: Reads that raise: the same error on both.
ERRORS = {
    "sql that writes": (lambda rt, m: m["a"].sql("DELETE FROM items"), ab.ReadOnlyError),
    "bad sql": (lambda rt, m: m["a"].sql("SELECT nope FROM items"), ab.SQLError),
    "sql over its size limit": (lambda rt, m: m["a"].sql("SELECT * FROM items", max_bytes=3),
                                ab.SQLError),
    "a version that never was": (lambda rt, m: m["a"].at(99), ab.VersionNotFoundError),
    "sql of an agent never written": (lambda rt, m: rt.get(RayLedger, "nobody").sql(
        "SELECT 1"), ab.AgentNotFoundError),
    "an unknown approval": (lambda rt, m: rt.approvals.get("nope"), ab.ApprovalNotFoundError),
    "an unknown workflow run": (lambda rt, m: m["b"].workflow("nope"), ab.UsageError),
}


@pytest.mark.parametrize("read", list(READS))
def test_every_read_through_the_owner_answers_as_a_local_runtime(pair, read):
    answers = [_plain(READS[read](*pair[kind])) for kind in ("local", "ray")]
    local, remote = answers
    if isinstance(local, tuple) and any(isinstance(x, pd.DataFrame) for x in local):
        for left, right in zip(local, remote, strict=True):
            if isinstance(left, pd.DataFrame):
                pd.testing.assert_frame_equal(_plain(left), _plain(right))
            else:
                assert left == right
    elif isinstance(local, pd.DataFrame):
        assert len(local) or read in ("sql with no rows", "messages", "rt.dead_letters()"), \
            "the comparison compares something"
        pd.testing.assert_frame_equal(local, remote)
    else:
        assert local == remote


@pytest.mark.parametrize("read", list(ERRORS))
def test_a_read_that_fails_fails_alike_through_the_owner(pair, read):
    fn, error = ERRORS[read]
    messages = []
    for kind in ("local", "ray"):
        with pytest.raises(error) as caught:
            fn(*pair[kind])
        messages.append(str(caught.value))
    assert messages[0] == messages[1] or read == "a version that never was"


def test_the_driver_opens_no_store_file(pair):
    rt, made = pair["ray"]
    nodes = str(pair["folder"] / "nodes")
    fds_seen: set[str] = set()

    def look() -> None:
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds_seen.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass

    with sqlite_opens() as opened:
        for name, read in READS.items():
            read(rt, made)
            look()
            assert opened in ([], [":memory:"]) or set(opened) == {":memory:"}, (name, opened)
    assert not [p for p in fds_seen if p.startswith(nodes)], "the driver opened a host's file"
    stores = [os.path.join(d, f) for d, _, fs in os.walk(rt.root) for f in fs]
    assert stores == [], "the driver writes no file (its catalog is in memory)"
    hosts = [os.path.join(d, f) for d, _, fs in os.walk(nodes) for f in fs]
    assert any("RayLedger" in p for p in hosts), "the stores are in the node's folder"


def test_reads_that_need_the_store_file_say_what_to_do(pair, tmp_path):
    rt, made = pair["ray"]
    a = made["a"]
    for attempt in (lambda: a.export(tmp_path / "a.abagent"), lambda: a.fork("copy"),
                    lambda: a.replay(1), lambda: a.bisect(lambda v: True),
                    lambda: rt.import_agent(tmp_path / "a.abagent"),
                    lambda: rt.analytics.table("items")):
        with pytest.raises(ab.UsageError, match="host_dir"):
            attempt()


async def test_views_follow_new_commits_and_a_restarted_host(tmp_path, ray_cluster):
    rt = ab.Runtime(tmp_path / "driver", backend="ray", hosts=2, shards=8,
                    host_dir=_host_dir(tmp_path))
    try:
        refs = [rt.get(RayLedger, f"v{i}") for i in range(6)]
        for r in refs:
            await r.add("one", 1)
        count = "SELECT count(*) AS n FROM history WHERE outcome = 'ok'"
        assert rt.sql(count).n[0] == 12  # (on_start's version, and the add)
        for r in refs:
            await r.add("two", 2)
        assert rt.sql(count).n[0] == 18, "only the new rows came"
        assert rt.sql(count).n[0] == 18, "nothing came twice"
        victim = rt.router.host_of(refs[0]._ab_key)
        ray_cluster.kill(rt.router.handle(victim), no_restart=False)
        from .waiting import eventually

        async def counted() -> int | None:
            # (a read that meets the restart says so with a typed error that asks to read
            # again; a restarted host that has not learned its shards yet says so too)
            try:
                return int(rt.sql(count).n[0])
            except ab.HostUnavailableError:
                return None

        # the first read after the kill, before any message woke the restarted host
        n = await eventually(counted, until=lambda n: n is not None, timeout=30,
                             interval=0.2, what="the views read the restarted host")
        assert n == 18, "the restarted host read its agents before any message came"

        async def answered() -> bool:
            try:
                return bool(await refs[0].add("three", 3))
            except ab.HostUnavailableError:
                return False
            except ab.SQLError:  # it ran before the host went
                return True

        await eventually(answered, timeout=30, interval=0.2, what="the host came back")
        n = await eventually(counted, until=lambda n: n is not None, timeout=30,
                             interval=0.2, what="the views read the restarted host")
        assert n == 19, "the restarted host's projection replaced its old one"
        by_name = rt.sql("SELECT name, max(version) AS v FROM history GROUP BY name ORDER BY name")
        assert by_name.v.tolist() == [4, 3, 3, 3, 3, 3]  # (on_start made version 1)
        assert rt.analytics.rebuild() == 19
        assert rt.sql(count).n[0] == 19
    finally:
        await rt.aclose()


def test_a_frame_travels_with_its_values_and_dtypes():
    frame = pd.DataFrame({"args": [[1, "a"], None, {"k": [True]}], "text": ["a", None, "c"],
                          "objects": pd.Series(["a", None, "b"], dtype=object),
                          "blob": [b"\x00", b"x", None], "mixed": [1, "one", b"\x01"],
                          "n": pd.array([1, None, 3], dtype="Int64"),
                          "ts": pd.to_datetime([1.0, 2.0, None], unit="s", utc=True)})
    frame.insert(1, "n2", [1.5, float("nan"), 2.0])
    back, extra = decode_frame(encode_frame(frame, {"why": "test"}))
    pd.testing.assert_frame_equal(frame, back)
    assert extra == {"why": "test"}


async def test_a_host_that_does_not_know_its_shards_says_read_again():
    """A restarted host whose first lease renewal has not gone through owns nothing yet: it
    refuses every read with the typed 'read again' error instead of reading as empty. (No
    Ray here: a host object whose router knows no owners.)"""
    from types import SimpleNamespace

    class Unsettled(HostReads):
        rt = SimpleNamespace(router=SimpleNamespace(knows_owners=lambda: False))

    host = Unsettled()
    for read in (host.read("state", "RayLedger", "a", "[[], {}]"),
                 host.read_all("agents", "[null]"), host.feed("", 0)):
        with pytest.raises(ab.HostUnavailableError, match="read again"):
            await read


def test_reads_skip_a_restarting_host_whose_shards_were_promoted(monkeypatch):
    """After a node loss Ray restarts its host on another node; until it is up, a call to
    it fails (HostUnavailableError). A runtime-wide read skips it once the shard map says
    it owns nothing (its shards were promoted to their replicas), and a read of one agent
    asks the agent's new owner; a restarting host that still owns shards says 'read
    again'. (No Ray: a stand-in router and answers, since the restart's timing can't be
    chosen on a real cluster.)"""
    from types import SimpleNamespace

    from agentbook.backends.ray_reads import OwnerReads

    class Router:
        coordinator = object()

        def __init__(self) -> None:
            self.owners, self.refreshed = [1, 0], 0

        def live_hosts(self):
            return [0, 1]

        def host_of(self, key):
            return self.owners[0 if key[1] == "a" else 1]

        def refresh(self):
            self.refreshed += 1
            self.owners = self.promoted

        def handle(self, i):
            def remote(*a):
                return ("answer", i, a)

            return SimpleNamespace(read_all=SimpleNamespace(remote=remote),
                                   read=SimpleNamespace(remote=remote))

    def get(self, ref):
        if ref[1] == 1:  # host 1 is restarting
            raise ab.HostUnavailableError("the host owning this agent is restarting")
        return ref

    monkeypatch.setattr(OwnerReads, "_get", get)
    router = Router()
    router.promoted = [0, 0]  # host 1's shards went to host 0
    reads = OwnerReads(router)
    assert [a[1] for a in reads._everywhere("approvals", None)] == [0]
    assert reads._ask(("T", "a"), "state", ())[1] == 0, "asked the new owner"
    router.owners, router.promoted = [1, 0], [1, 0]  # host 1 still owns shard 0
    with pytest.raises(ab.HostUnavailableError):
        reads._everywhere("approvals", None)
    with pytest.raises(ab.HostUnavailableError):
        reads._ask(("T", "a"), "state", ())
