"""Running one handler inside the mailbox's transaction.

:func:`run_message` runs a message in its own savepoint and appends its version row;
:func:`run_start` does the same for ``on_start``. Both drive the handler's coroutine by
hand for its first step, so a handler that never actually suspends finishes without a
trip through the event loop, and one that does is noticed (the mailbox then commits
sooner, so quick calls don't wait behind slow ones).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
import types
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..approve import inbox as approvals
from ..envelope import Envelope
from ..errors import AgentbookError, AgentStartError, IncompatibleStateError
from ..events import IN_HANDLER
from ..schedule import firing
from ..store import outbox
from ..store.history import result_json

if TYPE_CHECKING:
    from ..schedule.policy import Occurrence
    from ..store import AgentStore
    from .agent import Agent
    from .mailbox import Instance

__all__ = ["QUIET", "HandlerContext", "Outcome", "current_chain", "current_context",
           "enter_batch", "leave_batch", "record_failure", "run_message", "run_start",
           "runs_start", "start_message"]

#: Keys of the agents whose handlers are awaiting, up the current call chain.
current_chain: contextvars.ContextVar[tuple] = contextvars.ContextVar("ab_chain", default=())
#: The context of the handler running in this task (``None`` outside handlers): a call to
#: another agent made from it is one of its journaled effects (see ``AgentRef.call``).
current_context: contextvars.ContextVar[HandlerContext | None] = contextvars.ContextVar(
    "ab_context", default=None)

_FATAL = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)
#: The outbox tag in ``Envelope.extras`` (``agentbook.core.outputgate.OUTBOX``).
_OUTBOX = "_ab_outbox"
#: The extras of a message that has none (read-only: shared by every such handler).
_NO_EXTRAS = jsonvalue.FrozenDict()


#: The lists of a :class:`HandlerContext` made on first use.
_LISTS = frozenset({"approvals", "effects", "events", "outbox", "segments"})


class HandlerContext:
    """What one running handler has written or wants to send, until its commit.

    Its five lists (``outbox``, ``events``, ``approvals``, ``effects``, ``segments``) are
    made when first looked at (:meth:`__getattr__`), and :attr:`lists` tells whether any
    was: most handlers of a burst use none, and five lists per message kept until the
    commit were a good part of what the garbage collector looked at (issue 20). Code on
    the per-message path checks ``ctx.lists`` before reading them; anywhere else they read
    and write as plain attributes."""

    __slots__ = ("approvals", "capturing", "destroy", "due_after", "effects", "events", "extras",
                 "kept", "lists", "occurrence", "outbox", "replay",
                 "sched_dirty", "schema_before", "segments", "session", "source",
                 "state_after", "state_changed", "state_cut", "suspended", "written")

    #: Changesets already taken (a schema change such as DROP TABLE ends a session).
    segments: list[bytes]
    #: Messages to other agents, sent after the commit.
    outbox: list[tuple[Any, Envelope]]
    events: list[tuple[str, Any]]
    #: Approval requests and decisions, announced after the commit.
    approvals: list[tuple[str, Any]]
    #: The effect journal of this handler: ``[[key, result], ...]``.
    effects: list[list]

    def __init__(self, source: str) -> None:
        self.source = source
        #: Whether any of the five lists was made (else all are empty).
        self.lists = False
        self.session: Any = None
        #: A changeset written by hand (:meth:`add_changes`), ahead of ``segments``.
        self.written: bytes | None = None
        #: Whether row changes are being recorded (since the handler's first SQL write).
        self.capturing = False
        #: SQLite's schema cookie before the handler's first write that may change the
        #: schema (``None``: none did - agentbook's own row writes never do).
        self.schema_before: int | None = None
        self.state_changed = False
        #: The state this handler left (set when it changed the state).
        self.state_after: Any = None
        self.suspended = False
        self.destroy = False
        self.sched_dirty = False
        #: ``(due,)``: the agent's earliest pending due time right after this handler's
        #: last schedule write, read by that write itself (a firing's row, written by
        #: hand: see ``schedule.firing``); ``None``: not known, the mailbox looks it up.
        self.due_after: tuple[float | None] | None = None
        self.occurrence: Occurrence | None = None
        #: While replaying: the journal to serve, and the options (see travel.replay).
        self.replay: Any = None
        #: The envelope's per-call extras (a stream queue, client tools).
        self.extras: dict[str, Any] = _NO_EXTRAS
        #: Events and approvals already on record with an earlier version of this handler
        #: (see :func:`cut_version`): ``(len(events), len(approvals))`` then.
        self.kept = (0, 0)
        #: Whether an earlier version of this handler changed the state.
        self.state_cut = False

    def __getattr__(self, name: str) -> list:
        """One of the five lists, looked at for the first time: made empty now."""
        if name not in _LISTS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        made: list = []
        setattr(self, name, made)
        self.lists = True
        return made

    def capture(self, store: AgentStore, schema: bool = True) -> None:
        """Start recording row changes (once per handler, at its first SQL write).

        *schema*: the write may change the schema (the agent's own SQL, a rewind), so the
        schema cookie is read first, to tell at the end whether the schema changed. Writes
        of agentbook's own rows (a schedule row a firing advances) pass ``False``: that
        saves two statements per firing (issue 20)."""
        if schema and self.schema_before is None:
            self.schema_before = store.schema_version()
        if self.session is None:
            self.session = store.start_capture()
            self.capturing = True

    def add_changes(self, changes: bytes | None) -> None:
        """Record row changes made without a session (a firing's schedule row, its
        changeset written by hand: see ``schedule.firing``), in a handler that captured
        nothing before. (Kept apart from ``segments``: a firing then makes none of the
        five lists.)"""
        self.capturing = True
        if changes:
            if self.written is None and self.session is None and not self.lists:
                self.written = changes
            else:
                self.segments.append(changes)

    def cut(self, store: AgentStore) -> None:
        """Take the changes so far before a statement that drops or alters a table (a
        session can't outlive a schema change of a table it watches)."""
        if self.session is not None:
            changes = store.finish_capture(self.session)
            self.session = None
            if changes:
                self.segments.append(changes)

    def finish(self, store: AgentStore) -> tuple[bytes | None, str | None]:
        """The changeset and (if the schema changed) the new schema; ends capture."""
        if not self.capturing:
            return None, None
        self.cut(store)
        written, self.written = self.written, None
        if self.lists:
            parts = self.segments
            if written is not None:
                parts.insert(0, written)
            self.segments = []
        else:
            parts = [] if written is None else [written]
        changes = None
        if len(parts) == 1:
            changes = parts[0]
        elif parts:
            import apsw

            try:
                builder = apsw.ChangesetBuilder()
                for part in parts:
                    builder.add(part)
                changes = builder.output() or None
            except apsw.Error:  # a table changed shape in between: keep the pieces apart
                from ..store.changesets import frame_segments

                changes = frame_segments(parts)
        before, self.schema_before, self.capturing = self.schema_before, None, False
        schema = (store.user_schema() if before is not None and store.schema_version() != before
                  else None)
        return changes, schema

    def drop(self) -> None:
        """Forget the capture of a handler that failed."""
        self.written = None
        if self.session is not None:
            self.session.close()
            self.session = None


class Outcome:
    """What happened to one message, kept until the batch commits."""

    __slots__ = ("ctx", "duration", "env", "ok", "recorded", "ts", "value", "version")

    def __init__(self, env: Envelope, ok: bool, value: Any, ctx: HandlerContext, ts: float,
                 duration: float, version: int, recorded: Any = None) -> None:
        self.env, self.ok, self.value, self.ctx = env, ok, value, ctx
        self.ts, self.duration, self.version = ts, duration, version
        #: For scheduled messages that failed: ("retry"|"dead", dead letter row or None).
        self.recorded = recorded


def _held_once() -> int:
    """What ``sys.getrefcount`` says of an object only one local variable holds (taken
    once: see :func:`start_message`'s reuse of a quiet message's context), or 0 where the
    count does not tell one holder from two (another Python: then no context is reused)."""
    alone = HandlerContext("")
    once = sys.getrefcount(alone)
    other = [alone]
    twice = sys.getrefcount(alone)
    del other
    return once if sys.implementation.name == "cpython" and twice == once + 1 else 0


_HELD_ONCE = _held_once()

#: The outcome of a message that worked and leaves nothing after the commit
#: (:meth:`~agentbook.core.outputgate.OutputGate.quiet`), not awaited mid-way and not
#: scheduling: one shared object instead of one per message (issue 20). Read-only.
QUIET = Outcome(Envelope("", (), _NO_EXTRAS, "[]", None, "quiet"), True, None,
                HandlerContext("quiet"), 0.0, 0.0, 0)


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Any:
    """Go on awaiting *coro* after its first step was driven by hand."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # forwarded into the handler
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _invoke(result: Any, ctx: HandlerContext, cls: type, method: str) -> Any:
    if type(result) is types.CoroutineType:
        try:
            yielded = result.send(None)
        except StopIteration as stop:
            return stop.value
        ctx.suspended = True
        cls.__dict__["_ab_suspends"].add(method)
        return await _resume(result, yielded)
    if inspect.isawaitable(result):
        ctx.suspended = True
        return await result
    return result


def runs_start(cls: type[Agent]) -> bool:
    """Whether making an agent of *cls* runs an ``on_start`` of its own (which may write a
    version in the batch's transaction): :func:`run_start` runs none for a class that keeps
    ``Agent.on_start``, so the first message after a wake may still run lone."""
    from .agent import Agent

    return cls.on_start is not Agent.on_start


async def run_start(inst: Instance, cls: type[Agent]) -> HandlerContext:
    """Make the agent object and run ``on_start``; its writes (if any) become a version."""
    rt = inst.runtime
    agent = cls.__new__(cls)
    agent._ab_instance = inst
    cls.__init__(agent)
    inst.agent = agent
    inst.cls = cls
    store = inst.store
    assert store is not None
    ctx = HandlerContext("start")
    if not runs_start(cls):  # nothing to run, nothing to record
        inst.started = cls
        return ctx
    ctx.capture(store)
    store.savepoint()
    inst.ctx = ctx
    token = current_chain.set((inst.key,))  # (its sends go through its outbox, as a handler's)
    kept = rt.events.enter_handler()
    ts = rt.clock.now()
    t0 = time.perf_counter()
    before = inst.state_json
    try:
        await _invoke(agent.on_start(), ctx, cls, "on_start")
        changes, schema = ctx.finish(store)
        if ctx.state_changed:
            inst.state_json = jsonvalue.dumps(inst.state)
        state_changed = inst.state_json != before
        if changes or schema or state_changed:
            _append_version(inst, store, ctx, ts, "on_start", "[]", None,
                            (time.perf_counter() - t0) * 1000, "ok", changes=changes,
                            schema=schema, state=inst.state_json if state_changed else None)
            if rt.events.recording:  # (a wake alone writes nothing: agent:start is live only)
                _keep_events(inst, store, ctx, None)
        store.release()
    except BaseException as exc:
        ctx.drop()
        store.rollback_message()
        inst.agent = None
        if isinstance(exc, _FATAL):
            raise
        error = AgentStartError(
            f"{cls.__name__}({inst.key[1]!r}).on_start raised {type(exc).__name__}: {exc}; "
            "fix on_start and send the message again"
        )
        raise error from exc
    finally:
        rt.events.leave_handler(kept)
        current_chain.reset(token)
        inst.ctx = None
    inst.started = cls
    return ctx


def enter_batch(inst: Instance) -> tuple:
    """Set what the handlers of one batch share, once for the batch: the call chain of a
    message nobody awaits (``inst.alone``) and the events-on-record flag. Pass what it
    returns to :func:`leave_batch` when the batch's handlers are over.

    :func:`start_message` runs inside it: a message from another agent's handler sets its
    own chain over it, and only the handler context is set per message. Two context
    variables set and reset per message were about a tenth of a burst message's Python
    (issue 20)."""
    return (current_chain.set(inst.alone),
            IN_HANDLER.set(True) if inst.runtime.events.recording else None)


def leave_batch(tokens: tuple) -> None:
    """The batch's handlers are over: undo :func:`enter_batch`."""
    if tokens[1] is not None:
        IN_HANDLER.reset(tokens[1])
    current_chain.reset(tokens[0])


async def run_message(inst: Instance, env: Envelope, cls: type[Agent], lone: bool) -> Outcome:
    """Run one message inside its savepoint (or, *lone*, as the whole transaction), inside
    :func:`enter_batch`."""
    outcome = start_message(inst, env, cls, lone)
    return outcome if isinstance(outcome, Outcome) else await outcome


def start_message(inst: Instance, env: Envelope, cls: type[Agent],
                  lone: bool) -> Outcome | Coroutine[Any, Any, Outcome]:
    """Run one message inside its savepoint (or, *lone*, as the whole transaction), inside
    :func:`enter_batch`: its :class:`Outcome` when the handler finished without suspending
    (most do: no coroutine of agentbook's own is made for it), else a coroutine that goes
    on awaiting it and returns the outcome. A message that worked and leaves nothing after
    the commit gives :data:`QUIET`.

    The common message - a call that is not scheduled, approved or replayed - has a
    lazy savepoint (opened only if it writes SQL) and its history row built as a plain
    tuple."""
    rt = inst.runtime
    store = inst.store
    assert store is not None and inst.agent is not None
    ctx = inst.spare
    if ctx is None:
        ctx = HandlerContext(env.source)
    else:  # (a quiet message's, nothing else holds it: as new but for these)
        inst.spare = None
        ctx.source = env.source
    sched, replay = env.sched, env.replay
    plain = sched is None and env.approval is None and replay is None
    if not plain:
        if sched is not None:
            ctx.occurrence = firing.occurrence_of(env)
        if replay is not None:
            ctx.replay = replay
            ctx.occurrence = replay.occurrence
    if env.extras is not None:
        ctx.extras = env.extras
    before = (inst.version, inst.state, inst.state_json)
    method = env.method
    if not lone:  # a user's method: the savepoint waits for its first write
        store.savepoint(lazy=plain and not method.startswith("_ab_"))
    inst.ctx = ctx
    chain = env.chain
    handed = False  # (to the continuation of a handler that suspended: it resets them)
    quiet = False
    tokens = (current_chain.set((*chain, inst.key)) if chain else None,  # (else the batch's)
              current_context.set(ctx))
    ts = rt.clock.now() if replay is None else replay.ts  # a replayed step keeps its time
    t0 = time.perf_counter()
    try:
        if not plain:
            if sched is not None and firing.skip_if_missed(inst, ctx, env):
                return _succeeded(inst, env, ctx, None, ts, t0, lone, "skipped")
            if env.approval is not None:
                approvals.claim(inst, ctx, env)
                method = env.method  # (the approved action's own method)
        args, kwargs = env.args, env.kwargs
        result = (getattr(inst.agent, method)(*args, **kwargs) if args or kwargs
                  else getattr(inst.agent, method)())  # (no copies of empty args to make)
        if type(result) is types.CoroutineType:  # its first step, driven by hand
            try:
                yielded = result.send(None)
            except StopIteration as stop:
                result = stop.value
            else:
                ctx.suspended = True
                cls.__dict__["_ab_suspends"].add(method)
                handed = True
                return _go_on(inst, env, cls, ctx, before, ts, t0, lone,
                              _resume(result, yielded), tokens)
        elif inspect.isawaitable(result):
            ctx.suspended = True
            handed = True
            return _go_on(inst, env, cls, ctx, before, ts, t0, lone, result, tokens)
        outcome = _succeeded(inst, env, ctx, result, ts, t0, lone)
        quiet = outcome is QUIET
        return outcome
    except BaseException as exc:
        return _failed(inst, env, cls, ctx, before, exc, ts, t0, lone)
    finally:
        if not handed:  # (else _go_on leaves once the handler is done)
            _leave(inst, tokens)
            if quiet and sys.getrefcount(ctx) == _HELD_ONCE:
                # Nothing but this function holds the context (no task or callback the
                # handler made copied it with its context variables), and a quiet
                # message left its lists unmade and its flags as they were made, but
                # for these two: the next message of the agent runs in it (issue 20).
                ctx.state_changed, ctx.state_after = False, None
                inst.spare = ctx


async def _go_on(inst: Instance, env: Envelope, cls: type[Agent], ctx: HandlerContext,
                 before: tuple, ts: float, t0: float, lone: bool, awaiting: Any,
                 tokens: tuple) -> Outcome:
    """The rest of a message whose handler suspended: await it, then its outcome."""
    try:
        try:
            result = await awaiting
        except BaseException as exc:
            return _failed(inst, env, cls, ctx, before, exc, ts, t0, lone)
        try:
            return _succeeded(inst, env, ctx, result, ts, t0, lone)
        except BaseException as exc:
            return _failed(inst, env, cls, ctx, before, exc, ts, t0, lone)
    finally:
        _leave(inst, tokens)


def _leave(inst: Instance, tokens: tuple) -> None:
    """The handler is over: undo what entering it set (the context, and the call chain of
    a message from another agent's handler), in reverse order."""
    current_context.reset(tokens[1])
    if tokens[0] is not None:
        current_chain.reset(tokens[0])
    inst.ctx = None


def _succeeded(inst: Instance, env: Envelope, ctx: HandlerContext, result: Any, ts: float,
               t0: float, lone: bool, outcome_label: str = "ok") -> Outcome:
    """The handler of *env* returned *result*: its version (history row, state, events)."""
    store = inst.store
    assert store is not None
    sched = env.sched
    if outcome_label == "ok":
        if sched is not None:
            firing.after_success(inst, ctx, env)
        if ctx.replay is not None:
            ctx.outbox.clear()  # a replay never messages the real world again
    duration = (time.perf_counter() - t0) * 1000
    changes, schema = ctx.finish(store) if ctx.capturing else (None, None)
    state_col = _new_state(inst, ctx) if ctx.state_changed else None
    if state_col is not None:
        ctx.state_after = inst.state
    if ctx.state_cut and not ctx.state_changed:  # (announced live once, after the commit)
        ctx.state_changed, ctx.state_after = True, inst.state
    result_text = result_json(result)
    extras = env.extras
    if extras is not None and _OUTBOX in extras:  # exactly once: remember it
        tag = extras[_OUTBOX]
        outbox.mark_seen(store, tag[0], tag[1], tag[2])
    if env.approval is not None:
        approvals.record_result(inst, env, result_text)
    _append_version(inst, store, ctx, ts, env.label or env.method, env.args_json,
                    env.kwargs_json, duration, outcome_label, changes=changes,
                    schema=schema, state=state_col, result=result_text)
    if ((ctx.lists and (ctx.events or ctx.approvals)) or sched is not None) \
            and inst.runtime.events.recording:
        _keep_events(inst, store, ctx, env)
    if not lone:
        store.release()
    if not ctx.suspended and not ctx.sched_dirty and inst.gate.quiet(env, ctx):
        return QUIET  # (nothing of it is needed after the commit)
    return Outcome(env, True, result, ctx, ts, duration, inst.version)


def _failed(inst: Instance, env: Envelope, cls: type[Agent], ctx: HandlerContext,
            before: tuple, exc: BaseException, ts: float, t0: float, lone: bool) -> Outcome:
    """The handler of *env* (or the making of its version) raised *exc*: undo what it
    did, alone; a scheduled run or a claimed approval records the failure as a version."""
    store = inst.store
    assert store is not None
    duration = (time.perf_counter() - t0) * 1000
    ctx.drop()
    if lone:
        inst.undo_lone(env)  # (a firing's failure is then recorded in a new transaction)
    else:
        try:
            store.rollback_message()
        except Exception:
            pass
    inst.version, inst.state, inst.state_json = before
    if isinstance(exc, _FATAL):
        raise exc
    error = _incompatible_state(exc, cls, before[1], inst.key) or translate(exc, store)
    for kind, data in ctx.approvals:
        if kind == "request":
            inst.runtime.approvals.forget(data[0])
    recorded = None
    claimed = any(kind == "approve" for kind, _ in ctx.approvals)
    if (env.sched is not None or claimed) and store.conn.in_transaction:
        # (a batch SQLite rolled back records nothing: the mailbox fails all of it, and
        # the occurrence stays due)
        recorded = record_failure(inst, env, error, ts, duration)
    return Outcome(env, False, error, ctx, ts, duration, inst.version, recorded)


def cut_version(inst: Instance, ctx: HandlerContext, method: str, args: str) -> None:
    """End the running handler's version here; what it does next is the next version.

    A workflow turn that runs several steps makes each one a version of its own this way
    (their history rows, changesets and events), cheaper than a message per step. The
    versions commit with the handler's batch, and a handler that fails takes them all
    back with it (its savepoint holds them)."""
    store = inst.store
    assert store is not None
    changes, schema = ctx.finish(store)
    state_col = _new_state(inst, ctx)
    if state_col is not None:
        ctx.state_cut = True
    ctx.state_changed = False
    _append_version(inst, store, ctx, inst.runtime.clock.now(), method, args, None, 0.0, "ok",
                    changes=changes, schema=schema, state=state_col)
    if inst.runtime.events.recording and (len(ctx.events), len(ctx.approvals)) != ctx.kept:
        _keep_events(inst, store, ctx, None)
    ctx.kept = (len(ctx.events), len(ctx.approvals))
    ctx.effects = []
    ctx.lists = True  # (set, not made on first use: the per-message path must read it)


def _new_state(inst: Instance, ctx: HandlerContext) -> str | None:
    """The state's new JSON text if the handler changed it (within the size limit; it
    becomes ``inst.state_json``), else ``None`` (and ``ctx.state_changed`` is cleared)."""
    if not ctx.state_changed:
        return None
    text = jsonvalue.dumps(inst.state)
    if text == inst.state_json:
        ctx.state_changed = False
        return None
    if len(text) > inst.runtime.max_state_bytes:
        from ..errors import LimitError

        raise LimitError(
            f"the new state is {len(text)} bytes of JSON; the limit is "
            f"{inst.runtime.max_state_bytes} (ab.Runtime(max_state_bytes=...)); "
            "keep big data in the agent's SQL tables")
    inst.state_json = text
    return text


def record_failure(inst: Instance, env: Envelope, error: BaseException, ts: float,
                    duration: float) -> Any:
    """A scheduled attempt or an approved method failed: record the retry, the dead letter
    or the consumed approval as a version of its own."""
    store = inst.store
    assert store is not None
    text = f"{type(error).__name__}: {error}"
    ctx = HandlerContext(env.source)
    store.savepoint()
    try:
        if env.sched is not None:
            ctx.occurrence = firing.occurrence_of(env)
            label, letter = firing.after_failure(inst, ctx, env, text)
        else:
            label, letter = "error", approvals.record_failure(inst, ctx, env, text)
        changes, schema = ctx.finish(store)
        _append_version(inst, store, ctx, ts, env.label or env.method, env.args_json,
                        env.kwargs_json, duration, label, changes=changes, schema=schema,
                        error=text)
        if env.sched is not None and inst.runtime.events.recording:
            store.append_events([(inst.version, inst.runtime.clock.now(), *_scheduled_event(
                "retry" if label == "retry" else "error", env, inst.version, text))])
        store.release()
    except BaseException:
        ctx.drop()
        store.rollback_message()
        raise
    return (label, letter)


def _append_version(inst: Instance, store: AgentStore, ctx: HandlerContext, ts: float,
                    method: str, args: str, kwargs: str | None, duration_ms: float,
                    outcome: str, *, changes: bytes | None, schema: str | None,
                    state: str | None = None, result: str | None = None,
                    error: str | None = None) -> None:
    """Make the next version: the one place a handler's history row is built. Its
    source, scheduled occurrence and effect journal come from *ctx*."""
    inst.version += 1
    occ = ctx.occurrence
    effects = ctx.effects if ctx.lists else None
    # (a plain tuple in HistoryRow's field order: what the store inserts and the chain hashes)
    store.append_history((
        inst.version, ts, method, args, kwargs, ctx.source, duration_ms, outcome, error,
        result, state, changes, schema, None if occ is None else occ.due,
        None if occ is None else occ.id, jsonvalue.dumps(effects) if effects else None))


def _incompatible_state(exc: BaseException, cls: type, state: Any,
                        key: tuple[str, str]) -> BaseException | None:
    """A handler's ``KeyError`` reading a key its agent's state doesn't have, as an
    :class:`IncompatibleStateError` naming the key (``None`` for any other error).

    It happens when a cell redefines the class with another state design: the stored
    state keeps its old keys (it is the agent's data), and a bare ``KeyError: 'x'`` would
    not say why. Only a ``KeyError`` raised right in the class's own code, on a line that
    reads the state, is taken for one.
    """
    if type(exc) is not KeyError or len(exc.args) != 1 or not isinstance(state, dict):
        return None
    missing = exc.args[0]
    if not isinstance(missing, str) or missing in state:
        return None
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    own = {getattr(fn, "__code__", None) for klass in cls.__mro__
           if not klass.__module__.startswith("agentbook") for fn in vars(klass).values()}
    import linecache

    if code not in own or "state" not in linecache.getline(code.co_filename, tb.tb_lineno):
        return None
    initial = cls.__dict__.get("initial_state", getattr(cls, "initial_state", None))
    where = ("its initial_state has it, but the stored state was made by an older definition"
             if isinstance(initial, dict) and missing in initial else
             "its initial_state doesn't have it either")
    error = IncompatibleStateError(
        f"{cls.__name__}({key[1]!r}) has no state key {missing!r} (its state has "
        f"{sorted(state)}; {where}); add the key in on_start, e.g. "
        f"self.set_state({{**self.state, {missing!r}: ...}}) when it is missing, or use a new "
        "class name for the new design")
    error.__cause__ = exc
    return error


#: Approval entries of a handler context (``ctx.approvals``) and the event each is on record as.
_APPROVAL_EVENTS = {"approve": "approval:approve", "approved": "approval:approve",
                    "rejected": "approval:reject", "expired": "approval:expire",
                    "cancelled": "approval:cancel"}


def _keep_events(inst: Instance, store: AgentStore, ctx: HandlerContext,
                 env: Envelope | None) -> None:
    """Put the committed-to-be handler's events on record, with its history row (SPEC 2.8;
    :mod:`agentbook.store.events`): what the output gate announces live after the commit,
    in the same shapes. *env* is ``None`` for an ``on_start`` that made a version."""
    version, ts = inst.version, inst.runtime.clock.now()
    dumps = jsonvalue.dumps
    rows: list[tuple] = []
    if env is not None and env.sched is not None:
        rows.append((version, ts, *_scheduled_event("execute", env, version)))
    events: Sequence[tuple[str, Any]] = ctx.events if ctx.lists else ()
    approvals: Sequence[tuple[str, Any]] = ctx.approvals if ctx.lists else ()
    if ctx.kept != (0, 0):  # (an earlier version of the handler put these on record)
        events, approvals = events[ctx.kept[0]:], approvals[ctx.kept[1]:]
    # (a call's rpc and state:update events are not written: its history row holds them, and
    # the events view derives them from it - see agentbook.analytics.views)
    for type_, payload in events:
        if type_ != "broadcast" and type_ != "connection:send":  # for clients, not kept
            rows.append((version, ts, type_, _payload_json(payload)))
    for kind, data in approvals:
        if kind == "request":
            text = dumps({"id": data.id, "method": data.method, "summary": data.summary,
                          "expires": data.expires})
            rows.append((version, ts, "approval:request", text))
            rows.append((version, ts, "tool:approval", text))
        elif kind in _APPROVAL_EVENTS:
            rows.append((version, ts, _APPROVAL_EVENTS[kind], dumps(
                {"id": data[0], "status": data[1], "by": data[2], "reason": data[4]})))
    store.append_events(rows)


def _scheduled_event(what: str, env: Envelope, version: int,
                     error: str | None = None) -> tuple[str, str]:
    """``(type, payload)`` of a ``schedule:*`` / ``queue:*`` event about the run *env*
    (the shape ``Runtime.emit_scheduled`` announces live)."""
    row = env.sched
    payload = {"id": row.id, "callback": row.callback, "type": row.type, "due": row.due,
               "occurrence": f"{row.id}:{row.occurrence}", "attempt": row.attempt + 1,
               "version": version}
    if error is not None:
        payload["error"] = error
    return f"{'queue' if row.type == 'queue' else 'schedule'}:{what}", jsonvalue.dumps(payload)


def _payload_json(payload: Any) -> str:
    """An event's payload as JSON text (an ``ab.Secret`` is written as its name)."""
    try:
        return jsonvalue.dumps(payload)
    except (TypeError, ValueError):  # not JSON (events from agentbook's own code are)
        return jsonvalue.dumps({"repr": repr(payload)})


def translate(exc: BaseException, store: AgentStore | None) -> BaseException:
    """apsw errors become typed agentbook errors; everything else passes unchanged.

    With *store*, a read-only or damaged store is also marked ``store.broken`` (the
    mailbox then closes it, and quarantines a damaged one)."""
    if isinstance(exc, AgentbookError) or not type(exc).__module__.startswith("apsw"):
        return exc
    if store is not None:
        return store.translate(exc)
    from ..store import translate_error

    return translate_error(exc, "")
