"""Running workflows inside the agent's mailbox (replay, like DBOS and Temporal).

A run moves forward in handlers of its agent, one turn at a time:

* **start** (calling the ``@ab.workflow`` method): the run's row and a queued *resume*
  (a ``queue`` schedule, ``_ab_workflow_resume``) commit with the calling handler.
* **resume**: the workflow's coroutine runs from the top. Completed steps return their
  journaled results at once; the first incomplete ``do`` runs (its writes and its journal
  record commit together); a ``sleep`` or a wait registers what wakes the run (a schedule,
  a waiting record) and the handler ends. A second ``do`` in the same turn ends it too,
  with another resume queued: every step is its own version, and other messages of the
  agent run in between. A run never holds the mailbox while it sleeps or waits.
* **wake**: the sleep's schedule; ``run.send_event`` (``_ab_workflow_event``); a decision
  on the step's approval (``_ab_workflow_decided`` when approved; the agent's reject and
  expire handlers tell :func:`approval_closed`); the timeout's schedule.

Every resume is a durable schedule row, so after a crash or a restart the timers wake
each unfinished run: completed steps are never run again; a ``do`` whose handler was
interrupted had not committed, so it runs again (at least once outside).

Nothing here imports the core: the awake agent (``inst``) and the running handler's
context (``ctx``) come as arguments.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from .. import jsonvalue
from ..approve.requests import digest as approval_digest  # (the approvals' own binding)
from ..errors import (
    UsageError,
    WorkflowError,
    WorkflowNondeterminismError,
    WorkflowStepError,
)
from ..schedule.policy import Retry
from ..schedule.policy import insert as insert_schedule
from ..store import approvals as approval_rows
from ..store import schedules as schedule_rows
from ..store import workflows as rows
from ..store.approvals import Decision, IndexedApproval
from ..store.workflows import RunRow, StepRow
from .step import ApprovalDecision, Step, Suspended

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..store.agentstore import AgentStore

__all__ = ["APPROVED", "CANCEL", "EVENT", "RESUME", "TERMINAL", "approval_closed", "approved",
           "cancel", "deliver_event", "resume", "start"]

#: The agent's internal handlers (``ab.Agent._ab_workflow_*``).
RESUME = "_ab_workflow_resume"
EVENT = "_ab_workflow_event"
APPROVED = "_ab_workflow_decided"
CANCEL = "_ab_workflow_cancel"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
_EPSILON = 1e-6


def _store(inst: Instance) -> AgentStore:
    store = inst.store
    assert store is not None, "workflows move inside a handler, with the store open"
    return store


def _emit(inst: Instance, ctx: HandlerContext, type_: str, payload: dict) -> None:
    """A ``workflow:*`` event, delivered (and kept on record) with the handler's commit."""
    if inst.runtime.events.active:
        ctx.events.append((type_, payload))


def _wake(inst: Instance, ctx: HandlerContext, run_id: str, due: float | None = None) -> str:
    """A durable resume of *run_id*: queued now (``due`` ``None``) or scheduled at *due*."""
    store = _store(inst)
    ctx.capture(store)
    ctx.sched_dirty = True
    now = inst.runtime.clock.now()
    if due is None:
        return insert_schedule(store, "queue", now, RESUME, run_id, now).id
    return insert_schedule(store, "scheduled", max(due, now), RESUME, run_id, now).id


def _drop_schedule(inst: Instance, ctx: HandlerContext, schedule_id: str | None) -> None:
    if schedule_id:
        ctx.sched_dirty = True
        schedule_rows.delete(_store(inst), schedule_id)


# -- start ---------------------------------------------------------------------------------
def start(inst: Instance, ctx: HandlerContext, method: str, args: tuple, kwargs: dict) -> dict:
    """Begin a run of workflow *method* (in the calling handler's transaction); returns
    ``{"workflow": id, "method": method}`` (a ref turns it into an ``ab.WorkflowRun``)."""
    store = _store(inst)
    ctx.capture(store)
    now = inst.runtime.clock.now()
    run_id = "wf-" + secrets.token_hex(8)
    args_json = jsonvalue.dumps(jsonvalue.freeze(list(args), "args"))
    kwargs_json = jsonvalue.dumps(jsonvalue.freeze(dict(kwargs), "kwargs"))
    rows.insert_run(store, run_id, method, args_json, kwargs_json, now)
    _wake(inst, ctx, run_id)
    _emit(inst, ctx, "workflow:start", {"run": run_id, "method": method})
    return {"workflow": run_id, "method": method}


