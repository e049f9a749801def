"""A Ray host's shard leases in the shared folder's catalog (the single-machine mode)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .shards import Key, shard_of

if TYPE_CHECKING:
    from ..store import Catalog

__all__ = ["CatalogLeases"]


class CatalogLeases:
    """The shards a host took in the catalog (``rt.lease`` on a host over a shared
    folder): it opens only agents of those shards. One machine: nothing to fence."""

    def __init__(self, catalog: Catalog, host_id: str, shards: int) -> None:
        self.catalog = catalog
        self.host_id = host_id
        self.shards = shards

    def holds(self, key: Key) -> bool:
        return self.catalog.lease_holder(shard_of(key, self.shards)) == self.host_id

    def fence(self, key: Key) -> None:
        """Nothing to check before a commit: a shard's holder changes only by a restart
        of its host, which takes it back."""

    def opened(self, key: Key, store: Any) -> None:
        """No replicas on one machine: nothing to follow."""

    def written(self, key: Key) -> None:
        """No replicas on one machine: nothing to ship."""
