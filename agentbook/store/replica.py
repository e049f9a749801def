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
* What a changeset leaves out - the untracked tables an agent keeps beside its versions:
  approvals (pending ones above all), the outbox, the inbox's memory of delivered
  messages, secrets and the recorded events - ships as :class:`Side` rows with each
  shipment, only what changed since the last one: :func:`track_side` puts temporary
  triggers on the primary's writer connection (nothing in the file, so a store costs
  no more on disk and the single-machine mode does no extra work) that note the key of
  every row inserted, updated or deleted; :func:`take_side_keys` drains those notes, and
  :func:`side_rows` reads the rows as committed (or their absence: a delete). Events
  only grow, so they ship by their ``seq`` past a cursor, with the lowest one kept (the
  replica prunes below it). :func:`apply` writes them with the versions, in the same
  transaction: an upsert or a delete of the row as the primary has it, so a retry
  changes nothing, and a shipment older than the one applied last (its *stamp*) leaves
  them alone.
* :func:`snapshot` / :func:`restore` copy a whole store file (SQLite's backup API): a
  shard move or the seeding of a new replica.
"""

from __future__ import annotations

import base64
import json
import os
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import apsw

from ..errors import StoreError
from .changesets import redo

__all__ = ["SIDE_TABLES", "Shipment", "Side", "SideKey", "apply", "decode", "encode",
           "head_version", "pack", "restore", "side_rows", "side_stamp", "snapshot",
           "take_side_keys", "track_side", "unpack", "versions_in_file", "versions_since"]

_HISTORY_COLUMNS = ("version, ts, method, args, kwargs, source, duration_ms, outcome, error,"
                    " result, state, changes, schema, due, occurrence, effects, chain")
_CHANGES, _SCHEMA = 11, 12  # (indexes in the history columns above)


#: The untracked tables a replica follows row by row, with their primary keys (events
#: ship by ``seq`` past a cursor instead: see :func:`side_rows`).
SIDE_TABLES: dict[str, tuple[str, ...]] = {
    "_ab_approvals": ("id",),
    "_ab_outbox": ("seq",),
    "_ab_inbox_seen": ("sender", "seq"),
    "_ab_secrets": ("scope", "key"),
    "_ab_events": ("seq",),
}
_TRIGGERED = ("_ab_approvals", "_ab_outbox", "_ab_inbox_seen", "_ab_secrets")


class SideKey(NamedTuple):
    """A row of an untracked table that changed: its table and primary key."""

    table: str
    k1: Any
    k2: Any


class Side(NamedTuple):
    """The untracked rows that changed since an agent's last shipment."""

    #: Grows with every shipment of a primary, and from one primary of a shard to the
    #: next (:func:`side_stamp`): a replica applies only a newer one.
    stamp: int
    #: ``[table, columns, rows]``: rows as the primary has them (insert or replace).
    upserts: list[list[Any]]
    #: ``[table, keys]``: primary keys of rows the primary no longer has.
    deletes: list[list[Any]]
    #: The lowest event ``seq`` the primary keeps (the replica drops those below);
    #: ``None``: it keeps none.
    events_floor: int | None
    #: The highest event ``seq`` shipped so far (the primary's cursor after this one).
    events_upto: int

    def empty(self) -> bool:
        return not self.upserts and not self.deletes


class Shipment(NamedTuple):
    """What one agent committed since its last shipment."""

    class_name: str
    name: str
    meta: list[list[str]] | None  #: its ``_ab_meta`` rows, on its first shipment
    rows: list[list[Any]]  #: history rows, in _HISTORY_COLUMNS order
    version: int
    state: str
    side: Side | None = None


def side_stamp(epoch: int, serial: int) -> int:
    """The stamp of a :class:`Side` shipped under the shard's fencing *epoch* as the
    primary's *serial*-th (a count that only grows in the primary's process; below
    2**64). The epoch comes first: every host that owns the shard after another (a move,
    a promotion) has a newer epoch, so its stamps are newer than any of the host before,
    whenever either process started."""
    return epoch << 64 | serial


def track_side(conn: apsw.Connection) -> None:
    """Note the key of every row of the untracked tables that *conn* changes, in a
    temporary table of the connection (triggers too are temporary: the file is not
    touched). A note is written in the transaction of its change, so a rolled-back
    change leaves none. Doing it again changes nothing."""
    if conn.execute("SELECT 1 FROM temp.sqlite_schema WHERE name = '_ab_shiplog'").fetchall():
        return  # (a store reopened from the closer: its connection has them)
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("CREATE TEMP TABLE _ab_shiplog(tbl TEXT NOT NULL, k1, k2)")
    for table in _TRIGGERED:
        pk = SIDE_TABLES[table]
        for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            k1 = f"{row}.{pk[0]}"
            k2 = f"{row}.{pk[1]}" if len(pk) > 1 else "NULL"
            conn.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS {table}_ship_{op.lower()} AFTER {op} ON"
                f" main.{table} BEGIN INSERT INTO _ab_shiplog VALUES ('{table}', {k1}, {k2});"
                " END")