# -- resume: run the code from the top ---------------------------------------------------------
async def resume(inst: Instance, ctx: HandlerContext, run_id: str) -> None:
    """Run the workflow's code from the top, as far as it can go in this turn."""
    store = _store(inst)
    run = rows.get_run(store, run_id)
    if run is None or run.status in TERMINAL:
        return  # (cancelled meanwhile, or a wake left over: nothing to do)
    ctx.capture(store)
    agent = inst.agent
    fn = getattr(type(agent), run.method, None)
    original = getattr(fn, "_ab_workflow_fn", None)
    if original is None:
        _finish(inst, ctx, run, "failed", error=(
            f"WorkflowError: {type(agent).__name__} has no @ab.workflow method {run.method!r} "
            "any more; the run can't go on"))
        return
    driver = _Driver(inst, ctx, run, rows.steps(store, run_id))
    try:
        value = await original(agent, Step(driver), *jsonvalue.loads(run.args),
                               **jsonvalue.loads(run.kwargs))
        driver.check_all_replayed()
        text = jsonvalue.dumps(jsonvalue.freeze(value, "the workflow's result"))
    except Suspended:
        return
    except Exception as exc:
        _finish(inst, ctx, run, "failed", error=f"{type(exc).__name__}: {exc}")
        return
    _finish(inst, ctx, run, "completed", result=text)


def _finish(inst: Instance, ctx: HandlerContext, run: RunRow, status: str, *,
            result: str | None = None, error: str | None = None) -> None:
    store = _store(inst)
    now = inst.runtime.clock.now()
    rows.set_run(store, run.id, status, now, result=result, error=error)
    rows.delete_run_events(store, run.id)
    if status == "completed":
        _emit(inst, ctx, "workflow:complete", {"run": run.id, "method": run.method,
                                               "result": jsonvalue.loads(result or "null")})
    else:
        _emit(inst, ctx, "workflow:fail", {"run": run.id, "method": run.method, "error": error})


