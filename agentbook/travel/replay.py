"""Branching time: rewind in place, fork a new agent at any version, replay recorded steps.

* The **effect journal**: ``await self.effect(key, fn, *args)`` calls ``fn`` and records its
  (JSON) result in the version's history. Model calls, tool calls, HTTP, random numbers -
  anything that would not come out the same twice - go through it.
* **Fork**: a new agent (same class) holding the parent's tables, key-value data and state
  as of one version; schedules only if asked; pending approvals and dead letters never.
  Its history starts with a row at that same version linking the parent, so its later
  version numbers line up with the parent's.
* **Replay**: fork just before a version, then run the parent's recorded inputs again, in
  order, on the fork. Journaled effects are served from the record (so nothing outside is
  called again) unless ``overrides`` or ``live`` say otherwise - e.g. another model from
  step 5 on. With nothing overridden, replay must reproduce the recorded states exactly:
  the determinism check that keeps time travel honest. While a step replays,
  ``self.now()`` is the time that step originally ran.
* **Calls to other agents** awaited from a handler are effects too (key
  ``agent:<Class>/<name>.<method>``, see :func:`journal_call`): a replay serves their recorded
  results and never calls the other agent again, even with ``live=True`` (SPEC §2.10:
  replays, forks and what-ifs change no agent but the fork); ``overrides`` may replace them.
  Messages sent with ``send()`` are dropped while replaying.
* An effect that **raised** is journaled as its error (``{"_ab_error": {...}}``), and the
  replay raises the same type with the same arguments, so a handler that caught it takes
  the same path again.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import apsw

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import OwnedElsewhereError, ReplayError, UsageError
from ..store import AgentStore, lease, open_reader
from ..store import schedules as stored_schedules
from ..store import workflows as workflow_rows
from ..store.changesets import copy_into, materialize
from ..store.durable import sync_path
from ..store.history import (
    HistoryRow,
    check_version,
    history_rows,
    newest_version,
    result_json,
    state_at,
)
from .versions import merge_patch

if TYPE_CHECKING:
    import pandas as pd

    from ..core.ref import AgentRef

__all__ = ["AGENT_CALL", "Recording", "ReplayResult", "ReplayStep", "StepOutcome", "agent_call_key",
           "fork", "journal_call", "read_recording", "replay", "wake_for_workflows"]

#: The prefix of the journal keys of calls to other agents: never called live in a replay.
AGENT_CALL = "agent:"
#: The key of a journaled error (an effect that raised): ``{"_ab_error": {...}}``.
_ERROR = "_ab_error"

#: History labels of internal versions that replay does not re-run.
_INTERNAL = frozenset({"on_start", "rewind", "fork", "reject_approval", "expire_approval",
                       "retry_dead_letter", "drop_dead_letter", "on_connect", "on_message",
                       "on_close", "on_request"})

#: History labels of workflow turns, and the handler a replay runs them with.
_WORKFLOW_TURNS = {"workflow_resume": "_ab_workflow_resume"}


@dataclass
class ReplayStep:
    """What a replayed handler needs: the recorded journal, its time, the options."""

    version: int
    ts: float
    journal: list
    overrides: dict[str, Any]
    live: bool | frozenset
    occurrence: Any = None
    used: dict[str, int] = field(default_factory=dict)

    def serve(self, key: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """``(True, value)`` to use instead of calling *fn*, or ``(False, None)`` to call it."""
        if key in self.overrides:
            override = self.overrides[key]
            if hasattr(override, "complete"):  # a Model: "what if another model answered?"
                return True, override.complete(*args, **kwargs)
            return True, override(*args, **kwargs) if callable(override) else override
        if not key.startswith(AGENT_CALL) and (
                self.live is True or (self.live and key in self.live)):
            return False, None
        index = self.used.get(key, 0)
        matches = [value for k, value in self.journal if k == key]
        if index >= len(matches):
            if key.startswith(AGENT_CALL):
                raise ReplayError(
                    f"version {self.version} called another agent ({key!r}), which the original "
                    "run did not do; a replay never calls other agents: pass "
                    f"overrides={{{key!r}: ...}} to answer the call")
            raise ReplayError(
                f"version {self.version} called effect {key!r}, which the original run did not "
                f"journal; pass live={{{key!r}}} to call it for real, or overrides={{{key!r}: ...}}")
        self.used[key] = index + 1
        return True, matches[index]


async def run_effect(ctx: Any, key: str, fn: Callable[..., Any], args: tuple,
                     kwargs: dict) -> Any:
    """Serve or call an effect inside a handler and journal its result (or its error)."""
    if not isinstance(key, str) or not key:
        raise UsageError("an effect needs a non-empty string key, like 'model' or 'http:weather'")
    if key.startswith(AGENT_CALL):
        raise UsageError(f"effect keys starting with {AGENT_CALL!r} are the journal's record of "
                         "calls to other agents; choose another key")
    served = False
    value: Any = None
    if ctx.replay is not None:
        served, value = ctx.replay.serve(key, fn, args, kwargs)
    try:
        if served:
            if inspect.isawaitable(value):
                value = await value
            if _is_error(value):
                raise _rebuild_error(value)
        else:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
    except Exception as exc:
        if not isinstance(exc, ReplayError):
            ctx.effects.append([key, _error_record(exc)])
        raise
    if hasattr(value, "to_json"):
        value = value.to_json()
    value = jsonvalue.freeze(value, f"effect {key!r}")
    ctx.effects.append([key, value])
    return value


def agent_call_key(class_name: str, name: str, method: str) -> str:
    """The journal key of a call to agent ``class_name(name)``'s *method*."""
    return f"{AGENT_CALL}{class_name}/{name}.{method}"