def take_side_keys(conn: apsw.Connection) -> set[SideKey]:
    """The rows noted since the last call (:func:`track_side`), and forget the notes.
    Inside a transaction the forgetting is part of it: a rollback brings them back."""
    try:
        found = cast("list[tuple[str, Any, Any]]", conn.execute(
            "SELECT DISTINCT tbl, k1, k2 FROM temp._ab_shiplog").fetchall())
    except apsw.SQLError:  # (not followed: no notes)
        return set()
    if found:
        conn.execute("DELETE FROM temp._ab_shiplog")
    return {SideKey(*row) for row in found}


def side_rows(conn: apsw.Connection, keys: set[SideKey] | None, events_after: int,
              stamp: int) -> Side:
    """The rows of *keys* as *conn* sees them (committed ones: the caller reads outside a
    transaction or on a reader), with the events past *events_after*. *keys* ``None``:
    every row of every untracked table (a replica's first shipment)."""
    upserts: list[list[Any]] = []
    deletes: list[list[Any]] = []
    upto = events_after
    floor, last = cast("list[tuple[int | None, int | None]]", conn.execute(
        "SELECT min(seq), max(seq) FROM _ab_events").fetchall())[0]
    for table, pk in SIDE_TABLES.items():
        wanted = [] if keys is None else [k for k in keys if k.table == table]
        if keys is not None and not wanted and table != "_ab_events":
            continue
        if table == "_ab_events" and (last is None or last <= events_after):
            continue  # (no new events: the usual case, one query)
        columns = _columns(conn, table)
        select = f"SELECT {', '.join(columns)} FROM {table}"
        if table == "_ab_events":
            rows = conn.execute(f"{select} WHERE seq > ? ORDER BY seq", (events_after,)).fetchall()
            events = [list(r) for r in rows]
            if events:
                upserts.append([table, columns, events])
                upto = cast("int", events[-1][columns.index("seq")])
            continue
        if keys is None:
            rows = conn.execute(select).fetchall()
            if rows:
                upserts.append([table, columns, [list(r) for r in rows]])
            continue
        where = " AND ".join(f"{c} = ?" for c in pk)
        found, gone = [], []
        for key in wanted:
            row = conn.execute(f"{select} WHERE {where}", (key.k1, key.k2)[:len(pk)]).fetchall()
            if row:
                found.append(list(row[0]))
            else:
                gone.append([key.k1, key.k2][:len(pk)])
        if found:
            upserts.append([table, columns, found])
        if gone:
            deletes.append([table, gone])
    for entry in upserts:  # (blobs as base64, as in history rows)
        entry[2] = [[_cell(v) for v in row] for row in entry[2]]
    return Side(stamp, upserts, deletes, floor, upto)


