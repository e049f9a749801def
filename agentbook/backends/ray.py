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
import json as _json
import logging
import os
import uuid
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import HostUnavailableError, StoreError, UsageError
from .ray_events import EventRelay, event_encoder
from .ray_reads import HostReads, OwnerReads

if TYPE_CHECKING:
    from ..core.runtime import Runtime

__all__ = ["RayRouter", "shard_of"]

#: Events a host keeps for the driver's next poll, at most.
_MAX_EVENTS = 100_000

Key = tuple[str, str]
log = logging.getLogger("agentbook.ray")


def shard_of(key: Key, shards: int) -> int:
    """The virtual shard of an agent: stable across processes and runs."""
    return zlib.crc32(f"{key[0]}\x00{key[1]}".encode("utf-8", "surrogatepass")) % shards


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("the Ray backend needs Ray: pip install 'agentbook[ray]'") from None
    return ray


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
                 index: int | None = None, handles: list[Any] | None = None) -> None:
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
        self._seq: dict[int, int] = {}
        self.events: EventRelay | None = None  # the driver's: host events while listened to

    def host_of(self, key: Key) -> int:
        """Which host owns *key*."""
        return shard_of(key, self.shards) % self.hosts

    def owns(self, key: Key) -> bool:
        """Whether this process hosts *key*."""
        return self.index is not None and self.host_of(key) == self.index

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
        self._send(key, env, head, inbox, False)

    def _send(self, key: Key, env: Envelope, head: list[Any], inbox: _Inbox | None,
              resent: bool) -> None:
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
        seq = self._seq.get(index, 0)
        self._seq[index] = seq + 1
        return seq

    def settle_answer(self, inbox: _Inbox, done: Any, env: Envelope, key: Key, index: int,
                      head: list[Any], resent: bool) -> int:
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
                self._send(key, env, head, inbox, True)
                return 0
        # The handler's own exception comes back as it was.
        cause = getattr(exc, "cause", None)
        error = cause if isinstance(cause, BaseException) else exc
        if type(exc).__name__ in ("ActorUnavailableError", "ActorDiedError", "RayActorError"):
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
        for index in range(self.hosts):
            try:
                ray.kill(self.handle(index), no_restart=True)
            except Exception:
                pass

    def hibernate(self) -> int:
        """Hibernate idle agents on every host."""
        ray = _ray()
        return sum(ray.get([self.handle(i).hibernate.remote() for i in range(self.hosts)]))


def start(rt: Runtime, address: str | None, hosts: int, shards: int,
          host_dir: str | None = None) -> RayRouter:
    """Start (or join) Ray and create the host actors for the driver runtime *rt*."""
    ray = _ray()
    if rt.memory:
        raise UsageError("the Ray backend needs a folder every host can reach, not ':memory:'")
    if hosts < 1 or shards < hosts:
        raise UsageError("hosts must be at least 1 and shards at least hosts")
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters: loopback only
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, namespace="agentbook")
    prefix = f"agentbook-{uuid.uuid4().hex[:8]}"
    host_cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=1000)(AgentHost)
    handles = [host_cls.options(name=f"{prefix}-{i}", namespace="agentbook",
                                lifetime=None).remote(rt.root, i, hosts, shards, rt.durability,
                                                      prefix, host_dir)
               for i in range(hosts)]
    ray.get([h.ready.remote() for h in handles])
    router = RayRouter(rt, hosts, shards, prefix, handles=handles)
    router.events = EventRelay(router)
    if host_dir is not None:  # the stores are on the hosts' nodes: read through them
        rt.reads = OwnerReads(router)
    return router


class AgentHost(HostReads):
    """A Ray actor hosting the agents of its shards with an ordinary runtime."""

    def __init__(self, root: str, index: int, hosts: int, shards: int, durability: str,
                 prefix: str, host_dir: str | None = None) -> None:
        from ..core.runtime import Runtime

        if host_dir is not None:  # this node's own folder
            root = host_dir.format(node=_ray().get_runtime_context().get_node_id())
        self.index = index
        self.host_id = f"{prefix}-{index}-{uuid.uuid4().hex[:6]}"
        self.rt = Runtime(root, durability=durability)
        router = RayRouter(self.rt, hosts, shards, prefix, index)
        self.rt.router = router
        mine = [s for s in range(shards) if s % hosts == index]
        self.rt.catalog.take_leases(mine, self.host_id)  # a restarted host takes them back
        self.rt.lease = (self.host_id, shards)
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
        self.rt.timers.arm_if_pending()
        return os.getpid()

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
        try:
            return jsonvalue.dumps(jsonvalue.freeze(result, "result"))
        except (TypeError, ValueError):
            return None

    async def _turn(self, sender: str, seq: int) -> None:
        """Wait until the calls *sender* numbered before *seq* were taken in."""
        if self._restarted and sender not in self._expected:
            self._expected[sender] = seq
        if self._expected.get(sender, 0) != seq:
            fut = asyncio.get_running_loop().create_future()
            self._waiting[(sender, seq)] = fut
            await fut

    def _next(self, sender: str, seq: int) -> None:
        self._expected[sender] = seq + 1
        if not self._waiting:
            return
        fut = self._waiting.pop((sender, seq + 1), None)
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

    async def check(self, class_name: str, name: str) -> bool:
        """Whether this host holds the lease of *key*'s shard (for tests)."""
        return self.rt.holds_lease((class_name, name))



class _ClassMissing(Exception):
    """A host was asked to run an agent whose class it has not been sent (yet)."""


def check_lease(rt: Runtime, key: Key) -> None:
    """Refuse to open an agent whose shard this host doesn't hold."""
    if not rt.holds_lease(key):
        raise StoreError(f"{key[0]}({key[1]!r}) belongs to a shard another host holds; "
                         "the message was not run here")
