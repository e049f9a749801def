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
import time
import weakref
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..approve.inbox import Approvals
from ..clock import Clock, SystemClock
from ..envelope import TICK, Envelope
from ..errors import AgentbookError, LimitError, RuntimeClosedError, StoreCorruptError, StoreError, UsageError
from ..events import EventBus
from ..schedule.timers import Timers
from ..store import Catalog, class_name_problem, folded
from ..store.closer import Closer
from ..store.events import Retention
from .agent import Agent, agent_classes, latest
from .calls import prepare
from .mailbox import Instance
from .nolease import NO_LEASE
from .ops import destroy_op

if TYPE_CHECKING:
    import pandas as pd

    from .ref import AgentRef

__all__ = ["Runtime", "runtime"]

log = logging.getLogger("agentbook")

Key = tuple[str, str]
_DURABILITY = ("normal", "full")
_MAX_NAME = 200
_BAD_NAME = re.compile(r"[\x00-\x1f/\\]|[\ud800-\udfff]")
#: How long one turn of the event loop may spend on the drains of ticks let in together
#: (an awaited call from a cell waits about this long behind a storm of due schedules).
_TURN_SECONDS = 0.001
_MAX_PER_TURN = 256


class Runtime:
    """Hosts agents and their durable stores.

    Args:
        path: The runtime's folder, or ``":memory:"`` for an ephemeral runtime.
        durability: ``"normal"`` - a commit survives the process being killed (kernel
            restart); ``"full"`` - it also survives an OS crash (fsync per commit).
        clock: Where time comes from; ``ab.VirtualClock()`` for simulations and tests.
        events: ``False`` switches the event bus off entirely (live delivery and the
            record).
        events_keep: How many of each agent's newest events stay on record (the ``events``
            view); ``None`` keeps them all, ``0`` keeps none (live delivery only).
        events_max_age: Seconds an event stays on record (``None``: no limit).
        max_open: How many agent stores may be open at once (file handles stay bounded).
            ``None`` sizes it from the limit on open files (at most 1 024; see
            :mod:`agentbook.store.fds`); one that can't fit is lowered, with a warning logged.
        hibernate_after: Seconds of idleness after which an agent hibernates.
        max_batch: How many queued messages may share one commit.
        max_payload_bytes: Largest arguments of one call, as JSON.
        max_state_bytes: Largest state of one agent, as JSON.
        max_queue: Most messages waiting for one agent before callers are refused.
        max_store_bytes: A size cap for each agent's store file (``None``: the disk).
        max_query_seconds: How long one read-only query (``self.sql(..., readonly=True)``,
            e.g. SQL a model wrote) may run before it is stopped with an ``SQLError``
            (``None``: no limit).
        owner_wait: Seconds a message waits while another process (another kernel on the
            same folder) runs its agent, before it fails with ``OwnedElsewhereError``
            naming that process. One process at a time runs an agent; reads work from all.
        backend: ``"local"`` (this process) or ``"ray"`` (agents hosted by Ray actors;
            see :mod:`agentbook.backends.ray`).
        address: The Ray cluster to join (``None``: start or reuse a local one).
        hosts: How many Ray actors host agents.
        shards: Virtual shards that agents hash onto (fixed for a store folder).
        host_dir: Ray, across machines: each host keeps its shards' stores in this folder
            on its own node (``{node}`` is the Ray node id), coordinated through Ray - no
            shared filesystem; the driver reads through the hosts and opens no store file.
            Default: today's single-machine mode (one shared folder), unless *replicas* is
            set or *address* joins a cluster: then a folder under each node's Ray temp dir.
        replicas: Ray, across machines: ``1`` keeps a copy of every shard on a host of
            another node, promoted when the node is lost. With it, *durability* is
            ``"replicated"`` (the default: a call is acknowledged once its version is on
            the replica too) or ``"async"`` (shipped right after; a lost node may take
            the last moments' versions with it).
        lease_seconds: Ray, across machines: how long a host's shard leases last without
            renewal (a lost node's shards move to their replicas after 1.5 of these).

    Example:
        >>> rt = Runtime(":memory:")
        >>> ref = rt.get(Counter, "a")      # doctest: +SKIP
        >>> await ref.increment()           # doctest: +SKIP
    """

    #: The runtime's internal API: what agentbook's own modules (the mailbox, refs, serve,
    #: MCP, Ray) call on it, by name, instead of reaching into private members. Not part of
    #: the public API: hidden from ``dir()`` (tab completion) and from docs/api.md.
    _ab_internal = frozenset({
        "broadcast_from", "broadcast_hooks", "built_analytics", "check_open", "class_for",
        "classes", "closer", "created", "dead_letter_op", "destroy_later", "dirty", "emit_event",
        "emit_scheduled", "enqueue", "hibernate_one", "holds_lease", "idle", "instances", "lease",
        "mark_idle", "mark_opened", "mcp_clients", "open_stores", "owns", "pace", "path_of",
        "prepare_call", "reads", "report_error", "router", "scheduled_failure", "send_later", "server",
        "should_drop", "submit", "sweep", "sweep_handle", "tick", "unkicked",
    })

    def __dir__(self) -> list[str]:
        return [name for name in super().__dir__() if name not in self._ab_internal]

    def __init__(
        self,
        path: str | os.PathLike[str] = ".agentbook",
        *,
        durability: str = "normal",
        clock: Clock | None = None,
        events: bool = True,
        events_keep: int | None = 10_000,
        events_max_age: float | None = None,
        max_open: int | None = None,
        hibernate_after: float = 60.0,
        max_batch: int = 256,
        max_payload_bytes: int = 1 << 20,
        max_state_bytes: int = 16 << 20,
        max_queue: int = 100_000,
        max_store_bytes: int | None = None,
        max_query_seconds: float | None = 0.5,
        owner_wait: float = 5.0,
        backend: str = "local",
        address: str | None = None,
        hosts: int = 2,
        shards: int = 64,
        host_dir: str | None = None,
        replicas: int = 0,
        lease_seconds: float = 10.0,
    ) -> None:
        replication = None
        if durability in ("replicated", "async") and backend == "ray":
            replication, durability = durability, "normal"
        if durability not in _DURABILITY:
            raise UsageError(f"durability must be 'normal' or 'full' (with backend='ray' and "
                             f"replicas=1 also 'replicated' or 'async'), not {durability!r}")
        from ..store.fds import fit_max_open  # (raises the soft limit on open files, once)

        max_open = fit_max_open(max_open)
        _check_limits(max_open=max_open, max_batch=max_batch, max_payload_bytes=max_payload_bytes,
                      max_state_bytes=max_state_bytes, max_queue=max_queue,
                      max_store_bytes=max_store_bytes, hibernate_after=hibernate_after,
                      max_query_seconds=max_query_seconds, owner_wait=owner_wait)
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
        if events_keep is not None and (isinstance(events_keep, bool)
                                        or not isinstance(events_keep, int) or events_keep < 0):
            raise UsageError(f"events_keep is a count >= 0 or None, not {events_keep!r}")
        if events_max_age is not None and not (isinstance(events_max_age, (int, float))
                                               and events_max_age > 0):
            raise UsageError(f"events_max_age is seconds > 0 or None, not {events_max_age!r}")
        self.events = EventBus(enabled=events, record=events_keep != 0)
        #: How much of each agent's event stream its store keeps (agentbook.store.events).
        self.events_retention = Retention(events_keep, events_max_age)
        self.max_open = max_open
        self.hibernate_after = hibernate_after
        self.max_batch = max_batch
        self.max_payload_bytes = max_payload_bytes
        self.max_state_bytes = max_state_bytes
        self.max_queue = max_queue
        self.max_store_bytes = max_store_bytes
        self.max_query_seconds = max_query_seconds
        self.owner_wait = owner_wait
        # A Ray driver whose agents' stores are on the hosts' nodes keeps its catalog in
        # memory and writes no file (the coordinator and the hosts hold everything).
        node_local = False
        if backend == "ray":
            from ..backends.ray import RayRouter

            node_local = RayRouter.node_local(host_dir, replicas, address)
        self.catalog = Catalog(self.root, "off" if self.memory else durability,
                               on_disk=not node_local)
        self.closed = False
        self.source = "cell" if "ipykernel" in sys.modules else "script"
        self.instances: dict[Key, Instance] = {}
        #: The class this runtime was given for each class name (see :meth:`_class_for`).
        self.classes: dict[str, type[Agent]] = {}
        #: class_for's answers, good while no agent class is defined (Agent._ab_defined).
        self._newest: dict[str, type[Agent]] = {}
        self._newest_at = -1
        #: Class names checked against the class folders on disk (case-insensitive).
        self._folders: dict[str, str] = {}
        self.open_stores: OrderedDict[Key, Instance] = OrderedDict()
        #: The open stores whose agents are idle, least recently used first (the ones
        #: hibernated when more than ``max_open`` are open); stale entries are skipped.
        self.idle: OrderedDict[Key, Instance] = OrderedDict()
        #: Closes the stores of hibernated agents off the event loop (a folder's stores
        #: only: closing a ':memory:' one costs no fsync); at most max_open // 8 wait.
        self.closer = Closer(0 if self.memory else max(1, max_open // 8))
        self.unkicked: set[Key] = set()
        #: Agents due, waiting for their tick to be let in (see :meth:`tick`), in due order.
        self._waking: OrderedDict[Key, None] = OrderedDict()
        #: Drains waiting for their turn to run one more batch of due work (:meth:`pace`).
        self._paced: deque[asyncio.Future[None]] = deque()
        self._waker: asyncio.Task | None = None
        self.sweep_handle: asyncio.TimerHandle | None = None
        self.broadcast_hooks: list[Any] = []
        self._approvals: Approvals | None = None
        self.built_analytics: Any = None
        #: The running server (``rt.serve()``), if any.
        self.server: Any = None
        #: MCP client connections of awake agents (agentbook.mcp), made on first use.
        self.mcp_clients: Any = None
        #: Routes messages to other processes (the Ray backend), or ``None``.
        self.router: Any = None
        #: Answers reads of agents whose stores are elsewhere (the hosts of a Ray runtime
        #: with ``host_dir``: see agentbook.backends.ray_reads), or ``None``: the files.
        self.reads: Any = None
        #: Which agents this process may open and commit (``holds(key)``; ``fence(key)``
        #: before each commit; ``opened``/``written`` for a replica to follow): on a Ray
        #: host, its shard leases; else :data:`NO_LEASE` (every agent, nothing to do).
        self.lease: Any = NO_LEASE
        if backend not in ("local", "ray"):
            raise UsageError(f"backend is 'local' or 'ray', not {backend!r}")
        if backend == "local" and (host_dir is not None or replicas):
            raise UsageError("host_dir and replicas are for backend='ray' (agents across "
                             "machines); a local runtime keeps its stores in its path")
        #: Agents that committed since the DuckDB views last caught up.
        self.dirty: set[Key] = set()
        self.timers = Timers(self)
        if backend == "ray":
            from ..backends.ray import start

            self.router = start(self, address, hosts, shards, host_dir=host_dir,
                                replicas=replicas, replication=replication,
                                lease_seconds=lease_seconds)
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

        self.check_open()
        class_name = _class_name(cls)
        _check_name(name)
        if class_name not in self._folders:
            self._check_folder(class_name)
        if not isinstance(cls, str) and self.classes.get(class_name) is not cls:
            self.classes[class_name] = cls
            self._newest.pop(class_name, None)
        return AgentRef(self, class_name, name)

    def _check_folder(self, class_name: str) -> None:
        """Class names that differ only in case would share one folder on macOS and
        Windows (and merge there): the second one is refused, here and on disk."""
        key = folded(class_name)
        known = {folded(n): n for n in (*self._folders.values(), *self.classes)}
        for folder in self.catalog.class_folders():
            known.setdefault(folded(folder), folder)
        other = known.get(key)
        if other is not None and other != class_name:
            raise UsageError(
                f"an agent class named {class_name!r} would share its folder with the class "
                f"{other!r} where file names ignore case (macOS, Windows); rename one of them")
        self._folders[class_name] = class_name

    def spawn(self, cls: type[Agent] | str, name: str | None = None) -> AgentRef:
        """A reference to a new agent of class *cls* with a fresh unique name."""
        class_name = _class_name(cls)
        if name is None:
            name = f"{class_name.lower()}-{secrets.token_hex(4)}"
        return self.get(class_name, name)

    def import_agent(self, path: str | os.PathLike, name: str | None = None, *,
                     replace: bool = False) -> Any:
        """Bring an agent exported with ``ref.export(path)`` into this runtime, as *name*
        (default: its name where it came from), with its history, tables, key-value data
        and schedules. The file is checked first (an ``AgentFileError`` says what is wrong
        with it; nothing is written then). An agent of that class and name already here is
        refused unless *replace* (which destroys it first). Runs when awaited:
        ``ref = await rt.import_agent("alice.abagent", name="alice-from-class")``."""
        from ..travel.portable import import_agent
        from .ref import Pending

        if self.reads is not None:
            self.reads.refuse("rt.import_agent")
        return Pending(f"import_agent({os.path.basename(os.fspath(path))!r})",
                       lambda: import_agent(self, path, name, replace))

    def hibernate(self) -> int:
        """Hibernate every idle agent now; returns how many were put to sleep."""
        idle = [inst for inst in list(self.open_stores.values()) if not inst.busy]
        for inst in idle:
            self.hibernate_one(inst)
        self.closer.wait()  # (closed and checkpointed when this returns: another process
        #                    may take them, and no -wal stays behind)
        if self.router is not None and self.router.index is None:
            return len(idle) + self.router.hibernate()
        return len(idle)

    def class_for(self, class_name: str) -> type[Agent] | None:
        """The agent class for *class_name*: the newest definition of the class this
        runtime was given by ``get``/``spawn``, else the newest class of that name."""
        if self._newest_at != Agent._ab_defined:  # a class was defined (or redefined) since
            self._newest.clear()
            self._newest_at = Agent._ab_defined
        newest = self._newest.get(class_name)
        if newest is None:
            cls = self.classes.get(class_name)
            if cls is None:
                cls = agent_classes().get(class_name)
                if cls is None:
                    return None
                self.classes[class_name] = cls
            newest = self._newest[class_name] = latest(cls)
        return newest

    def owns(self, key: Key) -> bool:
        """Whether this process runs *key* (always, without a router)."""
        return self.router is None or self.router.owns(key)

    def holds_lease(self, key: Key) -> bool:
        """On a Ray host: whether this host holds the lease of *key*'s shard (always,
        elsewhere)."""
        return self.lease.holds(key)

    def add_hosts(self, count: int = 1) -> list[dict[str, Any]]:
        """Ray with node-local stores (``host_dir=``): start *count* more hosts, each on the
        live node with the fewest, and move whole shards to them (snapshots through Ray's
        object store; their schedules, approvals, workflows and outbox go along). Returns
        the moves: ``[{"shard", "from", "to", "agents", "bytes", "seconds"}, ...]``."""
        if self.router is None or self.router.index is not None:
            raise UsageError("add_hosts() is for ab.Runtime(..., backend='ray', host_dir=...)")
        for _ in range(count):
            self.router.add_host()
        return self.router.rebalance()

    def remove_hosts(self, count: int = 1) -> list[dict[str, Any]]:
        """Ray with node-local stores: drain the *count* newest hosts and stop them (the
        other side of :meth:`add_hosts`). Each one's shards move, whole, to the hosts that
        stay while messages go on (their schedules, approvals, workflows and outbox go
        along and fire once), the replicas it keeps are made again on other hosts, then
        it deletes its folder and stops (what it could not delete is logged as a warning).
        Returns the moves, like :meth:`add_hosts`."""
        router = self._host_router("remove_hosts")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UsageError(f"count is how many hosts to remove (an int >= 1), not {count!r}")
        # (removing every host is refused there: someone has to own the shards)
        return router.remove_hosts(router.serving_hosts()[-count:])

    def drain_node(self, node_id: str) -> list[dict[str, Any]]:
        """Ray with node-local stores: before a machine leaves the cluster (``ray stop``
        there, or ``cluster.remove_node``), move everything its hosts own or keep to the
        hosts on other nodes and stop them, while messages go on. *node_id* is the Ray
        node id (hex: ``ray.nodes()``, ``ray status``). Returns the moves. It blocks until
        done: ``await asyncio.to_thread(rt.drain_node, node_id)`` keeps the notebook's own
        calls flowing meanwhile."""
        router = self._host_router("drain_node")
        return router.remove_hosts(router.hosts_on(node_id))

    def _host_router(self, what: str) -> Any:
        self.check_open()
        if self.router is None or self.router.index is not None \
                or not self.router.keeps_stores_on_nodes:
            raise UsageError(f"{what}() is for ab.Runtime(..., backend='ray', host_dir=...) "
                             "(hosts that keep their stores on their own nodes)")
        return self.router

    # -- life ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close every store. Queued messages fail with :class:`RuntimeClosedError`."""
        if self.closed:
            return
        exact = []
        for inst in self.open_stores.values():
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
        if self.mcp_clients is not None:
            self.mcp_clients.close_all()
        if self.router is not None and self.router.index is None:
            self.router.shutdown()
        if self.server is not None:
            try:
                self.server.stop()
            except Exception:
                pass
        if self.events.active:
            self.events.emit("runtime:close", None, None, {"path": self.path}, self.clock.now())
        self.closed = True
        error = RuntimeClosedError("the runtime was closed; create a new ab.Runtime to go on")
        for inst in list(self.instances.values()):
            inst.fail_queue(error)
            if inst.task is not None and not inst.task.done():
                inst.task.cancel()
            inst.close()
        self.instances.clear()
        self.open_stores.clear()
        self.idle.clear()
        self._waking.clear()
        self._release_paced()
        self.closer.stop()
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
        self.catalog.close()
        if self.memory:
            shutil.rmtree(self.root, ignore_errors=True)

    async def aclose(self) -> None:
        """Let running handlers finish, then close."""
        tasks = [i.task for i in self.instances.values() if i.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close()
        if self.mcp_clients is not None:
            await self.mcp_clients.wait_closed()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.open_stores)} awake"
        return f"<agentbook.Runtime {self.path!r} {state}>"

    def _repr_html_(self) -> str:
        from ..reprs import runtime_html

        return runtime_html(self)

    # -- messages (used by AgentRef and the mailbox) --------------------------------------
    def prepare_call(self, key: Key, method: str, args: tuple, kwargs: dict, *,
                     external: bool, future: bool) -> Envelope:
        """Check a call completely before anything is queued, and build its envelope."""
        if self.closed:
            self.check_open()
        env = prepare(self.source, key, self.class_for(key[0]), method, args, kwargs,
                      external=external, future=future, approvals=self.catalog.approval_index)
        size = len(env.args_json) + len(env.kwargs_json or "")
        if size > self.max_payload_bytes:
            raise LimitError(
                f"the arguments of {method}() are {size} bytes of JSON; the limit is "
                f"{self.max_payload_bytes} (ab.Runtime(max_payload_bytes=...)); store big data "
                "in the agent's SQL tables instead")
        inst = self.instances.get(key)
        if inst is not None and len(inst.queue) >= self.max_queue:
            raise LimitError(
                f"{key[0]}({key[1]!r}) already has {len(inst.queue)} messages waiting (the limit"
                " is ab.Runtime(max_queue=...)); slow down, or await the calls you make")
        return env

    def submit(self, key: Key, env: Envelope) -> Any:
        """Queue *env* and return an awaitable of its result."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _Deferred(self, key, env)
        env.future = loop.create_future()
        self.enqueue(key, env)
        return env.future

    def send_later(self, key: Key, env: Envelope) -> None:
        """Queue a fire-and-forget message; from a handler it leaves after the commit."""
        chain = env.chain
        if chain:
            inst = self.instances.get(chain[-1])
            if inst is not None and inst.ctx is not None:
                inst.ctx.outbox.append((key, env))
                return
        self.enqueue(key, env)

    def enqueue(self, key: Key, env: Envelope) -> None:
        """Put *env* in the agent's mailbox (or hand it to the host that owns it)."""
        if self.closed:
            if env.future is not None and not env.future.done():
                env.future.set_exception(RuntimeClosedError("the runtime was closed"))
            return
        if self.router is not None and not self.router.owns(key):
            self.router.forward(key, env)
            return
        inst = self.instances.get(key)
        if inst is None:
            inst = self.instances[key] = Instance(self, key, self.class_for(key[0]))
        inst.queue.append(env)
        if inst.task is None:
            self.idle.pop(key, None)
            self._kick(inst)

    def _kick(self, inst: Instance) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.unkicked.add(inst.key)
            return
        self.timers.arm_if_pending()
        if self.unkicked:
            pending, self.unkicked = self.unkicked, set()
            for key in pending:
                other = self.instances.get(key)
                if other is not None and other.task is None and other.queue and other is not inst:
                    other.task = loop.create_task(other.drain())
        inst.task = loop.create_task(inst.drain())

    # -- bookkeeping called by instances --------------------------------------------------
    def path_of(self, key: Key) -> str:
        """The store file of agent *key* (also one an older agentbook named)."""
        return self.catalog.store_path(*key)

    def should_drop(self, exc: BaseException) -> bool:
        """Whether *exc* means the agent's open store must be closed (damage, read-only)."""
        return isinstance(exc, (StoreError, StoreCorruptError))

    def created(self, inst: Instance) -> None:
        """A new agent's first batch is about to commit: list it in the catalog first."""
        path = inst.store.path if inst.store is not None else self.path_of(inst.key)
        self.catalog.add(inst.key[0], inst.key[1], os.path.relpath(path, self.root),
                         self.clock.now())

    def emit_event(self, type_: str, key: Key, payload: Any) -> None:
        """Publish one event of agent *key* on the event bus."""
        self.events.emit(type_, key[0], key[1], payload, self.clock.now())

    def broadcast_from(self, key: Key, message: Any, exclude: list) -> None:
        """Send *message* to every connection of agent *key* (after its commit)."""
        for hook in list(self.broadcast_hooks):
            hook(key, message, exclude)
        if self.events.active:
            self.emit_event("broadcast", key, {"message": message})

    def report_error(self, key: Key, env: Envelope, exc: BaseException) -> None:
        """A fire-and-forget message failed: hand the error to the agent's ``on_error``."""
        cls = self.class_for(key[0])
        if cls is None or cls.on_error is Agent.on_error:
            log.warning("%s(%r).%s failed: %s: %s", key[0], key[1], env.method,
                        type(exc).__name__, exc)
            return
        info = {"type": type(exc).__name__, "message": str(exc), "method": env.method}
        self.enqueue(key, Envelope.error(exc, jsonvalue.dumps([info])))

    def destroy_later(self, key: Key) -> None:
        """Destroy agent *key* once its current batch is over (``self.destroy()``)."""
        self.enqueue(key, Envelope.operation("destroy", destroy_op, source="destroy"))

    def check_open(self) -> None:
        """Raise ``RuntimeClosedError`` if the runtime was closed."""
        if self.closed:
            raise RuntimeClosedError("the runtime was closed; create a new ab.Runtime to go on")

    def agents(self, cls: type[Agent] | str | None = None) -> pd.DataFrame:
        """One row per agent: class, name, created, version, awake, parent."""
        import pandas as pd

        from ..store import history, open_reader

        if self.reads is not None:
            return self.reads.agents(None if cls is None else _class_name(cls))
        rows = []
        for class_name, name, file, created, parent in self.catalog.rows(
            None if cls is None else _class_name(cls)
        ):
            inst = self.instances.get((class_name, name))
            version: int | None
            if inst is not None and inst.store is not None:
                version = inst.committed[0]
            else:
                try:
                    conn = open_reader(os.path.join(self.root, file))
                    version = history.newest_version(conn) if history.newest_state(conn) else None
                    conn.close()
                except AgentbookError:
                    version = None
            rows.append((class_name, name, pd.Timestamp(created, unit="s", tz="UTC"), version,
                         inst is not None and inst.store is not None, parent))
        frame = pd.DataFrame(rows, columns=["class", "name", "created", "version", "awake", "parent"])
        frame["version"] = frame["version"].astype("Int64")
        return frame

    def workflows(self) -> pd.DataFrame:
        """Every agent's workflow runs: ``agent``, ``name``, then the columns of
        ``ref.workflows()`` (``id``, ``method``, ``status``, ``steps``...)."""
        import pandas as pd

        if self.reads is not None:
            return self.reads.workflows()
        frames = []
        for class_name, name, *_ in self.catalog.rows(None):
            frame = self.get(class_name, name).workflows()
            if len(frame):
                frame.insert(0, "name", name)
                frame.insert(0, "agent", class_name)
                frames.append(frame)
        if not frames:
            from ..workflow.run import runs_frame

            return runs_frame([], ("", "")).iloc[0:0]
        return pd.concat(frames, ignore_index=True)

    @property
    def approvals(self) -> Approvals:
        """The approval inbox: displayed, a widget with Approve / Reject buttons;
        ``.pending()``, ``.approve(id)``, ``.reject(id, reason)``, ``.history()`` in code."""
        if self._approvals is None:
            self._approvals = Approvals(self)
        return self._approvals

    @property
    def db(self) -> Any:
        """The DuckDB connection holding the views (``agents``, ``history``, ``events``,
        ``schedules``, ``approvals``, ``dead_letters``, ``messages``, ``tool_calls``).
        Call :meth:`sql` (or ``rt.analytics.catch_up()``) to bring them up to date."""
        return self.analytics.db

    @property
    def analytics(self) -> Any:
        """The DuckDB projection behind :attr:`db` and :meth:`sql`."""
        if self.built_analytics is None:
            from ..analytics.views import Analytics

            self.built_analytics = Analytics(self)
        return self.built_analytics

    def sql(self, query: str, *params: Any, **named: Any) -> pd.DataFrame:
        """Run a DuckDB query over every agent's history, state, schedules, approvals and
        events (caught up first); returns a DataFrame.

        Values go in as parameters, the way ``ref.sql`` and ``self.sql`` take them: one by
        one for ``?`` (``rt.sql("... WHERE name = ?", "alice")``), or by name for ``$name``
        (``rt.sql("... WHERE name = $who", who="alice")``). The older single list or dict
        (``rt.sql(q, [...])``) still works, with a ``DeprecationWarning``.

        Example:
            >>> rt.sql("SELECT agent, method, quantile_cont(duration_ms, .99) AS p99"
            ...        " FROM history GROUP BY ALL")  # doctest: +SKIP
        """
        values: Any = list(params) if params else None
        if len(params) == 1 and isinstance(params[0], (list, tuple, dict)) and not named:
            import warnings

            warnings.warn("rt.sql(query, [values]) is deprecated: pass the values one by one, "
                          "rt.sql(query, *values), or by name, rt.sql(query, name=value)",
                          DeprecationWarning, stacklevel=2)
            values = params[0] if isinstance(params[0], dict) else list(params[0])
        elif named:
            if params:
                raise UsageError("rt.sql takes values one by one (for ?) or by name (for $name),"
                                 " not both")
            values = named
        return self.analytics.sql(query, values)

    def serve(self, port: int = 0, *, host: str = "127.0.0.1", token: str | None = None,
              allow_remote: bool = False, mcp: bool = False, **options: Any) -> Any:
        """Serve the agents over HTTP and WebSocket (Cloudflare's agents protocol), in the
        background on the running event loop; returns a handle with ``url``, ``token``
        and ``stop()``. Binds 127.0.0.1 unless ``allow_remote=True`` (and a token).
        ``mcp=True`` also serves each agent's callable methods as MCP tools."""
        from ..serve import serve

        return serve(self, port=port, host=host, token=token, allow_remote=allow_remote,
                     mcp=mcp, **options)

    def capture_events(self, on: bool = True) -> None:
        """Not needed any more (kept so old notebooks run): every agent's event stream is on
        record and always in the ``events`` view (see ``events_keep``). Does nothing."""

    def dashboard(self, *, every: float = 0.5, events: int = 12, agents: int = 20,
                  by: str | None = None) -> Any:
        """A live widget over the whole runtime: agents, the event stream, pending approvals
        (Approve / Reject), the next hour of schedules, workflows in flight; a row opens its
        agent's inspector or timeline. Redraws at most once per *every* seconds; ``close()``
        stops it. See :mod:`agentbook.widgets.dashboard`."""
        from ..widgets.dashboard import dashboard_widget

        return dashboard_widget(self, every=every, events=events, agents=agents, by=by)

    @property
    def plot(self) -> Any:
        """Matplotlib figures of what the agents did: ``rt.plot.schedule()``, ..."""
        from ..analytics.plots import Plots

        return Plots(self)

    def dead_letters(self) -> pd.DataFrame:
        """Scheduled and queued work that failed every attempt, across all agents."""
        import pandas as pd

        frame = pd.DataFrame.from_records(
            self.catalog.dead_letters() if self.reads is None else self.reads.dead_letters(),
            columns=["id", "agent", "name", "callback", "payload", "type", "attempts", "error",
                     "failed_at"],
        )
        frame["payload"] = [jsonvalue.loads(p) for p in frame["payload"]]
        frame["failed_at"] = pd.to_datetime(frame["failed_at"].astype("float64"), unit="s", utc=True)
        return frame

    async def retry_dead_letter(self, letter_id: str) -> None:
        """Queue a dead letter's work again on its agent (a fresh set of attempts)."""
        await self.dead_letter_op(letter_id, "_ab_retry_dead_letter", "retry_dead_letter")

    async def drop_dead_letter(self, letter_id: str) -> None:
        """Forget a dead letter for good."""
        await self.dead_letter_op(letter_id, "_ab_drop_dead_letter", "drop_dead_letter")

    async def dead_letter_op(self, letter_id: str, method: str, label: str) -> None:
        """Run a dead letter's *method* on its agent (retry or drop), then forget it."""
        from ..schedule.policy import ScheduleError

        self.check_open()
        where = self.catalog.dead_letter(letter_id)
        if where is None:
            raise ScheduleError(f"no dead letter has id {letter_id!r}; see rt.dead_letters()")
        env = Envelope.call(method, (letter_id,), source=self.source, label=label)
        await self.submit(tuple(where), env)
        self.catalog.remove_dead_letter(letter_id)

    async def settle(self, timeout: float = 10.0) -> None:
        """Run what is due now, and wait until no agent has work running or queued (at most
        *timeout* real seconds).

        What is due at the clock's current instant runs: queued work (``self.queue``) and
        schedules whose time has come, also on a ``VirtualClock`` that has not moved since
        (``await rt.settle()`` after a ``queue()``, or after ``clock.set(...)``, needs no
        ``clock.advance(0)``). Later work waits for its time. ``VirtualClock.advance`` calls
        this after each timer, so simulated time only moves on once the work due at the
        current instant is done.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.router is not None:
            await self.router.settle()
        while loop.time() < deadline:
            for _ in range(2):
                await asyncio.sleep(0)
            if self.timers.run_due():
                continue
            tasks = [i.task for i in self.instances.values() if i.task is not None]
            if self._waker is not None:
                tasks.append(self._waker)
            if not tasks:
                if any(i.queue for i in self.instances.values()):
                    continue
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.wait(tasks, timeout=remaining)

    def tick(self, key: Key) -> None:
        """The timer says *key* has something due: wake it with a tick message.

        Ticks are let in a few per turn of the event loop, in due order (:meth:`_wake`),
        not all at once: a thousand agents due in one second would otherwise put a
        thousand drains ahead of an awaited call from a cell in the loop's queue."""
        if not self.owns(key) or key in self._waking:
            return
        inst = self.instances.get(key)
        if inst is not None and any(e.method == TICK or e.sched is not None for e in inst.queue):
            return  # (a tick, or firings still queued: the batch that runs them sets the
            #        timer again when it commits - a storm's agents are not ticked again
            #        after each batch, each tick a wasted turn of the waker; issue 20)
        if self._waker is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # (no loop: queued, kicked with the next message)
                self.enqueue(key, Envelope.tick())
                return
            self._waker = loop.create_task(self._wake())
        self._waking[key] = None

    async def pace(self) -> None:
        """Wait for the turn of one more batch of due work: a mailbox whose next batch
        runs scheduled work (the rest of a storm of firings) waits here instead of going
        on at once, so the batches of every agent due together take turns with the ticks
        still waiting and with everything else in the event loop - an awaited call from a
        cell waits for about one batch, not for one batch of each storming agent (issue
        20). :meth:`_wake` lets them in, in order, as many per turn as fit."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._paced.append(turn)
        if self._waker is None:
            self._waker = loop.create_task(self._wake())
        await turn

    def _release_paced(self) -> None:
        """Let every waiting batch go on (the runtime closes, or the waker stopped)."""
        paced = self._paced
        while paced:
            turn = paced.popleft()
            if not turn.done():
                turn.set_result(None)

    async def _wake(self) -> None:
        """Let the waiting ticks in, then the batches waiting in :meth:`pace`, as many per
        turn of the event loop as fit in about :data:`_TURN_SECONDS` (measured: the turn
        runs the drains let in by the last)."""
        waking, paced = self._waking, self._paced
        per_turn = 1
        clock = time.perf_counter
        try:
            while (waking or paced) and not self.closed:
                for _ in range(per_turn):
                    if waking:
                        key = waking.popitem(last=False)[0]
                        self.enqueue(key, Envelope.tick())
                    elif paced:
                        turn = paced.popleft()
                        if not turn.done():  # (its drain may have been cancelled)
                            turn.set_result(None)
                    else:
                        break
                began = clock()
                await asyncio.sleep(0)  # (the drains just let in run in this turn)
                took = clock() - began
                if took < _TURN_SECONDS / 2:
                    per_turn = min(per_turn * 2, _MAX_PER_TURN)
                elif took > _TURN_SECONDS:
                    per_turn = max(1, per_turn // 2)
        finally:
            self._waker = None
            if waking and not self.closed:  # (cancelled: the rest go in at once)
                for key in list(waking):
                    self.enqueue(key, Envelope.tick())
                waking.clear()
            self._release_paced()

    def scheduled_failure(self, key: Key, outcome: Any) -> None:
        """A scheduled run failed: keep its dead letter, announce the retry or the error."""
        label, letter = outcome.recorded
        env = outcome.env
        if letter is not None:
            self.catalog.add_dead_letters([letter])
        if self.events.active:
            self.emit_scheduled("retry" if label == "retry" else "error", key, env,
                                 outcome.version, str(outcome.value))

    def emit_scheduled(self, what: str, key: Key, env: Envelope, version: int,
                        error: str | None = None) -> None:
        """Publish a ``schedule:*`` / ``queue:*`` event about the scheduled run *env*."""
        row = env.sched
        kind = "queue" if row.type == "queue" else "schedule"
        payload = {"id": row.id, "callback": row.callback, "type": row.type, "due": row.due,
                   "occurrence": f"{row.id}:{row.occurrence}", "attempt": row.attempt + 1,
                   "version": version}
        if error is not None:
            payload["error"] = error
        self.emit_event(f"{kind}:{what}", key, payload)

    def mark_opened(self, inst: Instance) -> None:
        """*inst* opened its store: hibernate the least recently used if over ``max_open``."""
        self.open_stores[inst.key] = inst
        self.idle.pop(inst.key, None)
        if len(self.open_stores) > self.max_open:
            self._evict()
        if self.sweep_handle is None and not self.memory and self.hibernate_after > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self.sweep_handle = loop.call_later(self.hibernate_after, self.sweep)

    def mark_idle(self, inst: Instance) -> None:
        """*inst* has nothing to do now: it becomes the most recently used."""
        if inst.key in self.open_stores:
            self.open_stores.move_to_end(inst.key)
            if not inst.busy:
                self.idle[inst.key] = inst
                self.idle.move_to_end(inst.key)
                if len(self.open_stores) > self.max_open:  # (more opened while all were busy)
                    self._evict()
        elif not inst.queue and inst.store is None:
            self.instances.pop(inst.key, None)

    def _evict(self) -> None:
        """Hibernate the least recently used idle agents while over ``max_open``."""
        idle = self.idle
        while len(self.open_stores) > self.max_open and idle:
            key, other = idle.popitem(last=False)
            if other.busy or self.open_stores.get(key) is not other or key in self._waking:
                continue  # (busy again since, hibernated, or due: its tick is on its way)
            self.hibernate_one(other, checkpoint=False)  # (made room: checkpointed later)

    def sweep(self) -> None:
        """Hibernate the agents idle for ``hibernate_after`` seconds; run again later.

        An idle agent with a schedule due before the next sweep stays awake (issue 20):
        putting it to sleep now would only make its firing open its store again, at the
        due instant, when every agent due with it opens too. ``max_open`` still bounds
        how many are awake."""
        self.sweep_handle = None
        if self.closed:
            return
        cutoff = time.monotonic() - self.hibernate_after
        soon = self.clock.now() + self.hibernate_after
        next_due = self.timers.next_due
        for inst in list(self.open_stores.values()):
            if inst.last_used < cutoff and not inst.busy:
                due = next_due(inst.key)
                if due is None or due > soon:
                    self.hibernate_one(inst)
        if self.open_stores:
            loop = asyncio.get_running_loop()
            self.sweep_handle = loop.call_later(self.hibernate_after, self.sweep)

    def hibernate_one(self, inst: Instance, later: bool = True, checkpoint: bool = True) -> None:
        """Hibernate one agent: close its store and MCP connections, forget it. *later*:
        the closer thread may close the store (not for a store dropped after an error:
        the next wake opens it afresh); *checkpoint* ``False``: its WAL is checkpointed
        later (see agentbook.store.closer)."""
        if self.mcp_clients is not None:
            self.mcp_clients.close_agent(inst.key)
        inst.close(later=later, checkpoint=checkpoint)
        self.open_stores.pop(inst.key, None)
        self.idle.pop(inst.key, None)
        if not inst.busy:
            self.instances.pop(inst.key, None)
        if self.events.active:
            self.emit_event("agent:hibernate", inst.key, {"version": inst.committed[0]})


class _Deferred:
    """A call made outside any event loop: queued when first awaited."""

    __slots__ = ("env", "key", "rt")

    def __init__(self, rt: Runtime, key: Key, env: Envelope) -> None:
        self.rt, self.key, self.env = rt, key, env

    def __await__(self) -> Any:
        return self.rt.submit(self.key, self.env).__await__()


def _class_name(cls: type[Agent] | str) -> str:
    if isinstance(cls, str):
        name = cls
    elif isinstance(cls, type) and issubclass(cls, Agent):
        name = cls.__name__
    else:
        raise UsageError(f"expected an ab.Agent subclass (or its name), got {cls!r}")
    problem = class_name_problem(name)
    if problem is not None:  # it names the class's folder: it must stay one plain folder
        raise UsageError(f"the agent class name {name!r} can't name its folder of stores: "
                         f"{problem}; give the class a plain name (letters, digits, _)")
    return name


def _check_limits(**limits: Any) -> None:
    """Counts and sizes are positive ints; times are non-negative numbers of seconds; the
    store cap and the query budget may be ``None`` (no limit)."""
    for name, value in limits.items():
        if value is None and name in ("max_store_bytes", "max_query_seconds"):
            continue
        if name in ("hibernate_after", "max_query_seconds", "owner_wait"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                0 <= value < float("inf") and (value > 0 or name != "max_query_seconds")
            what = "a positive number of seconds" + (" (or None)" if "query" in name else "")
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            what = "a positive int" + (" (or None)" if name == "max_store_bytes" else "")
        if not ok:
            raise UsageError(f"ab.Runtime({name}=...) must be {what}, not {value!r}")


def _check_name(name: Any) -> None:
    if (not isinstance(name, str) or not name or len(name) > _MAX_NAME or _BAD_NAME.search(name)
            or name in (".", "..")):
        raise UsageError(
            f"agent names are non-empty strings of at most {_MAX_NAME} characters without "
            f"'/', '\\' or control characters, and not '.' or '..'; got {name!r}"
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
