"""Going back in an agent's database: inverted changesets, schema reconciled.

Each version's row changes are a SQLite session changeset (see
:mod:`agentbook.store.agentstore`), stored in its history row; a version whose changes
can't be merged into one changeset (a table changed shape in between) stores them as
framed *segments*. Undoing versions applies their changesets inverted, newest first, then
makes the schema exactly the target version's: the cost follows the data the versions
changed, never the length of the history.

* :func:`undo` works on a live store, inside the running handler's transaction (a rewind);
* :func:`materialize` builds an in-memory copy of the agent's tables at a version (``at``,
  ``diff``, ``fork``), reading the store file only;
* :func:`copy_into` writes such a copy into a new store (a fork).

A changeset may hold rows of internal tables a store makes on first use
(:mod:`agentbook.store.groups`); each of these creates the groups it needs first, since
SQLite skips, without a word, the rows of a table the target does not have.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import apsw

from . import groups
from .agentstore import user_schema
from .history import changesets_above, check_version, schema_at
from .schema import LAZY_GROUPS, UNTRACKED_TABLES
from .sqlaccess import READ_BUSY_MS

__all__ = ["copy_into", "frame_segments", "materialize", "redo", "segments", "undo", "undo_to"]

_URI_RO = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
#: A table rebuilt by a rewind (its definition changed) waits under this prefix, which
#: every schema read leaves out, while its rows move to the new definition.
_REBUILD = "_ab_rebuild_"

_FRAMED = b"\x00abseg"


def frame_segments(parts: list[bytes]) -> bytes:
    """One blob from changesets that can't be merged (a table's schema changed between)."""
    out = bytearray(_FRAMED)
    for part in parts:
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def segments(blob: bytes) -> list[bytes]:
    """The changesets in a version's ``changes`` blob, in the order they were recorded."""
    if not blob.startswith(_FRAMED):
        return [blob]
    parts, i = [], len(_FRAMED)
    while i < len(blob):
        size = int.from_bytes(blob[i:i + 4], "big")
        parts.append(blob[i + 4:i + 4 + size])
        i += 4 + size
    return parts


def _resolve(change_reason: int, change: Any) -> int:
    if change_reason in (apsw.SQLITE_CHANGESET_DATA, apsw.SQLITE_CHANGESET_CONFLICT):
        return apsw.SQLITE_CHANGESET_REPLACE
    return apsw.SQLITE_CHANGESET_OMIT


def undo(conn: apsw.Connection, changesets: list[bytes], target: str,
         before_drop: Callable[[], None] | None = None) -> None:
    """Apply inverted *changesets* (newest first) and reconcile the schema to *target*."""
    _create_missing(conn, target, tables_only=True)
    groups.ensure_for(conn, [part for changes in changesets for part in segments(changes)])
    for changes in changesets:
        for part in reversed(segments(changes)):
            apsw.Changeset.apply(apsw.Changeset.invert(part), conn, conflict=_resolve)
    _reconcile(conn, target, before_drop)


def redo(conn: apsw.Connection, changes: bytes | None, schema: str | None) -> None:
    """Apply one version's changes forward, with its schema (a replica following its
    primary: :mod:`agentbook.store.replica`). The schema goes first: changes recorded
    before an ``ADD COLUMN`` apply to the wider table too, and rows of a table the version
    dropped have nowhere to go."""
    if schema is not None:
        _reconcile(conn, schema)
    parts = segments(changes) if changes else []
    groups.ensure_for(conn, parts)
    for part in parts:
        apsw.Changeset.apply(part, conn, conflict=_resolve)


def undo_to(conn: apsw.Connection, version: int,
            before_drop: Callable[[], None] | None = None) -> None:
    """In a live store (inside a handler's transaction): put every tracked table back as it
    was at *version*, by applying the inverted changesets of the versions above it.
    *before_drop* is called before any DROP (the handler cuts its change capture there)."""
    undo(conn, changesets_above(conn, version), schema_at(conn, version), before_drop)


def _create_missing(conn: apsw.Connection, target: str, tables_only: bool) -> None:
    have = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema").fetchall()}
    for type_, name, _table, sql in json.loads(target):
        if name not in have and (type_ == "table" or not tables_only):
            conn.execute(sql)


