"""The shard lease of a runtime that owns every agent it opens (``rt.lease`` without Ray).

A Ray host's ``rt.lease`` (:mod:`agentbook.backends.shard_leases`,
:mod:`agentbook.backends.catalog_leases`) says which agents it may open, fences every
commit, and follows each opened store for its replica. A plain runtime has no shards and
no replicas: :data:`NO_LEASE` holds every key and does nothing, so the mailbox and the
output gate call the lease the same way everywhere, without asking which runtime runs them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NO_LEASE", "NoLease"]

Key = tuple[str, str]


class NoLease:
    """Every agent is this runtime's own: nothing to check, fence or follow."""

    __slots__ = ()

    def holds(self, key: Key) -> bool:
        """Always: no other process owns a shard of this runtime's agents."""
        return True

    def fence(self, key: Key) -> None:
        """Nothing to check before a commit (no lease can run out)."""

    def opened(self, key: Key, store: Any) -> None:
        """No replica follows the store."""

    def written(self, key: Key) -> None:
        """No replica to ship a write outside a batch to."""

    def __repr__(self) -> str:
        return "<NoLease: every agent is this runtime's>"


#: The one null lease (it has no state).
NO_LEASE = NoLease()
