"""``ab.AgentRef``: how code outside an agent talks to it and reads it.

A reference is two strings and a runtime; holding one costs nothing and starts nothing.
Messages go through the agent's mailbox (``await ref.method(...)``, ``ref.call``,
``ref.send``); reads (``state``, ``version``, ``sql``, ``history``) go straight to the
last commit on disk and never wait for a running handler. Where the stores are not in
this process's reach (a Ray runtime with ``host_dir=``), ``rt.reads`` asks the agent's host
instead.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import apsw

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import AgentNotFoundError, StoreCorruptError, UnknownMethodError, UsageError
from ..store import health, open_reader, query_reader
from ..store.history import (
    COLUMNS,
    bounds,
    check_version,
    check_version_type,
    history_rows,
    meta_value,
    newest_state,
    newest_version,
    read_history,
    state_at,
)
from ..store.messages import read_messages
from ..store.sqlaccess import OUTSIDE_LIMITS, outside_limits, sql_params
from .handler import current_context

if TYPE_CHECKING:
    import pandas as pd

    from ..store.export import ExportInfo
    from ..travel.bisect import BisectResult
    from ..travel.replay import ReplayResult
    from ..travel.versions import Diff, VersionView
    from .runtime import Runtime

__all__ = ["AgentRef", "Pending"]

T = TypeVar("T")


class AgentRef:
    """A reference to one agent (class name + name) in a runtime.

    ``await ref.open_ticket("x")`` calls the ``@ab.callable`` method ``open_ticket``;
    ``ref.call("open_ticket", "x")`` is the same. ``ref.send(...)`` doesn't wait.
    """

    __slots__ = ("_ab_key", "_ab_rt")

    def __init__(self, runtime: Runtime, class_name: str, name: str) -> None:
        self._ab_rt = runtime
        self._ab_key = (class_name, name)

    # -- identity -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The agent's name."""
        return self._ab_key[1]

    @property
    def class_name(self) -> str:
        """The agent's class name."""
        return self._ab_key[0]

    @property
    def runtime(self) -> Runtime:
        """The runtime hosting the agent."""
        return self._ab_rt

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentRef) and other._ab_key == self._ab_key and other._ab_rt is self._ab_rt

    def __hash__(self) -> int:
        return hash(self._ab_key)

    # -- messages -----------------------------------------------------------------------
    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Call *method* and return an awaitable of its result.

        The call is checked at once (method exists and may be called, arguments fit and
        are JSON); a bad call raises here, before anything is queued.

        Made from another agent's handler, the call is one of that handler's journaled
        effects (SPEC §2.10): its answer is recorded with the version, and a replay serves
        it from there instead of calling this agent again.
        """
        rt = self._ab_rt
        env = rt.prepare_call(self._ab_key, method, args, kwargs, external=True, future=True)
        ctx = current_context.get()
        if ctx is None or not env.chain:
            done = rt.submit(self._ab_key, env)
        else:
            from ..travel.replay import agent_call_key, journal_call

            done = journal_call(ctx, agent_call_key(*self._ab_key, method),
                                lambda: rt.submit(self._ab_key, env), args, kwargs)
        if getattr(getattr(rt.classes.get(self._ab_key[0]), method, None), "_ab_workflow_fn",
                   None) is not None:  # an @ab.workflow method: its run, once started
            return self._started(done)
        return done

    async def _started(self, done: Awaitable[Any]) -> Any:
        from ..workflow.run import WorkflowRun

        return WorkflowRun(self, (await done)["workflow"], self._reading)

    def send(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Queue *method* without waiting. Errors go to the agent's ``on_error`` and the
        ``rpc:error`` event. Sent from a handler, the message is written with the handler's
        commit (the sender's durable outbox) and leaves after it: delivered exactly once,
        also after a restart (``agentbook.store.outbox``)."""
        rt = self._ab_rt
        env = rt.prepare_call(self._ab_key, method, args, kwargs, external=True, future=False)
        rt.send_later(self._ab_key, env)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        cls = self._ab_rt.class_for(self._ab_key[0])
        if cls is not None and not hasattr(cls, method):
            raise UnknownMethodError(
                f"{cls.__name__} has no method {method!r}"
            )
        return _BoundCall(self, method)

    async def chat(self, text: str, *, client_tools: list | dict | None = None) -> str:
        """For chat agents: send *text*, await the assistant's answer.

        *client_tools* are the implementations of the agent's client tools, run here in
        the caller's process (functions, keyed by tool name or named after it)."""
        from ..chat.agent import chat

        return await chat(self, text, client_tools)

    def stream_chat(self, text: str, *, client_tools: list | dict | None = None) -> Any:
        """For chat agents: ``async for chunk in ref.stream_chat(text)`` yields the answer
        as it streams (``str(chunk)`` is its text; tool calls and approvals come as chunks
        of their own kinds)."""
        from ..chat.agent import stream_chat

        return stream_chat(self, text, client_tools)

    def messages(self) -> pd.DataFrame:
        """For chat agents: the stored conversation."""
        import pandas as pd

        if self._ab_rt.reads is not None:  # (a Ray runtime: the owner answers)
            return self._ab_rt.reads.frame(self, "messages")
        with self._reading(missing_ok=True) as conn:
            rows = [] if conn is None else read_messages(conn)
        frame = pd.DataFrame.from_records(
            [(m.id, m.role, m.content, json_or_none(m.tool_calls), m.tool_call_id, m.name, m.ts)
             for m in rows],
            columns=["id", "role", "content", "tool_calls", "tool_call_id", "name", "ts"])
        frame["ts"] = pd.to_datetime(frame["ts"].astype("float64"), unit="s", utc=True)
        return frame

    def chat_widget(self) -> Any:
        """A chat box that streams the answers, with tool calls and approvals inline."""
        from ..widgets.chat import chat_widget

        return chat_widget(self)

    async def destroy(self) -> None:
        """Delete the agent and its store (after the messages queued before this)."""
        from .ops import destroy_op

        rt = self._ab_rt
        rt.check_open()
        env = Envelope.operation("destroy", destroy_op, source=rt.source)
        await rt.submit(self._ab_key, env)

    @property
    def sync(self) -> _SyncProxy:
        """Blocking forms of the calls, for scripts and quick cells:
        ``ref.sync.open_ticket("x")`` returns the result."""
        return _SyncProxy(self)

    # -- reads --------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        """The latest committed state (a read-only JSON value)."""
        inst = self._ab_rt.instances.get(self._ab_key)
        if inst is not None and inst.store is not None:
            return inst.committed[1]
        if self._ab_rt.reads is not None:
            return self._ab_rt.reads.value(self, "state")
        with self._reading(missing_ok=True) as conn:
            if conn is None:
                cls = self._ab_rt.class_for(self._ab_key[0])
                return cls.initial_state if cls is not None else None
            state = newest_state(conn)
            if state is None:
                cls = self._ab_rt.class_for(self._ab_key[0])
                return cls.initial_state if cls is not None else None
            return jsonvalue.loads(state)

    @property
    def version(self) -> int:
        """The latest committed version (0 before the first handler)."""
        inst = self._ab_rt.instances.get(self._ab_key)
        if inst is not None and inst.store is not None:
            return inst.committed[0]
        if self._ab_rt.reads is not None:
            return self._ab_rt.reads.value(self, "version")
        with self._reading(missing_ok=True) as conn:
            return 0 if conn is None else newest_version(conn)

    def sql(self, query: str, *params: Any, timeout: float | None = OUTSIDE_LIMITS.seconds,
            max_bytes: int | None = OUTSIDE_LIMITS.result_bytes) -> pd.DataFrame:
        """Run a read-only query on the agent's own tables; returns a DataFrame.

        It runs on the event loop, so it has a time budget: *timeout* seconds (``None``: no
        limit), rows fetched included; and its result (strings and blobs by length) is at
        most *max_bytes* (``None``: no cap).

        Raises:
            ReadOnlyError: the query tries to write.
            SQLError: SQLite refused the query, or it went over *timeout* or *max_bytes*.
        """
        import pandas as pd

        reads = self._ab_rt.reads
        if reads is not None:  # (a Ray runtime: the owner runs the query)
            names, rows = reads.sql_rows(self, query, params, timeout, max_bytes)
        else:
            names, rows = sql_rows(self, query, params, timeout, max_bytes)
        return pd.DataFrame.from_records(rows, columns=names)

    def history(
        self,
        limit: int = 50,
        *,
        before: int | None = None,
        method: str | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        failures: bool = True,
    ) -> pd.DataFrame:
        """The agent's versions, newest first, one page at a time.

        Args:
            limit: Rows per page.
            before: Only versions below this one (the next page: ``before=page.version.min()``).
            method: Only versions made by this method.
            since: Only versions that started at or after this time.
            until: Only versions that started before this time.
            failures: Also show failed handlers among the page's versions
                (``outcome="error"``, no version: they changed nothing); they count
                towards *limit*.

        Returns:
            A DataFrame with columns ``agent`` (class), ``name``, ``version``, ``ts``,
            ``method``, ``args``, ``kwargs``, ``source``, ``duration_ms``, ``outcome``,
            ``error``, ``result``, ``state`` (the state after that version), and for
            scheduled runs ``due`` (when it was planned) and ``occurrence``.
        """
        since_f, until_f = _epoch(since), _epoch(until)
        reads = self._ab_rt.reads
        if reads is not None:  # (a Ray runtime: the owner reads the rows)
            records = reads.history_records(self, limit, before, method, since_f, until_f,
                                            failures)
        else:
            records = history_records(self, limit, before, method, since_f, until_f, failures)
        return history_frame(self._ab_key, records)

    def schedules(self) -> pd.DataFrame:
        """The agent's pending schedules and queued work, soonest first."""
        from ..schedule.policy import select
        from ..travel.versions import schedules_frame

        if self._ab_rt.reads is not None:
            return self._ab_rt.reads.frame(self, "schedules")
        with self._reading(missing_ok=True) as conn:
            items = [] if conn is None else select(conn)
        return schedules_frame(items)

    # -- plumbing -----------------------------------------------------------------------
    def _reading(self, missing_ok: bool = False) -> _Reading:
        return _Reading(self, missing_ok)

    # -- workflows (agentbook.workflow) --------------------------------------------------
    def workflow(self, run_id: str) -> Any:
        """The ``ab.WorkflowRun`` of id *run_id* (also one started before a restart).

        Raises:
            UsageError: the agent has no run of that id.
        """
        from ..workflow.run import WorkflowRun

        run = WorkflowRun(self, run_id, self._reading)
        run.status  # noqa: B018  (raises if there is no such run)
        return run

    def workflows(self) -> pd.DataFrame:
        """The agent's workflow runs, oldest first: ``id``, ``method``, ``args``,
        ``status``, ``steps`` (completed), ``created``, ``updated``, ``result``, ``error``."""
        from ..store.workflows import read_runs
        from ..workflow.run import runs_frame

        if self._ab_rt.reads is not None:
            return self._ab_rt.reads.frame(self, "workflows")
        with self._reading(missing_ok=True) as conn:
            found = [] if conn is None else read_runs(conn)
        return runs_frame(found)

    def __repr__(self) -> str:
        return f"<AgentRef {self._ab_key[0]}({self._ab_key[1]!r})>"

    def _repr_html_(self) -> str:
        from ..reprs import ref_html

        return ref_html(self)

    def at(self, version: int) -> VersionView:
        """The agent as it was after *version* (read-only): ``.state``, ``.sql(...)``,
        ``.schedules()``. Negative versions count from the newest (-1 is the newest).
        A fork reaches back into its parent's versions."""
        from ..errors import VersionNotFoundError
        from ..travel.versions import VersionView

        try:
            if self._ab_rt.reads is not None:
                return self._ab_rt.reads.at(self, version)
            with self._reading() as conn:
                return VersionView(self, version, conn)
        except VersionNotFoundError:
            parent = self._parent()
            if parent is not None and isinstance(version, int) and 0 <= version < parent[1]:
                return parent[0].at(version)
            raise

    def diff(self, a: int, b: int | None = None, *, other: AgentRef | None = None,
             internals: bool = False) -> Diff:
        """What changed from version *a* to version *b* (default: the newest).

        With ``other=``, compares this agent at *a* with *other* at *b* (e.g. a fork made
        by :meth:`replay` against its original). Returns a :class:`~agentbook.travel.versions.Diff`:
        ``.state`` is a JSON patch, ``.rows`` a DataFrame of row changes; its repr shows
        the state's changes and the rows added, removed and changed per table, leaving
        agentbook's own bookkeeping tables out unless *internals*.
        """
        from ..travel.versions import Diff, changes_between, json_patch, rows_between

        if other is not None:
            left = self.at(a)
            right = other.at(other.version if b is None else b)
            rows = rows_between(left.connection(), right.connection())
            return Diff(f"{self.name}@{left.version}", f"{other.name}@{right.version}",
                        json_patch(left.state, right.state), rows, internals)
        if self._ab_rt.reads is not None:
            return self._ab_rt.reads.diff(self, a, b, internals)
        with self._reading() as conn:
            a = check_version(conn, a, repr(self))
            b = check_version(conn, -1 if b is None else b, repr(self))
            lo, hi = min(a, b), max(a, b)
            old, new = state_at(conn, a), state_at(conn, b)
            rows = changes_between(conn, lo, hi)
        return Diff(f"{self.name}@{a}", f"{self.name}@{b}",
                    json_patch(jsonvalue.loads(old), jsonvalue.loads(new)), rows, internals)

    def bisect(self, predicate: Callable[[VersionView], Any], *, lo: int | None = None,
               hi: int | None = None) -> Pending[BisectResult]:
        """The first version where *predicate* holds: ``await ref.bisect(lambda v:
        v.state["balance"] < 0)``. *predicate* (sync or async) gets ``ref.at(k)``, so it may
        also query the tables as they were (``v.sql(...)``); *lo* and *hi* bound the search
        (default: all the history reachable). A binary search: about ``log2(n)`` versions
        are looked at, assuming the predicate stays true once it is (if it doesn't, the
        answer is *a* version where it became true). Returns a
        :class:`~agentbook.travel.bisect.BisectResult` (``.version``, ``.row``, ``.diff``
        from the version before, ``.checked``)."""
        from ..travel.bisect import bisect

        if self._ab_rt.reads is not None:
            self._ab_rt.reads.refuse("ref.bisect")

        def row(k: int) -> Any:
            with self._reading() as conn:
                found = history_rows(conn, k, k)
            return found[0] if found else None

        return Pending(f"bisect of {self!r}", lambda: bisect(self, predicate, lo, hi, row))

    def export(self, path: str | os.PathLike, *, overwrite: bool = False) -> ExportInfo:
        """Write this agent, as of its last commit, to one SQLite file at *path*: its class
        name, state, tables, key-value data, schedules and full history (with the hash
        chain). Secrets, pending approvals, messages in flight and the event stream are
        left out. ``rt.import_agent(path)`` brings it into another runtime, where history,
        ``at`` and ``diff`` are the same. Returns what the file holds
        (:class:`~agentbook.store.export.ExportInfo`).

        Raises:
            AgentFileError: *path* exists (pass ``overwrite=True``).
        """
        from ..travel.portable import export_agent
        from ..version import __version__

        if self._ab_rt.reads is not None:
            self._ab_rt.reads.refuse("ref.export")
        return export_agent(self, path, overwrite, __version__)

    def rewind(self, version: int) -> Awaitable[dict]:
        """Put the agent back as it was after *version*: state, its tables, key-value data
        and schedules. Recorded as a new version (so it can be undone); nothing runs again;
        pending approvals requested since are cancelled. Waits its turn in the mailbox."""
        rt = self._ab_rt
        rt.check_open()
        version = check_version_type(version, repr(self))
        env = Envelope.call("_ab_rewind", (version,), source=rt.source, label="rewind")
        return rt.submit(self._ab_key, env)

    def fork(self, name: str, at: int | None = None, *, schedules: bool = False,
             patch: Any = None) -> Pending[AgentRef]:
        """A new agent *name* (same class) holding this agent as it was at version *at*
        (default: now). Schedules are copied only if asked; pending approvals and dead
        letters never. *patch*, a JSON merge patch (RFC 7386: keys merge, ``None`` removes
        one), changes the fork's state: "what if the state had been X at version *at*";
        the fork's first version holds the patched state. Runs when awaited:
        ``fork = await ref.fork("b", at=3, patch={"balance": 0})``."""
        from ..travel.replay import fork

        if self._ab_rt.reads is not None:
            self._ab_rt.reads.refuse("ref.fork")
        return Pending(f"fork({_short(name)}) of {self!r}",
                       lambda: fork(self, name, at, schedules, patch))

    def replay(self, from_version: int, *, on: str | None = None,
               overrides: dict[str, Any] | None = None, live: bool | set[str] = False,
               to_version: int | None = None, patch: Any = None) -> Pending[ReplayResult]:
        """Re-run this agent's recorded inputs from *from_version* on a fork named *on*
        (its state changed first by the JSON merge *patch*, if given).

        Journaled effects (``self.effect``) are served from the record unless *overrides*
        maps their key to a new function or value, or *live* names keys to call for real.
        Calls to other agents are always served (or overridden), never made again.
        Runs when awaited; returns a :class:`~agentbook.travel.replay.ReplayResult`
        (``.fork``, ``.frame()``, ``.identical``, ``.diff()``).
        """
        from ..travel.replay import read_recording, replay

        if self._ab_rt.reads is not None:
            self._ab_rt.reads.refuse("ref.replay")

        async def run() -> ReplayResult:
            with self._reading() as conn:
                recording = read_recording(conn, from_version, to_version, repr(self))
            return await replay(self, recording, on=on, overrides=overrides, live=live,
                                patch=patch)

        return Pending(f"replay({_short(from_version)}) of {self!r}", run)

    def prune(self, *, before: int | None = None, keep_last: int | None = None,
              vacuum: bool = False) -> Pending[int]:
        """Forget history older than version *before* (or keep only the last *keep_last*
        versions); time travel then reaches back to *before* and no further. ``vacuum``
        also gives the space back to the disk. Runs when awaited; returns how many
        versions were dropped."""
        from ..travel.prune import prune_op

        if (before is None) == (keep_last is None):
            raise UsageError("pass exactly one of before= or keep_last=")
        if keep_last is not None and keep_last < 1:
            raise UsageError("keep_last must be at least 1")

        async def run() -> int:
            # keep_last counts reachable versions: a fork's, or a pruned agent's, start above 0
            first = (max(self.history_range()[0], self.version - keep_last + 1)
                     if keep_last is not None else before)
            assert first is not None  # (one of them was given)
            rt = self._ab_rt
            rt.check_open()
            env = Envelope.operation("prune", lambda inst: prune_op(inst, first, vacuum),
                                     source=rt.source, args=(first, vacuum))
            return await rt.submit(self._ab_key, env)

        what = f"before={_short(before)}" if keep_last is None else f"keep_last={_short(keep_last)}"
        return Pending(f"prune({what}) of {self!r}", run)

    def widget(self) -> Any:
        """A live inspector: state as a tree, recent events, schedules, pending approvals.
        It updates while the agent works, and costs nothing until it is made."""
        from ..widgets.inspector import inspector_widget

        return inspector_widget(self)

    def timeline(self) -> Any:
        """A widget to scrub through this agent's versions: state, the step's input and
        duration, and buttons to fork or rewind there."""
        from ..widgets.timeline import timeline_widget

        return timeline_widget(self)

    def diff_widget(self, a: int | None = None, b: int | None = None, *,
                    other: AgentRef | None = None, internals: bool = False) -> Any:
        """Two versions side by side: this agent at *a* and at *b* (default: the newest and
        the one before), or with ``other=`` this agent at *a* against *other* at *b*; a fork
        given no versions starts against its parent at the fork point. Shows the state as a
        tree with the changes marked, the rows, key-value data, schedules and workflow runs
        that differ (agentbook's own tables with *internals*), and buttons to move either
        side."""
        from ..widgets.diff import diff_widget

        return diff_widget(self, a, b, other=other, internals=internals)

    def verify(self) -> dict[str, Any]:
        """Check the agent's store: SQLite's integrity check and the history's hash chain.

        Returns ``{"ok": bool, "quick_check": str, "first_bad_version": int | None}``;
        ``quick_check`` is SQLite's message when a damaged page stops the check itself.

        Raises:
            StoreCorruptError: the store was quarantined (the message says where it went).
        """
        from ..store.chain import verify_chain

        if self._ab_rt.reads is not None:  # checked where the store is
            return dict(self._ab_rt.reads.value(self, "verify"))
        bad = None
        with self._reading() as conn:
            check = health.quick_check(conn)
            try:
                bad = verify_chain(conn)
            except apsw.Error as exc:
                if check == "ok":
                    check = f"{type(exc).__name__}: {exc}"
        return {"ok": check == "ok" and bad is None, "quick_check": check,
                "first_bad_version": bad}

    def history_range(self) -> tuple[int, int]:
        """``(first, newest)``: the versions time travel can reach."""
        if self._ab_rt.reads is not None:
            first, newest = self._ab_rt.reads.value(self, "history_range")
            return first, newest
        with self._reading(missing_ok=True) as conn:
            return (0, 0) if conn is None else bounds(conn)

    def _parent(self) -> tuple[AgentRef, int] | None:
        if self._ab_rt.reads is not None:
            found = self._ab_rt.reads.parent(self)
            return None if found is None else (self._ab_rt.get(found[0], found[1]), found[2])
        with self._reading(missing_ok=True) as conn:
            if conn is None:
                return None
            text = meta_value(conn, "parent")
        if text is None:
            return None
        parent = jsonvalue.loads(text)
        return self._ab_rt.get(parent["class"], parent["name"]), parent["version"]

    def failures(self, limit: int = 100) -> pd.DataFrame:
        """Recent handlers of this agent that raised (nothing of them was kept)."""
        import pandas as pd

        if self._ab_rt.reads is not None:
            return self._ab_rt.reads.frame(self, "failures", limit)
        rows = self._ab_rt.catalog.failures(*self._ab_key, limit)
        frame = pd.DataFrame.from_records(
            [(ts, m, json_or_none(a), json_or_none(k), s, d, e, v) for ts, m, a, k, s, d, e, v in rows],
            columns=["ts", "method", "args", "kwargs", "source", "duration_ms", "error",
                     "at_version"],
        )
        frame["ts"] = pd.to_datetime(frame["ts"].astype("float64"), unit="s", utc=True)
        return frame