def _reconcile(conn: apsw.Connection, target: str,
               before_drop: Callable[[], None] | None = None) -> None:
    """Make the agent's schema objects exactly *target*. A table whose definition changed
    (ALTER TABLE) is rebuilt keeping the rows of the columns both definitions share."""
    want = {obj[1]: obj for obj in json.loads(target)}
    current = {obj[1]: obj for obj in json.loads(user_schema(conn))}
    rebuild: list[str] = []
    for name, (type_, _n, _t, sql) in current.items():
        if name in want and want[name][3] == sql:
            continue
        if before_drop is not None:
            before_drop()
        if type_ == "table" and name in want and want[name][0] == "table":
            conn.execute(f'ALTER TABLE "{name}" RENAME TO "{_REBUILD}{name}"')
            rebuild.append(name)
            continue
        if type_ == "table":
            conn.execute(f'DELETE FROM "{name}"')  # recorded, so the rewind can be undone
        conn.execute(f'DROP {type_.upper()} IF EXISTS "{name}"')
    _create_missing(conn, target, tables_only=True)
    for name in rebuild:
        old_cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{_REBUILD}{name}")')]
        new_cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')}
        shared = ", ".join(f'"{c}"' for c in old_cols if c in new_cols)
        if shared:
            conn.execute(f'INSERT INTO "{name}"({shared}) SELECT {shared} FROM "{_REBUILD}{name}"')
        if before_drop is not None:
            before_drop()
        conn.execute(f'DROP TABLE "{_REBUILD}{name}"')
    _create_missing(conn, target, tables_only=False)


def _copy_table(mem: apsw.Connection, name: str, sql: str, src: str = "src") -> None:
    """Copy a table's rows, rowids included (rowid tables without a declared key need
    them for changesets to find their rows)."""
    if "WITHOUT ROWID" in sql.upper():
        mem.execute(f'INSERT INTO main."{name}" SELECT * FROM {src}."{name}"')
        return
    cols = ", ".join(f'"{r[1]}"' for r in mem.execute(f'PRAGMA {src}.table_info("{name}")'))
    mem.execute(f'INSERT INTO main."{name}"(rowid, {cols}) SELECT rowid, {cols} FROM {src}."{name}"')


def materialize(path: str, version: int, who: str) -> apsw.Connection:
    """An in-memory database holding the agent's tracked tables as they were at *version*.

    Only the tables are copied (not the history), so the cost follows the agent's data and
    the distance from head, not the length of its history. The source is only read, in
    one snapshot (the version is checked in it too: see :func:`check_version`).
    """
    mem = apsw.Connection(":memory:", flags=_URI_RO)
    mem.set_busy_timeout(READ_BUSY_MS)  # (the owner's writer may hold the file a moment)
    mem.execute("ATTACH DATABASE ? AS src", (f"file:{path}?mode=ro",))
    try:
        mem.execute("BEGIN")  # one snapshot of the source for everything below
        version = check_version(mem, version, who, "src")
        objects = cast("list[tuple[str, str, str, str]]", mem.execute(
            "SELECT type, name, tbl_name, sql FROM src.sqlite_schema WHERE sql IS NOT NULL"
            " AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall())
        tracked = [o for o in objects if o[2] not in UNTRACKED_TABLES]
        for type_, name, _t, sql in tracked:
            if type_ == "table":
                mem.execute(sql)
                _copy_table(mem, name, sql)
        for type_, _name, _t, sql in tracked:
            if type_ != "table":
                mem.execute(sql)
        changesets = changesets_above(mem, version, "src")
        target = schema_at(mem, version, "src")
        mem.execute("COMMIT")
        mem.execute("DETACH DATABASE src")
        undo(mem, changesets, target)
    except BaseException:
        mem.close()
        raise
    return mem


def copy_into(mem: apsw.Connection, conn: apsw.Connection) -> None:
    """Write every table of *mem* (a :func:`materialize` copy) into the fresh store of
    *conn*, inside its transaction: the agent's own tables, indexes, views and triggers
    are created; agentbook's own tables exist already (or, for a group made on first use
    that has rows, are made) and get their rows."""
    objects = cast("list[tuple[str, str, str]]", mem.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL"
        " AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall())
    names = {name for type_, name, _sql in objects if type_ == "table"}
    wanted = {group for group, tables in LAZY_GROUPS.items()
              if any(t in names and mem.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchall()
                     for t in tables)}
    for group in sorted(wanted - groups.present(conn)):
        groups.create(conn, group)
    for type_, name, sql in objects:
        if type_ == "table" and not name.startswith("_ab_"):
            conn.execute(sql)
    for type_, name, _sql in objects:
        if type_ == "table":
            rows = mem.execute(f'SELECT * FROM "{name}"').fetchall()
            if rows:
                marks = ",".join("?" * len(rows[0]))
                conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)
    for type_, name, sql in objects:
        if type_ != "table" and not name.startswith("_ab_"):
            conn.execute(sql)
