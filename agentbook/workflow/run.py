"""``ab.WorkflowRun``: one run of a workflow, seen from outside its agent.

A run handle is an agent reference and an id; holding one costs nothing. Reads (``status``,
``steps()``) look at the agent's last commit and never wait for its mailbox; the actions
(``send_event``, ``cancel``) are messages to the agent, run one at a time with its other
handlers. ``ref.workflow(id)`` gives a handle back by id, also after a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import UsageError, WorkflowError, WorkflowNondeterminismError, WorkflowStepError
from ..store.workflows import RunRow, read_run, read_steps, runs_frame, steps_frame
from .engine import CANCEL, EVENT, TERMINAL

if TYPE_CHECKING:
    import apsw
    import pandas as pd

    from ..core.ref import AgentRef

__all__ = ["WorkflowRun", "runs_frame", "steps_frame"]

#: How a run reads its agent's last commit (``AgentRef``'s reader: a connection or ``None``).
Reader = Callable[..., AbstractContextManager["apsw.Connection | None"]]
#: A real-time look again while awaiting a result, in case no event says it ended.
_POLL = 0.05


class WorkflowRun:
    """One run of an ``@ab.workflow`` method (what calling it through a ref returns).

    Attributes:
        id: The run's id (``ref.workflow(id)`` finds it again).
        agent: The reference of the agent it runs in.
    """

    __slots__ = ("_read", "agent", "id")

    def __init__(self, agent: AgentRef, run_id: str, read: Reader) -> None:
        self.agent = agent
        self.id = run_id
        self._read = read

    def _row(self) -> RunRow:
        reads = self.agent.runtime.reads  # (a Ray runtime with node-local stores)
        if reads is not None:
            row = reads.workflow_run(self.agent, self.id)
        else:
            with self._read(missing_ok=True) as conn:
                row = None if conn is None else read_run(conn, self.id)
        if row is None:
            raise UsageError(f"{self.agent!r} has no workflow run {self.id!r}; see "
                             "ref.workflows()")
        return row

    @property
    def status(self) -> str:
        """``running``, ``sleeping``, ``waiting``, ``completed``, ``failed`` or
        ``cancelled`` (as of the agent's last commit)."""
        return self._row().status

    @property
    def method(self) -> str:
        """The workflow method's name."""
        return self._row().method

    @property
    def error(self) -> str | None:
        """What ended a failed run (``None`` otherwise)."""
        return self._row().error

    def steps(self) -> pd.DataFrame:
        """The run's journal: one row per step (``step``, ``kind``, ``status``,
        ``attempts``, ``started``, ``ended``, ``until``, ``result``, ``error``...)."""
        if self.agent.runtime.reads is not None:
            return self.agent.runtime.reads.workflow_steps(self.agent, self.id)
        with self._read(missing_ok=True) as conn:
            found = [] if conn is None else read_steps(conn, self.id)
        return steps_frame(found)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait (without blocking the event loop) until the run ends; its return value.

        On a ``VirtualClock`` a sleeping run goes on only when the clock advances, and a
        waiting one when its event or decision comes, so await this while that happens
        (or after it). *timeout* is in real seconds (``None``: no limit).

        Raises:
            WorkflowError: the run failed or was cancelled (``WorkflowStepError`` or
                ``WorkflowNondeterminismError`` are raised by the workflow, and end it).
            TimeoutError: *timeout* passed first.
        """
        rt = self.agent.runtime
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        changed = asyncio.Event()

        def seen(event: dict) -> None:
            payload = event.get("payload")
            if isinstance(payload, dict) and payload.get("run") == self.id:
                changed.set()

        unsubscribe = rt.events.subscribe(seen, "workflow:*", self.agent)
        try:
            while True:
                row = self._row()
                if row.status in TERMINAL:
                    return _outcome(row)
                if rt.closed:
                    raise WorkflowError(f"the runtime closed before workflow run {self.id} "
                                        "ended", run=self.id, status=row.status)
                await rt.settle()
                row = self._row()
                if row.status in TERMINAL:
                    return _outcome(row)
                wait = _POLL if deadline is None else min(_POLL, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError(f"workflow run {self.id} is still {row.status}")
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            unsubscribe()

    async def fork(self, at_step: int, name: str | None = None) -> WorkflowRun:
        """What if step *at_step* had gone another way? A copy of this run, on a fork of
        its agent made just before that step completed, that goes on from there.

        The steps before *at_step* keep their journaled results (they never run again);
        step *at_step* happens anew on the fork: a ``do`` runs again, a
        ``wait_for_approval`` asks again (a new approval in ``rt.approvals``, with its whole
        timeout again: decide it differently), a ``wait_for_event`` waits again for
        ``send_event`` on the fork (its timeout starting over), a sleep ends when it was
        due. A step that has not completed yet is forked as it is now.
        The original run and its agent are not touched.

        Args:
            at_step: The step's position (``seq`` in :meth:`steps`, from 0).
            name: The fork's name (default: ``"<agent>-<run id>-step<k>"``).

        Returns:
            The run (same id) on the forked agent: ``await run.result()`` as usual.
        """
        if isinstance(at_step, bool) or not isinstance(at_step, int) or at_step < 0:
            raise UsageError(f"at_step is a step's position (0, 1, 2 ...), not {at_step!r}")
        with self._read(missing_ok=True) as conn:
            found = [] if conn is None else read_steps(conn, self.id)
        rec = next((r for r in found if r.seq == at_step), None)
        if rec is None:
            raise UsageError(f"workflow run {self.id} has {len(found)} step(s) so far "
                             f"(0 .. {len(found) - 1}); it has no step {at_step} to fork at"
                             if found else f"workflow run {self.id} has no steps yet")
        at: int | None = None
        if rec.status == "completed":
            if rec.version is None:
                raise UsageError(f"step {at_step} of workflow run {self.id} was journaled by an "
                                 "older agentbook, without its version; fork the agent with "
                                 "ref.fork(name, at=version) instead")
            at = rec.version - 1
        target = await self.agent.fork(name or f"{self.agent.name}-{self.id}-step{at_step}",
                                       at=at)
        run: WorkflowRun = target.workflow(self.id)
        return run

    async def send_event(self, name: str, value: Any = None) -> bool:
        """Send event *name* with a JSON *value* to the run: a ``step.wait_for_event(name)``
        waiting for it returns *value*; sent earlier, it is kept until the run asks.
        Returns whether a waiting step took it now."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"an event's name is a non-empty string, not {name!r}")
        value = jsonvalue.freeze(value, "value")
        return bool(await self._message(EVENT, "workflow:event", self.id, name, value))

    async def cancel(self) -> bool:
        """Cancel the run: it never goes on; a pending approval of it is cancelled. Returns
        whether it was still going."""
        return bool(await self._message(CANCEL, "workflow:cancel", self.id))

    def _message(self, method: str, label: str, *args: Any) -> Any:
        rt = self.agent.runtime
        rt.check_open()
        env = Envelope.call(method, args, source=rt.source, label=label)
        return rt.submit((self.agent.class_name, self.agent.name), env)

    def __repr__(self) -> str:
        try:
            status = self.status
        except Exception:
            status = "?"
        return f"<WorkflowRun {self.id} {self.agent.class_name}({self.agent.name!r}) {status}>"


def _outcome(row: RunRow) -> Any:
    if row.status == "completed":
        return jsonvalue.loads(row.result or "null")
    error = row.error or ""
    for typed in (WorkflowNondeterminismError, WorkflowStepError):  # the error, typed again
        prefix = f"{typed.__name__}: "
        if row.status == "failed" and error.startswith(prefix):
            raise typed(error[len(prefix):], run=row.id, status=row.status)
    raise WorkflowError(f"workflow run {row.id} ({row.method}) {row.status}"
                        + (f": {error}" if error and row.status == "failed" else ""),
                        run=row.id, status=row.status)
