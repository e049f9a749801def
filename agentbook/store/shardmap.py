"""The Ray coordinator's durable record: which host owns each shard, under which fencing
epoch, and which host keeps its replica (see :mod:`agentbook.backends.coordinator`).

One small SQLite file (``shardmap.db``) in the coordinator's own node folder, written
only when ownership changes (a failover, a shard move, the first plan), never per message
or per lease renewal: renewals live in the coordinator's memory, and a restarted
coordinator gives every host a fresh lease before it reassigns anything.
"""

from __future__ import annotations

import os
from typing import NamedTuple, cast

import apsw

from .sqlaccess import translate_error

__all__ = ["ShardMap", "ShardRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards(
    shard INTEGER PRIMARY KEY,
    owner INTEGER NOT NULL,     -- host index
    epoch INTEGER NOT NULL,     -- fencing token: +1 whenever the owner changes
    replica INTEGER             -- host index keeping a replica, NULL if none
);
CREATE TABLE IF NOT EXISTS hosts(
    host INTEGER PRIMARY KEY,
    disk TEXT NOT NULL          -- the id of the host's store folder (its host.id file)
);
"""


class ShardRow(NamedTuple):
    """One shard's owner, fencing epoch and replica host."""

    shard: int
    owner: int
    epoch: int
    replica: int | None


class ShardMap:
    """The coordinator's durable shard map (``<folder>/shardmap.db``)."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "shardmap.db")
        try:
            os.makedirs(folder, exist_ok=True)
            self.conn = apsw.Connection(self.path)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute(_SCHEMA)
        except apsw.Error as exc:
            raise translate_error(exc, self.path) from None

    def rows(self) -> list[ShardRow]:
        """Every shard's row, by shard."""
        found = cast("list[tuple[int, int, int, int | None]]", self.conn.execute(
            "SELECT shard, owner, epoch, replica FROM shards ORDER BY shard").fetchall())
        return [ShardRow(*row) for row in found]

    def save(self, rows: list[ShardRow]) -> None:
        """Write *rows* (changed shards) in one durable transaction."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO shards(shard, owner, epoch, replica) VALUES (?,?,?,?)",
                rows)

    def disks(self) -> dict[int, str]:
        """The store folder (its id) each host last ran on."""
        found = cast("list[tuple[int, str]]",
                     self.conn.execute("SELECT host, disk FROM hosts").fetchall())
        return dict(found)

    def set_disk(self, host: int, disk: str) -> None:
        """Record that host *host* keeps its stores in the folder with id *disk*."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO hosts(host, disk) VALUES (?, ?)",
                              (host, disk))

    def forget_host(self, host: int) -> None:
        """Host *host* was removed for good: its folder is no longer expected."""
        with self.conn:
            self.conn.execute("DELETE FROM hosts WHERE host = ?", (host,))

    def close(self) -> None:
        self.conn.close()
