"""A shard's agents as one bytes payload: their store files and their catalog entries (the
Ray backend's shard moves; see ``AgentHost.hand_over``).

A moving shard's agents are closed first (hibernated, their WAL checkpointed away), so
each store is one file: :func:`image` reads it as it is (no SQLite open; a store that
still has a WAL is copied with SQLite's backup API instead), and :func:`install` writes
it on the other side (a temporary file renamed into place, synced with
``durability="full"``: no SQLite open either). The agents' catalog entries travel along
(:mod:`.catalog_entries`: ``Catalog.entries_of`` on one side, ``Catalog.take_entries`` on
the other). Never pickled: a JSON head, then the files.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, cast

import apsw

from .catalog_entries import CatalogEntries
from .durable import sync_path
from .replica import snapshot

__all__ = ["AgentImage", "ShardImage", "head_version", "image", "install", "pack", "unpack"]

_WAL_HEADER = (18, 19)  # the file format bytes: 2 and 2 in a WAL database


class AgentImage(NamedTuple):
    """One agent's store file, as bytes."""

    class_name: str
    name: str
    data: bytes


class ShardImage(NamedTuple):
    """A shard's agents: their store files, and their catalog rows."""

    stores: list[AgentImage]
    entries: CatalogEntries


def image(path: str) -> bytes:
    """The store file at *path* (closed here), as bytes: the file itself when its WAL is
    empty or gone, else a consistent copy made with SQLite's backup API."""
    try:
        wal = os.path.getsize(path + "-wal")
    except FileNotFoundError:
        wal = 0
    if not wal:
        with open(path, "rb") as fh:
            return fh.read()
    data = bytearray(snapshot(path))
    for at in _WAL_HEADER:  # (an in-memory copy says rollback journal; on disk: WAL again)
        if len(data) > at:
            data[at] = 2
    return bytes(data)


def install(path: str, data: bytes, sync: bool = False) -> None:
    """Write *data* (an :func:`image`) as the store file at *path*, replacing whatever is
    there (its old WAL too): a temporary file renamed into place; *sync* (a store with
    ``durability="full"``, which survives a power loss): the file flushed to the disk
    before the rename, and its folder after (:mod:`.durable`). Like a ``"normal"``
    store's commits, an unsynced file survives a killed process."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    tmp = path + ".moving"
    with open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if sync:
        sync_path(os.path.dirname(path))


def head_version(data: bytes) -> int:
    """The newest version in an :func:`image`'s history, read in memory (0 for none)."""
    mem = apsw.Connection(":memory:")
    try:
        copy = bytearray(data)
        for at in _WAL_HEADER:  # (a WAL database can't be opened from memory as it is)
            if len(copy) > at:
                copy[at] = 1
        mem.deserialize("main", bytes(copy))
        found = mem.execute("SELECT max(version) FROM _ab_history").fetchall()
        return int(found[0][0] or 0)
    finally:
        mem.close()


def pack(shard: ShardImage) -> bytes:
    """*shard* as one bytes payload: a JSON head (names, sizes, catalog rows), the files."""
    head = json.dumps({"stores": [[s.class_name, s.name, len(s.data)] for s in shard.stores],
                       "entries": shard.entries.to_json()}, separators=(",", ":")).encode()
    return b"".join([len(head).to_bytes(8, "big"), head, *(s.data for s in shard.stores)])


def unpack(blob: bytes) -> ShardImage:
    """The :class:`ShardImage` in a :func:`pack` payload."""
    size = int.from_bytes(blob[:8], "big")
    at = 8 + size
    head = cast("dict[str, Any]", json.loads(blob[8:at]))
    stores = []
    for class_name, name, length in head["stores"]:
        stores.append(AgentImage(class_name, name, bytes(blob[at:at + length])))
        at += length
    return ShardImage(stores, CatalogEntries.from_json(head["entries"]))
