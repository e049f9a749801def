"""Replicas of a Ray host's shards on another node (``replicas=1``).

After every commit (the mailbox's fence names the agent: :class:`ShardLeases`
``.on_commit``), the primary host ships the agent's new versions - its history rows, each
holding the version's changeset as time travel records it, its state and its schema
changes (:mod:`agentbook.store.replica`) - as one bytes payload to the host keeping the
shard's replica, which applies them to its copy of the store. Shipments are batched: while
one is on its way, the next commits gather for the next (group commit), so a busy host
ships once per round trip, not once per message.

* ``durability="replicated"``: a forwarded call is answered only once its version is on
  the replica (``Replicator.wait``): a lost node loses no acknowledged version.
* ``durability="async"``: the answer does not wait; the versions follow within one round
  trip (about a millisecond on a LAN; longer while the replica is slow or being
  replaced). A node lost in that window takes them with it.

Each shipment carries the primary's fencing epoch per shard; a replica refuses one with an
older epoch than it knows (the shard was promoted since), and the primary learns so.

What a changeset leaves out travels in the same shipments, under the same rules: the
agent's approvals (a pending one, and its decision), its outbox, the inbox's memory of
delivered messages (exactly-once delivery after a failover), its secrets and its recorded
events. Only what changed since the last shipment goes: the host notes the key of every
such row its stores change (temporary triggers on each store it opens as the owner,
:func:`agentbook.store.replica.track_side`), drains the notes right before each commit
(and after a write outside a batch: an acknowledged outbox row deleted), and ships those
rows as committed - or their deletion - with the new events past a cursor. A replica
applies them with the versions, in one transaction; a late retry of an older shipment
leaves them alone (each shipment's stamp only grows: the shard's epoch first, so also
from one owner to the next). On promotion the new owner indexes
the approvals it took over, so a pending one is in ``rt.approvals`` and is decided once;
an outbox row still there is delivered by the agent's next wake (the receiver's inbox
memory skips one it committed already).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw

from ..errors import HostUnavailableError, LeaseLostError
from ..store import AgentStore, shard_image, translate_error
from ..store import replica as replica_store
from .shards import Key

if TYPE_CHECKING:
    from ..core.runtime import Runtime
    from .shard_leases import ShardLeases

__all__ = ["Replicator"]

log = logging.getLogger("agentbook.ray")

#: Replica copies kept open on a host at once (the least recently used are closed).
_OPEN_COPIES = 64
#: The "version" shipped for an agent its primary destroyed (its copy goes too).
GONE = 1 << 62


class Replicator:
    """Ships a host's committed versions to its shards' replicas, and keeps the copies of
    the shards it is the replica of."""

    def __init__(self, rt: Runtime, leases: ShardLeases, handle: Callable[[int], Any],
                 wait: bool) -> None:
        self.rt = rt
        self.leases = leases
        self.handle = handle
        self.sync = wait
        self.touched: set[Key] = set()
        #: (replica host, key) -> the version it has of key.
        self.shipped: dict[tuple[int, Key], int] = {}
        self.waiters: list[tuple[Key, int, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.copies: OrderedDict[Key, AgentStore] = OrderedDict()
        self.refresh: Callable[[], Any] | None = None  # renews the leases (a newer map)
        self.rounds = 0  # shipping rounds done (see caught_up)
        #: Set (and replaced) after each round and when the pump stops: caught_up's cue.
        self._progress = asyncio.Event()
        #: Untracked rows changed since their agent's last shipment (drained notes).
        self.side_keys: dict[Key, set[replica_store.SideKey]] = {}
        #: (replica host, key) -> the last event seq it has of key.
        self.events_shipped: dict[tuple[int, Key], int] = {}
        self.stamp = time.time_ns()  # (grows with every shipment: see next_stamp)
        #: The stamp of the newest untracked rows applied to each copy kept here.
        self.side_applied: dict[Key, int] = {}
        leases.on_commit = self.committing
        leases.on_open = self.opened
        leases.on_write = self.written

    # -- the primary's side -------------------------------------------------------------
    def opened(self, key: Key, store: AgentStore) -> None:
        """*key*'s store was opened to be owned here: note what changes in its untracked
        tables from now on."""
        try:
            replica_store.track_side(store.conn)
        except apsw.Error as exc:
            raise translate_error(exc, store.path) from None

    def committing(self, key: Key) -> None:
        """A batch of *key* is about to commit: ship it once it has (inside the batch, the
        notes are drained too: a rollback brings them back)."""
        self.written(key)

    def written(self, key: Key) -> None:
        """*key*'s store changed: ship that (once committed)."""
        self._drain(key)
        if self.leases.replica_host(key) is None:
            return
        self._kick([key])

    def _kick(self, keys: list[Key]) -> None:
        """Ship *keys* with the next round (started now if none is running)."""
        self.touched.update(keys)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._pump())

    def next_stamp(self, key: Key) -> int:
        """The stamp of *key*'s next shipment of untracked rows: under the shard's epoch
        here, so it is newer than whatever the shard's earlier owners shipped
        (:func:`agentbook.store.replica.side_stamp`)."""
        self.stamp += 1
        return replica_store.side_stamp(self.leases.epoch(key), self.stamp)

    def _drain(self, key: Key) -> None:
        inst = self.rt.instances.get(key)
        if inst is None or inst.store is None:
            return
        keys = replica_store.take_side_keys(inst.store.conn)
        if keys and self.leases.replica_host(key) is not None:  # (no replica: a new one
            self.side_keys.setdefault(key, set()).update(keys)  # is seeded with all rows)

    def seed(self, shards: set[int]) -> None:
        """*shards* have a new replica: ship it all of their agents, from the start."""
        keys = [(row[0], row[1]) for row in self.rt.catalog.rows()
                if self.leases.shard((row[0], row[1])) in shards]
        self.shipped = {k: v for k, v in self.shipped.items()
                        if self.leases.shard(k[1]) not in shards}
        self.events_shipped = {k: v for k, v in self.events_shipped.items()
                               if self.leases.shard(k[1]) not in shards}
        if keys:
            self._kick(keys)

    def adopt(self, target: int, versions: dict[Key, int]) -> None:
        """*target* got the same files of these agents as this host (a shard moved here):
        ship it only what is newer than *versions*, nothing from the start."""
        for key, version in versions.items():
            self.shipped[(target, key)] = version
            self.touched.discard(key)

    async def caught_up(self, timeout: float) -> bool:
        """Until what was to ship when called has been shipped (a new replica seeded, say),
        while commits go on; ``False`` if that took longer than *timeout* seconds."""
        start = self.rounds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # (the round under way, then the one with everything touched then)
        while self.task is not None and not self.task.done() and self.rounds < start + 2:
            try:
                await asyncio.wait_for(self._progress.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                return False
        return True

    def _moved_on(self) -> None:
        """A round ended, or the pump stopped: wake :meth:`caught_up`."""
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def wait(self, key: Key) -> None:
        """Until *key*'s committed versions are on its replica (or it has none)."""
        target = self.leases.replica_host(key)
        inst = self.rt.instances.get(key)
        if target is None:
            return
        if inst is None:  # destroyed (its copy goes too), or hibernated since its commit
            self._kick([key])
            if os.path.exists(self.rt.path_of(key)):
                return
        version = GONE if inst is None else inst.committed[0]
        if self.shipped.get((target, key), 0) >= version:
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((key, version, fut))
        self._kick([key])
        lease = self.leases.view["lease"] if self.leases.view is not None else 10.0
        try:
            await asyncio.wait_for(fut, 3 * lease)
        except asyncio.TimeoutError:
            raise HostUnavailableError(
                f"{key[0]}({key[1]!r}) committed version {version} on its host, but it did "
                f"not reach the replica within {3 * lease:g} s, so it was not acknowledged; "
                "it may or may not survive the loss of this node - check ref.version and "
                "send it again if needed") from None

    async def _pump(self) -> None:
        try:
            await self._pumping()
        except asyncio.CancelledError:
            raise
        except Exception:  # (never silently: the next commit or wait starts a new pump)
            log.exception("shipping versions to a replica failed")
        finally:
            self._moved_on()

    async def _pumping(self) -> None:
        await asyncio.sleep(0)  # (after the commit that named the agent)
        while self.touched:
            touched, self.touched = self.touched, set()
            by_target: dict[int, list[Key]] = {}
            owned = self.leases.owned
            for key in touched:
                target = self.leases.replica_host(key)
                if target is not None and self.leases.shard(key) in owned:
                    by_target.setdefault(target, []).append(key)
            sends = [self._ship(target, keys) for target, keys in by_target.items()]
            results = await asyncio.gather(*sends, return_exceptions=True)
            failed = False
            for (_target, keys), result in zip(by_target.items(), results, strict=True):
                if isinstance(result, BaseException):
                    failed = True
                    self.touched.update(keys)  # again, after a newer map (or a pause)
            self._settle()
            self.rounds += 1
            self._moved_on()
            if failed:
                if self.refresh is not None:
                    try:
                        await self.refresh()
                    except Exception:
                        pass
                await asyncio.sleep(0.05)
        self._settle()

    async def _ship(self, target: int, keys: list[Key]) -> None:
        shipments, epochs = [], {}
        taken: dict[Key, set[replica_store.SideKey]] = {}
        for key in keys:
            inst = self.rt.instances.get(key)
            after = self.shipped.get((target, key), 0)
            pending = taken[key] = self.side_keys.pop(key, set())
            stamp, events_after = self.next_stamp(key), self.events_shipped.get((target, key), 0)

            def side(conn: apsw.Connection, pending: set = pending, after: int = after,
                     stamp: int = stamp, events_after: int = events_after
                     ) -> replica_store.Side:
                if after == 0:  # the replica's first shipment: every row
                    return replica_store.side_rows(conn, None, 0, stamp)
                return replica_store.side_rows(conn, pending, events_after, stamp)

            if inst is None or inst.store is None:  # (hibernated since: read its file)
                if not os.path.exists(self.rt.path_of(key)):  # destroyed: so is its copy
                    shipments.append(replica_store.Shipment(key[0], key[1], None, [], GONE, ""))
                    continue
                shipment = replica_store.versions_in_file(self.rt.path_of(key), key, after, side)
                if shipment is None:
                    continue
                shipments.append(shipment)
            else:
                store = inst.store
                busy = store.conn.in_transaction  # (a batch is running: read the last commit)
                if not busy:
                    pending |= replica_store.take_side_keys(store.conn)
                rows = side(store.reader() if busy else store.conn)
                upto, _state, state_json = inst.committed
                if upto <= after and rows.empty():
                    continue
                shipments.append(replica_store.versions_since(
                    store.conn, key, after, upto, state_json)._replace(side=rows))
            epochs[self.leases.shard(key)] = self.leases.epoch(key)
        if not shipments:
            return
        data = replica_store.encode(shipments)
        lease = self.leases.view["lease"] if self.leases.view is not None else 10.0
        # (a replica being restarted holds the call: ask again after a newer map)
        try:
            missing = await asyncio.wait_for(
                self.handle(target).replicate.remote(self.leases.index, epochs, data), lease)
        except BaseException:
            for key, pending in taken.items():  # (shipped again with the next try)
                if pending:
                    self.side_keys.setdefault(key, set()).update(pending)
            raise
        for shipment in shipments:
            key = (shipment.class_name, shipment.name)
            if shipment.version == GONE:  # (destroyed: no version of it is owed any more)
                self.shipped[(target, key)] = GONE
            elif [key[0], key[1]] in missing:  # it has no copy to follow: from the start
                self.shipped.pop((target, key), None)
                self.events_shipped.pop((target, key), None)
                self.touched.add(key)
            else:
                self.shipped[(target, key)] = shipment.version
                if shipment.side is not None:
                    self.events_shipped[(target, key)] = shipment.side.events_upto

    def _settle(self) -> None:
        still = []
        for key, version, fut in self.waiters:
            target = self.leases.replica_host(key)
            if fut.done():
                continue
            if target is None or self.shipped.get((target, key), 0) >= version:
                fut.set_result(None)
            elif self.leases.shard(key) not in self.leases.owned \
                    and self.leases.shard(key) not in self.leases.moving:
                fut.set_exception(LeaseLostError(
                    f"{key[0]}({key[1]!r}): this host lost the shard before its last "
                    "version reached the replica; it was not acknowledged - send it again"))
            else:
                still.append((key, version, fut))
        self.waiters = still

    # -- the replica's side -------------------------------------------------------------
    async def apply(self, sender: int, epochs: dict[int, int],
                    data: bytes) -> list[list[str]]:
        """Follow a primary (see :meth:`AgentHost.replicate`); returns the agents this host
        has no copy of to follow (it lost them): the primary ships those from the start."""
        for shard, epoch in epochs.items():
            if shard in self.leases.owned or epoch < self.leases.known_epoch(int(shard)):
                raise LeaseLostError(
                    f"host {sender} shipped versions of shard {shard} under epoch {epoch}, "
                    "but the shard has a newer owner: they were refused")
        missing = []
        for n, shipment in enumerate(replica_store.decode(data)):
            if n and n % 16 == 0:
                await asyncio.sleep(0)  # (a seeding is long: let renewals and calls in)
            key = (shipment.class_name, shipment.name)
            if shipment.version == GONE:  # its primary destroyed it
                self._close(key)
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(self.rt.path_of(key) + suffix)
                    except FileNotFoundError:
                        pass
                self.rt.catalog.remove(*key)
                continue
            fresh = shipment.meta is not None
            if not fresh and key not in self.copies and not os.path.exists(self.rt.path_of(key)):
                missing.append([key[0], key[1]])
                continue
            store = self._copy(key, fresh=fresh)
            applied = self.side_applied.get(key, 0)
            try:
                replica_store.apply(store.conn, shipment, applied)
            except apsw.Error as exc:
                self._close(key)
                raise translate_error(exc, store.path) from None
            if shipment.side is not None:
                self.side_applied[key] = max(applied, shipment.side.stamp)
        return missing

    def _copy(self, key: Key, fresh: bool) -> AgentStore:
        """The copy of *key* to apply to; *fresh*: the primary ships from the start (a new
        replica, or a new primary), so an older copy here (stale) starts over."""
        store = self.copies.get(key)
        if store is not None and not fresh:
            self.copies.move_to_end(key)
            return store
        path = self.rt.path_of(key)
        if fresh:
            self.side_applied.pop(key, None)  # (a new primary stamps from its own start)
            self._close(key)
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(path + suffix)
                except FileNotFoundError:
                    pass
        store = AgentStore(path, self.rt.durability)
        self.rt.catalog.add(key[0], key[1], os.path.relpath(path, self.rt.root), self.rt.clock.now())
        self.copies[key] = store
        while len(self.copies) > _OPEN_COPIES:
            _k, old = self.copies.popitem(last=False)
            old.close()
        return store

    def _close(self, key: Key) -> None:
        store = self.copies.pop(key, None)
        if store is not None:
            store.close()

    def forget(self, shards: set[int]) -> None:
        """This host lost *shards*: whatever it shipped of them no longer counts."""
        self.shipped = {k: v for k, v in self.shipped.items()
                        if self.leases.shard(k[1]) not in shards}
        self.events_shipped = {k: v for k, v in self.events_shipped.items()
                               if self.leases.shard(k[1]) not in shards}
        self.side_keys = {k: v for k, v in self.side_keys.items()
                          if self.leases.shard(k) not in shards}

    def moved(self, shards: set[int]) -> None:
        """*shards* moved to another host, their files to their replica too: the versions
        waiting to reach the replica are there (answer their calls)."""
        for key, _version, fut in self.waiters:
            if self.leases.shard(key) in shards and not fut.done():
                fut.set_result(None)
        self._settle()

    def promoted(self, shards: set[int]) -> None:
        """This host now owns *shards*: close their copies (the runtime opens them as its
        own stores)."""
        for key in [k for k in self.copies if self.leases.shard(k) in shards]:
            self._close(key)

    def close_copy(self, key: Key) -> None:
        """Close the copy of *key* if it is open (its file is about to be replaced)."""
        self._close(key)

    def install_copy(self, key: Key, data: bytes, epoch: int) -> None:
        """Make *data* (a shard image's file of *key*) the copy of *key* kept here: the
        shard moved to a new owner under *epoch* with this host as its replica. The copy
        takes untracked rows from that owner on (its stamps are under *epoch*), and no
        shipment from an earlier one (a late retry of the host the shard left: refused,
        as under an older epoch)."""
        self.leases.note_epoch(self.leases.shard(key), epoch)
        self._close(key)
        shard_image.install(self.rt.path_of(key), data, self.rt.durability == "full")
        self.side_applied[key] = replica_store.side_stamp(epoch, 0)