#: The columns of each untracked table, by open store (its connection): a store's
#: migrations run when it is opened, so they hold while it stays open; a store of an
#: older schema (a copy not migrated yet) has its own.
_COLUMNS: weakref.WeakKeyDictionary[apsw.Connection, dict[str, list[str]]] = \
    weakref.WeakKeyDictionary()


def _columns(conn: apsw.Connection, table: str) -> list[str]:
    known = _COLUMNS.get(conn)
    if known is None:
        known = _COLUMNS[conn] = {}
    found = known.get(table)
    if found is None:
        found = [str(r[1]) for r in conn.execute(f"PRAGMA main.table_info({table})")]
        if found:  # (a table it has not got yet is asked again)
            known[table] = found
    return found


def _apply_side(conn: apsw.Connection, side: Side) -> None:
    def columns_of(table: str) -> set[str]:
        if table not in SIDE_TABLES:
            raise StoreError(f"a replica shipment named {table!r}, not one of the untracked "
                             "tables a replica follows; nothing of it was applied (the "
                             "primary and this host run different agentbook versions?)")
        return set(_columns(conn, table))

    for table, keys in side.deletes:
        columns_of(table)  # (a known table)
        pk = SIDE_TABLES[table]
        where = " AND ".join(f"{c} = ?" for c in pk)
        conn.executemany(f"DELETE FROM {table} WHERE {where}", [tuple(k) for k in keys])
    for table, columns, rows in side.upserts:
        if not set(columns) <= columns_of(table):
            raise StoreError(f"a replica shipment for {table} names columns this store does "
                             "not have; nothing of it was applied (upgrade agentbook on "
                             "every host to the same version)")
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        conn.executemany(f"INSERT OR REPLACE INTO {table}({names}) VALUES ({marks})",
                         [tuple(_uncell(v) for v in row) for row in rows])
    if side.events_floor is not None:
        conn.execute("DELETE FROM _ab_events WHERE seq < ?", (side.events_floor,))


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
                        s.version, s.state, None if s.side is None else list(s.side)]
                       for s in shipments],
                      separators=(",", ":")).encode()


def decode(data: bytes) -> list[Shipment]:
    """The shipments in an :func:`encode` payload."""
    return [Shipment(c, n, meta, [[_uncell(v) for v in row] for row in rows], version, state,
                     None if side is None else Side(*side))
            for c, n, meta, rows, version, state, side in json.loads(data)]


def apply(conn: apsw.Connection, shipment: Shipment, side_applied: int = 0) -> int:
    """Follow a primary: write *shipment*'s versions and untracked rows into a replica's
    copy (a store made by ``AgentStore``), in one transaction. Returns the copy's version
    after. *side_applied*: the stamp of the newest :class:`Side` applied to the copy so
    far; an older or equal one (a retry that arrived late) is left out."""
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
        if shipment.side is not None and shipment.side.stamp > side_applied:
            _apply_side(conn, shipment.side)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return have


def versions_in_file(path: str, key: tuple[str, str], after: int,
                     side: Callable[[apsw.Connection], Side] | None = None) -> Shipment | None:
    """:func:`versions_since` from a store that is not open here (its agent hibernated),
    up to its last commit, with the untracked rows *side* reads from the same snapshot;
    ``None`` when it has nothing newer."""
    conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                           | apsw.SQLITE_OPEN_URI)
    try:
        conn.set_busy_timeout(5_000)
        conn.execute("BEGIN")
        found = cast("list[tuple[int, str]]", conn.execute(
            "SELECT version, state FROM _ab_state WHERE id = 1").fetchall())
        rows = side(conn) if side is not None else None
        if not found or (found[0][0] <= after and (rows is None or rows.empty())):
            return None
        shipment = versions_since(conn, key, after, found[0][0], found[0][1])._replace(side=rows)
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
