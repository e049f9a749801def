"""The Ray backend's coordinator: who owns each shard, with fencing, when the stores are
node-local (``ab.Runtime(..., backend="ray", host_dir=...)``).

One detached, named Ray actor on the driver's node, with its own durable SQLite
(:mod:`agentbook.store.shardmap`) in that node's folder. It keeps, per shard, the owning
host, a fencing *epoch* (+1 whenever the owner changes) and the replica host (on another
node, with ``replicas=1``). Hosts hold leases: each renews all of its shards every
``lease/4`` seconds (:meth:`Coordinator.renew`); a host that hasn't renewed for 1.5
``lease`` is taken for lost, and each shard it owned is promoted on its replica (a new
epoch). A host refuses to commit once its own lease deadline (measured from *before* it
asked, so never later than the coordinator's) has passed, so a host that was paused or cut
off never commits after its shards were given to another: see
:class:`agentbook.backends.shard_leases.ShardLeases`.

Renewals stay in memory; the shard map is written only when ownership changes. A
restarted coordinator counts every host as renewed at its start, so it reassigns nothing
before a whole lease has passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ..errors import UsageError
from ..store.shardmap import ShardMap, ShardRow
from .shards import node_folder

__all__ = ["Coordinator"]

log = logging.getLogger("agentbook.ray")

#: A host that hasn't renewed for this many leases is taken for lost.
GRACE = 1.5


class Coordinator:
    """The shard map and the shard leases of one Ray runtime (a Ray actor)."""

    def __init__(self, host_dir: str | None, shards: int, replicas: int, lease: float) -> None:
        self.folder = os.path.join(node_folder(host_dir), "coordinator")
        self.store = ShardMap(self.folder)
        self.shards = shards
        self.replicas = replicas
        self.lease = lease
        self.rows: dict[int, ShardRow] = {r.shard: r for r in self.store.rows()}
        #: Host -> Ray node id (replicas go on another node), and -> its folder's id (a
        #: host back with another folder has lost its stores: its shards are promoted).
        self.nodes: dict[int, str] = {}
        self.disks: dict[int, str] = self.store.disks()
        self.renewed: dict[int, float] = {}
        self.started = time.monotonic()
        self.dead: set[int] = set()
        #: Hosts being drained (they take no new shard or replica), and hosts removed
        #: for good (drained and stopped: ``rt.remove_hosts``, ``rt.drain_node``).
        self.draining: set[int] = set()
        self.removed: set[int] = set()
        self.version = 0
        self._monitor: asyncio.Task | None = None

    # -- the plan ----------------------------------------------------------------------
    async def plan(self, places: dict[int, list[str]]) -> int:
        """The hosts are up (host index -> [node id, folder id]): give every shard an owner
        and a replica the first time; later, keep the map (the stores are where it says)."""
        now = time.monotonic()
        known = {r.owner for r in self.rows.values()} | set(self.disks)
        if known - set(places):
            raise UsageError(
                f"this host_dir holds the stores of {max(known) + 1} hosts; start the runtime "
                f"with hosts={max(known) + 1} (or a new host_dir)")
        for host, (node, disk) in places.items():
            self._place(host, node, disk)
            self.renewed[host] = now
            self.dead.discard(host)
        if not self.rows:
            hosts = sorted(places)
            rows: list[ShardRow] = []
            for shard in range(self.shards):
                owner = hosts[shard % len(hosts)]
                rows.append(ShardRow(shard, owner, 1, self._pick_replica(owner, rows)))
            self._save(rows)
        else:
            self._fill_replicas()
        self._watch()
        return self.version

    def _pick_replica(self, owner: int, planned: list[ShardRow] | None = None) -> int | None:
        """A live host on another node than *owner*'s, the one keeping fewest replicas."""
        if not self.replicas:
            return None
        node = self.nodes.get(owner)
        rows = planned if planned is not None else list(self.rows.values())
        load: dict[int, int] = {}
        for row in rows:
            if row.replica is not None:
                load[row.replica] = load.get(row.replica, 0) + 1
        fits = [h for h, n in self.nodes.items() if n != node and h not in self.dead
                and h not in self.draining and h not in self.removed]
        if not fits:
            return None
        return min(fits, key=lambda h: (load.get(h, 0), (h - owner) % (max(self.nodes) + 1)))

    def _fill_replicas(self) -> None:
        """Give a replica to shards that lost theirs (the new replica is seeded by the
        owner: it ships the agents' versions from the start)."""
        changed = []
        for row in list(self.rows.values()):
            if row.replica is None and row.owner not in self.dead:
                pick = self._pick_replica(row.owner)
                if pick is not None:
                    changed.append(row._replace(replica=pick))
                    self.rows[row.shard] = changed[-1]
        self._save(changed)

    def _save(self, rows: list[ShardRow]) -> None:
        if rows:
            self.store.save(rows)
            for row in rows:
                self.rows[row.shard] = row
            self.version += 1

    # -- leases ------------------------------------------------------------------------
    async def renew(self, host: int, node: str, disk: str) -> dict[str, Any]:
        """Host *host* (on *node*, folder id *disk*) renews its leases: what it owns now,
        and the map."""
        now = time.monotonic()
        self._expire(now)
        if host in self.removed:  # (a renewal that was on its way as the host stopped)
            return self.view()
        if host in self.dead or self.nodes.get(host) != node or self.disks.get(host) != disk:
            self.dead.discard(host)
            self._place(host, node, disk)
            self._fill_replicas()
        self.renewed[host] = now
        return self.view()

    def _place(self, host: int, node: str, disk: str) -> None:
        """Host *host* runs on *node* with the folder *disk*; another folder than before
        means its stores are not there (a lost disk, or restarted on another node)."""
        if self.disks.get(host) not in (None, disk):
            self._lose(host)
        self.nodes[host] = node
        if self.disks.get(host) != disk:
            self.disks[host] = disk
            self.store.set_disk(host, disk)

    def view(self) -> dict[str, Any]:
        """The shard map as every host and the driver see it."""
        rows = [self.rows[s] for s in range(self.shards)]
        return {"version": self.version, "owners": [r.owner for r in rows],
                "epochs": [r.epoch for r in rows], "replicas": [r.replica for r in rows],
                "dead": sorted(self.dead | self.removed), "gone": sorted(self.removed),
                "draining": sorted(self.draining), "lease": self.lease}

    def _expire(self, now: float) -> None:
        limit = self.lease * GRACE
        for host, last in list(self.renewed.items()):
            if host not in self.dead and now - max(last, self.started) > limit:
                log.warning("agentbook host %d missed its lease renewals: its shards go to "
                            "their replicas", host)
                self.dead.add(host)
                self._lose(host)
        if self.dead:
            self._fill_replicas()

    def _lose(self, host: int) -> None:
        """Host *host*'s stores are gone (or it is): promote its shards on their replicas."""
        changed = []
        for row in self.rows.values():
            if row.owner == host and row.replica is not None and row.replica not in self.dead \
                    and row.replica != host:
                changed.append(ShardRow(row.shard, row.replica, row.epoch + 1, None))
            elif row.replica == host:
                changed.append(row._replace(replica=None))
        self._save(changed)

    def _watch(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._monitoring())

    async def _monitoring(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 4)
            try:
                self._expire(time.monotonic())
            except Exception:  # (never let the watch stop)
                log.exception("the agentbook coordinator's lease check failed")

    # -- moves -------------------------------------------------------------------------
    async def move(self, shard: int, to: int) -> dict[str, Any]:
        """Give *shard* to host *to* (a new epoch); its replica stays unless it is on
        *to*'s node. Returns the new row (``owner``, ``epoch``, ``replica``)."""
        row = self.rows[shard]
        replica = row.replica
        if replica is not None and (replica == to or self.nodes.get(replica) == self.nodes.get(to)):
            replica = None
        new = ShardRow(shard, to, row.epoch + 1, replica)
        self._save([new])
        if replica is None:
            self._fill_replicas()
        new = self.rows[shard]
        return {"owner": new.owner, "epoch": new.epoch, "replica": new.replica}

    # -- draining and removing hosts -----------------------------------------------------
    async def drain(self, host: int) -> dict[str, Any]:
        """Host *host* is about to go: it takes no new shard or replica, and the replicas
        it keeps get another host (their owners seed them as they renew). Its own shards
        are moved by the driver (:meth:`move`). Returns the map."""
        if host in self.removed or host not in self.nodes:
            raise UsageError(f"there is no host {host} to drain")
        self.draining.add(host)
        changed = []
        for row in self.rows.values():
            if row.replica == host:
                self.rows[row.shard] = row._replace(replica=None)
                changed.append(self.rows[row.shard])
        self._save(changed)
        self._fill_replicas()
        return self.view()

    async def remove(self, host: int) -> dict[str, Any]:
        """Host *host* was drained: forget it (it owns and keeps nothing now). Returns the
        map."""
        left = [r.shard for r in self.rows.values() if host in (r.owner, r.replica)]
        if left:
            raise UsageError(f"host {host} still owns or keeps shards {left}; drain it first")
        self.draining.discard(host)
        self.removed.add(host)
        self.dead.discard(host)
        self.renewed.pop(host, None)
        self.nodes.pop(host, None)
        if self.disks.pop(host, None) is not None:
            self.store.forget_host(host)
        self.version += 1
        return self.view()

    async def join(self, host: int, node: str, disk: str) -> int:
        """A host was added (no shards yet: :meth:`move` gives it some)."""
        self._place(host, node, disk)
        self.renewed[host] = time.monotonic()
        self.dead.discard(host)
        self._fill_replicas()
        return self.version

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        self.store.close()