class Pending(Coroutine[Any, Any, T]):
    """A time-travel operation (``fork``, ``replay``, ``prune``) that runs when awaited.

    In a notebook, a cell that forgets ``await`` used to get a bare coroutine and nothing
    happened, silently. This object says so instead: its repr (what the cell shows) reads
    ``<... not run yet: add await>``, and dropping it un-awaited warns
    (``RuntimeWarning``). It is a real coroutine to ``await``, ``asyncio.gather`` and
    ``asyncio.create_task``; the work itself starts at the first step.
    """

    __slots__ = ("_coro", "_make", "_what")

    def __init__(self, what: str, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._what = what
        self._make: Callable[[], Coroutine[Any, Any, T]] | None = make
        self._coro: Coroutine[Any, Any, T] | None = None

    def _started(self) -> Coroutine[Any, Any, T]:
        if self._coro is None:
            if self._make is None:
                raise RuntimeError(f"{self._what} was closed before it ran")
            self._coro, self._make = self._make(), None
        return self._coro

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        coro = self._started()
        if val is None and tb is None:
            return coro.throw(typ)
        return coro.throw(typ, val, tb)  # (the old three-argument form, as asked)

    def close(self) -> None:
        self._make = None  # closed on purpose: nothing to warn about
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._started().__await__()

    def __repr__(self) -> str:
        if self._coro is None and self._make is not None:
            return f"<{self._what}: not run yet: add await>"
        return f"<{self._what}>"

    def __del__(self) -> None:
        if self._coro is None and self._make is not None:
            warnings.warn(f"{self._what} was never awaited, so it did nothing; put await "
                          "before the call", RuntimeWarning, stacklevel=1)


class _Reading:
    """Context manager giving a read-only connection to the agent's last commit."""

    __slots__ = ("close", "conn", "missing_ok", "ref")

    def __init__(self, ref: AgentRef, missing_ok: bool) -> None:
        self.ref, self.missing_ok = ref, missing_ok
        self.conn: Any = None
        self.close = False

    def __enter__(self) -> Any:
        rt = self.ref._ab_rt
        rt.check_open()
        if rt.reads is not None:  # no store file here: the reads above ask the owner
            rt.reads.refuse("this read")
        key = self.ref._ab_key
        inst = rt.instances.get(key)
        if inst is not None and inst.store is not None and not inst.fresh:
            self.conn = inst.store.reader()
            return self.conn
        path = rt.path_of(key)
        try:
            missing = health.check_file(path)
        except StoreCorruptError as exc:
            raise StoreCorruptError(f"{exc}; its next message moves it to quarantine "
                                    "(agentbook doctor --check-stores)") from None
        if missing:
            held = rt.catalog.quarantined(*key)
            if held is not None:
                raise health.refused(key, held) from None
            if self.missing_ok:
                return None
            raise AgentNotFoundError(
                f"{key[0]}({key[1]!r}) has no store yet: it is created by its first message"
            ) from None
        self.conn = open_reader(path)
        # another process's writer may hold the file a moment (closing it checkpoints):
        # wait for it like the writers do, instead of failing the read
        self.conn.set_busy_timeout(5_000)
        self.close = True
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.close and self.conn is not None:
            self.conn.close()
        if exc_type is not None and issubclass(exc_type, apsw.Error):  # a typed error instead
            from ..store import translate_error

            raise translate_error(exc, self.ref._ab_rt.path_of(self.ref._ab_key),
                                  writing=False) from None


class _BoundCall:
    """``ref.method``: calling it sends the message."""

    __slots__ = ("method", "ref")

    def __init__(self, ref: AgentRef, method: str) -> None:
        self.ref, self.method = ref, method

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.ref.call(self.method, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<method {self.method} of {self.ref!r}>"


class _SyncProxy:
    """``ref.sync.method(...)``: the blocking form of ``await ref.method(...)``."""

    __slots__ = ("ref",)

    def __init__(self, ref: AgentRef) -> None:
        self.ref = ref

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        from ..sync import run

        return run(self.ref.call(method, *args, **kwargs))

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)


def _short(value: Any) -> str:
    """A short repr of an argument, for a message (even a huge number has one)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _epoch(value: float | datetime | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def sql_rows(ref: AgentRef, query: str, params: tuple, timeout: float | None,
             max_bytes: int | None) -> tuple[list[str], list[tuple]]:
    """``ref.sql(query, *params)``'s column names and rows (what a Ray host sends)."""
    with _Reading(ref, missing_ok=False) as conn:
        return query_reader(conn, query, sql_params(params),  # type: ignore[arg-type]
                            limits=outside_limits(timeout, max_bytes))


def history_records(ref: AgentRef, limit: int, before: int | None, method: str | None,
                    since: float | None, until: float | None, failures: bool) -> list[tuple]:
    """The rows of ``ref.history(...)`` (failed handlers among them), newest first, in the
    order of :data:`~agentbook.store.history.COLUMNS`, JSON columns still text: what a Ray
    host sends the driver, which makes the DataFrame (:func:`history_frame`)."""
    with _Reading(ref, missing_ok=True) as conn:
        rows = [] if conn is None else read_history(
            conn, limit=limit, before=before, method=method, since=since, until=until
        )
    records: list[tuple] = [
        (r.version, r.ts, r.method, r.args, r.kwargs, r.source, r.duration_ms, r.outcome,
         r.error, r.result, r.state, r.due, r.occurrence)
        for r in rows
    ]
    if failures:
        # A failure after version `at` sits between `at` and `at + 1`. The page holds the
        # newest `limit` rows of versions and failures together (so exactly `limit` when
        # there are that many): failures newer than its oldest version, and below
        # `before`; a failure at the page's edge may show again atop the next page.
        low = rows[-1].version if len(rows) == limit else -1
        order = {id(r): r[0] for r in records}
        for ts, m, a, k, src, d, e, at in ref._ab_rt.catalog.failures(*ref._ab_key, limit):
            if at is not None and (low <= at and (before is None or at < before)
                    and (method is None or m == method)
                    and (since is None or ts >= since)
                    and (until is None or ts < until)):
                row = (None, ts, m, a, k, src, d, "error", e, None, None, None, None)
                order[id(row)] = at + 0.5  # it happened after version `at`, before the next
                records.append(row)
        records.sort(key=lambda r: order[id(r)], reverse=True)
        del records[limit:]
    return records


def history_frame(key: tuple[str, str], records: list[tuple]) -> pd.DataFrame:
    """``ref.history()``'s DataFrame from :func:`history_records`' rows."""
    import pandas as pd

    records = [(v, ts, m, json_or_none(a), json_or_none(k), src, d, o, e, json_or_none(res),
                json_or_none(st), due, occ)
               for v, ts, m, a, k, src, d, o, e, res, st, due, occ in records]
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    result = COLUMNS.index("result")  # (as objects: a result may be any JSON value)
    frame["result"] = pd.Series([r[result] for r in records], dtype=object, index=frame.index)
    frame.insert(0, "name", key[1])
    frame.insert(0, "agent", key[0])
    frame["version"] = frame["version"].astype("Int64")
    frame["ts"] = pd.to_datetime(frame["ts"].astype("float64"), unit="s", utc=True)
    frame["due"] = pd.to_datetime(frame["due"].astype("float64"), unit="s", utc=True)
    return frame


def json_or_none(text: Any) -> Any:
    """A JSON column's value as plain Python (``None`` stays ``None``)."""
    return None if text is None else json.loads(text)
