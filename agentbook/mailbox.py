"""The mailbox of one awake agent: the input gate, the commit and the output gate.

Messages to an agent queue in its :class:`Instance`. One task drains the queue (and
exists only while there is something to drain), so handlers of an agent run strictly
one after another. Messages already waiting when a drain starts share one SQLite
transaction, each inside its own savepoint, the way Durable Objects coalesce writes:

    BEGIN
      SAVEPOINT  handler 1 -> its history row  RELEASE       (or ROLLBACK TO on error)
      SAVEPOINT  handler 2 -> its history row  RELEASE
    COMMIT                                  <- durable here
    results, sends, broadcasts and events leave            <- the output gate

A handler that actually suspends (awaits real I/O) ends its batch, and methods known to
suspend start a batch of their own, so a quick call never waits behind a slow one.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
import types
from collections import deque
from typing import TYPE_CHECKING, Any

from . import jsonvalue
from .agent import _classes
from .errors import (
    AgentbookError,
    AgentStartError,
    IncompatibleStateError,
    NotInHandlerError,
)
from .store import AgentStore

if TYPE_CHECKING:
    from .agent import Agent
    from .runtime import Runtime

__all__ = ["Envelope", "Instance", "current_chain"]

#: Keys of the agents whose handlers are awaiting, up the current call chain.
current_chain: contextvars.ContextVar[tuple] = contextvars.ContextVar("ab_chain", default=())

Key = tuple[str, str]


class Envelope:
    """One message: a method call, or an internal operation run in mailbox order."""

    __slots__ = ("args", "args_json", "chain", "future", "kwargs", "kwargs_json", "method",
                 "op", "source")

    def __init__(self, method: str, args: tuple, kwargs: dict, args_json: str,
                 kwargs_json: str | None, source: str, future: asyncio.Future | None = None,
                 chain: tuple = (), op: Any = None) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.args_json = args_json
        self.kwargs_json = kwargs_json
        self.source = source
        self.future = future
        self.chain = chain
        self.op = op


class HandlerContext:
    """What one running handler has written or wants to send, until its commit."""

    __slots__ = ("destroy", "events", "outbox", "schema_before", "session", "source",
                 "state_changed", "suspended")

    def __init__(self, source: str) -> None:
        self.source = source
        self.session: Any = None
        self.schema_before = 0
        self.state_changed = False
        self.suspended = False
        self.destroy = False
        self.outbox: list[tuple[Key, Envelope]] = []
        self.events: list[tuple[str, Any]] = []

    def capture(self, store: AgentStore) -> None:
        """Start recording row changes (once per handler, at its first SQL write)."""
        if self.session is None:
            self.schema_before = store.schema_version()
            self.session = store.start_capture()


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Any:
    """Go on awaiting *coro* after we drove its first step by hand."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class Instance:
    """An awake agent: its object, its open store, its mailbox."""

    __slots__ = ("agent", "cls", "committed", "ctx", "fresh", "key", "last_used", "queue",
                 "runtime", "started", "state", "state_json", "store", "task", "version")

    def __init__(self, runtime: Runtime, key: Key, cls: type[Agent] | None) -> None:
        self.runtime = runtime
        self.key = key
        self.cls = cls
        self.agent: Agent | None = None
        self.store: AgentStore | None = None
        self.queue: deque[Envelope] = deque()
        self.task: asyncio.Task | None = None
        self.ctx: HandlerContext | None = None
        self.started: type | None = None
        self.fresh = False
        self.version = 0
        self.state: Any = None
        self.state_json = ""
        #: (version, state, state_json) as of the last commit.
        self.committed: tuple[int, Any, str] = (0, None, "")
        self.last_used = time.monotonic()

    # -- helpers for Agent methods ------------------------------------------------------
    def require_ctx(self, what: str) -> HandlerContext:
        ctx = self.ctx
        if ctx is None:
            raise NotInHandlerError(
                f"{what}() works only inside one of the agent's handlers; from a cell, call "
                "an @ab.callable method that does it"
            )
        return ctx

    @property
    def busy(self) -> bool:
        return self.task is not None or bool(self.queue)

    # -- opening ------------------------------------------------------------------------
    def open(self) -> None:
        """Open the store and load the committed state (creating a new agent if needed)."""
        if self.store is not None:
            return
        rt = self.runtime
        store = AgentStore(rt._path_of(self.key), rt.durability)
        try:
            loaded = store.load_state()
            cls = self.cls
            if loaded is None:
                self.fresh = True
                initial = cls.initial_state if cls is not None else {}
                self.version, self.state = 0, initial
                self.state_json = jsonvalue.dumps(initial)
            else:
                self.fresh = False
                self.version, self.state_json = loaded
                self.state = jsonvalue.loads(self.state_json)
        except BaseException:
            store.close()
            raise
        self.store = store
        self.committed = (self.version, self.state, self.state_json)
        rt._opened(self)

    def close(self) -> None:
        """Hibernate: drop the agent object and close the store."""
        if self.store is not None:
            self.store.close()
            self.store = None
        self.agent = None
        self.started = None

    # -- draining -----------------------------------------------------------------------
    async def drain(self) -> None:
        """Run every queued message, batch by batch."""
        try:
            while self.queue and not self.runtime.closed:
                if self.queue[0].op is not None:
                    env = self.queue.popleft()
                    await self._run_op(env)
                else:
                    await self._batch()
        finally:
            self.task = None
            self.last_used = time.monotonic()
            self.runtime._idle(self)

    async def _run_op(self, env: Envelope) -> None:
        try:
            result = await env.op(self)
        except BaseException as exc:
            if env.future is not None and not env.future.done():
                env.future.set_exception(exc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
        else:
            if env.future is not None and not env.future.done():
                env.future.set_result(result)

    def _current_class(self) -> type[Agent]:
        cls = _classes.get(self.key[0], self.cls)
        if cls is None:
            raise AgentStartError(
                f"no agent class named {self.key[0]!r} is defined in this process; run the "
                "cell (or import the module) that defines it"
            )
        return cls

    def _fail_queue(self, exc: BaseException, count: int | None = None) -> None:
        """Fail queued messages (all, or the first *count*) with *exc*."""
        n = len(self.queue) if count is None else min(count, len(self.queue))
        failed = [self.queue.popleft() for _ in range(n)]
        for env in failed:
            self._deliver_failure(env, exc, 0.0, self.runtime.clock.now())

    async def _batch(self) -> None:
        rt = self.runtime
        try:
            cls = self._current_class()
            self.open()
            if cls is not self.started:
                self._check_compatible(cls)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            exc = _translate(exc, self.store)
            self._fail_queue(exc)
            if self.store is not None and rt._should_drop(exc):
                rt._hibernate(self)
            return
        store = self.store
        assert store is not None
        done: list[tuple[Envelope, bool, Any, HandlerContext, float, float, int]] = []
        taken: list[Envelope] = []
        started_now = False
        try:
            store.begin()
            if self.fresh:
                store.set_meta({"class": self.key[0], "name": self.key[1],
                                "created": repr(rt.clock.now()),
                                "initial_state": self.state_json})
                store.write_state(0, self.state_json)
            if cls is not self.started:
                await self._start(cls)
                started_now = True
            suspends = cls.__dict__.get("_ab_suspends")
            while self.queue and len(taken) < rt.max_batch:
                env = self.queue[0]
                if env.op is not None:
                    break
                if taken and suspends is not None and env.method in suspends:
                    break
                self.queue.popleft()
                # A lone message needs no savepoint: if it fails, the whole (otherwise
                # empty) transaction is rolled back instead. Saves two statements.
                lone = not taken and not self.queue and not started_now and not self.fresh
                taken.append(env)
                outcome = await self._handle(env, cls, lone)
                done.append(outcome)
                if lone and not outcome[1]:
                    break
                if outcome[3].suspended:
                    break
            if store.conn.in_transaction:
                if self.state_json != self.committed[2] or self.fresh:
                    store.write_state(self.version, self.state_json)
                store.commit()
        except BaseException as exc:
            # Start failure, commit failure or cancellation: the whole batch is undone.
            try:
                store.rollback()
            except Exception:
                pass
            self.version, self.state, self.state_json = self.committed
            if started_now:
                self.started = None
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                self.queue.extendleft(reversed(taken))  # not delivered: try again later
                raise
            err = _translate(exc, store)
            if isinstance(exc, AgentStartError):
                self._fail_queue(err)
            now = rt.clock.now()
            for env in taken:
                self._deliver_failure(env, err, 0.0, now)
            if rt._should_drop(err):
                rt._hibernate(self)
            return
        # Durable from here on: the output gate opens.
        self.committed = (self.version, self.state, self.state_json)
        if self.fresh:
            self.fresh = False
            rt._created(self)
        for env, ok, value, ctx, ts, duration, version in done:
            if ok:
                self._deliver_success(env, value, ctx)
            else:
                self._deliver_failure(env, value, duration, ts, version)

    def _check_compatible(self, cls: type[Agent]) -> None:
        if self.fresh:
            return
        if _kind(cls.initial_state) != _kind(self.state) and (
            isinstance(cls.initial_state, (dict, list)) or isinstance(self.state, (dict, list))
        ):
            raise IncompatibleStateError(
                f"{cls.__name__}.initial_state is a {_kind(cls.initial_state)} but the stored "
                f"state of {self.key[1]!r} is a {_kind(self.state)}; keep the same shape, or "
                "use a new class name for the new design"
            )

    async def _start(self, cls: type[Agent]) -> None:
        """Make the agent object and run ``on_start`` (its writes become a version)."""
        rt = self.runtime
        agent = cls.__new__(cls)
        agent._ab_instance = self
        agent.__init__()
        self.agent = agent
        self.cls = cls
        store = self.store
        assert store is not None
        ctx = HandlerContext("start")
        ctx.capture(store)
        store.savepoint()
        self.ctx = ctx
        ts = rt.clock.now()
        t0 = time.perf_counter()
        before = self.state_json
        try:
            result = agent.on_start()
            if inspect.isawaitable(result):
                await result
            changes = store.finish_capture(ctx.session)
            ctx.session = None
            schema_changed = store.schema_version() != ctx.schema_before
            if ctx.state_changed:
                self.state_json = jsonvalue.dumps(self.state)
            state_changed = self.state_json != before
            if changes or schema_changed or state_changed:
                self.version += 1
                store.append_history((
                    self.version, ts, "on_start", "[]", None, "start",
                    (time.perf_counter() - t0) * 1000, "ok", None, None,
                    self.state_json if state_changed else None, changes,
                    store.user_schema() if schema_changed else None,
                ))
            store.release()
        except BaseException as exc:
            if ctx.session is not None:
                ctx.session.close()
            store.rollback_message()
            self.agent = None
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            error = AgentStartError(
                f"{cls.__name__}({self.key[1]!r}).on_start raised {type(exc).__name__}: {exc}; "
                "fix on_start and send the message again"
            )
            error.__cause__ = exc
            raise error from exc
        finally:
            self.ctx = None
        self.started = cls
        if ctx.events or rt.events.active:
            rt._emit("agent:start", self.key, {"version": self.version})
            self._flush_events(ctx)

    async def _handle(self, env: Envelope, cls: type[Agent], lone: bool = False) -> tuple:
        """Run one message inside its savepoint (or, *lone*, as the whole transaction);
        returns the outcome for delivery."""
        rt = self.runtime
        store = self.store
        assert store is not None and self.agent is not None
        ctx = HandlerContext(env.source)
        before = (self.version, self.state, self.state_json)
        if not lone:
            store.savepoint()
        self.ctx = ctx
        token = current_chain.set((*env.chain, self.key))
        ts = rt.clock.now()
        t0 = time.perf_counter()
        try:
            fn = getattr(self.agent, env.method)
            result = fn(*env.args, **env.kwargs)
            if type(result) is types.CoroutineType:
                try:
                    yielded = result.send(None)
                except StopIteration as stop:
                    result = stop.value
                else:
                    ctx.suspended = True
                    cls.__dict__["_ab_suspends"].add(env.method)
                    result = await _resume(result, yielded)
            elif inspect.isawaitable(result):
                ctx.suspended = True
                result = await result
            duration = (time.perf_counter() - t0) * 1000
            changes = schema = None
            if ctx.session is not None:
                changes = store.finish_capture(ctx.session)
                ctx.session = None
                if store.schema_version() != ctx.schema_before:
                    schema = store.user_schema()
            state_col = None
            if ctx.state_changed:
                text = jsonvalue.dumps(self.state)
                if text != self.state_json:
                    self.state_json = state_col = text
                else:
                    ctx.state_changed = False
            result_json = _result_json(result)
            self.version += 1
            store.append_history((
                self.version, ts, env.method, env.args_json, env.kwargs_json, env.source,
                duration, "ok", None, result_json, state_col, changes, schema,
            ))
            if not lone:
                store.release()
            return (env, True, result, ctx, ts, duration, self.version)
        except BaseException as exc:
            duration = (time.perf_counter() - t0) * 1000
            if ctx.session is not None:
                ctx.session.close()
                ctx.session = None
            try:
                if lone:
                    store.rollback()
                else:
                    store.rollback_message()
            except Exception:
                pass
            self.version, self.state, self.state_json = before
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return (env, False, _translate(exc, store), ctx, ts, duration, self.version)
        finally:
            current_chain.reset(token)
            self.ctx = None

    # -- the output gate ----------------------------------------------------------------
    def _deliver_success(self, env: Envelope, result: Any, ctx: HandlerContext) -> None:
        rt = self.runtime
        fut = env.future
        if fut is not None and not fut.done():
            fut.set_result(result)
        for key, out in ctx.outbox:
            rt._enqueue(key, out)
        if rt.events.active:
            rt._emit("rpc", self.key, {"method": env.method, "version": self.version,
                                       "source": env.source})
            if ctx.state_changed:
                rt._emit("state:update", self.key, {"state": self.state, "source": env.source})
        self._flush_events(ctx)
        if ctx.destroy:
            rt._destroy_later(self.key)

    def _flush_events(self, ctx: HandlerContext) -> None:
        rt = self.runtime
        for type_, payload in ctx.events:
            if type_ == "broadcast":
                rt._broadcast(self.key, payload["message"], payload["exclude"])
            else:
                rt._emit(type_, self.key, payload)

    def _deliver_failure(self, env: Envelope, exc: BaseException, duration: float, ts: float,
                         at_version: int | None = None) -> None:
        rt = self.runtime
        rt.catalog.record_failure((
            self.key[0], self.key[1], ts, env.method, env.args_json, env.kwargs_json,
            env.source, duration, f"{type(exc).__name__}: {exc}",
            self.committed[0] if at_version is None else at_version,
        ))
        if rt.events.active:
            rt._emit("rpc:error", self.key, {"method": env.method, "error": str(exc),
                                             "type": type(exc).__name__})
        fut = env.future
        if fut is not None:
            if not fut.done():
                fut.set_exception(exc)
        elif env.method != "on_error":
            rt._report_error(self.key, env, exc)


def _result_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return jsonvalue.dumps(jsonvalue.freeze(value, "result"))
    except (TypeError, ValueError):
        return None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _translate(exc: BaseException, store: AgentStore | None) -> BaseException:
    """apsw errors become typed agentbook errors; everything else passes unchanged."""
    if isinstance(exc, AgentbookError) or not type(exc).__module__.startswith("apsw"):
        return exc
    from .store import translate_error

    return translate_error(exc, store.path if store is not None else "")
