"""The rows of ``_ab_workflows``, ``_ab_workflow_steps`` and ``_ab_workflow_events``, read
and written by name.

The workflow concept (:mod:`agentbook.workflow`) decides what a run, a step or an event
means; this module is the only place that knows their SQL. Writes go through
:meth:`AgentStore.internal`, so they join the running handler's savepoint and commit with
it: a step's journal record commits with the state and rows its function wrote, as one
version. Reads from outside the mailbox (``ref.workflows()``, ``run.steps()``, the DuckDB
views) take a plain connection: a reader that sees the last commit.

The tables are tracked like the agent's own (a version's changeset includes them). They
are the lazy group ``workflows`` (:mod:`agentbook.store.groups`): a store has them from
its first run, and reads them as empty before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import apsw

from .. import jsonvalue
from .groups import read

if TYPE_CHECKING:
    import pandas as pd

    from .agentstore import AgentStore

__all__ = [
    "RUN_COLUMNS",
    "STEP_COLUMNS",
    "RunRow",
    "StepRow",
    "add_event",
    "any_unfinished",
    "delete_run_events",
    "first_running",
    "get_run",
    "get_status",
    "get_step",
    "insert_run",
    "insert_step",
    "read_run",
    "read_runs",
    "read_steps",
    "release_step",
    "rollback_step",
    "runs_frame",
    "savepoint_step",
    "set_run",
    "step_waiting_on",
    "steps",
    "steps_frame",
    "take_event",
    "to_recover",
    "update_step",
]

_GROUP = "workflows"


class RunRow(NamedTuple):
    """One workflow run (``_ab_workflows``)."""

    id: str
    #: The ``@ab.workflow`` method's name.
    method: str
    #: JSON text of the positional arguments (after ``step``).
    args: str
    #: JSON text of the keyword arguments.
    kwargs: str
    #: ``running``, ``sleeping``, ``waiting``, ``completed``, ``failed`` or ``cancelled``.
    status: str
    created: float
    updated: float
    #: JSON text of the return value (``completed``).
    result: str | None
    #: ``Type: message`` of what ended a ``failed`` run.
    error: str | None
    #: Steps completed so far.
    steps: int


class StepRow(NamedTuple):
    """One step of a run (``_ab_workflow_steps``), in the order the code asked for them."""

    run: str
    #: 0, 1, 2 ... within the run.
    seq: int
    name: str
    #: ``do``, ``sleep``, ``event`` or ``approval``.
    kind: str
    #: ``waiting``, ``retrying``, ``completed`` or ``failed``.
    status: str
    #: Attempts made so far (``do``: 1 for a step that succeeded at once).
    attempts: int
    started: float
    ended: float | None
    #: When a sleep ends, or a wait times out (``None``: never).
    until: float | None
    #: The approval a wait is for.
    ref: str | None
    #: The schedule that wakes the run for this step (a sleep, a timeout, a retry).
    wake: str | None
    #: JSON text of the step's result.
    result: str | None
    error: str | None
    #: The version at which the record was last written (a completed step: the version
    #: that completed it); ``None`` in records older than that column.
    version: int | None = None


RUN_COLUMNS = list(RunRow._fields)
STEP_COLUMNS = list(StepRow._fields)
#: (``steps`` is counted when read: the column is only brought up to date when the run
#: stops, so a running step doesn't rewrite its run's row.)
_RUN = (f"SELECT {', '.join(f'w.{c}' for c in RUN_COLUMNS[:-1])}, (SELECT count(*) FROM"
        " _ab_workflow_steps s WHERE s.run = w.id AND s.status = 'completed') FROM _ab_workflows w")
_STEP = f"SELECT {', '.join(STEP_COLUMNS)} FROM _ab_workflow_steps"


# -- inside the agent's mailbox (the writer connection, the handler's transaction) -------
def insert_run(store: AgentStore, id: str, method: str, args: str, kwargs: str,
               now: float) -> None:
    """Write a new run (status ``running``)."""
    store.ensure_group(_GROUP)
    store.internal("INSERT INTO _ab_workflows(id, method, args, kwargs, status, created, updated,"
                   " steps) VALUES (?,?,?,?,'running',?,?,0)", (id, method, args, kwargs, now, now))


def get_run(store: AgentStore, run_id: str) -> RunRow | None:
    """The run *run_id*, or ``None``."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal(_RUN + " WHERE w.id = ?", (run_id,))
    return RunRow._make(rows[0]) if rows else None