def journal_call(ctx: Any, key: str, submit: Callable[[], Awaitable[Any]], args: tuple,
                 kwargs: dict) -> Awaitable[Any]:
    """A call from a running handler to another agent, as one of the handler's effects.

    The journal entry is taken at the call, not at its answer, so several calls in flight
    (``asyncio.gather``) keep the order in which they were made. Live, *submit* queues the
    message at once (as an un-journaled call would) and the answer - or the error - fills
    the entry when it arrives. Replaying, the recorded answer is served (a copy the handler
    may change, as it could the live one) and the other agent is never called.

    Returns:
        A future of the answer; it is sent (or served) whether or not it is awaited.
    """
    entry: list = [key, None]
    ctx.effects.append(entry)
    if ctx.replay is None:
        answer = submit()
        asyncio.ensure_future(answer).add_done_callback(lambda done: _fill(entry, done))
        return answer
    _served, value = ctx.replay.serve(key, _never_live, args, kwargs)  # (always served)
    loop = asyncio.get_running_loop()
    if inspect.isawaitable(value):  # an override that is a coroutine function
        task = asyncio.ensure_future(value)
        task.add_done_callback(lambda done: _fill(entry, done))
        return task
    out = loop.create_future()
    if _is_error(value):
        entry[1] = value
        out.set_exception(_rebuild_error(value))
    else:
        if hasattr(value, "to_json"):
            value = value.to_json()
        entry[1] = jsonvalue.freeze(value, f"effect {key!r}")
        out.set_result(jsonvalue.thaw(entry[1]))
    return out


