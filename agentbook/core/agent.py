"""``ab.Agent``: what a user subclasses, and ``@ab.callable``.

An agent is a small stateful server: a JSON ``state``, its own SQL tables, a key-value
store and a history. The runtime creates agent objects; code outside holds an
:class:`~agentbook.ref.AgentRef`, never the agent itself (pykka's rule). Every
framework attribute of an agent object starts with ``_ab_`` so subclasses can't collide
with them; the public API below mirrors Cloudflare Agents (``on_start``, ``set_state``,
``sql``, ``broadcast``, ``schedule`` ...).

Handlers run one at a time per agent. Everything one handler writes - state, rows,
key-value data, outgoing messages - commits together when it returns, or not at all.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterator, MutableMapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .. import jsonvalue, methods
from ..errors import JSONValueError, ReadOnlyError, StateRejectedError, UsageError
from ..schedule import agentside
from ..schedule.policy import Occurrence, Retry, Schedule
from ..store import kv
from ..store.sqlaccess import sql_params

if TYPE_CHECKING:
    from ..approve.inbox import Approval
    from ..secrets import SecretStore
    from ..store import AgentStore
    from .mailbox import Instance
    from .ref import AgentRef
    from .runtime import Runtime

__all__ = ["Agent"]

log = logging.getLogger("agentbook")

F = TypeVar("F", bound=Callable[..., Any])

_SCHEMA_CHANGE = re.compile(r"\b(DROP|ALTER)\b", re.IGNORECASE)
_DROPPED = re.compile(
    r"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:(?:main|\"main\")\s*\.\s*)?"
    r"(\"(?:[^\"]|\"\")+\"|`[^`]+`|\[[^\]]+\]|\w+)",
    re.IGNORECASE,
)

def latest(cls: type[Agent]) -> type[Agent]:
    """The newest definition of *cls*: re-running a cell that defines a class makes a new class
    object of the same module and name, and the agents use it from their next message on.

    Python records every subclass (``type.__subclasses__``, in definition order); agentbook
    keeps no registry of its own, so two runtimes in one process can't share one by accident.
    """
    newest = cls
    for base in cls.__bases__:
        sub: type[Agent]
        for sub in base.__subclasses__():
            if sub.__name__ == cls.__name__ and sub.__module__ == cls.__module__:
                newest = sub
    return newest


def agent_classes() -> dict[str, type[Agent]]:
    """Every agent class defined in this process, by class name (the newest definition of
    each), walked from ``ab.Agent``'s subclasses on demand."""
    found: dict[str, type[Agent]] = {}
    stack = list(reversed(Agent.__subclasses__()))
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(reversed(cls.__subclasses__()))
    return found


#: The framework names a subclass is meant to override: its hooks and ``initial_state``.
#: Every other name of ``ab.Agent`` (``methods.FRAMEWORK_NAMES``) is the framework's own.
OVERRIDABLE = frozenset({
    "initial_state", "on_start", "on_error", "validate_state_change", "on_state_changed",
    "on_request", "on_connect", "on_message", "on_close",
})


def _refuse_shadowing(cls: type) -> None:
    """Refuse, when the class is defined, a user's attribute that shadows one of the
    framework's names (``async def now(self)`` would break ``self.now()`` for agentbook
    itself, and surface only at some later call). The framework's own subclasses
    (``ab.ChatAgent``...) may override what they must; hooks are meant to be overridden."""
    taken = sorted({name for klass in cls.__mro__
                    if not klass.__module__.startswith("agentbook.") and klass is not object
                    for name in vars(klass)
                    if name in methods.FRAMEWORK_NAMES and name not in OVERRIDABLE})
    if taken:
        reserved = sorted(n for n in methods.FRAMEWORK_NAMES
                          if not n.startswith("_") and n not in OVERRIDABLE)
        raise UsageError(
            f"{cls.__name__} defines {', '.join(taken)}, which ab.Agent uses itself; rename "
            f"{'it' if len(taken) == 1 else 'them'} (the framework's names: {', '.join(reserved)};"
            f" the hooks you may override: {', '.join(sorted(OVERRIDABLE))})")


