"""SPEC §2, invariant by invariant, against every kind of runtime."""

from __future__ import annotations

import asyncio
import os

import pytest

import agentbook as ab

from ..waiting import eventually
from .agents import (
    ConfBadStart,
    ConfCaller,
    ConfCounter,
    ConfDestroy,
    ConfErrors,
    ConfKV,
    ConfSlow,
    ConfValidated,
)


# -- 1. Identity -----------------------------------------------------------------------
@pytest.mark.local_only("counts on_start calls in this process")
async def test_get_returns_the_same_agent_and_starts_nothing(crt):
    before = ConfCounter.starts
    a1, a2 = crt.get(ConfCounter, "alice"), crt.get(ConfCounter, "alice")
    assert a1 == a2 and hash(a1) == hash(a2)
    assert ConfCounter.starts == before
    assert not os.path.exists(crt.path_of(("ConfCounter", "alice")))
    assert a1.state == {"n": 0} and a1.version == 0
    await a1.inc()
    assert await a2.inc() == 2
    assert ConfCounter.starts == before + 1


@pytest.mark.local_only("counts on_start calls in this process")
async def test_on_start_runs_before_the_first_message_and_on_every_wake(crt):
    ref = crt.get(ConfCounter, "waker")
    before = ConfCounter.starts
    await ref.inc()
    assert ConfCounter.starts == before + 1
    await ref.inc()
    assert ConfCounter.starts == before + 1
    assert crt.hibernate() >= 1
    await ref.inc()
    assert ConfCounter.starts == before + 2
    # on_start's table creation was itself a version, and only the first time
    assert list(ref.history(limit=10).method) == ["inc", "inc", "inc", "on_start"]


async def test_spawn_gives_fresh_unique_names(crt):
    names = {crt.spawn(ConfCounter).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("confcounter-") for n in names)


# -- 2. One at a time ------------------------------------------------------------------
@pytest.mark.local_only("the test's gate is an asyncio.Event in this process")
async def test_handlers_of_one_agent_never_overlap(crt):
    ConfSlow.gates["g1"] = gate = asyncio.Event()
    ref = crt.get(ConfSlow, "s")
    calls = [asyncio.ensure_future(ref.work("g1"))] + [
        asyncio.ensure_future(ref.work()) for _ in range(5)
    ]
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(c.done() for c in calls)
    gate.set()
    results = await asyncio.gather(*calls)
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert ref.state == {"running": 0, "max": 1, "done": 6}


