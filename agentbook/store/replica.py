"""Copies of agent stores on other machines: committed versions shipped as bytes, whole
stores snapshotted and restored (the Ray backend's replicas and shard moves; see
:mod:`agentbook.backends.replication`).

* :func:`versions_since` / :func:`encode` read what a primary committed since it last
  shipped: its history rows verbatim (each holds the version's changeset, the state when
  it changed and the schema when it changed - what time travel records anyway), as one
  bytes payload (JSON text; changesets in base64). Never pickled.
* :func:`apply` follows them on a replica's copy: the changes applied forward, the same
  history rows (hash chain links included) and the state. Idempotent: versions the copy
  has already are skipped, so a shipment sent twice (a retry) changes nothing.
* :func:`snapshot` / :func:`restore` copy a whole store file (SQLite's backup API): a
  shard move or the seeding of a new replica. Everything moves, including what a
  changeset leaves out (pending approvals, the outbox, events).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, NamedTuple, cast

import apsw

from .changesets import redo

__all__ = ["Shipment", "apply", "decode", "encode", "head_version", "pack", "restore", "snapshot", "unpack",
           "versions_in_file", "versions_since"]

_HISTORY_COLUMNS = ("version, ts, method, args, kwargs, source, duration_ms, outcome, error,"
                    " result, state, changes, schema, due, occurrence, effects, chain")
_CHANGES, _SCHEMA = 11, 12  # (indexes in the history columns above)


class Shipment(NamedTuple):
    """What one agent committed since its last shipment."""

    class_name: str
    name: str
    meta: list[list[str]] | None  #: its ``_ab_meta`` rows, on its first shipment
    rows: list[list[Any]]  #: history rows, in _HISTORY_COLUMNS order
    version: int
    state: str


def head_version(conn: apsw.Connection) -> int:
    """The newest version in a store's history (0 for none)."""
    found = conn.execute("SELECT max(version) FROM _ab_history").fetchall()
    return int(found[0][0] or 0)


def versions_since(conn: apsw.Connection, key: tuple[str, str], after: int, upto: int,
                   state: str) -> Shipment:
    """The versions in (*after*, *upto*] of an agent's open store (committed ones: the
    caller's *upto* is its last commit), and its *state* at *upto*."""
    rows = conn.execute(f"SELECT {_HISTORY_COLUMNS} FROM _ab_history"
                        " WHERE version > ? AND version <= ? ORDER BY version",
                        (after, upto)).fetchall()
    meta = None
    if after == 0:
        meta = [[str(k), str(v)] for k, v in
                conn.execute("SELECT key, value FROM _ab_meta").fetchall()]
    return Shipment(key[0], key[1], meta, [list(r) for r in rows], upto, state)


def _cell(value: Any) -> Any:
    return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def _uncell(value: Any) -> Any:
    return base64.b64decode(value["b64"]) if isinstance(value, dict) else value


def encode(shipments: list[Shipment]) -> bytes:
    """Shipments as one bytes payload."""
    return json.dumps([[s.class_name, s.name, s.meta, [[_cell(c) for c in row] for row in s.rows],
                        s.version, s.state] for s in shipments],
                      separators=(",", ":")).encode()


def decode(data: bytes) -> list[Shipment]:
    """The shipments in an :func:`encode` payload."""
    return [Shipment(c, n, meta, [[_uncell(v) for v in row] for row in rows], version, state)
            for c, n, meta, rows, version, state in json.loads(data)]


def apply(conn: apsw.Connection, shipment: Shipment) -> int:
    """Follow a primary: write *shipment*'s versions into a replica's copy (a store made
    by ``AgentStore``), in one transaction. Returns the copy's version after."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        have = head_version(conn)
        if shipment.meta:
            conn.executemany("INSERT OR REPLACE INTO _ab_meta(key, value) VALUES (?, ?)",
                             shipment.meta)
        for row in shipment.rows:
            if row[0] <= have:
                continue  # (shipped twice: a retry)
            redo(conn, row[_CHANGES], row[_SCHEMA])
            conn.execute(f"INSERT INTO _ab_history({_HISTORY_COLUMNS}) VALUES"
                         " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            have = row[0]
        if shipment.version >= have:
            conn.execute("INSERT OR REPLACE INTO _ab_state(id, version, state) VALUES (1, ?, ?)",
                         (shipment.version, shipment.state))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return have


def versions_in_file(path: str, key: tuple[str, str], after: int) -> Shipment | None:
    """:func:`versions_since` from a store that is not open here (its agent hibernated),
    up to its last commit; ``None`` when it has nothing newer."""
    conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                           | apsw.SQLITE_OPEN_URI)
    try:
        conn.set_busy_timeout(5_000)
        conn.execute("BEGIN")
        found = cast("list[tuple[int, str]]", conn.execute(
            "SELECT version, state FROM _ab_state WHERE id = 1").fetchall())
        if not found or found[0][0] <= after:
            return None
        shipment = versions_since(conn, key, after, found[0][0], found[0][1])
        conn.execute("COMMIT")
        return shipment
    finally:
        conn.close()


def snapshot(path: str) -> bytes:
    """A consistent copy of the store file at *path*, as bytes (SQLite's backup API)."""
    src = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                          | apsw.SQLITE_OPEN_URI)
    mem = apsw.Connection(":memory:")
    try:
        with mem.backup("main", src, "main") as backup:
            backup.step()
        data = bytearray(mem.serialize("main") or b"")
        if len(data) > 19:  # (a WAL database's header can't be opened from memory: the
            data[18] = data[19] = 1  # copy says rollback journal; restore makes it WAL)
        return bytes(data)
    finally:
        mem.close()
        src.close()


def pack(stores: list[tuple[str, str, bytes]]) -> bytes:
    """Several ``(class, name, snapshot)`` as one bytes payload (a shard's stores)."""
    head = json.dumps([[c, n, len(data)] for c, n, data in stores]).encode()
    return b"".join([len(head).to_bytes(8, "big"), head, *(data for _c, _n, data in stores)])


def unpack(blob: bytes) -> list[tuple[str, str, bytes]]:
    """The stores in a :func:`pack` payload."""
    size = int.from_bytes(blob[:8], "big")
    at = 8 + size
    stores = []
    for class_name, name, length in json.loads(blob[8:at]):
        stores.append((class_name, name, bytes(blob[at:at + length])))
        at += length
    return stores


def restore(path: str, data: bytes) -> None:
    """Write a :func:`snapshot` as the store file at *path* (replacing what is there)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mem = apsw.Connection(":memory:")
    mem.deserialize("main", data)
    dest = apsw.Connection(path)
    try:
        with dest.backup("main", mem, "main") as backup:
            backup.step()
        dest.execute("PRAGMA journal_mode=WAL")
    finally:
        dest.close()
        mem.close()