def get_status(store: AgentStore, run_id: str) -> tuple[str, str] | None:
    """``(method, status)`` of the run *run_id*, or ``None`` (cheaper than :func:`get_run`)."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal("SELECT method, status FROM _ab_workflows WHERE id = ?", (run_id,))
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def set_run(store: AgentStore, run_id: str, status: str, now: float, *,
            result: str | None = None, error: str | None = None) -> None:
    """Change a run's status (and keep its result or error; the count of its completed
    steps is brought up to date)."""
    if not store.has_group(_GROUP):
        return  # (no run to change)
    store.internal("UPDATE _ab_workflows SET status = ?, updated = ?, result = coalesce(?, result),"
                   " error = coalesce(?, error),"
                   " steps = (SELECT count(*) FROM _ab_workflow_steps"
                   "          WHERE run = ? AND status = 'completed') WHERE id = ?",
                   (status, now, result, error, run_id, run_id))


def steps(store: AgentStore, run_id: str) -> list[StepRow]:
    """The journal of a run, in order."""
    if not store.has_group(_GROUP):
        return []
    return [StepRow._make(r) for r in store.internal(_STEP + " WHERE run = ? ORDER BY seq",
                                                      (run_id,))]


def get_step(store: AgentStore, run_id: str, seq: int) -> StepRow | None:
    """Step *seq* of the run, as written so far in this transaction."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal(_STEP + " WHERE run = ? AND seq = ?", (run_id, seq))
    return StepRow._make(rows[0]) if rows else None


def insert_step(store: AgentStore, row: StepRow) -> None:
    """Journal a step (its first record)."""
    store.ensure_group(_GROUP)
    store.internal(f"INSERT INTO _ab_workflow_steps({', '.join(STEP_COLUMNS)}) VALUES "
                   f"({', '.join('?' * len(STEP_COLUMNS))})", tuple(row))


def update_step(store: AgentStore, row: StepRow) -> None:
    """Rewrite a step's record (same run and seq)."""
    store.ensure_group(_GROUP)
    store.internal("UPDATE _ab_workflow_steps SET name = ?, kind = ?, status = ?, attempts = ?,"
                   " started = ?, ended = ?, until = ?, ref = ?, wake = ?, result = ?, error = ?,"
                   " version = ? WHERE run = ? AND seq = ?", (*row[2:], row.run, row.seq))


def step_waiting_on(store: AgentStore, approval_id: str) -> StepRow | None:
    """The waiting step whose approval is *approval_id*, if any."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal(_STEP + " WHERE ref = ? AND status = 'waiting'", (approval_id,))
    return StepRow._make(rows[0]) if rows else None


def first_running(store: AgentStore) -> float | None:
    """When the longest-running run that can go on now last moved (``None``: no run is
    ``running``). A restart must wake such an agent: the durable timer index keeps it."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal("SELECT min(updated) FROM _ab_workflows WHERE status = 'running'")
    return None if not rows or rows[0][0] is None else float(rows[0][0])


def to_recover(store: AgentStore) -> list[str]:
    """Runs nothing would move on by itself, oldest first: ``running`` ones (in memory
    nothing goes on with them after a restart), and those waiting on a wake that is gone
    (a fork copies neither schedules nor approvals; a rewind can bring back a wait whose
    approval was decided since)."""
    if not store.has_group(_GROUP):
        return []
    return [r[0] for r in store.internal(
        "SELECT w.id FROM _ab_workflows w WHERE w.status = 'running' OR (w.status IN"
        " ('sleeping', 'waiting') AND EXISTS (SELECT 1 FROM _ab_workflow_steps s"
        " WHERE s.run = w.id AND s.status IN ('waiting', 'retrying') AND ("
        "  (s.wake IS NOT NULL AND NOT EXISTS (SELECT 1 FROM _ab_schedules c WHERE c.id = s.wake))"
        "  OR (s.ref IS NOT NULL AND NOT EXISTS (SELECT 1 FROM _ab_approvals a"
        "      WHERE a.id = s.ref AND a.status = 'pending')))))"
        " ORDER BY w.created, w.id")]


def any_unfinished(conn: apsw.Connection) -> bool:
    """Whether the store on *conn* has a run that has not ended."""
    return bool(_query(conn, "SELECT 1 FROM _ab_workflows WHERE status IN"
                             " ('running', 'sleeping', 'waiting') LIMIT 1"))


