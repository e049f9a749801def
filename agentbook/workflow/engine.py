"""Running workflows inside the agent's mailbox (a live coroutine, a journal to replay).

A run moves forward in handlers of its agent, one step per turn:

* **start** (calling the ``@ab.workflow`` method): the run's row commits with the calling
  handler, and the run is *runnable*: a turn of it is queued in the mailbox (in memory),
  and the durable timer index notes the agent, so a restart wakes it.
* **a turn** (``_ab_workflow_continue``, or ``_ab_workflow_resume`` from a schedule): the
  run's code is a coroutine kept with the awake agent (:class:`Runs`) from one turn to the
  next. A turn sends into it until it *parks*: at a second ``step.do`` (the turn has run
  one: the next turn is queued behind the messages already waiting, which run in between;
  every step is its own version), or at a sleep or a wait (the run's wake is a schedule, an
  event, a decision: nothing holds the mailbox meanwhile).
* **replay**: after a restart, a hibernation, a rolled-back batch or a rewind the coroutine
  is gone. The next turn runs the code from the top: completed steps return their
  journaled results, the first incomplete one goes on. A ``do`` interrupted by a crash had
  not committed, so it runs again (at least once outside); a completed one never does.
  When the agent wakes, :func:`recover` queues a turn of every run that is ``running``
  and of every run whose wake is gone (a fork copies neither schedules nor approvals; a
  rewind can bring back a wait whose approval was decided since): replaying it
  re-arms the wait (a new schedule, a new approval).

Nothing here imports the core: the awake agent (``inst``) and the running handler's
context (``ctx``) come as arguments.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..approve.requests import digest as approval_digest  # (the approvals' own binding)
from ..envelope import Envelope
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
from .step import ApprovalDecision, Step

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..store.agentstore import AgentStore

__all__ = ["APPROVED", "CANCEL", "CONTINUE", "EVENT", "RESUME", "TERMINAL", "Runs",
           "approval_closed", "approved", "cancel", "deliver_event", "forget", "recover",
           "resume", "start"]

#: The agent's internal handlers (``ab.Agent._ab_workflow_*``).
RESUME = "_ab_workflow_resume"
CONTINUE = "_ab_workflow_continue"
EVENT = "_ab_workflow_event"
APPROVED = "_ab_workflow_decided"
CANCEL = "_ab_workflow_cancel"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
_EPSILON = 1e-6
#: A turn's label in history (the same for a queued turn and a schedule's).
_LABEL = "workflow_resume"
#: A turn runs steps one after another (each its own version) up to this many, or this
#: long, or until a step awaited real I/O; then the next turn queues behind the agent's
#: other messages.
TURN_STEPS = 32
TURN_SECONDS = 0.005


# -- the live runs of an awake agent -------------------------------------------------------
class Runs:
    """The workflow runs of one awake agent whose code is live between turns.

    The agent's mailbox holds one (``inst.workflows``) and drops it whenever what is in
    memory may be ahead of what committed (a rolled-back batch) or is let go (hibernation,
    a rewind); the runs then go on by replaying their journals.
    """

    __slots__ = ("checked", "live", "queued")

    def __init__(self) -> None:
        #: Run id -> its coroutine and driver.
        self.live: dict[str, _Live] = {}
        #: Runs with a turn queued in the mailbox (one is enough).
        self.queued: set[str] = set()
        #: Whether :func:`recover` looked at the store since the agent woke (or since the
        #: live runs were dropped).
        self.checked = False

    def drop(self) -> None:
        """Forget every live run (their code stops where it waits); the next look at the
        store (:func:`recover`) picks them up again from their journals."""
        live, self.live = self.live, {}
        self.queued.clear()
        self.checked = False
        for entry in live.values():
            entry.close()

    def __len__(self) -> int:
        return len(self.live)


class _Live:
    """One run's coroutine, and the driver that serves its steps."""

    __slots__ = ("coro", "driver", "fn")

    def __init__(self, coro: Coroutine[Any, Any, Any], driver: _Driver, fn: Any) -> None:
        self.coro, self.driver, self.fn = coro, driver, fn

    def close(self) -> None:
        try:
            self.coro.close()
        except RuntimeError:  # (code that awaits in a finally: it is dropped all the same)
            pass


#: What a parked step yields up to :class:`_Turn` (never to the event loop).
_PARK = object()


