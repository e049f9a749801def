"""``ab.Runtime(path, backend="ray", hosts=N)``: the same agents across a Ray cluster.

Agents live in N Ray actors ("hosts"), many per host. An agent's home is fixed by a
stable hash of ``(class, name)`` onto a fixed number of virtual shards, and shards onto
hosts (``shard % hosts``), so adding hosts moves whole shards, not every agent. Each host
runs the ordinary in-process runtime over the shared store folder (a shared filesystem
in a real cluster; a local folder on one machine) and takes a lease on its shards in the
catalog: a host opens an agent only while it holds that agent's shard, so two hosts never
write one agent. A host that dies is restarted by Ray and takes its shards back; nothing
committed is lost, because everything committed is in the stores.

The driver (the notebook) keeps the same API: messages are forwarded to the owning host
(one Ray call each; the envelope and its arguments travel as JSON text), and the answers
are settled on the driver's event loop in batches, without a task per message. Reads
(``state``, ``sql``, ``history``, ``at``, the DuckDB views, the approval inbox) go
straight to the stores, or, with ``host_dir=`` (stores on the hosts' nodes), to the host
owning the agent (:mod:`agentbook.backends.ray_reads`). Agents on different hosts message
each other through the same forwarding. While someone subscribes to the driver's
``rt.events``, the hosts' events are relayed to it (a long poll per host, JSON batches);
with nobody listening the hosts' buses stay inactive. Not forwarded: streaming chat and
client tools (use ``ref.chat``).

Ray ships agent classes to the hosts (defined in a notebook, they travel by value); the
agents' data never travels pickled.
"""

from __future__ import annotations

import asyncio
import itertools
import json as _json
import logging
import os
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import HostUnavailableError, LeaseLostError, UsageError
from ..store import shard_image
from ..store.catalog_entries import add_timers
from .catalog_leases import CatalogLeases
from .ray_events import EventRelay, event_encoder
from .ray_reads import HostReads, OwnerReads
from .replication import Replicator
from .shard_leases import ShardLeases
from .shards import Key, actor_gone, ask_restarting, folder_id, node_folder, ray_module, shard_of

if TYPE_CHECKING:
    from ..core.runtime import Runtime

__all__ = ["RayRouter", "shard_of"]

#: Events a host keeps for the driver's next poll, at most.
_MAX_EVENTS = 100_000

log = logging.getLogger("agentbook.ray")
#: How many times the driver sends a message again that a host refused because the shard
#: is not (or no longer) its own (nothing of it ran), each after a fresh shard map.
_REROUTES = 8
_ray = ray_module


def _head(env: Envelope) -> list[Any]:
    """The envelope's fields that travel to a host, besides its argument texts."""
    if env.extras:
        raise UsageError("streaming chat and client tools don't cross Ray hosts yet; "
                         "use `await ref.chat(text)`")
    op = None
    if env.op is not None:
        op = env.label or env.method
        if op not in ("destroy", "prune"):
            raise UsageError(f"{op} is not supported on the Ray backend")
    return [env.method, env.source, [list(k) for k in env.chain] if env.chain else None,
            env.label, list(env.approval) if env.approval else None, op,
            env.future is not None]


class _Inbox:
    """Answers of forwarded messages, handed from Ray's threads to one event loop.

    Ray completes an ObjectRef on one of its own threads; rather than a task (or an
    asyncio future and a thread-safe wake-up) per message, answers are queued here and the
    loop is woken once per batch: everything that arrived by then is settled in one go.
    """

    __slots__ = ("armed", "done", "idle", "loop", "pending", "router")

    def __init__(self, router: RayRouter, loop: asyncio.AbstractEventLoop) -> None:
        self.router = router
        self.loop = loop
        self.done: deque[tuple[Any, ...]] = deque()
        self.armed = False
        self.pending = 0  # forwarded, not settled yet (touched on the loop's thread only)
        self.idle: asyncio.Future | None = None

    def put(self, item: tuple[Any, ...]) -> None:
        """Called on a Ray thread when an answer is in."""
        self.done.append(item)
        if not self.armed:
            self.armed = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop was closed: nobody waits for these any more
                pass

    def drain(self) -> None:
        self.armed = False  # before popping: an answer put from now on wakes us again
        done, settle = self.done, self.router.settle_answer
        while done:
            item = done.popleft()
            try:
                self.pending -= settle(self, *item)
            except Exception as exc:  # never leave the other answers (or this caller) behind
                log.exception("settling a message forwarded to a Ray host failed")
                self.pending -= 1
                fut = item[1].future  # (done, env, ...)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
        if self.pending <= 0 and self.idle is not None:
            if not self.idle.done():
                self.idle.set_result(None)
            self.idle = None


