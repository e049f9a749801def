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
(arguments travel as JSON text), reads (``state``, ``sql``, ``history``, ``at``, the
DuckDB views, the approval inbox) go straight to the stores. Agents on different hosts
message each other through the same forwarding. Not forwarded: streaming chat and client
tools (use ``ref.chat``), and observability events (subscribe on the hosts' runtimes).

Ray ships agent classes to the hosts (defined in a notebook, they travel by value); the
agents' data never travels pickled.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import zlib
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..errors import HostUnavailableError, StoreError, UsageError

if TYPE_CHECKING:
    from ..mailbox import Envelope
    from ..runtime import Runtime

__all__ = ["RayRouter", "shard_of"]

Key = tuple[str, str]


def shard_of(key: Key, shards: int) -> int:
    """The virtual shard of an agent: stable across processes and runs."""
    return zlib.crc32(f"{key[0]}\x00{key[1]}".encode("utf-8", "surrogatepass")) % shards


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("the Ray backend needs Ray: pip install 'agentbook[ray]'") from None
    return ray


def _spec(env: Envelope) -> dict[str, Any]:
    """What travels to a host for one envelope (JSON text, plus a replay step if any)."""
    if env.extras:
        raise UsageError("streaming chat and client tools don't cross Ray hosts yet; "
                         "use `await ref.chat(text)`")
    op = None
    if env.op is not None:
        op = env.label or env.method
        if op not in ("destroy", "prune"):
            raise UsageError(f"{op} is not supported on the Ray backend")
    return {"method": env.method, "args": env.args_json, "kwargs": env.kwargs_json,
            "source": env.source, "chain": [list(k) for k in env.chain], "label": env.label,
            "approval": list(env.approval) if env.approval else None, "op": op,
            "future": env.future is not None, "replay": env.replay}


class RayRouter:
    """Routes envelopes to the host that owns each agent (on the driver, and on hosts)."""

    def __init__(self, rt: Runtime, hosts: int, shards: int, prefix: str,
                 index: int | None = None) -> None:
        self.rt = rt
        self.hosts = hosts
        self.shards = shards
        self.prefix = prefix
        self.index = index  # None on the driver: it owns nothing
        self._handles: dict[int, Any] = {}
        self._sent: dict[tuple[int, str], Any] = {}
        self._tasks: set[asyncio.Task] = set()
        # Ray may start an async actor's calls out of order: number them per host, and the
        # host queues them in that order, so each agent sees its messages in order.
        self.sender = uuid.uuid4().hex
        self._seq: dict[int, int] = {}

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

    def forward(self, key: Key, env: Envelope) -> None:
        """Send *env* to its host; resolve its future with the host's answer."""
        index = self.host_of(key)
        host = self.handle(index)
        cls = self.rt._class_for(key[0])
        if cls is not None and self._sent.get((index, key[0])) is not cls:
            host.register.remote(cls)  # runs before the delivery below (same caller, in order)
            self._sent[(index, key[0])] = cls
        try:
            spec = _spec(env)
            spec["sender"] = self.sender
            spec["seq"] = self._seq.get(index, 0)
            self._seq[index] = spec["seq"] + 1
            ref = host.deliver.remote(key[0], key[1], spec)
        except UsageError as exc:
            if env.future is not None and not env.future.done():
                env.future.set_exception(exc)
            return
        task = asyncio.ensure_future(self._settle(ref, env, key, index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, ref: Any, env: Envelope, key: Key, index: int,
                      resent: bool = False) -> None:
        fut = env.future
        try:
            text = await ref
        except _ClassMissing:
            # The host restarted and lost the classes it was sent: send again, once.
            self._sent = {k: v for k, v in self._sent.items() if k[0] != index}
            if not resent:
                host = self.handle(index)
                cls = self.rt._class_for(key[0])
                host.register.remote(cls)
                self._sent[(index, key[0])] = cls
                spec = _spec(env)
                spec["sender"], spec["seq"] = self.sender, self._seq.get(index, 0)
                self._seq[index] = spec["seq"] + 1
                await self._settle(host.deliver.remote(key[0], key[1], spec), env, key, index,
                                   True)
                return
            raise
        except BaseException as exc:  # the handler's own exception comes back as it was
            cause = getattr(exc, "cause", None)
            error = cause if isinstance(cause, BaseException) else exc
            if type(exc).__name__ in ("ActorUnavailableError", "ActorDiedError",
                                      "RayActorError"):
                self._sent = {k: v for k, v in self._sent.items() if k[0] != index}
                error = HostUnavailableError(
                    f"the host running this agent restarted during {env.method}(); it may or "
                    "may not have run - check ref.version or ref.history() and send again")
            if fut is not None and not fut.done():
                fut.set_exception(error)
            return
        if fut is not None and not fut.done():
            fut.set_result(None if text is None else jsonvalue.loads(text))

    async def settle(self) -> None:
        """Wait for the answers of forwarded messages."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def shutdown(self) -> None:
        """Stop the host actors (the driver's runtime is closing)."""
        ray = _ray()
        for index in range(self.hosts):
            try:
                ray.kill(self.handle(index), no_restart=True)
            except Exception:
                pass

    def hibernate(self) -> int:
        """Hibernate idle agents on every host."""
        ray = _ray()
        return sum(ray.get([self.handle(i).hibernate.remote() for i in range(self.hosts)]))


def start(rt: Runtime, address: str | None, hosts: int, shards: int) -> RayRouter:
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
                                                      prefix)
               for i in range(hosts)]
    ray.get([h.ready.remote() for h in handles])
    router = RayRouter(rt, hosts, shards, prefix)
    router._handles = dict(enumerate(handles))
    return router


class AgentHost:
    """A Ray actor hosting the agents of its shards with an ordinary runtime."""

    def __init__(self, root: str, index: int, hosts: int, shards: int, durability: str,
                 prefix: str) -> None:
        from ..runtime import Runtime

        self.index = index
        self.host_id = f"{prefix}-{index}-{uuid.uuid4().hex[:6]}"
        self.rt = Runtime(root, durability=durability)
        router = RayRouter(self.rt, hosts, shards, prefix, index)
        self.rt._router = router
        mine = [s for s in range(shards) if s % hosts == index]
        self.rt.catalog.take_leases(mine, self.host_id)  # a restarted host takes them back
        self.rt._lease = (self.host_id, shards)
        self.rt.timers.reload()
        self._expected: dict[str, int] = {}
        self._waiting: dict[tuple[str, int], asyncio.Future] = {}
        # After a restart, messages in flight died with the old process: take senders'
        # numbering up from whatever arrives first.
        self._restarted = bool(_ray().get_runtime_context().was_current_actor_reconstructed)

    async def ready(self) -> int:
        """The host's process id, once it can take messages."""
        self.rt.timers.arm_if_pending()
        return os.getpid()

    async def register(self, cls: type) -> None:
        """A (possibly redefined) agent class arrived from the driver."""
        from ..agent import _classes, _lineage

        _classes[cls.__name__] = cls
        _lineage[(cls.__module__, cls.__name__)] = cls
        self.rt._classes[cls.__name__] = cls

    async def deliver(self, class_name: str, name: str, spec: dict[str, Any]) -> str | None:
        """Run one forwarded message; returns its result as JSON text."""
        from ..mailbox import Envelope
        from ..runtime import _destroy_op, _prune_op

        self.rt.timers.arm_if_pending()
        sender, seq = spec["sender"], spec["seq"]
        if self._restarted and sender not in self._expected:
            self._expected[sender] = seq
        if self._expected.get(sender, 0) != seq:  # wait for the messages sent before this one
            fut = asyncio.get_running_loop().create_future()
            self._waiting[(sender, seq)] = fut
            await fut
        key = (class_name, name)
        from ..agent import _classes

        if class_name not in _classes:
            self._next(sender, seq)  # let later messages through meanwhile
            raise _ClassMissing(class_name)
        env = Envelope(spec["method"], tuple(jsonvalue.loads(spec["args"]) or ()),
                       dict(jsonvalue.loads(spec["kwargs"]) or {}), spec["args"], spec["kwargs"],
                       spec["source"], chain=tuple(tuple(k) for k in spec["chain"]),
                       label=spec["label"])
        if spec["approval"]:
            env.approval = tuple(spec["approval"])
        env.replay = spec["replay"]
        if spec["op"] == "destroy":
            env.op = _destroy_op
        elif spec["op"] == "prune":
            before, vacuum = env.args
            env.op = lambda inst: _prune_op(inst, before, vacuum)
        if not spec["future"]:
            self.rt._enqueue(key, env)
            self._next(sender, seq)
            return None
        pending = self.rt._submit(key, env)  # queued now, in order
        self._next(sender, seq)
        result = await pending
        try:
            return jsonvalue.dumps(jsonvalue.freeze(result, "result"))
        except (TypeError, ValueError):
            return None

    def _next(self, sender: str, seq: int) -> None:
        self._expected[sender] = seq + 1
        fut = self._waiting.pop((sender, seq + 1), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def hibernate(self) -> int:
        """Hibernate this host's idle agents."""
        return self.rt.hibernate()

    async def check(self, class_name: str, name: str) -> bool:
        """Whether this host holds the lease of *key*'s shard (for tests)."""
        return self.rt._holds_lease((class_name, name))


class _ClassMissing(Exception):
    """A host was asked to run an agent whose class it has not been sent (yet)."""


def check_lease(rt: Runtime, key: Key) -> None:
    """Refuse to open an agent whose shard this host doesn't hold."""
    if not rt._holds_lease(key):
        raise StoreError(f"{key[0]}({key[1]!r}) belongs to a shard another host holds; "
                         "the message was not run here")