@pytest.mark.local_only("the test's gate is an asyncio.Event in this process")
async def test_reads_from_outside_never_wait_for_a_running_handler(crt):
    ConfSlow.gates["g2"] = gate = asyncio.Event()
    ref = crt.get(ConfSlow, "reader")
    await ref.work()
    pending = asyncio.ensure_future(ref.work("g2"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not pending.done()
    # the handler has set running=1 but not committed: outside sees the last commit
    assert ref.state == {"running": 0, "max": 1, "done": 1}
    assert ref.version == 1
    assert len(ref.history()) == 1
    gate.set()
    assert await pending == 2


# -- 3. Atomic handlers ----------------------------------------------------------------
async def test_a_handler_that_raises_leaves_nothing_behind(crt):
    ref = crt.get(ConfCounter, "atomic")
    other = crt.get(ConfCounter, "other")
    await ref.inc(1, "kept")
    await other.inc(1, "baseline")
    with pytest.raises(RuntimeError, match="boom x"):
        await ref.everything_then_raise("x")
    await asyncio.sleep(0)
    assert ref.state == {"n": 1}
    assert list(ref.sql("SELECT note FROM hits").note) == ["kept"]
    assert ref.version == 2
    assert await ref.kv_get("poison") is None
    assert other.state == {"n": 1}, "a send from the failed handler left anyway"
    failures = ref.failures()
    assert list(failures.method) == ["everything_then_raise"]
    assert "boom x" in failures.error[0]
    hist = ref.history()
    assert list(hist.method) == ["kv_get", "everything_then_raise", "inc", "on_start"]
    assert list(hist.outcome) == ["ok", "error", "ok", "ok"]
    assert hist.version.isna().tolist() == [False, True, False, False]
    # and the agent keeps working
    assert await ref.inc() == 2


async def test_a_burst_with_one_failure_keeps_every_other_message(crt):
    ref = crt.get(ConfCounter, "burst")
    await ref.inc()
    calls = []
    for i in range(30):
        if i == 13:
            calls.append(ref.everything_then_raise("mid"))
        else:
            calls.append(ref.inc(1, f"m{i}"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[13], RuntimeError)
    assert ref.state == {"n": 30}
    assert ref.version == 1 + 1 + 29  # on_start, the first inc, 29 successful incs
    notes = list(ref.sql("SELECT note FROM hits ORDER BY id").note)
    assert notes == [""] + [f"m{i}" for i in range(30) if i != 13]
    versions = list(ref.history(limit=100, failures=False).version)
    assert versions == list(range(ref.version, 0, -1))


async def test_non_json_state_is_refused_before_anything_is_written(crt):
    ref = crt.get(ConfCounter, "json")
    await ref.inc()
    with pytest.raises(ab.JSONValueError, match=r"state\['n'\]"):
        await ref.set_bad_state()
    assert ref.state == {"n": 1}
    assert await ref.inc() == 2


@pytest.mark.local_only("records hook calls in this process")
async def test_validate_state_change_can_refuse_and_on_state_changed_sees_the_source(crt):
    ConfValidated.changes.clear()
    ref = crt.get(ConfValidated, "wallet")
    assert await ref.spend(4) == 6
    with pytest.raises(ab.StateRejectedError, match="negative"):
        await ref.spend(7)
    assert ref.state == {"balance": 6}
    assert ConfValidated.changes == [(6, crt.source)]


# -- 4. Output gate --------------------------------------------------------------------
@pytest.mark.local_only("events and sends from Ray hosts arrive a moment later, not within a few loop turns")
async def test_events_and_sends_leave_only_after_the_commit_is_durable(crt):
    seen = []
    ref = crt.get(ConfCaller, "teller")
    target = crt.get(ConfCounter, "told")

    def on_event(event):
        # when the event arrives, the commit it reports is already readable from disk
        seen.append((event["type"], ref.version))

    crt.events.subscribe(on_event, types=["rpc"], agent=("ConfCaller", "teller"))
    await ref.tell("told")
    await asyncio.sleep(0)
    assert seen == [("rpc", 1)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert target.state == {"n": 5}
    assert target.history(limit=1).source[0] == "agent:ConfCaller/teller"


# -- 5. Durable by default -------------------------------------------------------------
async def test_committed_versions_survive_a_restart(crt, reopen):
    ref = crt.get(ConfCounter, "durable")
    for i in range(5):
        await ref.inc(1, f"n{i}")
    with pytest.raises(RuntimeError):
        await ref.everything_then_raise("lost")
    await crt.aclose()
    rt2 = reopen()
    ref2 = rt2.get(ConfCounter, "durable")
    assert ref2.state == {"n": 5}
    assert ref2.version == 6
    assert len(ref2.sql("SELECT * FROM hits")) == 5
    assert await ref2.inc() == 6
    assert list(rt2.agents().name) == ["durable"]



# -- 6. JSON only, and bad calls -------------------------------------------------------
async def test_bad_calls_fail_at_the_call_with_typed_errors_and_nothing_queued(crt):
    ref = crt.get(ConfCounter, "bad")
    with pytest.raises(ab.UnknownMethodError, match="callable methods are: .*inc"):
        ref.call("nope")
    with pytest.raises(AttributeError):
        ref.nope  # noqa: B018
    with pytest.raises(ab.NotCallableError, match="@ab.callable"):
        ref.call("internal_only")
    with pytest.raises(ab.NotCallableError, match="private"):
        ref.call("_private")
    with pytest.raises(ab.NotCallableError, match="framework"):
        ref.call("set_state", {})
    with pytest.raises(ab.BadArgumentsError, match="unexpected keyword"):
        ref.call("inc", bogus=1)
    with pytest.raises(ab.BadArgumentsError):
        ref.call("inc", 1, "a", "too many")
    with pytest.raises(ab.JSONValueError, match=r"args\[0\]"):
        ref.call("inc", {1, 2})
    with pytest.raises(ab.UsageError):
        crt.get(ConfCounter, "")
    with pytest.raises(ab.UsageError):
        crt.get(ConfCounter, "a/b")
    assert ref.version == 0
    assert not os.path.exists(crt.path_of(ref._ab_key))
    assert await ref.inc() == 1


async def test_agents_may_call_public_methods_of_other_agents_but_cells_may_not(crt):
    caller = crt.get(ConfCaller, "c1")
    await caller.call_private("target")
    assert crt.get(ConfCounter, "target").state == {"n": -1}
    assert crt.get(ConfCounter, "target").history(limit=1).source[0] == "agent:ConfCaller/c1"


# -- 7. Every committed handler is a version -------------------------------------------
async def test_history_has_the_spec_columns_and_contiguous_versions(crt):
    ref = crt.get(ConfCounter, "hist")
    for i in range(7):
        await ref.inc(i, note=f"n{i}")
    await ref.inc_sync()
    hist = ref.history(limit=100)
    for column in ["agent", "name", "version", "ts", "method", "args", "source",
                   "duration_ms", "outcome", "error"]:
        assert column in hist.columns
    assert list(hist.version) == list(range(9, 0, -1))
    row = hist[hist.version == 3].iloc[0]
    assert row.method == "inc" and row.args == [1] and row.kwargs == {"note": "n1"}
    assert row.state == {"n": 1} and row.outcome == "ok" and row.result == 1
    assert str(hist.ts.dtype).startswith("datetime64")
    assert hist.agent.unique().tolist() == ["ConfCounter"]


@pytest.mark.local_only("Ray hosts keep the wall clock; the virtual clock lives in one process")
async def test_history_pages_by_version_and_filters(crt, clock):
    ref = crt.get(ConfCounter, "pages")
    for _ in range(25):
        await ref.inc()
        await clock.advance(1)
    page = ref.history(limit=10)
    assert list(page.version) == list(range(26, 16, -1))
    nxt = ref.history(limit=10, before=int(page.version.min()))
    assert list(nxt.version) == list(range(16, 6, -1))
    assert list(ref.history(method="on_start").version) == [1]
    t0 = clock.now()
    recent = ref.history(since=t0 - 5)
    assert len(recent) == 5


# -- 8/9. Hibernation keeps everything --------------------------------------------------
@pytest.mark.local_only("inspects the runtime's open stores in this process")
async def test_idle_agents_hibernate_and_wake_with_state_kept(crt):
    refs = [crt.get(ConfCounter, f"h{i}") for i in range(5)]
    for ref in refs:
        await ref.inc(2)
    assert len(crt.open_stores) == 5
    assert crt.hibernate() == 5
    assert crt.open_stores == {} and crt.instances == {}
    assert [r.state for r in refs] == [{"n": 2}] * 5
    assert await refs[0].inc() == 3


@pytest.mark.local_only("inspects the runtime's open stores in this process")
async def test_open_stores_stay_bounded(kind, tmp_path, clock):
    from .conftest import make_runtime

    rt = make_runtime(kind, tmp_path / "bounded", clock, max_open=3)
    try:
        for i in range(12):
            await rt.get(ConfCounter, f"b{i}").inc()
            assert len(rt.open_stores) <= 3
        assert [rt.get(ConfCounter, f"b{i}").state["n"] for i in range(12)] == [1] * 12
    finally:
        await rt.aclose()


# -- agent to agent ----------------------------------------------------------------------
async def test_awaited_calls_between_agents_and_cycles_are_refused(crt):
    caller = crt.get(ConfCaller, "asker")
    assert await caller.ask("answerer") == 1
    assert await caller.ask("answerer") == 2
    assert caller.state == {"got": [1, 2]}
    with pytest.raises(ab.ReentrancyError, match="wait forever"):
        await caller.ask_back("peer")
    assert await caller.ask("answerer") == 3  # still healthy


@pytest.mark.local_only("on_error runs later on the host; the test waits by turning this loop")
async def test_errors_of_fire_and_forget_messages_reach_on_error(crt):
    ref = crt.get(ConfErrors, "e")
    ref.send("fail")
    for _ in range(20):
        await asyncio.sleep(0)
    assert ref.state == {"errors": ["ValueError: sent and failed"]}
    assert ref.history(limit=1, failures=False).method[0] == "on_error"


async def test_the_key_value_store_is_durable_json_and_transactional(crt):
    ref = crt.get(ConfKV, "kv")
    await ref.put("a", {"x": [1, 2]})
    await ref.put("b", 3)
    assert await ref.get("a") == {"x": [1, 2]}
    assert await ref.keys() == ["a", "b"]
    await ref.drop("a")
    assert await ref.keys() == ["b"]
    with pytest.raises(ab.JSONValueError):
        await ref.put("c", object.__new__(object))  # rejected at the call
    with pytest.raises(KeyError):
        await ref.drop("zzz")


@pytest.mark.local_only("Ray does not carry __cause__ across processes")
async def test_on_start_failure_is_typed_and_other_agents_keep_working(crt):
    ConfBadStart.fail = True
    bad = crt.get(ConfBadStart, "b")
    with pytest.raises(ab.AgentStartError, match="on_start raised OSError") as info:
        await bad.hello()
    assert isinstance(info.value.__cause__, OSError)
    assert await crt.get(ConfCounter, "fine").inc() == 1
    ConfBadStart.fail = False
    assert await bad.hello() == "hi"


async def test_destroy_removes_the_agent_and_its_store(crt):
    here = crt.reads is None  # (else the store files are on the hosts' nodes, not here)
    ref = crt.get(ConfDestroy, "d")
    await ref.touch()
    path = crt.path_of(ref._ab_key)
    assert os.path.exists(path) if here else "d" in list(crt.agents().name)
    await ref.destroy()
    assert not os.path.exists(path)
    assert "d" not in list(crt.agents().name)
    other = crt.get(ConfDestroy, "d2")
    await other.touch()
    await other.self_destruct()
    for _ in range(10):
        await asyncio.sleep(0)
    if here:
        assert not os.path.exists(crt.path_of(other._ab_key))
    else:  # (the host destroys it on its own loop)
        await eventually(lambda: "d2" not in list(crt.agents().name), timeout=30,
                         what="the host destroyed d2")
    assert other.version == 0  # a later message starts a brand-new agent


async def test_a_closed_runtime_refuses_politely(crt):
    ref = crt.get(ConfCounter, "closing")
    await ref.inc()
    await crt.aclose()
    with pytest.raises(ab.RuntimeClosedError, match="new ab.Runtime"):
        ref.call("inc")
    with pytest.raises(ab.RuntimeClosedError):
        crt.get(ConfCounter, "x")


# -- 11. Schedules are idempotent; settle runs what is due; secrets stay out of storage --
class ConfWaker(ab.Agent):
    """Makes its schedules in on_start, on every wake."""

    initial_state = {"ran": []}

    async def on_start(self):
        await self.schedule_every(3600, "tick")
        await self.schedule("0 * * * *", "tick")
        await self.schedule(600, "tick", {"follow_up": 1})

    @ab.callable
    async def count(self) -> int:
        return len(self.get_schedules())

    @ab.callable
    async def every(self, seconds: float, key: str) -> str:
        return (await self.schedule_every(seconds, "tick", key=key)).id

    @ab.callable
    async def now_and_later(self) -> None:
        await self.queue("tick", "queued")
        await self.schedule(60, "tick", "later")

    async def tick(self, payload=None):
        self.set_state({"ran": [*self.state["ran"], payload]})


class ConfVault(ab.Agent):
    """Tries to keep an ab.Secret where it would change type after hibernation."""

    @ab.callable
    async def keep(self, where: str) -> None:
        secret = ab.Secret("sk-conformance", "api")
        if where == "state":
            self.set_state({"key": secret})
        elif where == "kv":
            self.kv["key"] = secret
        elif where == "schedule":
            await self.schedule(60, "later", {"key": secret})
        else:
            await self.queue("later", {"key": secret})

    async def later(self, payload):
        pass


async def test_on_start_schedules_are_one_schedule_however_often_the_agent_wakes(crt, kind,
                                                                                 reopen):
    ref = crt.get(ConfWaker, "waker")
    for _ in range(3):
        assert await ref.count() == 3
        crt.hibernate()
    assert len(ref.schedules()) == 3
    job = await ref.every(7200, "job")
    assert await ref.every(7200, "job") == job  # the same key and timing: the same schedule
    replaced = await ref.every(1800, "job")  # the same key, a new interval: replaced
    assert replaced != job and await ref.count() == 4
    assert list(ref.schedules().query("callback == 'tick' and interval == 1800").id) == [replaced]
    if kind != "memory":
        await crt.aclose()
        assert await reopen().get(ConfWaker, "waker").count() == 4  # a restart adds none


@pytest.mark.local_only("Ray hosts run their work on their own loop and the wall clock")
async def test_settle_runs_queued_work_and_what_is_due_at_this_instant(crt, clock):
    ref = crt.get(ConfWaker, "settler")
    await ref.now_and_later()
    await crt.settle()
    assert ref.state == {"ran": ["queued"]}  # no clock.advance(0) needed
    clock.set(clock.now() + 60)  # time moves, nothing fires ...
    await crt.settle()  # ... until settle runs what is due now
    assert ref.state == {"ran": ["queued", "later"]}


async def test_a_secret_is_refused_in_state_kv_and_payloads_before_anything_is_written(crt):
    ref = crt.get(ConfVault, "vault")
    for where in ("state", "kv", "schedule", "queue"):
        with pytest.raises(ab.JSONValueError, match=r"self\.secrets"):
            await ref.keep(where)
    assert ref.version == 0 and ref.state == {}
    assert ref.schedules().empty


# -- Workflows (SPEC §3): steps commit once with their writes; waiting frees the mailbox; a
# -- restart resumes the run from its last completed step ----------------------------------
class ConfFlow(ab.Agent):
    initial_state = {"paid": 0, "pings": 0}

    @ab.workflow
    async def flow(self, step: ab.Step, amount: int) -> dict:
        await step.do("pay", self.pay, amount)
        await step.sleep("nap", 600)
        word = await step.wait_for_event("go", timeout=3600)
        return {"paid": self.state["paid"], "word": word}

    def pay(self, amount: int) -> int:
        self.set_state({**self.state, "paid": self.state["paid"] + amount})
        return amount

    @ab.callable
    async def ping(self) -> int:
        self.set_state({**self.state, "pings": self.state["pings"] + 1})
        return self.state["pings"]


@pytest.mark.local_only("Ray hosts keep the wall clock (the virtual clock lives in one process); "
                        "workflows on Ray: the two tests at the end")
async def test_a_workflow_step_commits_once_and_waiting_frees_the_mailbox(crt, clock):
    ref = crt.get(ConfFlow, "flow")
    run = await ref.flow(5)
    await crt.settle()
    assert run.status == "sleeping" and ref.state["paid"] == 5
    assert await ref.ping() == 1  # the sleeping run holds nothing
    await clock.advance(600)
    assert run.status == "waiting"
    assert await ref.ping() == 2
    await run.send_event("go", "now")
    assert await run.result() == {"paid": 5, "word": "now"}
    assert ref.state == {"paid": 5, "pings": 2}, "the paying step ran once"
    assert list(run.steps().status) == ["completed"] * 3


@pytest.mark.local_only("Ray hosts keep the wall clock (the virtual clock lives in one process); "
                        "workflows on Ray: the two tests at the end")
async def test_an_unfinished_workflow_survives_a_restart(crt, reopen, clock):
    run = await crt.get(ConfFlow, "keeper").flow(7)
    await crt.settle()
    assert run.status == "sleeping"
    await crt.aclose()
    rt2 = reopen()
    again = rt2.get(ConfFlow, "keeper").workflow(run.id)
    assert again.status == "sleeping"
    await clock.advance(3600 + 600)  # the nap ends, then the wait times out
    assert await again.result() == {"paid": 7, "word": None}
    assert rt2.get(ConfFlow, "keeper").state["paid"] == 7


class ConfQuickFlow(ConfFlow):
    """ConfFlow's pay and ping, with a workflow that needs no clock."""

    @ab.workflow
    async def flow(self, step: ab.Step, amount: int) -> dict:
        for i in range(3):
            await step.do(f"pay {i}", self.pay, amount)
        await step.sleep("no time", 0)
        word = await step.wait_for_event("go")
        return {"paid": self.state["paid"], "word": word, "where": step.id.split(":")[0]}


async def test_a_workflow_runs_where_its_agent_is_owned(crt):
    """Every runtime (Ray too: the run's turns go on on the host that owns the agent)."""
    ref = crt.get(ConfQuickFlow, "quick")
    run = await ref.flow(2)
    assert await ref.ping() == 1
    assert await run.send_event("go", "now") in (True, False)  # (kept if it came early)
    outcome = await run.result(timeout=60)
    assert outcome == {"paid": 6, "word": "now", "where": run.id}
    assert ref.state == {"paid": 6, "pings": 1}
    assert list(run.steps().status) == ["completed"] * 5
    assert ref.workflows().status.tolist() == ["completed"]



async def test_a_waiting_workflow_goes_on_after_a_restart(crt, reopen):
    """Every persistent runtime (Ray too): the run waits on disk, not in a process."""
    run = await crt.get(ConfQuickFlow, "later").flow(1)
    await crt.settle()
    await eventually(lambda: run.status == "waiting", timeout=60,
                     what="the run reached its wait")  # (Ray hosts turn on their own loops)
    await crt.aclose()
    rt2 = reopen()
    again = rt2.get(ConfQuickFlow, "later").workflow(run.id)
    assert again.status == "waiting"
    assert await again.send_event("go", "after") is True
    assert (await again.result(timeout=60))["word"] == "after"
    assert rt2.get(ConfQuickFlow, "later").state["paid"] == 3