class RayRouter:
    """Routes envelopes to the host that owns each agent (on the driver, and on hosts)."""

    def __init__(self, rt: Runtime, hosts: int, shards: int, prefix: str,
                 index: int | None = None, handles: list[Any] | None = None,
                 coordinator: Any = None) -> None:
        self.rt = rt
        self.hosts = hosts
        self.shards = shards
        self.prefix = prefix
        self.index = index  # None on the driver: it owns nothing
        #: Host actor handles by index (looked up by name when not given).
        self._handles: dict[int, Any] = dict(enumerate(handles or ()))
        self._sent: dict[tuple[int, str], Any] = {}
        self._inbox: _Inbox | None = None
        # Ray may start an async actor's calls out of order: number them per host, and the
        # host queues them in that order, so each agent sees its messages in order.
        self.sender = uuid.uuid4().hex
        self._seq: dict[int, itertools.count] = {}  # (next() is atomic: any thread)
        self.events: EventRelay | None = None  # the driver's: host events while listened to
        #: Node-local stores: the coordinator actor, and its shard map (owner by shard).
        self.coordinator = coordinator
        self.owners: list[int] | None = None
        self.stale = False  # the map needs a refresh before the next send
        #: What a host added later is started with (node-local stores; see start()).
        self.across: dict[str, Any] | None = None
        #: Hosts removed for good (drained and stopped): never asked anything again.
        self.gone: set[int] = set()

    @staticmethod
    def node_local(host_dir: str | None, replicas: int, address: str | None) -> bool:
        """Whether a Ray runtime started with these arguments keeps each agent's store on
        its host's node (``host_dir``, ``replicas`` or a cluster's ``address``), with a
        coordinator for the shard map and the leases; else every host works on the one
        shared folder (one machine)."""
        return host_dir is not None or bool(replicas) or address is not None

    @property
    def keeps_stores_on_nodes(self) -> bool:
        """Whether this runtime's hosts keep the agents' stores on their own nodes (see
        :meth:`node_local`): hosts can be added, removed and drained."""
        return self.coordinator is not None

    def host_of(self, key: Key) -> int:
        """Which host owns *key*."""
        shard = shard_of(key, self.shards)
        if self.owners is not None:
            return self.owners[shard]
        return shard % self.hosts

    def knows_owners(self) -> bool:
        """Whether this process knows which host owns each shard (a restarted host with a
        coordinator learns it at its first lease renewal)."""
        return self.coordinator is None or self.owners is not None

    def owns(self, key: Key) -> bool:
        """Whether this process hosts *key*."""
        if self.index is None or not self.knows_owners():
            return False
        return self.host_of(key) == self.index

    def use_view(self, view: dict[str, Any]) -> None:
        """Route by the coordinator's shard map *view*."""
        self.owners = list(view["owners"])
        self.hosts = max(self.hosts, max(self.owners) + 1)
        self.stale = False

    def refresh(self) -> None:
        """Fetch the coordinator's shard map now (after a host refused or died)."""
        if self.coordinator is not None:
            self.use_view(_ray().get(self.coordinator.view.remote()))

    def handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = _ray().get_actor(f"{self.prefix}-{index}",
                                                    namespace="agentbook")
        return self._handles[index]

    def _inbox_here(self) -> _Inbox | None:
        inbox = self._inbox
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # no loop (a script's top level): answers have nowhere to go
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(self, loop)
        return inbox

    def forward(self, key: Key, env: Envelope) -> None:
        """Send *env* to its host; resolve its future with the host's answer."""
        try:
            head = _head(env)
        except UsageError as exc:
            if env.future is not None and not env.future.done():
                env.future.set_exception(exc)
            return
        inbox = self._inbox_here()
        if self.events is not None and inbox is not None:
            self.events.poll()
        self._send(key, env, head, inbox, 0)

    def _send(self, key: Key, env: Envelope, head: list[Any], inbox: _Inbox | None,
              resent: int) -> None:
        if self.stale:
            self.refresh()
        index = self.host_of(key)
        host = self._handles.get(index) or self.handle(index)
        cls = self.rt.class_for(key[0])
        if cls is not None and self._sent.get((index, key[0])) is not cls:
            host.register.remote(cls)  # runs before the delivery below (same caller, in order)
            self._sent[(index, key[0])] = cls
        seq = self.next_seq(index)
        # One text: the head (JSON), then the argument texts exactly as they were checked.
        text = "\n".join((jsonvalue.dumps([key[0], key[1], self.sender, seq, *head]),
                          env.args_json, env.kwargs_json or ""))
        args = (text,) if env.replay is None else (text, env.replay)
        ref = host.deliver.remote(*args)
        if inbox is None:
            return
        if not resent:
            inbox.pending += 1
        put = inbox.put
        ref.future().add_done_callback(lambda f: put((f, env, key, index, head, resent)))

    def next_seq(self, index: int) -> int:
        """The number of the next call this process sends host *index* (messages and
        ``listen`` alike): the host takes them in in this order."""
        counter = self._seq.get(index)
        if counter is None:
            counter = self._seq.setdefault(index, itertools.count())
        return next(counter)

    def settle_answer(self, inbox: _Inbox, done: Any, env: Envelope, key: Key, index: int,
                      head: list[Any], resent: int) -> int:
        """Hand one answer to its caller (on the loop); 1 when the message is settled."""
        fut = env.future
        exc = done.exception()
        if exc is None:
            if fut is not None and not fut.done():
                text = done.result()
                fut.set_result(None if text is None else jsonvalue.loads(text))
            return 1
        if isinstance(exc, _ClassMissing):
            # The host restarted and lost the classes it was sent: send again, once.
            self._sent = {k: v for k, v in self._sent.items() if k[0] != index}
            if not resent:
                self._send(key, env, head, inbox, 1)
                return 0
        # The handler's own exception comes back as it was.
        cause = getattr(exc, "cause", None)
        error = cause if isinstance(cause, BaseException) else exc
        if isinstance(error, LeaseLostError) and self.coordinator is not None \
                and resent < _REROUTES:
            # Not run there (not that host's shard, or its lease ran out): to the owner.
            self.stale = True
            inbox.loop.call_later(min(0.02 * 2 ** resent, 1.0), self._send, key, env, head,
                                  inbox, resent + 1)
            return 0
        if actor_gone(exc):
            self.stale = self.coordinator is not None  # (its shards may have moved)
            self._sent = {k: v for k, v in self._sent.items() if k[0] != index}
            error = HostUnavailableError(
                f"the host running this agent restarted during {env.method}(); it may or "
                "may not have run - check ref.version or ref.history() and send again")
        if fut is not None and not fut.done():
            fut.set_exception(error)
        return 1

    async def settle(self) -> None:
        """Wait for the answers of forwarded messages."""
        inbox = self._inbox_here()
        while inbox is not None and inbox.pending > 0:
            if inbox.idle is None:
                inbox.idle = inbox.loop.create_future()
            await inbox.idle

    def shutdown(self) -> None:
        """Stop the host actors (the driver's runtime is closing)."""
        ray = _ray()
        if self.events is not None:
            self.events.close()
        for index in self.live_hosts():
            try:
                ray.kill(self.handle(index), no_restart=True)
            except Exception:
                pass
        if self.coordinator is not None:
            try:
                ray.kill(self.coordinator, no_restart=True)
            except Exception:
                pass

    def hibernate(self) -> int:
        """Hibernate idle agents on every host."""
        ray = _ray()
        return sum(ray.get([self.handle(i).hibernate.remote() for i in self.serving_hosts()]))

    # -- hosts and shard moves (node-local stores; on the driver) -------------------------
    def add_host(self) -> int:
        """Start one more host, on the live node with the fewest hosts; it owns nothing
        until :meth:`rebalance` moves shards to it. Returns its index."""
        if self.coordinator is None or self.across is None:
            raise UsageError("hosts are added only with node-local stores "
                             "(ab.Runtime(..., backend='ray', host_dir=...))")
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # (a host of a lost node may be restarting on another: its place is known once up)
        placed = [ask_restarting(ray, self.handle(i).hello.remote, f"host {i}")
                  for i in self.serving_hosts()]
        load = {n["NodeID"]: 0 for n in ray.nodes() if n.get("Alive")}
        for hello in placed:
            if hello["node"] in load:
                load[hello["node"]] += 1
        # the least loaded, the newest of those (a node just lost may still be listed)
        node = min(reversed(list(load)), key=lambda n: load[n])
        index = self.hosts
        host_cls = ray.remote(max_restarts=-1, max_task_retries=0,
                              max_concurrency=1000)(AgentHost)
        handle = host_cls.options(
            name=f"{self.prefix}-{index}", namespace="agentbook",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=True),
        ).remote(self.rt.root, index, index + 1, self.shards, self.rt.durability, self.prefix,
                 self.across)
        hello = ray.get(handle.hello.remote())
        ray.get(self.coordinator.join.remote(index, hello["node"], hello["disk"]))
        ray.get(handle.ready.remote())
        self._handles[index] = handle
        self.hosts = index + 1
        return index

    def rebalance(self) -> list[dict[str, Any]]:
        """Move whole shards from the busiest live hosts to the idlest until they differ
        by one at most. Returns the moves (``shard``, ``from``, ``to``, ``agents``,
        ``bytes``, ``seconds``)."""
        if self.coordinator is None:
            raise UsageError("shards move only with node-local stores (host_dir=...)")
        ray = _ray()
        moves = []
        while True:
            view = ray.get(self.coordinator.view.remote())
            dead = set(view["dead"])
            owned: dict[int, list[int]] = {h: [] for h in self.live_hosts() if h not in dead}
            for shard, owner in enumerate(view["owners"]):
                if owner in owned:
                    owned[owner].append(shard)
            busiest = max(owned, key=lambda h: len(owned[h]))
            idlest = min(owned, key=lambda h: len(owned[h]))
            if len(owned[busiest]) - len(owned[idlest]) <= 1:
                break
            shard = owned[busiest][-1]
            began = time.perf_counter()
            done = ray.get(self.handle(busiest).hand_over.remote(shard, idlest))
            moves.append({"shard": shard, "from": busiest, "to": idlest, **done,
                          "seconds": time.perf_counter() - began})
        self.refresh()
        return moves

    def live_hosts(self) -> list[int]:
        """The indexes of the hosts not removed (lost ones included: Ray restarts them)."""
        return [i for i in range(self.hosts) if i not in self.gone]

    def serving_hosts(self) -> list[int]:
        """The hosts not removed that the coordinator does not count as lost: the ones
        to ask now."""
        dead = set(self.dead_hosts())
        return [i for i in self.live_hosts() if i not in dead]

    def forget_host(self, index: int) -> None:
        """Host *index* was removed for good (see :mod:`.host_removal`)."""
        self.gone.add(index)
        self._handles.pop(index, None)
        self._sent = {k: v for k, v in self._sent.items() if k[0] != index}
        relay = self.events
        if relay is not None and relay.tasks:  # (the next message polls the hosts left)
            relay.tasks[0].get_loop().call_soon_threadsafe(relay.close)

    def hosts_on(self, node: str) -> list[int]:
        """The live hosts on Ray node *node* (a typed error for an unknown node)."""
        from .host_removal import hosts_on

        return hosts_on(self, node)

    def remove_hosts(self, leaving: list[int]) -> list[dict[str, Any]]:
        """Drain the hosts *leaving* (their shards and replicas to the others, while
        traffic goes on) and stop them. Returns the moves."""
        from .host_removal import check_leaving, drain_host

        if self.coordinator is None or self.across is None:
            raise UsageError("hosts are removed only with node-local stores "
                             "(ab.Runtime(..., backend='ray', host_dir=...))")
        check_leaving(self, leaving)
        moves = []
        for index in leaving:
            moves += drain_host(self, index, set(leaving))
        self.refresh()
        return moves

    def dead_hosts(self) -> list[int]:
        """Hosts the coordinator counts as lost (none without node-local stores)."""
        if self.coordinator is None:
            return []
        view = _ray().get(self.coordinator.view.remote())
        self.use_view(view)
        return list(view["dead"])