class _Parked:
    """``await _parked``: the run's code stops here until its next turn."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield _PARK


_parked = _Parked()


class _Turn:
    """Send into a run's coroutine until it parks or ends (awaited by the turn's handler;
    what the step functions await goes on to the event loop as usual).

    The result is ``(None, None)`` when it parked, ``(True, value)`` when the code
    returned, ``(False, error)`` when it raised.
    """

    __slots__ = ("coro", "driver")

    def __init__(self, live: _Live) -> None:
        self.coro, self.driver = live.coro, live.driver

    def __await__(self) -> Generator[Any, Any, tuple[bool | None, Any]]:
        coro = self.coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                out = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return True, stop.value
            except Exception as exc:
                return False, exc
            if out is _PARK:
                return None, None
            self.driver.waited = True  # (the code awaits real I/O: the turn ends after this step)
            try:
                value, error = (yield out), None
            except BaseException as exc:  # (a cancellation goes into the code, as for a task)
                value, error = None, exc


def runs_of(inst: Instance) -> Runs:
    """The agent's live runs (made at the first need)."""
    runs = inst.workflows
    if runs is None:
        runs = inst.workflows = Runs()
    return runs


def _store(inst: Instance) -> AgentStore:
    store = inst.store
    assert store is not None, "workflows move inside a handler, with the store open"
    return store


def _emit(inst: Instance, ctx: HandlerContext, type_: str, payload: dict) -> None:
    """A ``workflow:*`` event, delivered (and kept on record) with the handler's commit."""
    if inst.runtime.events.active:
        ctx.events.append((type_, payload))


def _schedule(inst: Instance, ctx: HandlerContext, run_id: str, due: float) -> str:
    """A durable turn of *run_id* at *due* (a sleep's end, a timeout, a retry)."""
    store = _store(inst)
    ctx.capture(store)
    ctx.sched_dirty = True
    now = inst.runtime.clock.now()
    return insert_schedule(store, "scheduled", max(due, now), RESUME, run_id, now).id


def _drop_schedule(inst: Instance, ctx: HandlerContext, schedule_id: str | None) -> None:
    if schedule_id:
        ctx.sched_dirty = True
        schedule_rows.delete(_store(inst), schedule_id)


def _queue_turn(inst: Instance, ctx: HandlerContext | None, run_id: str) -> None:
    """Queue a turn of *run_id* in the mailbox (in memory, once). What makes it durable is
    the run's ``running`` status, committed with the handler: the timer index notes the
    agent now, so a restart wakes it and :func:`recover` queues the turn again."""
    if ctx is not None and ctx.replay is not None:
        return  # (a replay's recording says which turns run)
    runs = runs_of(inst)
    if run_id in runs.queued:
        return
    runs.queued.add(run_id)
    rt = inst.runtime
    rt.timers.index_before_commit(inst.key, rt.clock.now())
    inst.queue.append(Envelope.call(CONTINUE, (run_id,), source=f"workflow:{run_id}",
                                    label=_LABEL))


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
    _queue_turn(inst, ctx, run_id)
    _emit(inst, ctx, "workflow:start", {"run": run_id, "method": method})
    return {"workflow": run_id, "method": method}


# -- recovery ------------------------------------------------------------------------------
def recover(inst: Instance) -> int:
    """Queue a turn of every run that nothing else would move on (see the module
    docstring); called by the mailbox when the agent wakes, and after live runs were
    dropped. Returns how many."""
    runs = runs_of(inst)
    runs.checked = True
    found = 0
    for run_id in rows.to_recover(_store(inst)):
        if run_id not in runs.live and run_id not in runs.queued:
            _queue_turn(inst, None, run_id)
            found += 1
    return found


def forget(inst: Instance) -> bool:
    """Drop the live runs (the batch they moved in was rolled back). Returns whether
    there were any (the mailbox then looks at the store again soon)."""
    runs = runs_of(inst)
    had = bool(runs.live or runs.queued)
    runs.drop()
    return had


# -- a turn ------------------------------------------------------------------------------------
async def resume(inst: Instance, ctx: HandlerContext, run_id: str, queued: bool = False) -> None:
    """One turn of run *run_id*: its code goes on as far as it can in this handler.
    *queued*: the turn is the one :func:`_queue_turn` queued."""
    runs = runs_of(inst)
    if queued:
        runs.queued.discard(run_id)
    store = _store(inst)
    ctx.capture(store)
    live = runs.live.get(run_id)
    if live is not None and live.fn is not _workflow_fn(inst, live.driver.run.method):
        del runs.live[run_id]  # the class was defined again: its new code replays the run
        live.close()
        live = None
    if live is None:
        new = _replay(inst, ctx, run_id)
        if new is None:
            return
        live = runs.live[run_id] = new
    driver = live.driver
    driver.bind(inst, ctx)
    try:
        done, value = await _Turn(live)
    except BaseException:
        runs.live.pop(run_id, None)
        raise
    if done is None:
        return  # parked: a queued turn, a schedule, an event or a decision goes on with it
    runs.live.pop(run_id, None)
    run = driver.run
    if done:
        try:
            driver.check_all_replayed()
            text = jsonvalue.dumps(jsonvalue.freeze(value, "the workflow's result"))
        except Exception as exc:
            _finish(inst, ctx, run, "failed", error=f"{type(exc).__name__}: {exc}")
            return
        _finish(inst, ctx, run, "completed", result=text)
    else:
        _finish(inst, ctx, run, "failed", error=f"{type(value).__name__}: {value}")


