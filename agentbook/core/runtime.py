"""``ab.Runtime``: hosts agents, routes messages, hibernates the idle.

A runtime owns a folder (``.agentbook`` by default): ``catalog.db`` plus one SQLite file
per agent under ``agents/<Class>/``. ``":memory:"`` keeps the same layout in a private
temporary folder (in ``/dev/shm`` where there is one) that is removed on close: fast,
and gone when the runtime is.

``rt.get(Cls, name)`` is cheap and starts nothing. The first message wakes the agent
(opens its file, runs ``on_start``); an idle agent hibernates (its file is closed and
nothing of it stays in memory) after ``hibernate_after`` seconds, or sooner when more
than ``max_open`` stores are open.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..approve.inbox import Approvals
from ..clock import Clock, SystemClock
from ..errors import AgentbookError, LimitError, RuntimeClosedError, StoreCorruptError, StoreError, UsageError
from ..events import EventBus
from ..schedule.timers import Timers
from ..store import Catalog, agent_file
from .agent import Agent, _classes, latest
from .calls import prepare
from .mailbox import Envelope, Instance
from .ops import destroy_op
from .runtime_lru import HibernationMixin
from .runtime_schedules import SchedulesMixin
from .runtime_views import ViewsMixin

if TYPE_CHECKING:

    from .ref import AgentRef

__all__ = ["Runtime", "runtime"]

log = logging.getLogger("agentbook")

Key = tuple[str, str]
_DURABILITY = ("normal", "full")
_MAX_NAME = 200
_BAD_NAME = re.compile(r"[\x00-\x1f/\\]|[\ud800-\udfff]")


class Runtime(ViewsMixin, SchedulesMixin, HibernationMixin):
    """Hosts agents and their durable stores.

    Args:
        path: The runtime's folder, or ``":memory:"`` for an ephemeral runtime.
        durability: ``"normal"`` - a commit survives the process being killed (kernel
            restart); ``"full"`` - it also survives an OS crash (fsync per commit).
        clock: Where time comes from; ``ab.VirtualClock()`` for simulations and tests.
        events: ``False`` switches the event bus off entirely.
        max_open: How many agent stores may be open at once (file handles stay bounded).
        hibernate_after: Seconds of idleness after which an agent hibernates.
        max_batch: How many queued messages may share one commit.
        max_payload_bytes: Largest arguments of one call, as JSON.
        max_state_bytes: Largest state of one agent, as JSON.
        max_queue: Most messages waiting for one agent before callers are refused.
        max_store_bytes: A size cap for each agent's store file (``None``: the disk).
        max_query_seconds: How long one read-only query (``self.sql(..., readonly=True)``,
            e.g. SQL a model wrote) may run before it is stopped with an ``SQLError``
            (``None``: no limit).
        backend: ``"local"`` (this process) or ``"ray"`` (agents hosted by Ray actors;
            see :mod:`agentbook.backends.ray`).
        address: The Ray cluster to join (``None``: start or reuse a local one).
        hosts: How many Ray actors host agents.
        shards: Virtual shards that agents hash onto (fixed for a store folder).

    Example:
        >>> rt = Runtime(":memory:")
        >>> ref = rt.get(Counter, "a")      # doctest: +SKIP
        >>> await ref.increment()           # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".agentbook",
        *,
        durability: str = "normal",
        clock: Clock | None = None,
        events: bool = True,
        max_open: int = 256,
        hibernate_after: float = 60.0,
        max_batch: int = 256,
        max_payload_bytes: int = 1 << 20,
        max_state_bytes: int = 16 << 20,
        max_queue: int = 100_000,
        max_store_bytes: int | None = None,
        max_query_seconds: float | None = 0.5,
        backend: str = "local",
        address: str | None = None,
        hosts: int = 2,
        shards: int = 64,
    ) -> None:
        if durability not in _DURABILITY:
            raise UsageError(f"durability must be 'normal' or 'full', not {durability!r}")
        _check_limits(max_open=max_open, max_batch=max_batch, max_payload_bytes=max_payload_bytes,
                      max_state_bytes=max_state_bytes, max_queue=max_queue,
                      max_store_bytes=max_store_bytes, hibernate_after=hibernate_after,
                      max_query_seconds=max_query_seconds)
        path = os.fspath(path)
        self.memory = path == ":memory:"
        if self.memory:
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self.root = tempfile.mkdtemp(prefix="agentbook-mem-", dir=base)
            self.durability = "off"
            atexit.register(shutil.rmtree, self.root, True)
        else:
            self.root = os.path.abspath(path)
            self.durability = durability
        self.path = path
        self.clock: Clock = clock or SystemClock()
        self.events = EventBus(enabled=events)
        self.max_open = max_open
        self.hibernate_after = hibernate_after
        self.max_batch = max_batch
        self.max_payload_bytes = max_payload_bytes
        self.max_state_bytes = max_state_bytes
        self.max_queue = max_queue
        self.max_store_bytes = max_store_bytes
        self.max_query_seconds = max_query_seconds
        self.catalog = Catalog(self.root, "off" if self.memory else durability)
        self.closed = False
        self.source = "cell" if "ipykernel" in sys.modules else "script"
        self._instances: dict[Key, Instance] = {}
        #: The class this runtime was given for each class name (see :meth:`_class_for`).
        self._classes: dict[str, type[Agent]] = {}
        self._open: OrderedDict[Key, Instance] = OrderedDict()
        self._unkicked: set[Key] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._broadcast_hooks: list[Any] = []
        self._approvals: Approvals | None = None
        self._analytics: Any = None
        #: The running server (``rt.serve()``), if any.
        self._server: Any = None
        #: MCP client connections of awake agents (agentbook.mcp), made on first use.
        self._mcp: Any = None
        #: Routes messages to other processes (the Ray backend), or ``None``.
        self._router: Any = None
        #: ``(host id, shards)`` on a Ray host: it opens only agents of shards it leases.
        self._lease: tuple[str, int] | None = None
        if backend not in ("local", "ray"):
            raise UsageError(f"backend is 'local' or 'ray', not {backend!r}")
        #: Agents that committed since the DuckDB views last caught up.
        self._dirty: set[Key] = set()
        self.timers = Timers(self)
        if backend == "ray":
            from ..backends.ray import start

            self._router = start(self, address, hosts, shards)
        self.timers.load()
        global _latest
        _latest = weakref.ref(self)
        if hasattr(self.clock, "add_settler"):
            self.clock.add_settler(self)

    # -- agents -------------------------------------------------------------------------
    def get(self, cls: type[Agent] | str, name: str) -> AgentRef:
        """A reference to the agent of class *cls* named *name* (created on first message).

        Cheap: nothing is opened or started until a message arrives.
        """
        from .ref import AgentRef

        self._check_open()
        class_name = _class_name(cls)
        _check_name(name)
        if not isinstance(cls, str):
            self._classes[class_name] = cls
        return AgentRef(self, class_name, name)

    def spawn(self, cls: type[Agent] | str, name: str | None = None) -> AgentRef:
        """A reference to a new agent of class *cls* with a fresh unique name."""
        class_name = _class_name(cls)
        if name is None:
            name = f"{class_name.lower()}-{secrets.token_hex(4)}"
        return self.get(class_name, name)

    def hibernate(self) -> int:
        """Hibernate every idle agent now; returns how many were put to sleep."""
        idle = [inst for inst in list(self._open.values()) if not inst.busy]
        for inst in idle:
            self._hibernate(inst)
        if self._router is not None and self._router.index is None:
            return len(idle) + self._router.hibernate()
        return len(idle)

    def _class_for(self, class_name: str) -> type[Agent] | None:
        """The agent class for *class_name*: the newest definition of the class this
        runtime was given by ``get``/``spawn``, else the newest class of that name."""
        cls = self._classes.get(class_name)
        return latest(cls) if cls is not None else _classes.get(class_name)

    def _owns(self, key: Key) -> bool:
        """Whether this process runs *key* (always, without a router)."""
        return self._router is None or self._router.owns(key)

    def _holds_lease(self, key: Key) -> bool:
        """On a Ray host: whether this host holds the lease of *key*'s shard."""
        if self._lease is None:
            return True
        from ..backends.ray import shard_of

        host_id, shards = self._lease
        return self.catalog.lease_holder(shard_of(key, shards)) == host_id

    # -- life ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close every store. Queued messages fail with :class:`RuntimeClosedError`."""
        if self.closed:
            return
        exact = []
        for inst in self._open.values():
            if inst.store is not None and not inst.busy:
                try:
                    from ..schedule.firing import next_due

                    exact.append((inst.key, next_due(inst.store)))
                except Exception:
                    pass
        try:
            self.timers.index_exact(exact)
        except AgentbookError:
            pass
        self.timers.close()
        if self._mcp is not None:
            self._mcp.close_all()
        if self._router is not None and self._router.index is None:
            self._router.shutdown()
        if self._server is not None:
            try:
                self._server.stop()
            except Exception:
                pass
        if self.events.active:
            self.events.emit("runtime:close", None, None, {"path": self.path}, self.clock.now())
        self.closed = True
        error = RuntimeClosedError("the runtime was closed; create a new ab.Runtime to go on")
        for inst in list(self._instances.values()):
            inst._fail_queue(error)
            if inst.task is not None and not inst.task.done():
                inst.task.cancel()
            inst.close()
        self._instances.clear()
        self._open.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self.catalog.close()
        if self.memory:
            shutil.rmtree(self.root, ignore_errors=True)

    async def aclose(self) -> None:
        """Let running handlers finish, then close."""
        tasks = [i.task for i in self._instances.values() if i.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close()
        if self._mcp is not None:
            await self._mcp.wait_closed()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._open)} awake"
        return f"<agentbook.Runtime {self.path!r} {state}>"

    def _repr_html_(self) -> str:
        from ..reprs import runtime_html

        return runtime_html(self)

    # -- messages (used by AgentRef and the mailbox) --------------------------------------
    def _prepare(self, key: Key, method: str, args: tuple, kwargs: dict, *,
                 external: bool, future: bool) -> Envelope:
        """Check a call completely before anything is queued, and build its envelope."""
        self._check_open()
        env = prepare(self.source, key, self._class_for(key[0]), method, args, kwargs,
                      external=external, future=future)
        size = len(env.args_json) + len(env.kwargs_json or "")
        if size > self.max_payload_bytes:
            raise LimitError(
                f"the arguments of {method}() are {size} bytes of JSON; the limit is "
                f"{self.max_payload_bytes} (ab.Runtime(max_payload_bytes=...)); store big data "
                "in the agent's SQL tables instead")
        inst = self._instances.get(key)
        if inst is not None and len(inst.queue) >= self.max_queue:
            raise LimitError(
                f"{key[0]}({key[1]!r}) already has {len(inst.queue)} messages waiting (the limit"
                " is ab.Runtime(max_queue=...)); slow down, or await the calls you make")
        return env

    def _submit(self, key: Key, env: Envelope) -> Any:
        """Queue *env* and return an awaitable of its result."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _Deferred(self, key, env)
        env.future = loop.create_future()
        self._enqueue(key, env)
        return env.future

    def _send(self, key: Key, env: Envelope) -> None:
        """Queue a fire-and-forget message; from a handler it leaves after the commit."""
        chain = env.chain
        if chain:
            inst = self._instances.get(chain[-1])
            if inst is not None and inst.ctx is not None:
                inst.ctx.outbox.append((key, env))
                return
        self._enqueue(key, env)

    def _enqueue(self, key: Key, env: Envelope) -> None:
        if self.closed:
            if env.future is not None and not env.future.done():
                env.future.set_exception(RuntimeClosedError("the runtime was closed"))
            return
        if self._router is not None and not self._router.owns(key):
            self._router.forward(key, env)
            return
        inst = self._instances.get(key)
        if inst is None:
            inst = self._instances[key] = Instance(self, key, self._class_for(key[0]))
        inst.queue.append(env)
        if inst.task is None:
            self._kick(inst)

    def _kick(self, inst: Instance) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._unkicked.add(inst.key)
            return
        self.timers.arm_if_pending()
        if self._unkicked:
            pending, self._unkicked = self._unkicked, set()
            for key in pending:
                other = self._instances.get(key)
                if other is not None and other.task is None and other.queue and other is not inst:
                    other.task = loop.create_task(other.drain())
        inst.task = loop.create_task(inst.drain())

    # -- bookkeeping called by instances --------------------------------------------------
    def _path_of(self, key: Key) -> str:
        return os.path.join(self.root, agent_file(*key))

    def _should_drop(self, exc: BaseException) -> bool:
        return isinstance(exc, (StoreError, StoreCorruptError))

    def _created(self, inst: Instance) -> None:
        self.catalog.add(inst.key[0], inst.key[1], agent_file(*inst.key), self.clock.now())

    def _emit(self, type_: str, key: Key, payload: Any) -> None:
        self.events.emit(type_, key[0], key[1], payload, self.clock.now())

    def _broadcast(self, key: Key, message: Any, exclude: list) -> None:
        for hook in list(self._broadcast_hooks):
            hook(key, message, exclude)
        if self.events.active:
            self._emit("broadcast", key, {"message": message})

    def _report_error(self, key: Key, env: Envelope, exc: BaseException) -> None:
        """A fire-and-forget message failed: hand the error to the agent's ``on_error``."""
        cls = self._class_for(key[0])
        if cls is None or cls.on_error is Agent.on_error:
            log.warning("%s(%r).%s failed: %s: %s", key[0], key[1], env.method,
                        type(exc).__name__, exc)
            return
        info = {"type": type(exc).__name__, "message": str(exc), "method": env.method}
        self._enqueue(key, Envelope("on_error", (exc,), {}, jsonvalue.dumps([info]), None,
                                    "error"))

    def _destroy_later(self, key: Key) -> None:
        self._enqueue(key, Envelope("destroy", (), {}, "[]", None, "destroy", op=destroy_op))

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeClosedError("the runtime was closed; create a new ab.Runtime to go on")