def start(rt: Runtime, address: str | None, hosts: int, shards: int, *,
          host_dir: str | None = None, replicas: int = 0, replication: str | None = None,
          lease_seconds: float = 10.0) -> RayRouter:
    """Start (or join) Ray and create the host actors for the driver runtime *rt*.

    With *host_dir*, *replicas* or an *address* (a real cluster), each host keeps its
    stores on its own node and a coordinator actor keeps the shard map and the leases
    (see :mod:`agentbook.backends.coordinator`); otherwise every host works on the one
    shared folder (one machine)."""
    ray = _ray()
    if hosts < 1 or shards < hosts:
        raise UsageError("hosts must be at least 1 and shards at least hosts")
    if replicas not in (0, 1):
        raise UsageError(f"replicas is 0 or 1, not {replicas!r}")
    if replication is not None and not replicas:
        raise UsageError(f"durability={replication!r} needs replicas=1 (a copy of each shard "
                         "on another node)")
    if not (isinstance(lease_seconds, (int, float)) and lease_seconds > 0):
        raise UsageError(f"lease_seconds is a number of seconds > 0, not {lease_seconds!r}")
    across = RayRouter.node_local(host_dir, replicas, address)
    if rt.memory and not across:
        raise UsageError("the Ray backend needs a folder every host can reach, not ':memory:'")
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters: loopback only
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, ignore_reinit_error=True,
                 namespace="agentbook")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    prefix = f"agentbook-{uuid.uuid4().hex[:8]}"
    host_cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=1000)(AgentHost)
    # Hosts go round the live nodes (a host whose node is lost is restarted elsewhere).
    here = ray.get_runtime_context().get_node_id()
    alive = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    alive.sort(key=lambda n: n != here)

    def place(i: int) -> Any:
        return NodeAffinitySchedulingStrategy(node_id=alive[i % len(alive)], soft=True)

    if not across:
        handles = [host_cls.options(name=f"{prefix}-{i}", namespace="agentbook",
                                    scheduling_strategy=place(i)).remote(
                       rt.root, i, hosts, shards, rt.durability, prefix)
                   for i in range(hosts)]
        ray.get([h.ready.remote() for h in handles])
        router = RayRouter(rt, hosts, shards, prefix, handles=handles)
        router.events = EventRelay(router)
        return router
    from .coordinator import Coordinator

    if replicas and replication is None:
        replication = "replicated"
    coordinator = ray.remote(Coordinator).options(
        name=f"{prefix}-coordinator", namespace="agentbook", lifetime="detached",
        max_restarts=-1, max_concurrency=100, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(host_dir, shards, replicas, float(lease_seconds))
    options = {"host_dir": host_dir, "replication": replication,
               "coordinator": f"{prefix}-coordinator"}
    handles = [host_cls.options(name=f"{prefix}-{i}", namespace="agentbook",
                                scheduling_strategy=place(i)).remote(
                   rt.root, i, hosts, shards, rt.durability, prefix, options)
               for i in range(hosts)]
    places = {i: [hello["node"], hello["disk"]] for i, hello in
              enumerate(ray.get([h.hello.remote() for h in handles]))}
    try:
        ray.get(coordinator.plan.remote(places))
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        for actor in (*handles, coordinator):
            ray.kill(actor, no_restart=True)
        raise cause if isinstance(cause, UsageError) else exc from None
    ray.get([h.ready.remote() for h in handles])
    router = RayRouter(rt, hosts, shards, prefix, handles=handles, coordinator=coordinator)
    router.across = options
    router.refresh()
    router.events = EventRelay(router)
    rt.reads = OwnerReads(router)  # the stores are on the hosts' nodes: read through them
    return router


class AgentHost(HostReads):
    """A Ray actor hosting the agents of its shards with an ordinary runtime."""

    def __init__(self, root: str, index: int, hosts: int, shards: int, durability: str,
                 prefix: str, across: dict[str, Any] | None = None) -> None:
        from ..core.runtime import Runtime

        self.index = index
        self.host_id = f"{prefix}-{index}-{uuid.uuid4().hex[:6]}"
        self.node = _ray().get_runtime_context().get_node_id()
        #: Node-local stores: this host's shard leases, replicas, and their upkeep.
        self.leases: ShardLeases | None = None
        self.replicator: Replicator | None = None
        self._renewing: asyncio.Task | None = None
        self.disk = ""
        if across is None:  # one machine: the shared folder, leases in its catalog
            self.rt = Runtime(root, durability=durability)
            router = RayRouter(self.rt, hosts, shards, prefix, index)
            mine = [s for s in range(shards) if s % hosts == index]
            self.rt.catalog.take_leases(mine, self.host_id)  # a restarted host takes them back
            self.rt.lease = CatalogLeases(self.rt.catalog, self.host_id, shards)
        else:  # this node's own folder; leases from the coordinator
            folder = os.path.join(node_folder(across["host_dir"]), f"host-{index}")
            self.rt = Runtime(folder, durability=durability)
            self.disk = folder_id(folder)
            coordinator = _ray().get_actor(across["coordinator"], namespace="agentbook")
            router = RayRouter(self.rt, hosts, shards, prefix, index, coordinator=coordinator)
            self.leases = ShardLeases(index, shards)
            self.rt.lease = self.leases
            if across["replication"] is not None:
                self.replicator = Replicator(self.rt, self.leases, router.handle,
                                             across["replication"] == "replicated")
                self.replicator.refresh = self.renew
        self.rt.router = router
        self.rt.timers.reload()
        self._expected: dict[str, int] = {}
        self._waiting: dict[tuple[str, int], asyncio.Future] = {}
        # Events relayed to the driver while someone listens there (see EventRelay).
        self._spell = 0
        self._unlisten: Any = None
        self._buffer: list[tuple] = []
        self._wake: asyncio.Future | None = None

        # After a restart, messages in flight died with the old process: take senders'
        # numbering up from whatever arrives first.
        self._restarted = bool(_ray().get_runtime_context().was_current_actor_reconstructed)

    async def ready(self) -> int:
        """The host's process id, once it can take messages."""
        if self.leases is not None:
            await self.renew()
            self._keep_renewing()
        self.rt.timers.arm_if_pending()
        return os.getpid()

    async def settle(self, again: bool = False) -> None:
        """Before a message or a read: a restarted host learns its shards first (until then
        it owns nothing, and would run nothing and read as empty), and so does a host
        whose lease ran out (paused or cut off: its shards may be another's now, and it
        would answer from its old copy). *again*: ask the shard map anew (a read of an
        agent this host does not own: its shard may have come here since)."""
        leases = self.leases
        if leases is not None:
            if again or leases.view is None or time.monotonic() >= leases.deadline:
                await self.renew()
            self._keep_renewing()

    async def hello(self) -> dict[str, Any]:
        """Where this host runs: its process id, Ray node id, store folder and its id."""
        return {"pid": os.getpid(), "node": self.node, "folder": self.rt.root,
                "disk": self.disk}

    # -- leases (node-local stores) -----------------------------------------------------
    async def renew(self) -> None:
        """Renew this host's leases with the coordinator; let go of shards it lost and take
        up the ones it gained (promoted from their replicas)."""
        leases, router = self.leases, self.rt.router
        if leases is None:
            return
        sent = time.monotonic()
        try:
            view = await router.coordinator.renew.remote(self.index, self.node, self.disk)
        except Exception:  # the coordinator is away: the deadline runs out by itself
            log.warning("agentbook host %d could not renew its leases", self.index)
            return
        gained, lost, seed = leases.update(view, sent)
        router.use_view(view)
        if lost:
            self._let_go(lost)
        if gained:
            self._take_up(gained)
        if seed and self.replicator is not None:
            self.replicator.seed(seed)  # a new replica: ship it every agent of those shards

    def _keep_renewing(self) -> None:
        if self.leases is not None and (self._renewing is None or self._renewing.done()):
            self._renewing = asyncio.get_running_loop().create_task(self._renewals())

    async def _renewals(self) -> None:
        while True:
            view = self.leases.view if self.leases is not None else None
            await asyncio.sleep((view["lease"] if view else 1.0) / 4)
            await self.renew()

    def _let_go(self, shards: set[int]) -> None:
        """Shards this host lost (its lease ran out, or they moved): close their agents and
        set their files aside (another host has the newer truth)."""
        leases, rt = self.leases, self.rt
        assert leases is not None
        for inst in [i for i in rt.open_stores.values() if leases.shard(i.key) in shards]:
            if not inst.busy:
                rt.hibernate_one(inst, later=False)
        rt.closer.wait()
        if self.replicator is not None:
            self.replicator.forget(shards)

    def _take_up(self, shards: set[int]) -> None:
        """Shards this host now owns: wake what their agents have due here."""
        from ..schedule.firing import next_due
        from ..store import AgentStore

        rt = self.rt
        if self.replicator is not None:
            self.replicator.promoted(shards)
        keys = self._keys_of(shards)
        for key in keys:
            if key in rt.instances:
                continue
            store = AgentStore(rt.path_of(key), rt.durability)
            try:
                due = next_due(store)  # (schedules, the outbox, workflow runs)
                rt.catalog.approval_index.take_in(key, store.conn)  # pending: in the inbox
            finally:
                store.close()
            if due is not None:
                rt.timers.set(key, due)

    async def replicate(self, sender: int, epochs: dict[int, int],
                        data: bytes) -> list[list[str]]:
        """Versions host *sender* committed, for this host's replica copies (bytes: see
        :mod:`agentbook.store.replica`); refused if *sender*'s epoch is stale. Returns
        the agents it has no copy of (to be shipped from the start)."""
        self._keep_renewing()
        if self.replicator is None:
            raise UsageError("this host keeps no replicas (ab.Runtime(replicas=1))")
        return await self.replicator.apply(sender, epochs, data)

    async def register(self, cls: type) -> None:
        """A (possibly redefined) agent class arrived from the driver."""
        self.rt.classes[cls.__name__] = cls

    async def deliver(self, text: str, replay: Any = None) -> str | None:
        """Run one forwarded message (see ``RayRouter._send``); returns its result as JSON
        text."""
        head, args_json, kwargs_json = text.split("\n", 2)
        (class_name, name, sender, seq, method, source, chain, label, approval, op,
         future) = _json.loads(head)
        self.rt.timers.arm_if_pending()
        if self._expected.get(sender, 0) != seq or self._restarted:
            await self._turn(sender, seq)
        await self.settle()
        leases = self.leases
        if leases is not None and not leases.holds((class_name, name)):
            self._next(sender, seq)
            raise LeaseLostError(
                f"{class_name}({name!r}) is not on this host's shards now; it was not "
                "run here (the driver sends it to the shard's owner)")
        if self.rt.class_for(class_name) is None:
            self._next(sender, seq)  # let later messages through meanwhile
            raise _ClassMissing(class_name)
        if op is None:
            env = Envelope.forwarded(method, args_json, kwargs_json, source=source,
                                     chain=tuple(tuple(k) for k in chain) if chain else (),
                                     label=label, approval=tuple(approval) if approval else None,
                                     replay=replay)
        elif op == "destroy":
            from ..core.ops import destroy_op

            env = Envelope.operation("destroy", destroy_op, source=source)
        else:  # prune
            from ..travel.prune import prune_op

            before, vacuum = jsonvalue.loads(args_json)
            env = Envelope.operation("prune", lambda inst: prune_op(inst, before, vacuum),
                                     source=source)
        key = (class_name, name)
        # Another agent may not call a method approvals guard (this host's catalog indexed
        # the approvals its agents requested): only an approval runs it.
        if (env.chain and env.chain[-1] != key and not approval and op is None
                and self.rt.catalog.approval_index.is_guarded(class_name, method)):
            self._next(sender, seq)
            from ..errors import NotCallableError

            raise NotCallableError(
                f"{class_name}.{method} runs only when a person approves it; have "
                f"{class_name} ask with self.request_approval({method!r}, ...)")
        if not future:
            self.rt.enqueue(key, env)
            self._next(sender, seq)
            return None
        pending = self.rt.submit(key, env)  # queued now, in order
        self._next(sender, seq)
        result = await pending
        if self.replicator is not None and (self.replicator.sync or op == "destroy"):
            await self.replicator.wait(key)  # on the replica too (a destroy: gone there too)
        try:
            return jsonvalue.dumps(jsonvalue.freeze(result, "result"))
        except (TypeError, ValueError):
            return None

    async def _turn(self, sender: str, seq: int) -> None:
        """Wait until the calls *sender* numbered before *seq* were taken in."""
        if self._restarted and sender not in self._expected:
            self._expected[sender] = seq
        expected = self._expected.get(sender, 0)
        if seq < expected:  # (a restarted host took the numbering up from a later call:
            return          #  this one's turn has passed, and no order is left to keep)
        if expected != seq:
            fut = asyncio.get_running_loop().create_future()
            self._waiting[(sender, seq)] = fut
            await fut

    def _next(self, sender: str, seq: int) -> None:
        following = max(self._expected.get(sender, 0), seq + 1)
        self._expected[sender] = following
        if not self._waiting:
            return
        fut = self._waiting.pop((sender, following), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def listen(self, sender: str, seq: int, spell: int) -> None:
        """Someone listens on the driver: collect events for its polls, from this point of
        the driver's messages on (numbered like them)."""
        await self._turn(sender, seq)
        self._listen(spell)
        self._next(sender, seq)

    def _listen(self, spell: int) -> None:
        if spell > self._spell:
            self._spell = spell
            self._buffer.clear()
            if self._unlisten is None:
                self._unlisten = self.rt.events.subscribe(self._collect)

    async def events(self, spell: int) -> str | None:
        """The driver's long poll: this host's events since the last poll, as JSON text
        (waits for at least one); ``None`` once the driver's listening *spell* is over."""
        if spell < self._spell or (spell == self._spell and self._unlisten is None):
            return None
        self._listen(spell)  # after a restart, the first poll subscribes again
        while not self._buffer:
            if self._wake is None or self._wake.done():  # one wake-up for every poll waiting
                self._wake = asyncio.get_running_loop().create_future()
            await self._wake
            if self._unlisten is None or spell != self._spell:
                return None
        batch, self._buffer = self._buffer, []
        return event_encoder.encode(batch)

    async def mute(self, spell: int) -> None:
        """Nobody listens on the driver any more: stop collecting events."""
        if spell < self._spell:
            return
        self._spell = spell
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self._buffer = []
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def listening(self) -> bool:
        """Whether this host collects events for the driver (for tests)."""
        return self._unlisten is not None and self.rt.events.active

    def _collect(self, event: dict[str, Any]) -> None:
        buffer = self._buffer
        if len(buffer) >= _MAX_EVENTS:  # the driver stopped polling: keep the newest
            del buffer[:len(buffer) // 2]
        buffer.append((event["type"], event["agent"], event["name"], event["payload"],
                       event["timestamp"]))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def hibernate(self) -> int:
        """Hibernate this host's idle agents."""
        return self.rt.hibernate()

    # -- shard moves (node-local stores) ------------------------------------------------
    async def hand_over(self, shard: int, to: int) -> dict[str, Any]:
        """Move *shard* to host *to*: stop taking its messages (calls that were running
        are refused at their commit, and the driver re-routes them), close its agents,
        read their store files and catalog entries into one bytes payload
        (:mod:`agentbook.store.shard_image`) and ship it through Ray's object store to *to*
        and to the shard's replica host; then the coordinator moves the shard (a new
        epoch) and *to* takes it up. Everything in a store moves with it: schedules,
        approvals, workflows, the outbox; and the agents' catalog rows: timers, the
        approval index, failures, dead letters. Returns ``{"agents", "bytes", "epoch"}``."""
        leases, rt = self.leases, self.rt
        if leases is None:
            raise UsageError("shards move between hosts only with node-local stores "
                             "(ab.Runtime(..., host_dir=...))")
        if shard not in leases.owned:
            raise LeaseLostError(f"shard {shard} is not on host {self.index} now")
        leases.hand_over(shard)
        try:
            keys = self._keys_of({shard})
            for _ in range(500):  # (their commits are refused now: they end soon)
                if not any(leases.shard(i.key) == shard and i.busy
                           for i in rt.open_stores.values()):
                    break
                await asyncio.sleep(0.01)
            for inst in [i for i in rt.open_stores.values() if leases.shard(i.key) == shard]:
                rt.hibernate_one(inst, later=False)
            rt.closer.wait()
            stores = [shard_image.AgentImage(k[0], k[1], shard_image.image(rt.path_of(k)))
                      for k in keys if os.path.exists(rt.path_of(k))]
            entries = rt.catalog.entries_of(keys)
            add_timers(entries, {k: rt.timers.next_due(k) for k in keys})
            blob = shard_image.pack(shard_image.ShardImage(stores, entries))
            shipped = _ray().put(blob)
            target = rt.router.handle(to)
            versions = await target.receive.remote(shipped)
            row = await rt.router.coordinator.move.remote(shard, to)
            if row["replica"] is not None:  # (the same files: nothing to seed from scratch)
                await rt.router.handle(row["replica"]).receive_copies.remote(
                    shipped, shard, row["epoch"])
            await target.take.remote(shard, row["epoch"], row["replica"], versions)
            if self.replicator is not None:  # (the calls whose versions were on their way)
                self.replicator.moved({shard})
        finally:
            leases.moving.discard(shard)
        # (a stale copy now: the new owner has it)
        rt.catalog.forget_entries(keys)
        keep = row["replica"] == self.index  # (this host keeps the shard's replica now)
        if keep:
            rt.catalog.take_entries(entries.agents_only())
        for key in keys:
            rt.timers.set(key, None)
            for suffix in ("", "-wal", "-shm", ".lock")[2 if keep else 0:]:
                try:
                    os.unlink(rt.path_of(key) + suffix)
                except FileNotFoundError:
                    pass
        if self.replicator is not None:
            self.replicator.forget({shard})
        await self.renew()
        return {"agents": len(stores), "bytes": len(blob), "epoch": row["epoch"]}

    def _keys_of(self, shards: set[int]) -> list[Key]:
        """The agents of *shards* this host has stores of."""
        return [(r[0], r[1]) for r in self.rt.catalog.rows()
                if shard_of((r[0], r[1]), self.rt.router.shards) in shards]

    async def receive(self, blob: bytes) -> list[list[Any]]:
        """A shard moving here (see :meth:`hand_over`): its store files written (not
        opened) and its catalog rows taken up, before it is granted (:meth:`take`).
        Returns each agent's newest version: ``[[class, name, version], ...]``."""
        rt = self.rt
        shard = shard_image.unpack(blob)
        versions = []
        for store in shard.stores:
            key = (store.class_name, store.name)
            if self.leases is not None:
                self.leases.incoming.add(self.leases.shard(key))
            if self.replicator is not None:
                self.replicator.close_copy(key)
            shard_image.install(rt.path_of(key), store.data, rt.durability == "full")
            versions.append([key[0], key[1], shard_image.head_version(store.data)])
        rt.catalog.take_entries(shard.entries)
        return versions

    async def receive_copies(self, blob: bytes, shard: int, epoch: int) -> int:
        """The files of a shard that moved, for this host's replica copies of it (the
        same files the new owner got: it ships only what it commits from then on)."""
        if self.replicator is None or self.leases is None:
            raise UsageError("this host keeps no replicas (ab.Runtime(replicas=1))")
        if shard in self.leases.owned or epoch < self.leases.known_epoch(shard):
            raise LeaseLostError(f"shard {shard} (epoch {epoch}) has a newer owner")
        rt = self.rt
        images = shard_image.unpack(blob)
        for store in images.stores:
            self.replicator.install_copy((store.class_name, store.name), store.data, epoch)
        rt.catalog.take_entries(images.entries.agents_only())
        return len(images.stores)

    async def take(self, shard: int, epoch: int, replica: int | None = None,
                   versions: list[list[Any]] | None = None) -> None:
        """Own *shard* under *epoch* (its files and catalog rows were received): arm the
        timers its agents have pending (from the catalog rows that came along: no store
        is opened), and ship *replica* only what is newer than *versions* (it got the
        same files)."""
        assert self.leases is not None
        rt = self.rt
        self.leases.grant(shard, epoch)
        self.leases.incoming.discard(shard)
        if self.replicator is not None:
            self.replicator.promoted({shard})
        for class_name, name, due in rt.catalog.timers():
            key = (class_name, name)
            if self.leases.shard(key) == shard and key not in rt.instances:
                rt.timers.set(key, due)
        await self.renew()
        if self.replicator is not None:
            if replica is not None and versions is not None:
                self.replicator.adopt(replica, {(c, n): v for c, n, v in versions})
            else:
                self.replicator.seed({shard})

    # -- leaving (rt.remove_hosts, rt.drain_node) ---------------------------------------
    async def replicas_caught_up(self) -> bool:
        """Renew now (replicas given to other hosts are seeded), and wait until what was
        to ship then is on the replicas; ``False`` if that took longer than a lease."""
        await self.renew()
        if self.replicator is None:
            return True
        lease = self.leases.view["lease"] if self.leases and self.leases.view else 10.0
        done = await self.replicator.caught_up(3 * lease)
        if not done:
            log.warning("agentbook host %d: replicas still catching up", self.index)
        return done

    async def retire(self, sender: str, seq: int) -> str:
        """This host was drained (it owns and keeps nothing): once the calls the driver
        sent before this one were taken in (each refused: not its shard), close and delete
        this host's folder; the driver stops it then (Ray does not restart it). Returns
        what could not be deleted (``""``: nothing; see :func:`.host_removal.delete_folder`)."""
        from .host_removal import delete_folder

        await self._turn(sender, seq)
        self._next(sender, seq)
        if self.leases is not None and self.leases.owned:
            raise UsageError(f"host {self.index} still owns shards "
                             f"{sorted(self.leases.owned)}; drain it first")
        if self._renewing is not None:
            self._renewing.cancel()
        folder = self.rt.root
        self.rt.close()
        if self.leases is None:  # (a shared folder: the other hosts' too)
            return ""
        left = delete_folder(folder)  # (node-local: the folder is this host's alone)
        return f"on Ray node {self.node}: {left}" if left else ""

    async def check(self, class_name: str, name: str) -> bool:
        """Whether this host holds the lease of *key*'s shard (for tests)."""
        return self.rt.holds_lease((class_name, name))


class _ClassMissing(Exception):
    """A host was asked to run an agent whose class it has not been sent (yet)."""