class KeyValue(MutableMapping[str, Any]):
    """The agent's small durable key-value store (``self.kv``); values are JSON.

    Writes join the running handler's transaction, like everything else.
    """

    __slots__ = ("_agent",)

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def __getitem__(self, key: str) -> Any:
        text = kv.get(self._agent._ab_store(), key)
        if text is None:
            raise KeyError(key)
        return jsonvalue.loads(text)

    def __setitem__(self, key: str, value: Any) -> None:
        if type(key) is not str:
            raise JSONValueError(f"kv keys are strings, not {type(key).__name__}", "kv")
        value = jsonvalue.freeze(value, f"kv[{key!r}]")
        kv.put(self._agent._ab_writable(), key, jsonvalue.dumps(value))

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        kv.delete(self._agent._ab_writable(), key)

    def __contains__(self, key: object) -> bool:
        return kv.has(self._agent._ab_store(), key)

    def __iter__(self) -> Iterator[str]:
        return iter(kv.keys(self._agent._ab_store()))

    def __len__(self) -> int:
        return kv.count(self._agent._ab_store())

    def __repr__(self) -> str:
        return f"<kv of {self._agent.name!r}: {len(self)} keys>"


class Agent:
    """Base class of every agent.

    Attributes:
        initial_state: The state a new agent starts with (a JSON value; default ``{}``).
        name: The agent's name, unique within its class.

    Override the hooks you need: :meth:`on_start`, :meth:`on_error`,
    :meth:`validate_state_change`, :meth:`on_state_changed`. Mark methods that cells and
    clients may call with ``@ab.callable``. Methods may be ``async def`` or plain ``def``.
    Scheduling, approvals and MCP are methods here too; their logic lives in the concept
    packages (:mod:`agentbook.schedule`, :mod:`agentbook.approve`, :mod:`agentbook.mcp`).
    """

    _ab_defined = 0

    initial_state: Any = {}

    _ab_instance: Instance
    _ab_suspends: set[str]
    #: The checks of a call already passed, by method name, and the shared envelopes of its
    #: sends without arguments, by source (see agentbook.core.calls).
    _ab_calls: dict[str, tuple[Any, int, int, dict[str, Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _refuse_shadowing(cls)
        try:
            cls.initial_state = jsonvalue.freeze(
                cls.__dict__.get("initial_state", cls.initial_state), f"{cls.__name__}.initial_state"
            )
        except JSONValueError as exc:
            raise JSONValueError(str(exc), exc.path) from None
        cls._ab_suspends = set()  # methods seen to await real I/O (see mailbox)
        cls._ab_calls = {}  # (kept on the class: a redefined class is let go with its own)
        # how many agent classes were defined so far: a runtime's cache of the newest
        # definitions (Runtime.class_for) is good until this moves
        Agent._ab_defined += 1

    # -- identity -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The agent's name."""
        return self._ab_instance.key[1]

    @property
    def runtime(self) -> Runtime:
        """The runtime hosting this agent."""
        return self._ab_instance.runtime

    @property
    def version(self) -> int:
        """The agent's latest version; the running handler, once committed, is ``version + 1``."""
        return self._ab_instance.version

    def now(self) -> float:
        """The runtime clock's current time (epoch seconds); while a step is replayed, the
        time it originally ran."""
        inst = self._ab_instance
        ctx = inst.ctx
        if ctx is not None and ctx.replay is not None:
            return ctx.replay.ts
        return inst.runtime.clock.now()

    async def effect(self, key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call *fn* (sync or async) and journal its JSON result in this version's history.

        Use it for everything that would not come out the same twice: model and tool calls,
        HTTP, random numbers. Replays serve the journaled result instead of calling again
        (unless told otherwise), which is what makes "what if" replays exact and free.

        Returns:
            The result, as a read-only JSON value.
        """
        from ..travel.replay import run_effect

        return await run_effect(self._ab_instance.require_ctx("effect"), key, fn, args, kwargs)

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        """The current state: a read-only JSON value. Change it with :meth:`set_state`."""
        return self._ab_instance.state

    def set_state(self, new_state: Any) -> None:
        """Replace the whole state with *new_state* (a JSON value).

        Calls :meth:`validate_state_change` first (raise there to refuse) and
        :meth:`on_state_changed` after. The change commits with the running handler.

        Raises:
            JSONValueError: *new_state* is not JSON (names the bad path); nothing changes.
            StateRejectedError: ``validate_state_change`` refused it; nothing changes.
        """
        inst = self._ab_instance
        ctx = inst.ctx
        if ctx is None:
            ctx = inst.require_ctx("set_state")  # (raises the helpful error)
        frozen = jsonvalue.freeze(new_state, "state")
        source = ctx.source
        cls = type(self)  # (hooks left as Agent has them do nothing: not called)
        if cls.validate_state_change is not _VALIDATE:
            try:
                self.validate_state_change(frozen, source)
            except Exception as exc:
                raise StateRejectedError(
                    f"{cls.__name__}.validate_state_change refused the new state: {exc}"
                ) from exc
        inst.state = frozen
        ctx.state_changed = True
        if cls.on_state_changed is not _CHANGED:
            self.on_state_changed(frozen, source)

    def validate_state_change(self, state: Any, source: str) -> None:
        """Hook: raise to refuse a new state. *source* says who set it."""

    def on_state_changed(self, state: Any, source: str) -> None:
        """Hook: called right after the state changed (inside the same handler)."""

    # -- lifecycle hooks ----------------------------------------------------------------
    async def on_start(self) -> None:
        """Hook: runs on every wake, before the first message (create tables here)."""

    # -- the serve path (connections; see agentbook.serve) --------------------------------
    async def on_request(self, request: Any) -> Any:
        """Hook: an HTTP request to ``/agents/{class}/{name}``. Return a dict or list (sent
        as JSON), a str, or a Starlette ``Response``. By default ``GET`` returns the state."""
        if getattr(request, "method", "GET") == "GET":
            return {"name": self.name, "state": jsonvalue.thaw(self.state)}
        return None

    async def on_connect(self, connection: Any, ctx: Any) -> None:
        """Hook: a WebSocket client connected (``connection.set_readonly(True)`` to make it
        read-only; ``ctx.request`` has the headers)."""

    async def on_message(self, connection: Any, message: Any) -> None:
        """Hook: a WebSocket message that is not part of the agents protocol."""

    async def on_close(self, connection: Any, code: int, reason: str) -> None:
        """Hook: a WebSocket client went away."""

    @property
    def connections(self) -> list[Any]:
        """The agent's open WebSocket connections (empty when nothing is served)."""
        server = self._ab_instance.runtime.server
        return [] if server is None else server.connections_of(self._ab_instance.key)

    async def on_error(self, error: BaseException) -> None:
        """Hook: a fire-and-forget message (``send``) failed. Logs a warning by default."""
        log.warning("%s(%r): %s: %s", type(self).__name__, self.name, type(error).__name__, error)

    # -- SQL and key-value data -----------------------------------------------------------
    def sql(self, query: str, *params: Any, readonly: bool = False) -> list[dict[str, Any]]:
        """Run SQL on the agent's own database, inside the running handler's transaction.

        Values go in as parameters (``?`` or ``:name``), never by string formatting.
        Returns the rows as dicts. Internal ``_ab_`` tables, ``ATTACH``, ``PRAGMA``
        (other than schema look-ups) and transaction statements are refused.
        ``readonly=True`` allows queries only: use it for SQL written by a model or a user.

        Raises:
            SQLError: SQLite refused the query (the handler fails unless it catches it).
        """
        inst = self._ab_instance
        ctx = inst.require_ctx("sql")
        params = sql_params(params)  # type: ignore[assignment]
        store = inst.store
        assert store is not None  # a running handler's store is open
        if readonly:
            return store.user_sql_dicts(query, params, readonly=True)
        ctx.capture(store)
        if _SCHEMA_CHANGE.search(query):
            for table in _DROPPED.findall(query):  # keep the rows, so time travel can restore them
                name = table[1:-1].replace('""', '"') if table[:1] in '"`[' else table
                if store.internal("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                                  (name,)):
                    quoted = name.replace('"', '""')
                    store.user_sql_dicts(f'DELETE FROM "{quoted}"', ())
            ctx.cut(store)
        return store.user_sql_dicts(query, params)

    @property
    def secrets(self) -> SecretStore:
        """The agent's secrets (API keys, tokens): ``self.secrets["openai"] = ab.Secret(...)``.
        Kept apart from state and history; never copied to forks."""
        from ..secrets import SecretStore

        return SecretStore(self)

    @property
    def kv(self) -> KeyValue:
        """A small durable key-value store: ``self.kv["k"] = v``, ``self.kv.get("k")``."""
        return KeyValue(self)

    def _ab_store(self) -> AgentStore:
        """The agent's open store, for reads inside one of its handlers."""
        inst = self._ab_instance
        inst.require_ctx("kv")
        assert inst.store is not None  # a running handler's store is open
        return inst.store

    def _ab_writable(self) -> AgentStore:
        """The agent's open store, for a write the running handler records in history."""
        store = self._ab_store()
        self._ab_instance.require_ctx("kv").capture(store)
        return store

    async def _ab_readonly_call(self, method: str, args: tuple) -> Any:
        """Run *method* for a read-only client connection (the serve path); a state change
        is refused inside the handler, so nothing of it commits."""
        result = getattr(self, method)(*args)
        if inspect.isawaitable(result):
            result = await result
        ctx = self._ab_instance.ctx
        if ctx is not None and ctx.state_changed:
            raise ReadOnlyError(f"Connection is readonly: {type(self).__name__}.{method} changes "
                                "the state, which a read-only client may not do")
        return result

    def _ab_rewind(self, version: int) -> dict:
        from ..travel.rewind import rewind_in_place

        inst = self._ab_instance
        return rewind_in_place(inst, inst.require_ctx("rewind"), version)

    # -- other agents, events, life -------------------------------------------------------
    def ref(self, cls: type[Agent] | str, name: str) -> AgentRef:
        """A reference to another agent; ``send`` from a handler leaves after the commit."""
        return self._ab_instance.runtime.get(cls, name)

    def emit(self, type: str, **data: Any) -> None:
        """Emit a custom observability event (delivered after the commit, if anyone listens)."""
        inst = self._ab_instance
        payload = jsonvalue.freeze(data, "event")  # checked even when nobody listens
        if not inst.runtime.events.active:
            return
        ctx = inst.ctx
        if ctx is None:
            inst.runtime.emit_event(type, inst.key, payload)
        else:
            ctx.events.append((type, payload))

    def broadcast(self, message: Any, exclude: tuple | list = ()) -> None:
        """Send *message* to every connected client (after the commit).

        Connections arrive with the serve path; in a bare kernel this delivers to
        ``rt.events`` subscribers of ``broadcast``.
        """
        inst = self._ab_instance
        message = jsonvalue.freeze(message, "message")
        ctx = inst.require_ctx("broadcast")
        ctx.events.append(("broadcast", {"message": message, "exclude": list(exclude)}))

    def destroy(self) -> None:
        """Delete this agent and its store once the running handler commits."""
        self._ab_instance.require_ctx("destroy").destroy = True

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.name!r}>"
        except AttributeError:
            return f"<{type(self).__name__} (not bound)>"

    async def schedule(
        self,
        when: float | timedelta | datetime | str,
        callback: str,
        payload: Any = None,
        *,
        retry: Retry | dict | int | None = None,
        tz: str | None = None,
        missed: str = "once",
        idempotent: bool = True,
        key: str | None = None,
    ) -> Schedule:
        """Run method *callback* later, with *payload*; durable, exactly once per occurrence.

        Schedules are idempotent: while a schedule with the same callback, kind, timing and
        payload is pending, this returns it instead of adding another (and announces
        ``schedule:duplicate``), so a schedule made in ``on_start`` is one schedule however
        often the agent wakes. The timing compared is what you asked for: the delay in
        seconds (``schedule(300, ...)`` made now and a minute later is one schedule, due
        when the first call said), the date, or the cron string and *tz*. Payloads compare
        as JSON values. A returned schedule takes this call's *retry* and *missed*. Once a
        one-shot has run, the same call makes a new one (so a callback can schedule itself
        again).

        Args:
            when: Seconds or a ``timedelta`` from now, an aware ``datetime`` (naive means
                local time), or a five-field cron string (UTC unless *tz*).
            callback: Name of a public method of this agent; it gets *payload* as its one
                argument (omit the parameter when there is no payload).
            payload: A JSON value. Not an ``ab.Secret``: keep secrets in ``self.secrets``
                and put their name in the payload.
            retry: How failures are retried (``ab.Retry``, a dict of its fields, or a number
                of attempts); then the occurrence goes to the dead-letter list.
            tz: Time zone name for cron strings.
            missed: For cron: what to do with ticks missed while the runtime was down -
                ``"once"`` (default), ``"skip"`` or ``"all"``.
            idempotent: ``False`` adds a new schedule on every call (e.g. two reminders
                with the same text and delay).
            key: A name for this schedule, unique in the agent. A pending schedule of that
                key is returned when its callback, kind, timing and payload are the same,
                and *replaced* when they differ (it is cancelled and the new one, with a
                new id, takes the key), so changing the code of a keyed schedule changes
                the schedule. Can't go with ``idempotent=False``.

        Raises:
            ScheduleError: a bad time, cron string, callback or key; nothing is stored.
            JSONValueError: *payload* is not JSON or holds an ``ab.Secret``.
        """
        inst = self._ab_instance
        return agentside.create(inst, inst.require_ctx("schedule"), type(self), when, callback,
                                payload, retry=retry, tz=tz, missed=missed,
                                idempotent=idempotent, key=key)

    async def schedule_every(
        self, seconds: float | timedelta, callback: str, payload: Any = None, *,
        retry: Retry | dict | int | None = None, missed: str = "once", idempotent: bool = True,
        key: str | None = None,
    ) -> Schedule:
        """Run *callback* every *seconds* (first run one interval from now).

        Runs never overlap (an agent runs one handler at a time); after downtime the
        missed runs collapse into one (``missed="once"``). Idempotent like
        :meth:`schedule`: while an interval schedule with the same callback, interval and
        payload is pending, this returns it (``schedule_every(30, "tick")`` in
        ``on_start`` is one schedule however often the agent wakes);
        ``idempotent=False`` always adds one, and ``key=`` names it (the same key with
        another interval or payload replaces it).
        """
        inst = self._ab_instance
        return agentside.create_every(inst, inst.require_ctx("schedule_every"), type(self),
                                      seconds, callback, payload, retry=retry, missed=missed,
                                      idempotent=idempotent, key=key)

    async def queue(self, callback: str, payload: Any = None, *,
                    retry: Retry | dict | int | None = None) -> Schedule:
        """Queue background work: *callback* runs soon after this handler commits, in FIFO
        order with other queued work; a failing item retries without blocking the others.

        Queued work is never idempotent: two identical calls are two jobs, and both run.
        (For "at most one pending", use ``schedule(0, ...)``, which is.) *payload* is a JSON
        value, not an ``ab.Secret``."""
        inst = self._ab_instance
        return agentside.enqueue(inst, inst.require_ctx("queue"), type(self), callback, payload,
                                 retry=retry)

    def get_schedules(self, type: str | None = None,
                      time_range: tuple[Any, Any] | None = None) -> list[Schedule]:
        """Pending schedules, soonest first; filter by ``type`` or a ``(start, end)`` range."""
        inst = self._ab_instance
        inst.require_ctx("get_schedules")
        return agentside.pending(inst, type, time_range)

    async def cancel_schedule(self, id: str) -> None:
        """Cancel a pending schedule (with the running handler's commit).

        Raises:
            ScheduleError: no pending schedule has that id.
        """
        inst = self._ab_instance
        agentside.cancel(inst, inst.require_ctx("cancel_schedule"), id)

    @property
    def occurrence(self) -> Occurrence | None:
        """In a scheduled or queued run: which occurrence (``.id`` is stable across retries,
        for idempotent calls to the outside world). ``None`` otherwise."""
        ctx = self._ab_instance.ctx
        return None if ctx is None else ctx.occurrence

    def _ab_retry_dead_letter(self, letter_id: str) -> None:
        inst = self._ab_instance
        agentside.retry_dead_letter(inst, inst.require_ctx("retry_dead_letter"), letter_id)

    def _ab_drop_dead_letter(self, letter_id: str) -> None:
        inst = self._ab_instance
        agentside.drop_dead_letter(inst, inst.require_ctx("drop_dead_letter"), letter_id)

    async def request_approval(
        self,
        method: str,
        args: dict | list | None = None,
        *,
        summary: str,
        side_effects: list[str] | None = None,
        expires_in: float | None = None,
        approvers: list[str] | None = None,
    ) -> Approval:
        """Propose an action for a person to approve; returns at once.

        The pending approval commits with this handler. When a person approves it (in the
        ``rt.approvals`` inbox, or ``rt.approvals.approve(id)``), *method* runs once with
        exactly *args*, as a handler of this agent. Rejection or expiry never run it.

        Args:
            method: A public method of this agent (it need not be ``@ab.callable``, and is
                better not: then only an approval can run it).
            args: Keyword arguments (a dict) or positional ones (a list); JSON values.
            summary: One line a person reads before deciding.
            side_effects: What approving will do in the world, one line each.
            expires_in: Seconds until the approval expires (``None``: never).
            approvers: Who may decide (names given as ``by=``); ``None``: anyone.
        """
        from ..approve import inbox as approvals

        inst = self._ab_instance
        ctx = inst.require_ctx("request_approval")
        return approvals.request(inst, ctx, method, [] if args is None else args, summary,
                                 side_effects or [], expires_in, approvers)

    def _ab_reject_approval(self, approval_id: str, by: str, reason: str | None) -> None:
        from ..approve import inbox as approvals
        from ..workflow import engine

        inst = self._ab_instance
        ctx = inst.require_ctx("reject")
        approvals.decide_without_running(inst, ctx, approval_id, "rejected", by, reason)
        engine.approval_closed(inst, ctx, approval_id, "rejected", by, reason)

    def _ab_expire_approval(self, approval_id: str) -> None:
        from ..approve import inbox as approvals
        from ..workflow import engine

        inst = self._ab_instance
        ctx = inst.require_ctx("expire")
        approvals.decide_without_running(inst, ctx, approval_id, "expired", None, "expired")
        engine.approval_closed(inst, ctx, approval_id, "expired", None, "expired")

    # -- workflows (agentbook.workflow): the handlers that move a run ----------------------
    async def _ab_workflow_resume(self, run_id: str) -> None:
        from ..workflow import engine

        inst = self._ab_instance
        await engine.resume(inst, inst.require_ctx("workflow"), run_id)

    async def _ab_workflow_continue(self, run_id: str) -> None:
        from ..workflow import engine

        inst = self._ab_instance
        await engine.resume(inst, inst.require_ctx("workflow"), run_id, queued=True)

    def _ab_workflow_event(self, run_id: str, name: str, value: Any) -> bool:
        from ..workflow import engine

        inst = self._ab_instance
        return engine.deliver_event(inst, inst.require_ctx("send_event"), run_id, name, value)

    def _ab_workflow_decided(self, run_id: str, seq: int) -> None:
        from ..workflow import engine

        inst = self._ab_instance
        engine.approved(inst, inst.require_ctx("approve"), run_id, seq)

    def _ab_workflow_cancel(self, run_id: str) -> bool:
        from ..workflow import engine

        inst = self._ab_instance
        return engine.cancel(inst, inst.require_ctx("cancel"), run_id)

    async def add_mcp_server(self, name: str, target: str | list[str], *,
                             headers: dict[str, str] | None = None,
                             env: dict[str, str] | None = None) -> dict[str, Any]:
        """Connect this agent to an MCP server, and remember it (it reconnects on wake).

        Args:
            name: What the agent calls the server; prefixes its tools on name clashes.
            target: A streamable-HTTP URL, or a command (list or string) for stdio.
            headers: HTTP headers (e.g. Authorization); kept apart as secrets, never in
                history, events, views or forks.
            env: Environment for a stdio server; kept apart as secrets too.

        Returns:
            The server's state: ``{"name", "state": "ready"|"connecting"|"failed", "error",
            "tools", ...}``. Adding the same name and target again changes nothing.
        """
        from ..mcp import agentside

        return await agentside.add(self, name, target, headers or {}, env or {})

    async def remove_mcp_server(self, name: str) -> None:
        """Disconnect from and forget an MCP server."""
        from ..mcp import agentside

        await agentside.remove(self, name)

    def get_mcp_servers(self) -> list[dict[str, Any]]:
        """The agent's MCP servers: state, tools, last sync, error."""
        from ..mcp import agentside

        return agentside.servers(self)

    @property
    def mcp(self) -> Any:
        """MCP access: ``await self.mcp.ready()``, ``await self.mcp.call(server, tool, args)``."""
        from ..mcp import agentside

        return agentside.MCPAccess(self)


methods.reserve(name for name in dir(Agent) if not name.startswith("__"))
#: The hooks as Agent has them (they do nothing): ``set_state`` skips calling them.
_VALIDATE = Agent.validate_state_change
_CHANGED = Agent.on_state_changed