class _Deferred:
    """A call made outside any event loop: queued when first awaited."""

    __slots__ = ("env", "key", "rt")

    def __init__(self, rt: Runtime, key: Key, env: Envelope) -> None:
        self.rt, self.key, self.env = rt, key, env

    def __await__(self) -> Any:
        return self.rt._submit(self.key, self.env).__await__()


def _class_name(cls: type[Agent] | str) -> str:
    if isinstance(cls, str):
        return cls
    if isinstance(cls, type) and issubclass(cls, Agent):
        return cls.__name__
    raise UsageError(f"expected an ab.Agent subclass (or its name), got {cls!r}")


def _check_limits(**limits: Any) -> None:
    """Counts and sizes are positive ints; times are non-negative numbers of seconds; the
    store cap and the query budget may be ``None`` (no limit)."""
    for name, value in limits.items():
        if value is None and name in ("max_store_bytes", "max_query_seconds"):
            continue
        if name in ("hibernate_after", "max_query_seconds"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                0 <= value < float("inf") and (value > 0 or name == "hibernate_after")
            what = "a positive number of seconds" + (" (or None)" if "query" in name else "")
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            what = "a positive int" + (" (or None)" if name == "max_store_bytes" else "")
        if not ok:
            raise UsageError(f"ab.Runtime({name}=...) must be {what}, not {value!r}")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or _BAD_NAME.search(name):
        raise UsageError(
            f"agent names are non-empty strings of at most {_MAX_NAME} characters without "
            f"'/', '\\' or control characters; got {name!r}"
        )


_default: Runtime | None = None
_latest: weakref.ref[Runtime] | None = None


def current_runtime() -> Runtime:
    """The runtime made most recently in this process that is still open, or the default."""
    latest = _latest() if _latest is not None else None
    if latest is not None and not latest.closed:
        return latest
    return runtime()


def runtime(path: str | os.PathLike[str] = ".agentbook", **options: Any) -> Runtime:
    """The process-wide default runtime (created on first use, in ``./.agentbook``)."""
    global _default
    if _default is None or _default.closed:
        _default = Runtime(path, **options)
    return _default
