"""A Ray host's shard leases from the coordinator, and the fence on its commits.

The host holds a lease on each shard the coordinator gave it, good until a *deadline*:
the moment it sent its last successful renewal plus 90% of the lease (measured on its own
monotonic clock, which runs on while the process is stopped). The coordinator gives a
shard to another host only after 1.5 leases without a renewal, so by then this host's
deadline has passed: :meth:`ShardLeases.fence`, called by the mailbox right before every
commit (``rt.lease.fence``), refuses the commit with :class:`~agentbook.LeaseLostError`
(the batch is rolled back: nothing of it is committed, and the driver sends the messages
to the shard's new owner). Each shard also carries the coordinator's *epoch*, the fencing
token a replica checks on every shipment (see :mod:`agentbook.backends.replication`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import LeaseLostError
from .shards import Key, shard_of

__all__ = ["ShardLeases"]

#: Of a lease, the part a host counts on (the rest covers the renewal's own trip).
MARGIN = 0.9


class ShardLeases:
    """The shards this host owns, their epochs, and until when (``rt.lease`` on a host)."""

    def __init__(self, index: int, shards: int) -> None:
        self.index = index
        self.shards = shards
        self.owned: dict[int, int] = {}  # shard -> epoch
        #: Shards being handed over to another host: not owned here any more, whatever
        #: a renewal says until the coordinator has moved them.
        self.moving: set[int] = set()
        #: Shards moving here: not owned until their files are in (``AgentHost.take``),
        #: whatever a renewal says meanwhile.
        self.incoming: set[int] = set()
        self.deadline = 0.0  # time.monotonic() after which nothing is committed
        self.view: dict[str, Any] | None = None
        #: Epochs heard of before the coordinator's next answer says so (a shard that
        #: moved, its files handed to this host as its replica: :meth:`note_epoch`).
        self.noted: dict[int, int] = {}
        #: Called with the key of every batch about to commit (the replicator's cue).
        self.on_commit: Callable[[Key], None] | None = None
        #: Called with every store this host opens as its agent's owner, and with the key
        #: of a store written outside a batch (an acknowledged outbox row deleted): the
        #: replicator follows what changesets leave out.
        self.on_open: Callable[[Key, Any], None] | None = None
        self.on_write: Callable[[Key], None] | None = None

    def update(self, view: dict[str, Any],
               sent_at: float) -> tuple[set[int], set[int], set[int]]:
        """Take a renewal's answer (asked at *sent_at*); returns the shards gained, lost,
        and owned with a new replica (to be seeded)."""
        owned = {s: e for s, (o, e) in enumerate(zip(view["owners"], view["epochs"], strict=True))
                 if o == self.index and s not in self.moving and s not in self.incoming}
        gained = set(owned) - set(self.owned)
        lost = set(self.owned) - set(owned)
        lost |= {s for s in owned if s in self.owned and owned[s] != self.owned[s]}
        before = self.view["replicas"] if self.view is not None else None
        seed = {s for s in owned if view["replicas"][s] is not None
                and (before is None or before[s] != view["replicas"][s])}
        self.owned = owned
        self.view = view
        self.deadline = sent_at + view["lease"] * MARGIN
        return gained, lost, seed

    def hand_over(self, shard: int) -> None:
        """Stop owning *shard* now (it is moving to another host)."""
        self.moving.add(shard)
        self.owned.pop(shard, None)

    def grant(self, shard: int, epoch: int) -> None:
        """Own *shard* under *epoch* (moved here; the lease's deadline is the host's)."""
        self.owned[shard] = epoch

    def expire(self) -> None:
        """The coordinator refused or can't be reached: commit nothing from now on."""
        self.deadline = 0.0

    def shard(self, key: Key) -> int:
        return shard_of(key, self.shards)

    def holds(self, key: Key) -> bool:
        """Whether this host may open *key* now."""
        return shard_of(key, self.shards) in self.owned and time.monotonic() < self.deadline

    def fence(self, key: Key) -> None:
        """Right before a commit of *key*'s batch: refuse it unless the lease holds."""
        shard = shard_of(key, self.shards)
        if shard not in self.owned or time.monotonic() >= self.deadline:
            raise LeaseLostError(
                f"{key[0]}({key[1]!r}): this Ray host no longer holds the lease of shard "
                f"{shard} (it was paused or cut off longer than its lease, or the shard "
                "moved); nothing was committed here. The driver sends it again to the "
                "shard's new owner; if you see this, send it again")
        if self.on_commit is not None:
            self.on_commit(key)

    def opened(self, key: Key, store: Any) -> None:
        """The mailbox opened *key*'s store (to own it: its writes are this host's)."""
        if self.on_open is not None:
            self.on_open(key, store)

    def written(self, key: Key) -> None:
        """*key*'s store was written outside a batch (committed already)."""
        if self.on_write is not None:
            self.on_write(key)

    def replica_host(self, key: Key) -> int | None:
        """The host keeping *key*'s replica (``None``: none)."""
        if self.view is None:
            return None
        replica = self.view["replicas"][shard_of(key, self.shards)]
        return None if replica == self.index else replica

    def epoch(self, key: Key) -> int:
        return self.owned.get(shard_of(key, self.shards), 0)

    def known_epoch(self, shard: int) -> int:
        """The newest epoch of *shard* this host has heard of: from the coordinator's
        last answer, or noted since (:meth:`note_epoch`)."""
        told = 0 if self.view is None else self.view["epochs"][shard]
        return max(told, self.noted.get(shard, 0))

    def note_epoch(self, shard: int, epoch: int) -> None:
        """*shard* has an owner under *epoch* now (before a renewal says so): what is
        shipped under an older one is refused from now on."""
        if epoch > self.noted.get(shard, 0):
            self.noted[shard] = epoch