def _replay(inst: Instance, ctx: HandlerContext, run_id: str) -> _Live | None:
    """The run's code from the top (its coroutine, not started yet), or ``None`` when the
    run ended or is gone."""
    store = _store(inst)
    run = rows.get_run(store, run_id)
    if run is None or run.status in TERMINAL:
        return None  # (cancelled meanwhile, or a wake left over: nothing to do)
    agent = inst.agent
    original = _workflow_fn(inst, run.method)
    if original is None:
        _finish(inst, ctx, run, "failed", error=(
            f"WorkflowError: {type(agent).__name__} has no @ab.workflow method {run.method!r} "
            "any more; the run can't go on"))
        return None
    driver = _Driver(run, rows.steps(store, run_id))
    coro = original(agent, Step(driver), *jsonvalue.loads(run.args), **jsonvalue.loads(run.kwargs))
    return _Live(coro, driver, original)


def _workflow_fn(inst: Instance, method: str) -> Any:
    """The code of the agent's ``@ab.workflow`` method *method* now (``None``: none)."""
    return getattr(getattr(type(inst.agent), method, None), "_ab_workflow_fn", None)


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
    """One run's side of its steps: the journal, the step it is at, and the turn it runs
    in (:meth:`bind` at every turn)."""

    __slots__ = ("args", "ctx", "inst", "journal", "ran", "replaying", "run", "running", "seq",
                 "started", "steps", "store", "waited")

    def __init__(self, run: RunRow, journal: list[StepRow]) -> None:
        self.run = run
        #: A turn's arguments in history.
        self.args = jsonvalue.dumps([run.id])
        self.journal = {r.seq: r for r in journal}
        #: Steps at or above this came from the journal when the code started again (a
        #: replay): their wakes may have to be armed again.
        self.replaying = len(self.journal)
        self.seq = 0
        #: Whether a ``do`` ran in this turn (the next new one waits for another turn).
        self.ran = False
        #: The id of the step whose function runs now (``None`` between steps).
        self.running: str | None = None
        self.inst: Any = None
        self.ctx: Any = None
        self.store: Any = None
        #: This turn: when it began, the steps it ran, whether the code awaited real I/O.
        self.started = 0.0
        self.steps = 0
        self.waited = False

    def bind(self, inst: Instance, ctx: HandlerContext) -> None:
        """The turn the code goes on in now."""
        self.inst, self.ctx, self.store = inst, ctx, inst.store
        self.ran = False
        self.started = time.perf_counter()
        self.steps = 0
        self.waited = False

    async def _next_version(self) -> None:
        """A step ran in this version already: the next one is a version of its own, in
        this turn while the turn is short and quick (other messages wait behind it), else
        in a turn queued behind them."""
        if self.waited or self.steps >= TURN_STEPS or self.ctx.replay is not None \
                or time.perf_counter() - self.started > TURN_SECONDS:
            await self._turn()
            return
        self.inst.cut_version(self.ctx, _LABEL, self.args)
        self.ctx.capture(self.store)
        self.ran = False

    @property
    def current_id(self) -> str:
        return self.running or f"{self.run.id}:{self.seq}"

    def now(self) -> float:
        return float(self.inst.runtime.clock.now())

    def version(self) -> int:
        """The version the running turn will commit as."""
        return int(self.inst.version) + 1

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

    def _record(self, row: StepRow, new: bool) -> StepRow:
        row = row._replace(version=self.version())
        if new:
            rows.insert_step(self.store, row)
        else:
            rows.update_step(self.store, row)
        self.journal[row.seq] = row
        return row

    def _reread(self, seq: int) -> StepRow | None:
        """Step *seq* as stored now (a handler of the agent may have completed it)."""
        rec = rows.get_step(self.store, self.run.id, seq)
        if rec is not None:
            self.journal[seq] = rec
        return rec

    def _status(self, status: str) -> None:
        rows.set_run(self.store, self.run.id, status, self.now())

    def _rearm(self, rec: StepRow) -> bool:
        """Whether the wake of a waiting step read from the journal is gone (a fork, a
        rewind): then it is armed again by the caller."""
        return rec.seq < self.replaying and rec.wake is not None \
            and not schedule_rows.exists(self.store, rec.wake)

    async def _turn(self) -> None:
        """This turn ran a step already: queue the next turn and wait for it."""
        _queue_turn(self.inst, self.ctx, self.run.id)
        await _parked

    def _resumed(self, row: StepRow, **extra: Any) -> None:
        _emit(self.inst, self.ctx, "workflow:resume", {"run": self.run.id, "step": row.name,
                                                       "seq": row.seq, "kind": row.kind, **extra})

    def _waits(self, row: StepRow, status: str) -> None:
        self._status(status)
        _emit(self.inst, self.ctx, "workflow:wait", {"run": self.run.id, "step": row.name,
                                                     "seq": row.seq, "kind": row.kind,
                                                     "until": row.until})

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
        policy = Retry.coerce(retry)
        while True:
            if self.ran:
                await self._next_version()
            if rec is not None and rec.until is not None and self.now() + _EPSILON < rec.until:
                if self._rearm(rec):  # (its retry's schedule is gone: a new one)
                    rec = self._record(rec._replace(
                        wake=_schedule(self.inst, self.ctx, self.run.id, rec.until)), False)
                await _parked  # (woken before its retry is due: the retry's schedule comes)
                continue
            done = await self._attempt(seq, rec, name, fn, args, kwargs, policy)
            if done is not None:
                return done[0]
            rec = self.journal[seq]  # retrying: its schedule wakes the run
            await _parked

    async def _attempt(self, seq: int, rec: StepRow | None, name: str, fn: Callable[..., Any],
                       args: tuple, kwargs: dict, policy: Retry) -> tuple[Any] | None:
        """Run the step's function once in this turn: ``(result,)``, or ``None`` when it
        failed and is retried later (:class:`WorkflowStepError` after the last attempt)."""
        self.ran = True
        self.steps += 1
        now = self.now()
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
            inst, ctx, store = self.inst, self.ctx, self.store
            rows.rollback_step(store)
            inst.state, ctx.state_changed, ctx.state_after = kept[0], kept[1], kept[2]
            del ctx.events[kept[3]:], ctx.outbox[kept[4]:], ctx.effects[kept[5]:]
            self._failed(seq, rec, name, started, attempts, policy, exc)
            return None
        self.running = None
        rows.release_step(store)
        if rec is not None:
            _drop_schedule(inst, ctx, rec.wake)
        self._record(StepRow(self.run.id, seq, name, "do", "completed", attempts, started,
                             self.now(), None, None, None, text, None), rec is None)
        _emit(inst, ctx, "workflow:step", {"run": self.run.id, "step": name, "seq": seq,
                                           "status": "completed", "attempts": attempts})
        return (frozen,)

    def _failed(self, seq: int, rec: StepRow | None, name: str, started: float, attempts: int,
                policy: Retry, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        now = self.now()
        _drop_schedule(self.inst, self.ctx, rec.wake if rec is not None else None)
        if attempts < policy.max_attempts:
            due = now + policy.delay(attempts, f"{self.run.id}:{seq}")
            wake = _schedule(self.inst, self.ctx, self.run.id, due)
            self._record(StepRow(self.run.id, seq, name, "do", "retrying", attempts, started,
                                 None, due, None, wake, None, error), rec is None)
            _emit(self.inst, self.ctx, "workflow:step", {
                "run": self.run.id, "step": name, "seq": seq, "status": "retrying",
                "attempts": attempts, "error": error, "retry_at": due})
            return
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
        if rec is None:
            now = self.now()
            until = now + float(seconds)
            wake = _schedule(self.inst, self.ctx, self.run.id, until)
            rec = self._record(StepRow(self.run.id, seq, name, "sleep", "waiting", 0, now, None,
                                       until, None, wake, None, None), True)
            self._waits(rec, "sleeping")
        elif self._rearm(rec):
            assert rec.until is not None
            rec = self._record(rec._replace(
                wake=_schedule(self.inst, self.ctx, self.run.id, rec.until)), False)
        while rec.until is not None and self.now() + _EPSILON < rec.until:
            await _parked  # (its schedule wakes the run)
        _drop_schedule(self.inst, self.ctx, rec.wake)  # (early, by another turn: not again)
        self._record(rec._replace(status="completed", ended=self.now(), wake=None), False)
        self._status("running")
        self._resumed(rec)

    # -- wait for an event ---------------------------------------------------------------
    async def wait_for_event(self, name: str, timeout: float | None) -> Any:
        _check_timeout(timeout)
        seq, rec = self._next("event", name)
        while True:
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
                if rec is not None:
                    self._status("running")
                self._resumed(row)
                return jsonvalue.loads(value)
            if rec is None:
                until = None if timeout is None else now + float(timeout)
                wake = None if until is None else _schedule(self.inst, self.ctx, self.run.id,
                                                            until)
                rec = self._record(StepRow(self.run.id, seq, name, "event", "waiting", 0, now,
                                           None, until, None, wake, None, None), True)
                self._waits(rec, "waiting")
            elif self._rearm(rec):  # (a fork, a rewind: the wait starts again, as long)
                assert rec.until is not None
                until = now + (rec.until - rec.started)
                rec = self._record(rec._replace(until=until, wake=_schedule(
                    self.inst, self.ctx, self.run.id, until)), False)
            elif rec.until is not None and now + _EPSILON >= rec.until:
                _drop_schedule(self.inst, self.ctx, rec.wake)
                self._record(rec._replace(status="completed", ended=now, wake=None,
                                          result="null"), False)
                self._status("running")
                self._resumed(rec, timed_out=True)
                return None
            await _parked  # (run.send_event or the timeout's schedule wakes the run)
            rec = self._reread(seq)

    # -- wait for a person --------------------------------------------------------------
    async def wait_for_approval(self, title: str, timeout: float | None) -> ApprovalDecision:
        _check_timeout(timeout)
        seq, rec = self._next("approval", title)
        if rec is None:
            now = self.now()
            until = None if timeout is None else now + float(timeout)
            rec = self._record(StepRow(self.run.id, seq, title, "approval", "waiting", 0, now,
                                       None, until, self._request(seq, title, now, until), None,
                                       None, None), True)
            self._waits(rec, "waiting")
        elif rec.status != "completed" and seq < self.replaying and rec.ref is not None:
            stored = approval_rows.get(self.store, rec.ref)
            if stored is None or stored.status != "pending":  # (a fork, a rewind: ask again,
                now = self.now()                              # with as long to decide)
                until = None if rec.until is None else now + (rec.until - rec.started)
                rec = self._record(rec._replace(ref=self._request(seq, title, now, until),
                                                until=until), False)
        while rec is not None and rec.status != "completed":
            await _parked  # (the decision wakes the run)
            rec = self._reread(seq)
        return decision_of(rec.result if rec is not None else None)

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
            expiry = insert_schedule(store, "scheduled", max(expires, now),
                                     "_ab_expire_approval", approval_id, now).id
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
    rows.update_step(store, rec._replace(status="completed", ended=now, wake=None, result=text,
                                         version=inst.version + 1))
    _emit(inst, ctx, "workflow:resume", {"run": run_id, "step": name, "seq": rec.seq,
                                         "kind": "event"})
    rows.set_run(store, run_id, "running", now)
    _queue_turn(inst, ctx, run_id)
    return True


def approved(inst: Instance, ctx: HandlerContext, run_id: str, seq: int) -> None:
    """A person approved the approval of step *seq* (the approval was claimed already)."""
    store = _store(inst)
    rec = rows.get_step(store, run_id, seq)
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
    found = rows.get_status(store, rec.run)
    if found is None or found[1] in TERMINAL:
        return
    ctx.capture(store)
    now = inst.runtime.clock.now()
    text = jsonvalue.dumps({"approved": status == "approved", "status": status, "by": by,
                            "reason": reason, "approval": rec.ref})
    rows.update_step(store, rec._replace(status="completed", ended=now, result=text,
                                         version=inst.version + 1))
    _emit(inst, ctx, "workflow:resume", {"run": rec.run, "step": rec.name, "seq": rec.seq,
                                         "kind": "approval", "decision": status})
    rows.set_run(store, rec.run, "running", now)
    _queue_turn(inst, ctx, rec.run)


def cancel(inst: Instance, ctx: HandlerContext, run_id: str) -> bool:
    """Cancel a run: its wakes are dropped, its pending approval cancelled, its code
    stopped. Returns whether it was still going (cancelling an ended run changes nothing)."""
    run = _get_run(inst, run_id)
    if run.status in TERMINAL:
        return False
    store = _store(inst)
    ctx.capture(store)
    now = inst.runtime.clock.now()
    live = runs_of(inst).live.pop(run_id, None)
    if live is not None:
        live.close()
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
                                             error="cancelled", version=inst.version + 1))
    rows.set_run(store, run_id, "cancelled", now, error="cancelled")
    rows.delete_run_events(store, run_id)
    _emit(inst, ctx, "workflow:cancel", {"run": run_id, "method": run.method})
    return True