class _Driver:
    """One run of a workflow's code: the journal it replays, and the step it is at."""

    __slots__ = ("ctx", "inst", "journal", "ran", "run", "running", "seq", "store")

    def __init__(self, inst: Instance, ctx: HandlerContext, run: RunRow,
                 journal: list[StepRow]) -> None:
        self.inst, self.ctx, self.run = inst, ctx, run
        self.store = _store(inst)
        self.journal = {r.seq: r for r in journal}
        self.seq = 0
        #: Whether a ``do`` ran in this turn (the next new step then waits for another).
        self.ran = False
        #: The id of the step whose function runs now (``None`` between steps).
        self.running: str | None = None

    @property
    def current_id(self) -> str:
        return self.running or f"{self.run.id}:{self.seq}"

    def now(self) -> float:
        return self.inst.runtime.clock.now()

    # -- the journal ------------------------------------------------------------------------
    def _next(self, kind: str, name: Any) -> tuple[int, StepRow | None]:
        if not isinstance(name, str) or not name:
            raise UsageError(f"a step's name is a non-empty string, not {name!r}")
        seq = self.seq
        self.seq += 1
        rec = self.journal.get(seq)
        if rec is not None and (rec.kind != kind or rec.name != name):
            raise WorkflowNondeterminismError(
                f"workflow run {self.run.id} ({self.run.method}): step {seq} was "
                f"{_kind(rec.kind, rec.name)} when it ran, but the code now asks for "
                f"{_kind(kind, name)} there; keep the steps of a running workflow in the same "
                "order (or cancel the runs started with the old code)",
                run=self.run.id, status="failed")
        return seq, rec

    def check_all_replayed(self) -> None:
        """The code finished: it must have gone through every journaled step."""
        if self.seq < len(self.journal):
            rec = self.journal[self.seq]
            raise WorkflowNondeterminismError(
                f"workflow run {self.run.id} ({self.run.method}): the code now finishes after "
                f"{self.seq} steps, but step {self.seq} ({_kind(rec.kind, rec.name)}) was "
                "journaled when it ran", run=self.run.id, status="failed")

    def _record(self, row: StepRow, new: bool) -> None:
        if new:
            rows.insert_step(self.store, row)
        else:
            rows.update_step(self.store, row)
        self.journal[row.seq] = row

    def _status(self, status: str) -> None:
        rows.set_run(self.store, self.run.id, status, self.now())

    def _yield_turn(self) -> NoReturn:
        """This turn ran a step already: queue the next one and end the handler."""
        _wake(self.inst, self.ctx, self.run.id)
        self._status("running")
        raise Suspended

    def _resumed(self, row: StepRow, **extra: Any) -> None:
        _emit(self.inst, self.ctx, "workflow:resume", {"run": self.run.id, "step": row.name,
                                                       "seq": row.seq, "kind": row.kind, **extra})

    def _waits(self, row: StepRow, status: str) -> NoReturn:
        self._status(status)
        _emit(self.inst, self.ctx, "workflow:wait", {"run": self.run.id, "step": row.name,
                                                     "seq": row.seq, "kind": row.kind,
                                                     "until": row.until})
        raise Suspended

    # -- do -----------------------------------------------------------------------------
    async def do(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 retry: Retry | dict | int | None) -> Any:
        seq, rec = self._next("do", name)
        if rec is not None and rec.status == "completed":
            return jsonvalue.loads(rec.result or "null")
        if rec is not None and rec.status == "failed":
            raise WorkflowStepError(rec.error or f"step {name!r} failed", run=self.run.id,
                                    status="failed")
        if not callable(fn):
            raise UsageError(f"step.do({name!r}, fn, ...) needs a function, not {fn!r}")
        if self.ran:
            self._yield_turn()
        now = self.now()
        if rec is not None and rec.until is not None and now + _EPSILON < rec.until:
            raise Suspended  # (woken before its retry is due: the retry's schedule comes)
        policy = Retry.coerce(retry)
        self.ran = True
        attempts = (rec.attempts if rec is not None else 0) + 1
        started = rec.started if rec is not None else now
        inst, ctx, store = self.inst, self.ctx, self.store
        kept = (inst.state, ctx.state_changed, ctx.state_after, len(ctx.events),
                len(ctx.outbox), len(ctx.effects))
        rows.savepoint_step(store)
        self.running = f"{self.run.id}:{seq}"
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            frozen = jsonvalue.freeze(value, f"the result of step {name!r}")
            text = jsonvalue.dumps(frozen)
        except Exception as exc:
            self.running = None
            rows.rollback_step(store)
            inst.state, ctx.state_changed, ctx.state_after = kept[0], kept[1], kept[2]
            del ctx.events[kept[3]:], ctx.outbox[kept[4]:], ctx.effects[kept[5]:]
            self._failed(seq, rec, name, started, attempts, policy, exc)
        self.running = None
        rows.release_step(store)
        _drop_schedule(inst, ctx, rec.wake if rec is not None else None)
        row = StepRow(self.run.id, seq, name, "do", "completed", attempts, started, self.now(),
                      None, None, None, text, None)
        self._record(row, rec is None)
        _emit(inst, ctx, "workflow:step", {"run": self.run.id, "step": name, "seq": seq,
                                           "status": "completed", "attempts": attempts})
        return frozen

    def _failed(self, seq: int, rec: StepRow | None, name: str, started: float, attempts: int,
                policy: Retry, exc: Exception) -> NoReturn:
        error = f"{type(exc).__name__}: {exc}"
        now = self.now()
        _drop_schedule(self.inst, self.ctx, rec.wake if rec is not None else None)
        if attempts < policy.max_attempts:
            due = now + policy.delay(attempts, f"{self.run.id}:{seq}")
            wake = _wake(self.inst, self.ctx, self.run.id, due)
            self._record(StepRow(self.run.id, seq, name, "do", "retrying", attempts, started,
                                 None, due, None, wake, None, error), rec is None)
            _emit(self.inst, self.ctx, "workflow:step", {
                "run": self.run.id, "step": name, "seq": seq, "status": "retrying",
                "attempts": attempts, "error": error, "retry_at": due})
            self._status("running")
            raise Suspended
        message = (f"step {name!r} of workflow run {self.run.id} failed after {attempts} "
                   f"attempt{'s' if attempts != 1 else ''}: {error}")
        self._record(StepRow(self.run.id, seq, name, "do", "failed", attempts, started, now,
                             None, None, None, None, message), rec is None)
        _emit(self.inst, self.ctx, "workflow:step", {"run": self.run.id, "step": name,
                                                     "seq": seq, "status": "failed",
                                                     "attempts": attempts, "error": error})
        raise WorkflowStepError(message, run=self.run.id, status="failed") from exc

    # -- sleep --------------------------------------------------------------------------
    async def sleep(self, name: str, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise UsageError(f"step.sleep({name!r}, seconds) takes seconds >= 0, not {seconds!r}")
        seq, rec = self._next("sleep", name)
        if rec is not None and rec.status == "completed":
            return
        now = self.now()
        if rec is None:
            until = now + float(seconds)
            wake = _wake(self.inst, self.ctx, self.run.id, until)
            row = StepRow(self.run.id, seq, name, "sleep", "waiting", 0, now, None, until, None,
                          wake, None, None)
            self._record(row, True)
            self._waits(row, "sleeping")
        if rec.until is not None and now + _EPSILON < rec.until:
            raise Suspended  # (not yet: its schedule wakes the run)
        self._record(rec._replace(status="completed", ended=now, wake=None), False)
        self._resumed(rec)

    # -- wait for an event ---------------------------------------------------------------
    async def wait_for_event(self, name: str, timeout: float | None) -> Any:
        _check_timeout(timeout)
        seq, rec = self._next("event", name)
        if rec is not None and rec.status == "completed":
            return jsonvalue.loads(rec.result or "null")
        now = self.now()
        value = rows.take_event(self.store, self.run.id, name)
        if value is not None:  # sent before the run got here
            row = StepRow(self.run.id, seq, name, "event", "completed", 0,
                          rec.started if rec is not None else now, now,
                          rec.until if rec is not None else None, None, None, value, None)
            if rec is not None:
                _drop_schedule(self.inst, self.ctx, rec.wake)
            self._record(row, rec is None)
            self._resumed(row)
            return jsonvalue.loads(value)
        if rec is None:
            until = None if timeout is None else now + float(timeout)
            wake = None if until is None else _wake(self.inst, self.ctx, self.run.id, until)
            row = StepRow(self.run.id, seq, name, "event", "waiting", 0, now, None, until, None,
                          wake, None, None)
            self._record(row, True)
            self._waits(row, "waiting")
        if rec.until is not None and now + _EPSILON >= rec.until:
            self._record(rec._replace(status="completed", ended=now, wake=None, result="null"),
                         False)
            self._resumed(rec, timed_out=True)
            return None
        raise Suspended

    # -- wait for a person --------------------------------------------------------------
    async def wait_for_approval(self, title: str, timeout: float | None) -> ApprovalDecision:
        _check_timeout(timeout)
        seq, rec = self._next("approval", title)
        if rec is not None and rec.status == "completed":
            return decision_of(rec.result)
        if rec is not None:
            raise Suspended  # (the decision wakes the run)
        now = self.now()
        until = None if timeout is None else now + float(timeout)
        approval_id = self._request(seq, title, now, until)
        row = StepRow(self.run.id, seq, title, "approval", "waiting", 0, now, None, until,
                      approval_id, None, None, None)
        self._record(row, True)
        self._waits(row, "waiting")

    def _request(self, seq: int, title: str, now: float, expires: float | None) -> str:
        """A durable approval (the same rows, index and inbox as ``request_approval``)
        whose approving runs ``_ab_workflow_decided(run, seq)``."""
        inst, ctx, store = self.inst, self.ctx, self.store
        approval_id = "ap-" + secrets.token_hex(8)
        nonce = secrets.token_hex(16)
        args = jsonvalue.dumps([self.run.id, seq])
        effects = jsonvalue.dumps([f"workflow run {self.run.id} ({self.run.method}) goes on"])
        expiry = None
        if expires is not None:
            ctx.sched_dirty = True
            expiry = insert_schedule(store, "scheduled", expires, "_ab_expire_approval",
                                     approval_id, now).id
        approval_rows.insert(
            store, id=approval_id, method=APPROVED, args=args, kwargs="{}", nonce=nonce,
            digest=approval_digest(inst.key, APPROVED, args, "{}", nonce, expires),
            summary=title, side_effects=effects, approvers=None, created=now, expires=expires,
            status="pending", decided_at=None, reason=None, expiry_schedule=expiry,
            requested_at_version=inst.version)
        row = IndexedApproval(approval_id, inst.key[0], inst.key[1], APPROVED, args, "{}", title,
                              effects, now, expires, "pending", None, None, None)
        inst.runtime.catalog.index_approval(row)  # before the commit, as request_approval does
        ctx.approvals.append(("request", row))
        return approval_id


def _kind(kind: str, name: str) -> str:
    call = {"do": "step.do", "sleep": "step.sleep", "event": "step.wait_for_event",
            "approval": "step.wait_for_approval"}.get(kind, kind)
    return f"{call}({name!r})"


def _check_timeout(timeout: Any) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise UsageError(f"timeout is a positive number of seconds or None, not {timeout!r}")


def decision_of(text: str | None) -> ApprovalDecision:
    """The journaled decision of an approval step."""
    data = jsonvalue.loads(text or "{}")
    return ApprovalDecision(bool(data.get("approved")), str(data.get("status")), data.get("by"),
                            data.get("reason"), str(data.get("approval")))


# -- wakes from outside the code -----------------------------------------------------------
def _get_run(inst: Instance, run_id: str) -> RunRow:
    run = rows.get_run(_store(inst), run_id)
    if run is None:
        raise UsageError(f"{inst.key[0]}({inst.key[1]!r}) has no workflow run {run_id!r}; see "
                         "ref.workflows()")
    return run


def deliver_event(inst: Instance, ctx: HandlerContext, run_id: str, name: str, value: Any) -> bool:
    """``run.send_event(name, value)``: complete the run's wait for *name*, or keep the
    event for a later ``wait_for_event``. Returns whether a waiting step took it."""
    run = _get_run(inst, run_id)
    if run.status in TERMINAL:
        raise WorkflowError(f"workflow run {run_id} is {run.status}; it takes no more events",
                            run=run_id, status=run.status)
    store = _store(inst)
    ctx.capture(store)
    text = jsonvalue.dumps(jsonvalue.freeze(value, "value"))
    now = inst.runtime.clock.now()
    waiting = [r for r in rows.steps(store, run_id)
               if r.status == "waiting" and r.kind == "event" and r.name == name]
    if not waiting:
        rows.add_event(store, run_id, name, text, now)
        return False
    rec = waiting[0]
    _drop_schedule(inst, ctx, rec.wake)
    rows.update_step(store, rec._replace(status="completed", ended=now, wake=None, result=text))
    _emit(inst, ctx, "workflow:resume", {"run": run_id, "step": name, "seq": rec.seq,
                                         "kind": "event"})
    _wake(inst, ctx, run_id)
    rows.set_run(store, run_id, "running", now)
    return True


def approved(inst: Instance, ctx: HandlerContext, run_id: str, seq: int) -> None:
    """A person approved the approval of step *seq* (the approval was claimed already)."""
    store = _store(inst)
    rec = next((r for r in rows.steps(store, run_id) if r.seq == seq), None)
    if rec is None or rec.status != "waiting" or rec.ref is None:
        return
    stored = approval_rows.get(store, rec.ref)
    _decided(inst, ctx, rec, "approved", None if stored is None else stored.decided_by, None)


def approval_closed(inst: Instance, ctx: HandlerContext, approval_id: str, status: str,
                    by: str | None, reason: str | None) -> None:
    """An approval was rejected or expired: if a workflow step waits on it, it goes on."""
    store = _store(inst)
    rec = rows.step_waiting_on(store, approval_id)
    if rec is not None:
        _decided(inst, ctx, rec, status, by, reason)


def _decided(inst: Instance, ctx: HandlerContext, rec: StepRow, status: str, by: str | None,
             reason: str | None) -> None:
    store = _store(inst)
    run = rows.get_run(store, rec.run)
    if run is None or run.status in TERMINAL:
        return
    ctx.capture(store)
    now = inst.runtime.clock.now()
    text = jsonvalue.dumps({"approved": status == "approved", "status": status, "by": by,
                            "reason": reason, "approval": rec.ref})
    rows.update_step(store, rec._replace(status="completed", ended=now, result=text))
    _emit(inst, ctx, "workflow:resume", {"run": rec.run, "step": rec.name, "seq": rec.seq,
                                         "kind": "approval", "decision": status})
    _wake(inst, ctx, rec.run)
    rows.set_run(store, rec.run, "running", now)


def cancel(inst: Instance, ctx: HandlerContext, run_id: str) -> bool:
    """Cancel a run: its wakes are dropped, its pending approval cancelled. Returns whether
    it was still going (cancelling an ended run changes nothing)."""
    run = _get_run(inst, run_id)
    if run.status in TERMINAL:
        return False
    store = _store(inst)
    ctx.capture(store)
    now = inst.runtime.clock.now()
    for rec in rows.steps(store, run_id):
        if rec.status not in ("waiting", "retrying"):
            continue
        _drop_schedule(inst, ctx, rec.wake)
        if rec.ref is not None:
            stored = approval_rows.get(store, rec.ref)
            if stored is not None and stored.status == "pending":
                why = "the workflow run was cancelled"
                approval_rows.decide(store, rec.ref, "cancelled", None, now, why)
                _drop_schedule(inst, ctx, stored.expiry_schedule)
                ctx.approvals.append(("cancelled", Decision(rec.ref, "cancelled", None, now, why)))
        rows.update_step(store, rec._replace(status="failed", ended=now, wake=None,
                                             error="cancelled"))
    rows.set_run(store, run_id, "cancelled", now, error="cancelled")
    rows.delete_run_events(store, run_id)
    _emit(inst, ctx, "workflow:cancel", {"run": run_id, "method": run.method})
    return True