def add_event(store: AgentStore, run_id: str, name: str, value: str, now: float) -> None:
    """Keep an event sent to a run until a ``wait_for_event`` of that name takes it."""
    store.ensure_group(_GROUP)
    store.internal("INSERT INTO _ab_workflow_events(run, name, value, ts) VALUES (?,?,?,?)",
                   (run_id, name, value, now))


def take_event(store: AgentStore, run_id: str, name: str) -> str | None:
    """The oldest event *name* sent to the run (JSON text), removed; ``None`` if none."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal("SELECT seq, value FROM _ab_workflow_events WHERE run = ? AND name = ?"
                          " ORDER BY seq LIMIT 1", (run_id, name))
    if not rows:
        return None
    store.internal("DELETE FROM _ab_workflow_events WHERE seq = ?", (rows[0][0],))
    return str(rows[0][1])


def delete_run_events(store: AgentStore, run_id: str) -> None:
    """Forget the events nobody waited for (a run that ended)."""
    if not store.has_group(_GROUP):
        return
    store.internal("DELETE FROM _ab_workflow_events WHERE run = ?", (run_id,))


# A step's function runs inside a savepoint of its own: if it raises, its writes are undone
# and only the failed attempt is journaled.
def savepoint_step(store: AgentStore) -> None:
    """Open the savepoint of one step attempt (inside the handler's)."""
    store.internal("SAVEPOINT ab_step")


def release_step(store: AgentStore) -> None:
    """Keep the step attempt's writes."""
    store.internal("RELEASE ab_step")


def rollback_step(store: AgentStore) -> None:
    """Undo the step attempt's writes."""
    if store.conn.in_transaction:
        store.internal("ROLLBACK TO ab_step")
        store.internal("RELEASE ab_step")
    store.recheck_groups()  # (a chat in the step may have made its tables)


# -- from outside (a reader connection that sees the last commit) -------------------------
def _query(conn: apsw.Connection, query: str, params: tuple = ()) -> list[tuple]:
    return read(conn, query, params)  # (no workflow tables: no run yet)


def read_run(conn: apsw.Connection, run_id: str) -> RunRow | None:
    """The run *run_id* as last committed, or ``None``."""
    rows = _query(conn, _RUN + " WHERE w.id = ?", (run_id,))
    return RunRow._make(rows[0]) if rows else None


def read_runs(conn: apsw.Connection) -> list[RunRow]:
    """Every run, oldest first."""
    return [RunRow._make(r) for r in _query(conn, _RUN + " ORDER BY w.created, w.id")]


def read_steps(conn: apsw.Connection, run_id: str | None = None) -> list[StepRow]:
    """The steps of one run (or of every run), in order."""
    if run_id is None:
        return [StepRow._make(r) for r in _query(conn, _STEP + " ORDER BY run, seq")]
    return [StepRow._make(r) for r in _query(conn, _STEP + " WHERE run = ? ORDER BY seq",
                                             (run_id,))]


# -- as DataFrames (ref.workflows(), run.steps(), ref.at(k).workflows()) ----------------
def _ts(frame: pd.DataFrame, *columns: str) -> None:
    import pandas as pd

    for col in columns:
        frame[col] = pd.to_datetime(frame[col].astype("float64"), unit="s", utc=True)


def runs_frame(found: list[RunRow], agent: tuple[str, str] | None = None) -> pd.DataFrame:
    """Runs as a DataFrame (with ``agent`` and ``name`` columns when *agent* is given)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(
        [(r.id, r.method, jsonvalue.loads(r.args), r.status, r.steps, r.created, r.updated,
          None if r.result is None else jsonvalue.loads(r.result), r.error) for r in found],
        columns=["id", "method", "args", "status", "steps", "created", "updated", "result",
                 "error"])
    _ts(frame, "created", "updated")
    if agent is not None:
        frame.insert(0, "name", agent[1])
        frame.insert(0, "agent", agent[0])
    return frame


def steps_frame(found: list[StepRow]) -> pd.DataFrame:
    """Steps as a DataFrame, in order."""
    import pandas as pd

    frame = pd.DataFrame.from_records(
        [(r.seq, r.name, r.kind, r.status, r.attempts, r.started, r.ended, r.until,
          None if r.result is None else jsonvalue.loads(r.result), r.error, r.ref, r.version)
         for r in found],
        columns=["seq", "step", "kind", "status", "attempts", "started", "ended", "until",
                 "result", "error", "approval", "version"])
    _ts(frame, "started", "ended", "until")
    return frame
