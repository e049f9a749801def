"""Durable workflows inside agents (issue 19): steps run once, sleeps move with the virtual
clock, waits never hold the mailbox, events and approvals resume a run, a killed process
resumes every unfinished run from its last completed step, changed code is told apart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

import agentbook as ab

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOKUPS: list[str] = []


def lookup_order(order_id: str) -> dict:
    LOOKUPS.append(order_id)
    return {"id": order_id, "total": 250.0}


class Desk(ab.Agent):
    initial_state = {"paid": [], "pings": 0}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS payments(order_id TEXT, amount REAL)")

    @ab.workflow
    async def refund(self, step: ab.Step, order_id: str, amount: float) -> str:
        """Refund an order, asking a person above 100."""
        await step.do("look up", lookup_order, order_id)
        if amount > 100:
            d = await step.wait_for_approval(f"refund {amount} for {order_id}", timeout=86400)
            if not d.approved:
                return "declined"
        await step.sleep("cooling off", 3600)
        await step.do("pay", self.pay, order_id, amount)
        ok = await step.wait_for_event("customer confirmed", timeout=7 * 86400)
        return "done" if ok else "unconfirmed"

    def pay(self, order_id: str, amount: float) -> bool:
        self.sql("INSERT INTO payments VALUES (?, ?)", order_id, amount)
        self.set_state({**self.state, "paid": [*self.state["paid"], order_id]})
        return True

    @ab.callable
    async def ping(self) -> int:
        self.set_state({**self.state, "pings": self.state["pings"] + 1})
        return self.state["pings"]


@pytest.fixture
def clock():
    return ab.VirtualClock(T0)


@pytest.fixture
async def rt(clock):
    runtime = ab.Runtime(":memory:", clock=clock)
    yield runtime
    await runtime.aclose()


async def test_a_refund_with_a_person_an_event_and_a_sleep(rt, clock):
    LOOKUPS.clear()
    desk = rt.get(Desk, "d")
    run = await desk.refund("o-1", 250.0)
    assert isinstance(run, ab.WorkflowRun) and run.id.startswith("wf-")
    assert run.status in ("running", "waiting")  # (it goes on at once, in turns of its own)
    await rt.settle()
    assert run.status == "waiting"
    pending = rt.approvals.pending()
    assert list(pending.summary) == ["refund 250.0 for o-1"]
    await rt.approvals.approve(pending.id[0], by="ann")
    await rt.settle()
    assert run.status == "sleeping"
    assert desk.state["paid"] == []
    await clock.advance(3599)
    assert run.status == "sleeping"
    await clock.advance(1)
    assert run.status == "waiting" and desk.state["paid"] == ["o-1"]
    assert await run.send_event("customer confirmed", True) is True
    assert await run.result() == "done"
    assert run.status == "completed"
    assert LOOKUPS == ["o-1"], "a completed step never runs again"
    steps = run.steps()
    assert list(steps.step) == ["look up", "refund 250.0 for o-1", "cooling off", "pay",
                                "customer confirmed"]
    assert list(steps.kind) == ["do", "approval", "sleep", "do", "event"]
    assert set(steps.status) == {"completed"}
    assert steps.result[1]["by"] == "ann" and steps.result[1]["approved"] is True
    assert desk.sql("SELECT * FROM payments").to_dict("records") == [
        {"order_id": "o-1", "amount": 250.0}]
    assert desk.workflow(run.id).status == "completed"
    frame = desk.workflows()
    assert list(frame.columns[:4]) == ["id", "method", "args", "status"]
    assert frame.status.tolist() == ["completed"] and frame.result.tolist() == ["done"]
    everyone = rt.workflows()
    assert everyone[["agent", "name", "id"]].values.tolist() == [["Desk", "d", run.id]]


async def test_a_step_and_its_writes_are_one_version(rt, clock):
    desk = rt.get(Desk, "d")
    run = await desk.refund("o-2", 20.0)
    await rt.settle()
    await clock.advance(3600)
    history = desk.history()
    pays = [int(v) for v, m in zip(history.version, history.method, strict=True)
            if m == "workflow_resume"]
    assert pays, history
    # the version that paid holds the state change and the journal record of "pay"
    paid = next(v for v in sorted(pays) if desk.at(v).state["paid"] == ["o-2"])
    assert desk.at(paid - 1).state["paid"] == []
    assert run.steps().set_index("step").status["pay"] == "completed"
    await run.send_event("customer confirmed", False)
    assert await run.result() == "unconfirmed"


async def test_waiting_never_holds_the_mailbox(rt, clock):
    desk = rt.get(Desk, "d")
    run = await desk.refund("o-3", 500.0)
    await rt.settle()
    assert run.status == "waiting"
    assert [await desk.ping() for _ in range(3)] == [1, 2, 3]
    await rt.approvals.reject(rt.approvals.pending().id[0], "too much", by="bob")
    assert await run.result() == "declined"
    decision = run.steps().result[1]
    assert decision == {"approved": False, "status": "rejected", "by": "bob",
                        "reason": "too much", "approval": decision["approval"]}
    assert rt.approvals.pending().empty


async def test_an_approval_that_times_out_is_not_approved(rt, clock):
    desk = rt.get(Desk, "d")
    run = await desk.refund("o-4", 500.0)
    await rt.settle()
    await clock.advance(86400)
    assert await run.result() == "declined"
    assert run.steps().result[1]["status"] == "expired"


async def test_an_event_sent_early_is_kept_and_a_missing_one_times_out(rt, clock):
    desk = rt.get(Desk, "d")
    early = await desk.refund("o-5", 10.0)
    late = await desk.refund("o-6", 10.0)
    await rt.settle()
    assert await early.send_event("customer confirmed", {"stars": 5}) is False  # kept
    await clock.advance(3600)
    assert await early.result() == "done"
    assert early.steps().result[3] == {"stars": 5}
    assert late.status == "waiting"
    await clock.advance(7 * 86400)
    assert await late.result() == "unconfirmed"


TRIES: dict[str, int] = {}
IDS: list[str] = []


class Flaky(ab.Agent):
    initial_state = {"tries": 0, "kept": 0}

    @ab.workflow
    async def job(self, step: ab.Step, fail_times: int, attempts: int) -> dict:
        value = await step.do("flaky", self.flaky, fail_times, step.id,
                              retry=ab.Retry(max_attempts=attempts, base=10, jitter=False))
        return {"value": value, "id": step.id}

    def flaky(self, fail_times: int, step_id: str = "") -> int:
        IDS.append(step_id)
        TRIES[self.name] = tries = TRIES.get(self.name, 0) + 1  # (outside: not undone)
        self.set_state({"tries": tries, "kept": self.state["kept"] + 1})  # undone if it raises
        if tries <= fail_times:
            raise ValueError(f"try {tries}")
        return tries

    @ab.workflow
    async def catches(self, step: ab.Step) -> str:
        try:
            await step.do("never", self.flaky, 99, retry=1)
        except ab.WorkflowStepError as exc:
            return f"caught: {exc}"
        return "no"


async def test_a_failing_step_is_retried_per_its_policy_and_its_writes_undone(rt, clock):
    ref = rt.get(Flaky, "f1")
    run = await ref.job(2, 5)
    await rt.settle()
    steps = run.steps()
    assert steps.status[0] == "retrying" and steps.attempts[0] == 1
    assert "ValueError: try 1" in steps.error[0]
    assert ref.state == {"tries": 0, "kept": 0}, "a failed attempt's writes are undone"
    await clock.advance(10)  # first retry (base 10)
    assert run.steps().attempts[0] == 2
    await clock.advance(20)  # second retry succeeds
    assert await run.result() == {"value": 3, "id": f"{run.id}:1"}  # (the next step's)
    assert IDS[-3:] == [f"{run.id}:0"] * 3, "the step's own id, on every attempt"
    assert run.steps().attempts[0] == 3
    assert ref.state == {"tries": 3, "kept": 1}


async def test_a_step_that_fails_every_attempt_fails_the_run_or_is_caught(rt, clock):
    ref = rt.get(Flaky, "f2")
    run = await ref.job(99, 2)
    await rt.settle()
    await clock.advance(10)
    with pytest.raises(ab.WorkflowError, match="failed after 2 attempts: ValueError"):
        await run.result()
    assert run.status == "failed" and "ValueError" in run.error
    caught = await ref.catches()
    result = await caught.result()
    assert result.startswith("caught: step 'never'")


async def test_cancel_drops_the_wakes_and_the_approval(rt, clock):
    desk = rt.get(Desk, "d")
    asking = await desk.refund("o-7", 500.0)
    sleeping = await desk.refund("o-8", 5.0)
    await rt.settle()
    assert (asking.status, sleeping.status) == ("waiting", "sleeping")
    assert await asking.cancel() is True
    assert await sleeping.cancel() is True
    assert await sleeping.cancel() is False
    assert rt.approvals.pending().empty
    assert rt.approvals.history().status.tolist() == ["cancelled"]
    assert desk.schedules().empty
    await clock.advance(10 * 86400)
    assert (asking.status, sleeping.status) == ("cancelled", "cancelled")
    with pytest.raises(ab.WorkflowError, match="cancelled"):
        await sleeping.result()
    with pytest.raises(ab.WorkflowError, match="takes no more events"):
        await sleeping.send_event("customer confirmed", True)


async def test_events_of_a_run(rt, clock):
    seen: list[str] = []
    rt.events.subscribe(lambda e: seen.append(e["type"]), "workflow:*")
    desk = rt.get(Desk, "d")
    run = await desk.refund("o-9", 5.0)
    await rt.settle()
    await clock.advance(3600)
    await run.send_event("customer confirmed", True)
    await run.result()
    assert seen[0] == "workflow:start" and seen[-1] == "workflow:complete"
    assert {"workflow:step", "workflow:wait", "workflow:resume"} <= set(seen)
    kept = rt.sql("SELECT type FROM events WHERE type LIKE 'workflow:%' ORDER BY seq")
    assert kept.type.tolist()[0] == "workflow:start"


async def test_changed_code_is_a_nondeterminism_error(tmp_path, clock):
    store = str(tmp_path / "store")
    rt = ab.Runtime(store, clock=clock)

    class Changing(ab.Agent):
        @ab.workflow
        async def job(self, step: ab.Step) -> str:
            await step.do("first", lambda: 1)
            await step.sleep("nap", 60)
            return "old"

    run = await rt.get(Changing, "c").job()
    await rt.settle()
    assert run.status == "sleeping"

    class Changing(ab.Agent):  # type: ignore[no-redef]  # the cell is run again, changed
        @ab.workflow
        async def job(self, step: ab.Step) -> str:
            await step.do("first", lambda: 1)
            await step.do("second", lambda: 2)
            return "new"

    await clock.advance(60)
    with pytest.raises(ab.WorkflowNondeterminismError, match=r"step 1 was step.sleep\('nap'\)"):
        await run.result()
    assert run.status == "failed"
    await rt.aclose()


def test_a_workflow_method_must_take_step_first():
    with pytest.raises(ab.UsageError, match="first parameter"):
        class Bad(ab.Agent):
            @ab.workflow
            async def job(self, order: str) -> None: ...
    with pytest.raises(ab.UsageError, match="async def"):
        class Bad2(ab.Agent):
            @ab.workflow
            def job(self, step: ab.Step) -> None: ...


async def test_bad_arguments_fail_at_the_call(rt):
    with pytest.raises(ab.BadArgumentsError):
        await rt.get(Desk, "d").refund("o-1")
    with pytest.raises(ab.UsageError, match="no workflow run"):
        rt.get(Desk, "d").workflow("wf-nope")


# -- a killed process resumes every unfinished run from its last completed step ---------------
class Crashy(ab.Agent):
    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS ran(run TEXT, step TEXT)")

    @ab.workflow
    async def job(self, step: ab.Step, log: str, die_in: str) -> str:
        await step.do("a", self.mark, log, "a", die_in, step.id)
        await step.sleep("nap", 60)
        await step.do("b", self.mark, log, "b", die_in, step.id)
        await step.do("c", self.mark, log, "c", die_in, step.id)
        return "ok"

    def mark(self, log: str, label: str, die_in: str, step_id: str) -> str:
        with open(log, "a") as f:  # the outside world: at least once
            f.write(f"{step_id} {label}\n")
        self.sql("INSERT INTO ran VALUES (?, ?)", step_id.split(":")[0], label)
        if label == die_in and not os.path.exists(log + ".died"):
            open(log + ".died", "w").close()
            os._exit(137)  # killed inside the step, after its outside effect, before its commit
        return label


def _child(store: str, log: str, runs: int, die_in: str) -> None:
    async def main() -> None:
        clock = ab.VirtualClock(T0)
        rt = ab.Runtime(store, clock=clock)
        refs = [rt.get(Crashy, f"c{i % 4}") for i in range(runs)]
        for ref in refs:
            await ref.job(log, die_in)
        await rt.settle()
        print("sleeping", flush=True)  # every run journaled "a" and sleeps
        if die_in:
            await clock.advance(60)  # the first "b" kills the process
        await asyncio.Event().wait()

    asyncio.run(main())


def _run_child_and_kill(store: str, log: str, runs: int, die_in: str) -> None:
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from tests.test_workflows import _child;"
            f" _child({store!r}, {log!r}, {runs}, {die_in!r})")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "sleeping"
        if die_in:
            assert child.wait(timeout=60) == 137
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()
        child.stdout.close()


def _lines(log: str) -> list[tuple[str, str]]:
    with open(log) as f:
        return [tuple(line.split()) for line in f]  # type: ignore[misc]


@pytest.mark.crash
@pytest.mark.parametrize("die_in", ["", "b"], ids=["between-steps", "inside-a-step"])
async def test_a_killed_process_resumes_every_run_from_its_last_completed_step(tmp_path, die_in):
    store, log, runs = str(tmp_path / "store"), str(tmp_path / "log"), 12
    _run_child_and_kill(store, log, runs, die_in)
    clock = ab.VirtualClock(T0 + 120)
    rt = ab.Runtime(store, clock=clock)
    frame = rt.workflows()
    assert len(frame) == runs and set(frame.status) == {"sleeping"}
    await clock.advance(0)  # the restart: the naps are over
    for name in sorted(set(frame.name)):
        for run_id in frame[frame.name == name].id:
            assert await rt.get(Crashy, name).workflow(run_id).result(timeout=30) == "ok"
    lines = _lines(log)
    for label in "ac":
        assert sum(1 for _, lab in lines if lab == label) == runs, f"step {label} ran twice"
    b_lines = [sid for sid, lab in lines if lab == "b"]
    assert len(b_lines) == runs + (1 if die_in else 0), "only the interrupted step runs again"
    assert len(set(b_lines)) == runs, "a step keeps its id across attempts"
    for name in sorted(set(frame.name)):  # inside the store, every step committed once
        counts = rt.get(Crashy, name).sql("SELECT step, count(*) AS n FROM ran GROUP BY step")
        per_agent = int((frame.name == name).sum())
        assert counts.set_index("step").n.to_dict() == {"a": per_agent, "b": per_agent,
                                                        "c": per_agent}
    await rt.aclose()


async def test_the_workflows_and_workflow_steps_views(rt, clock):
    desk = rt.get(Desk, "d")
    run = await desk.refund("o-10", 5.0)
    await rt.settle()
    runs = rt.sql("SELECT agent, name, id, method, status FROM workflows")
    assert runs.values.tolist() == [["Desk", "d", run.id, "refund", "sleeping"]]
    await clock.advance(3600)
    await run.send_event("customer confirmed", True)
    await run.result()
    steps = rt.sql("SELECT step, kind, status, duration_s, version FROM workflow_steps"
                   " WHERE run = ? ORDER BY seq", run.id)
    assert steps.version.tolist() == run.steps().version.tolist()
    assert steps.version.is_monotonic_increasing
    assert steps.step.tolist() == ["look up", "cooling off", "pay", "customer confirmed"]
    assert set(steps.status) == {"completed"} and steps.duration_s[1] == 3600
    assert rt.sql("SELECT status, result FROM workflows").values.tolist() == [
        ["completed", '"done"']]


# -- time travel covers workflows -------------------------------------------------------
@pytest.fixture
async def frt(tmp_path, clock):
    runtime = ab.Runtime(str(tmp_path / "store"), clock=clock)
    yield runtime
    await runtime.aclose()


async def _approved_and_done(rt, clock, order_id: str):
    desk = rt.get(Desk, "d")
    run = await desk.refund(order_id, 250.0)
    await rt.settle()
    await rt.approvals.approve(rt.approvals.pending().id[0], by="ann")
    await rt.settle()
    await clock.advance(3600)
    await run.send_event("customer confirmed", True)
    assert await run.result() == "done"
    return desk, run


async def test_fork_at_the_approval_step_asks_again(frt, clock):
    """What if the manager had said no? The fork asks again; the original is untouched."""
    LOOKUPS.clear()
    desk, run = await _approved_and_done(frt, clock, "o-10")
    await clock.advance(2 * 86400)  # past the original one-day deadline
    other = await run.fork(at_step=1, name="d-no")
    assert other.agent.name == "d-no" and other.id == run.id
    await frt.settle()
    assert other.status == "waiting"
    pending = frt.approvals.pending()
    assert list(pending.name) == ["d-no"] and list(pending.summary) == ["refund 250.0 for o-10"]
    left = pending.expires[0].timestamp() - clock.now()
    assert left == pytest.approx(86400), "asked again with the whole day to decide"
    await frt.approvals.reject(pending.id[0], "no refunds today", by="bob")
    assert await other.result() == "declined"
    assert LOOKUPS == ["o-10"], "the step before the fork point is not run again"
    assert other.agent.state["paid"] == [] and desk.state["paid"] == ["o-10"]
    assert run.status == "completed" and await run.result() == "done"
    steps = other.steps()
    assert list(steps.step) == ["look up", "refund 250.0 for o-10"]
    assert steps.result[1]["status"] == "rejected"


async def test_fork_at_a_do_step_runs_it_again_on_the_fork(frt, clock):
    LOOKUPS.clear()
    _desk, run = await _approved_and_done(frt, clock, "o-11")
    other = await run.fork(at_step=0)
    assert other.agent.name == f"d-{run.id}-step0"
    await frt.settle()
    assert LOOKUPS == ["o-11", "o-11"]  # the fork looked it up again
    assert other.status == "waiting" and len(frt.approvals.pending()) == 1


async def test_fork_at_a_sleep_and_bad_positions(frt, clock):
    _desk, run = await _approved_and_done(frt, clock, "o-12")
    other = await run.fork(at_step=2)  # the cooling-off sleep: it ended when it was due
    await frt.settle()
    assert other.status == "waiting"  # past the sleep and "pay", at the customer's event
    assert other.agent.state["paid"] == ["o-12"]
    await other.send_event("customer confirmed", False)
    assert await other.result() == "unconfirmed"
    for bad in (-1, 5, "1", True):
        with pytest.raises(ab.UsageError):
            await run.fork(at_step=bad)


async def test_at_diff_and_rewind_include_the_journal(frt, clock):
    desk, run = await _approved_and_done(frt, clock, "o-13")
    steps = run.steps()
    paid_at = int(steps.set_index("step").version["pay"])
    before, after = desk.at(paid_at - 1), desk.at(paid_at)
    assert before.workflow_steps(run.id).step.tolist() == [
        "look up", "refund 250.0 for o-13", "cooling off"]
    # (the wait for the customer registered in the same turn as "pay")
    assert after.workflow_steps(run.id).step.tolist()[-2:] == ["pay", "customer confirmed"]
    assert after.workflows().status.tolist() == ["waiting"]
    changed = desk.diff(paid_at - 1, paid_at).rows
    assert "_ab_workflow_steps" in set(changed.table) and "payments" in set(changed.table)
    # rewind to before the approval was decided: the run waits for a person again
    approval_at = int(steps.set_index("step").version["refund 250.0 for o-13"])
    await desk.rewind(approval_at - 1)
    await frt.settle()
    assert run.status == "waiting" and desk.state["paid"] == []
    pending = frt.approvals.pending()
    assert list(pending.name) == ["d"]
    await frt.approvals.approve(pending.id[0], by="cy")
    await frt.settle()
    await clock.advance(3600)
    await run.send_event("customer confirmed", True)
    assert await run.result() == "done" and desk.state["paid"] == ["o-13"]


# -- the live code and its journal ----------------------------------------------------------
async def test_a_hibernated_agent_replays_its_runs_from_the_journal(frt, clock):
    LOOKUPS.clear()
    desk = frt.get(Desk, "d")
    run = await desk.refund("o-20", 50.0)
    await frt.settle()
    assert run.status == "sleeping"
    frt.hibernate()  # the live code is let go
    await clock.advance(3600)
    await frt.settle()
    assert run.status == "waiting" and desk.state["paid"] == ["o-20"]
    assert LOOKUPS == ["o-20"], "replayed from the journal: the lookup is not run again"
    await run.send_event("customer confirmed", True)
    assert await run.result() == "done"


class Long(ab.Agent):
    initial_state = {"n": 0}

    def bump(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return int(self.state["n"])

    @ab.workflow
    async def count(self, step: ab.Step, k: int) -> int:
        for i in range(k):
            await step.do(f"bump {i}", self.bump)
        return int(self.state["n"])

    @ab.callable
    def n(self) -> int:
        return int(self.state["n"])


async def test_each_step_is_a_version_and_other_messages_run_between(frt):
    ref = frt.get(Long, "l")
    run = await ref.count(200)
    seen = [await ref.n() for _ in range(3)]
    assert await run.result() == 200
    assert seen == sorted(seen) and seen[0] < 200, "calls ran while the run went on"
    versions = run.steps().version.tolist()
    assert len(set(versions)) == 200 and versions == sorted(versions)
    assert all(ref.at(v).state["n"] == i + 1 for i, v in enumerate(versions[:5]))


async def test_the_event_loop_runs_while_a_long_run_goes_on(frt):
    ref = frt.get(Long, "l")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    run = await ref.count(3000)
    await run.result()
    task.cancel()
    assert ticks > 5, "the drain yields between batches"