def _never_live(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a replay never calls another agent")  # (serve never calls it)


def _fill(entry: list, done: asyncio.Future) -> None:
    """Journal a call's answer (or error) in its entry, as soon as it arrives."""
    if done.cancelled():
        entry[1] = _error_record(asyncio.CancelledError())
        return
    error = done.exception()  # (retrieved: an unawaited failed call is journaled, not logged)
    if error is not None:
        entry[1] = _error_record(error)
        return
    value = done.result()
    if hasattr(value, "to_json"):
        value = value.to_json()
    try:
        entry[1] = jsonvalue.freeze(value, f"effect {entry[0]!r}")
    except (TypeError, ValueError):
        entry[1] = {_ERROR: {"module": ReplayError.__module__, "type": ReplayError.__qualname__,
                             "args": [f"the answer of {entry[0]} was not JSON, so a replay "
                                      f"can't serve it; pass overrides={{{entry[0]!r}: ...}}"]}}


def _error_record(exc: BaseException) -> dict:
    """A journal value standing for *exc*: its class (module and qualified name) and its
    arguments (when they are JSON; else its message)."""
    try:
        args = jsonvalue.freeze(list(exc.args), "error")
    except (TypeError, ValueError):
        args = [str(exc)]
    return {_ERROR: {"module": type(exc).__module__, "type": type(exc).__qualname__,
                     "args": args}}


def _is_error(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and _ERROR in value


def _rebuild_error(value: Any) -> BaseException:
    """The error a journal entry records: the same class with the same arguments when that
    class is loaded in this process (nothing is imported for it), else a ``RuntimeError``
    naming it."""
    info = value[_ERROR]
    args = list(jsonvalue.thaw(info.get("args") or []))
    found: Any = sys.modules.get(info.get("module", ""))
    for part in str(info.get("type", "")).split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            return found(*args)
        except Exception:
            pass
    return RuntimeError(f"{info.get('type')}: {' '.join(str(a) for a in args)} (recorded; its "
                        "class could not be rebuilt here)")


# -- fork -------------------------------------------------------------------------------
async def fork(ref: AgentRef, name: str, at: int | None = None, schedules: bool = False,
               patch: Any = None) -> AgentRef:
    """A new agent *name* holding *ref* as it was at version *at* (default: now), its state
    changed by the JSON merge *patch* (RFC 7386) if one is given: the fork's first version
    then holds the patched state, and its history row the patch (``kwargs["patch"]``)."""
    rt = ref.runtime
    rt.check_open()
    if patch is not None:
        patch = jsonvalue.freeze(patch, "patch")  # (not JSON: an error naming the path, first)
    cls_name = ref.class_name
    target = rt.get(cls_name, name)
    if target._ab_key in rt.instances:
        raise UsageError(f"an agent {cls_name}({name!r}) already exists; fork under another name")
    # the new agent's lease while its store is written (one owner per agent across
    # processes): another process making or running it now refuses the fork
    held = None
    if not rt.memory:
        try:
            held = lease.take(rt.catalog.lock_path(cls_name, name), f"{cls_name}({name!r})")
        except OwnedElsewhereError:
            if os.path.exists(rt.path_of(target._ab_key)):
                raise UsageError(f"an agent {cls_name}({name!r}) already exists; fork under "
                                 "another name") from None
            raise
    try:
        return await _fork(ref, target, name, at, schedules, patch)
    finally:
        if held is not None:  # (a fork that made no store leaves no lock file either)
            held.release(remove=not os.path.exists(rt.path_of(target._ab_key)))


async def _fork(ref: AgentRef, target: AgentRef, name: str, at: int | None,
                schedules: bool, patch: Any) -> AgentRef:
    """:func:`fork`, under the new agent's lease."""
    rt = ref.runtime
    cls_name = ref.class_name
    new_path = rt.path_of(target._ab_key)
    if os.path.exists(new_path):
        raise UsageError(f"an agent {cls_name}({name!r}) already exists; fork under another name")
    path = rt.path_of(ref._ab_key)
    if not os.path.exists(path):
        raise UsageError(f"{ref!r} has no history yet to fork")
    reader = open_reader(path)
    try:
        version = check_version(reader, newest_version(reader) if at is None else at, repr(ref))
        state_json = state_at(reader, version)
    finally:
        reader.close()
    if state_json is None:  # a store whose first message never committed
        raise UsageError(f"{ref!r} has no history yet to fork")
    if patch is not None:
        state_json = jsonvalue.dumps(jsonvalue.freeze(
            merge_patch(jsonvalue.loads(state_json), patch), "the patched state"))
    mem = materialize(path, version, repr(ref))
    try:
        # schedules only if asked; dead letters never
        stored_schedules.clear(mem, schedules=not schedules, dead_letters=True)
        # Listed first (the catalog is a superset of the stores, as for a new agent), then
        # written whole under a temporary name and published with one link: a fork killed
        # half-way leaves no store under its name, so forking again just works.
        rt.catalog.add(cls_name, name, os.path.relpath(new_path, rt.catalog.root), rt.clock.now(),
                       f"{cls_name}/{ref.name}@{version}")
        try:
            _write_fork(rt, mem, new_path, target._ab_key, ref._ab_key, version, state_json,
                        patch)
        except BaseException:
            if not os.path.exists(new_path):  # (a listing without a store means nothing)
                rt.catalog.remove(cls_name, name)
            raise
        wake_for_workflows(rt, target._ab_key, mem)
    finally:
        mem.close()
    if rt.events.active:
        rt.emit_event("timetravel:fork", ref._ab_key, {"fork": name, "at": version,
                                                       **({} if patch is None else {"patch": patch})})
    return target


def wake_for_workflows(rt: Any, key: tuple[str, str], conn: apsw.Connection) -> None:
    """If a new copy of an agent (a fork, an import; its tables on *conn*) holds workflow
    runs that have not ended, wake it now, so they go on there (their waits are armed
    again: a copy has neither their schedules nor their approvals)."""
    if not workflow_rows.any_unfinished(conn):
        return
    now = rt.clock.now()
    rt.timers.index_before_commit(key, now)
    rt.timers.set(key, now)


def _write_fork(rt: Any, mem: apsw.Connection, path: str, key: tuple[str, str],
                parent: tuple[str, str], version: int, state_json: str,
                patch: Any = None) -> None:
    """Write the fork's store under a temporary name (no ``.db``: never taken for an agent
    by ``Catalog.rebuild``), then publish it under *path* with one hard link, which
    fails rather than replace a store that appeared meanwhile."""
    _clear_leftovers(path)
    tmp = f"{path}.fork-{secrets.token_hex(6)}.tmp"
    store = AgentStore(tmp, rt.durability)
    try:
        store.begin()
        copy_into(mem, store.conn)
        now = rt.clock.now()
        parent_ref = jsonvalue.dumps({"class": parent[0], "name": parent[1], "version": version})
        store.set_meta({"class": key[0], "name": key[1], "created": repr(now),
                        "initial_state": state_json, "parent": parent_ref,
                        "first_version": str(version)})
        # The fork's first version *is* the parent's version: fork@k == parent@k (but for
        # a patched state), and the numbers of later versions line up with the parent's.
        store.append_history(HistoryRow(
            version=version, ts=now, method="fork", args=jsonvalue.dumps([parent[1], version]),
            kwargs=None if patch is None else jsonvalue.dumps({"patch": patch}),
            source=f"fork:{parent[0]}/{parent[1]}@{version}", duration_ms=0.0,
            outcome="ok", state=state_json, schema=store.user_schema(),
        ))
        store.write_state(version, state_json)
        store.commit()
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the one file
        store.close()
        if rt.durability == "full":
            sync_path(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise UsageError(f"an agent {key[0]}({key[1]!r}) already exists; fork under another "
                             "name") from None
        except OSError:  # no hard links here: a rename (the check above ran just before)
            if os.path.exists(path):
                raise UsageError(f"an agent {key[0]}({key[1]!r}) already exists; fork under "
                                 "another name") from None
            os.replace(tmp, path)
        if rt.durability == "full":
            sync_path(os.path.dirname(path))
    except BaseException:
        try:
            store.rollback()
        except Exception:
            pass
        store.close()
        raise
    finally:
        for suffix in ("", "-wal", "-shm", ".tmp"):
            try:
                os.remove(tmp + suffix)
            except FileNotFoundError:
                pass


def _clear_leftovers(path: str) -> None:
    """Remove what forks to *path* that were killed half-way left (older than a minute,
    so a fork running right now in another process keeps its file)."""
    folder, stem = os.path.split(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    cutoff = time.time() - 60
    for entry in names:
        if ".fork-" in entry and stem + ".fork-" in entry:
            try:
                if os.path.getmtime(os.path.join(folder, entry)) < cutoff:
                    os.remove(os.path.join(folder, entry))
            except OSError:
                pass


# -- replay -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Recording:
    """What a replay runs again, read from the original in one snapshot before the fork:
    versions ``from_version .. last``, oldest first, each with the state it left."""

    from_version: int
    rows: list[HistoryRow]


def read_recording(conn: apsw.Connection, from_version: int, to_version: int | None,
                   who: str) -> Recording:
    """The recorded versions from *from_version* to *to_version* (default: the newest),
    read on *conn*, a read-only connection to the original's last commit."""
    from_version = check_version(conn, from_version, who)
    last = check_version(conn, -1 if to_version is None else to_version, who)
    return Recording(from_version, history_rows(conn, from_version, last))


class StepOutcome(NamedTuple):
    """What became of one original version in a replay."""

    version: int
    method: str
    #: The fork's version it became (``None`` when it was skipped or failed).
    fork_version: int | None
    #: ``ok``, ``skipped``, or ``error: <type>: <message>``.
    outcome: str
    same_state: bool | None
    same_result: bool | None


@dataclass
class ReplayResult:
    """The outcome of :func:`replay`: the fork and, per replayed step, whether its state
    matched the original's."""

    original: AgentRef
    fork: AgentRef
    from_version: int
    steps: list[StepOutcome] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """One row per original version: method, fork version, outcome, same_state,
        same_result."""
        import pandas as pd

        frame = pd.DataFrame.from_records(self.steps, columns=list(StepOutcome._fields))
        frame["fork_version"] = frame["fork_version"].astype("Int64")
        return frame

    @property
    def identical(self) -> bool:
        """Whether every replayed step ended in the same state, and returned the same
        result, as the original (a chat agent's answers are its results)."""
        return all(step.same_state and step.same_result for step in self.steps
                   if step.outcome == "ok")

    def diff(self) -> Any:
        """The original's head against the fork's head."""
        return self.original.diff(self.original.version, other=self.fork)

    def __repr__(self) -> str:
        same = sum(1 for s in self.steps if s.same_state and s.same_result)
        return (f"<ReplayResult {self.original!r} from {self.from_version} on {self.fork!r}: "
                f"{len(self.steps)} steps, {same} with the same state and result>")

    def _repr_html_(self) -> str:
        return f"<div><b>{self!r}</b></div>" + self.frame().to_html(index=False)


async def replay(ref: AgentRef, recording: Recording, *, on: str | None = None,
                 overrides: dict[str, Any] | None = None,
                 live: bool | set[str] = False, patch: Any = None) -> ReplayResult:
    """Re-run the *recording* of *ref* (see :func:`read_recording`) on a fork named *on*,
    made just before the recording's first version (its state changed by the JSON merge
    *patch*, if given: "what if the state had been X")."""
    rt = ref.runtime
    from_version = recording.from_version
    name = on or f"{ref.name}-replay-{from_version}-{int(time.time() * 1000) % 100000}"
    live_opt: bool | frozenset = live if isinstance(live, bool) else frozenset(live)
    if not isinstance(live_opt, bool) and any(k.startswith(AGENT_CALL) for k in live_opt):
        raise UsageError("a replay never calls other agents (it changes no agent but the fork); "
                         "answer their calls with overrides={'agent:Class/name.method': ...}")
    target = await fork(ref, name, at=from_version - 1, patch=patch)
    result = ReplayResult(ref, target, from_version)
    for row in recording.rows:
        if row.method in _INTERNAL or row.outcome != "ok" \
                or (row.source or "").startswith("approval:"):
            # approved actions ran because a person approved them: a replay never runs one
            result.steps.append(StepOutcome(row.version, row.method, None, "skipped", None, None))
            continue
        step = ReplayStep(row.version, row.ts, list(jsonvalue.loads(row.effects) or []),
                          dict(overrides or {}), live_opt)
        if row.occurrence is not None:
            from ..schedule.policy import Occurrence

            step.occurrence = Occurrence(row.occurrence, row.occurrence.split(":")[0], 1,
                                         cast("float", row.due), "replay")
        args_json = cast("str", row.args)
        method = _WORKFLOW_TURNS.get(row.method, row.method)
        env = Envelope.replayed(method, args_json, row.kwargs, step,
                                source=f"replay:{ref.class_name}/{ref.name}@{row.version}",
                                args=tuple(jsonvalue.loads(args_json)),
                                kwargs=dict(jsonvalue.loads(row.kwargs) or {}))
        try:
            value = await rt.submit(target._ab_key, env)
            fork_state = jsonvalue.dumps(target.state)
            same = fork_state == jsonvalue.dumps(jsonvalue.loads(row.state))
            result.steps.append(StepOutcome(row.version, row.method, target.version, "ok", same,
                                            _same_result(value, row.result)))
        except ReplayError:
            raise
        except Exception as exc:
            result.steps.append(StepOutcome(row.version, row.method, None,
                                            f"error: {type(exc).__name__}: {exc}", False, False))
    if rt.events.active:
        rt.emit_event("timetravel:replay", ref._ab_key, {"fork": target.name, "from": from_version,
                                                    "steps": len(result.steps)})
    return result


def _same_result(value: Any, recorded: str | None) -> bool:
    """Whether a replayed step's result equals the recorded one, written the same way
    (a result that isn't JSON is recorded as nothing, on both sides)."""
    mine = result_json(value)
    if mine is None or recorded is None:
        return mine == recorded
    return jsonvalue.loads(mine) == jsonvalue.loads(recorded)
