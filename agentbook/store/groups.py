"""Internal tables made on first use: a store has a group's tables once a write needs them.

Most agents never chat, register an MCP server or run a workflow, yet every empty table or
index takes a page of its store, and its CREATE text a share of ``sqlite_schema``'s pages.
A new store leaves out the :data:`~agentbook.store.schema.LAZY_GROUPS` (23 pages of 512 B
instead of 40: issue 20). How it works:

* **Writes:** the first write of a group creates the whole group (tables and indexes, in
  the shape the migrations give them) in that write's transaction, with its bookkeeping
  row ``group_<name>`` in ``_ab_migrations``. A rollback takes both back
  (:meth:`AgentStore.ensure_group <agentbook.store.agentstore.AgentStore.ensure_group>`).
* **Reads:** a missing group reads as empty. The writer knows which groups its store has
  from one look at ``sqlite_schema`` (kept until a rollback could have changed it).
  Connections from outside use :func:`read`.
* **Changesets** applied elsewhere (a replica following its primary, a fork's copy, time
  travel's in-memory copies) create the groups their rows need first (:func:`ensure_for`):
  SQLite skips a changeset's rows for a table the target lacks, silently.

Older stores were made with every table: they have every group, and nothing changes for
them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import cast

import apsw

from .schema import LAZY_GROUPS, LAZY_INDEXES, LAZY_TABLES, compact_sql, migrate

__all__ = ["create", "ensure_for", "needed_by", "present", "read", "statements"]

_statements: dict[str, list[str]] | None = None
#: Each lazy table's name as a changeset spells it (NUL-terminated), by group (a changeset
#: names tables only: an index group is never needed by one).
_MARKS = {group: [t.encode() + b"\x00" for t in names if t not in LAZY_INDEXES]
          for group, names in LAZY_GROUPS.items()}
_PRESENT = ("SELECT name FROM {db}.sqlite_schema WHERE name IN ("
            + ", ".join(f"'{t}'" for t in sorted(LAZY_TABLES | LAZY_INDEXES)) + ")")


def statements(group: str) -> list[str]:
    """The CREATE statements of *group* (``IF NOT EXISTS``), compacted, in creation order:
    taken from a store migrated step by step, so its tables are shaped as an older store's."""
    global _statements
    if _statements is None:
        full = apsw.Connection(":memory:")
        migrate(full)
        found: dict[str, list[str]] = {name: [] for name in LAZY_GROUPS}
        by_name = {t: g for g, names in LAZY_GROUPS.items() for t in names}
        for type_, name, table, sql in cast("list[tuple[str, str, str, str]]", full.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL"
                " ORDER BY rowid").fetchall()):
            owner = by_name.get(table) or by_name.get(name)
            if owner is not None:
                kind = "CREATE TABLE " if type_ == "table" else "CREATE INDEX "
                found[owner].append(compact_sql(sql).replace(kind, kind + "IF NOT EXISTS ", 1))
        full.close()
        _statements = found
    return _statements[group]


def present(conn: apsw.Connection, db: str = "main") -> set[str]:
    """The lazy groups *conn*'s store has (one read of ``sqlite_schema``)."""
    have = {r[0] for r in conn.execute(_PRESENT.format(db=db)).fetchall()}
    return {group for group, names in LAZY_GROUPS.items() if have.issuperset(names)}


def create(conn: apsw.Connection, group: str) -> None:
    """Create *group* and its bookkeeping row, inside the caller's transaction (or in a
    transaction of its own): all of it or nothing. (An in-memory copy of an agent's
    tables for time travel has no ``_ab_migrations``: it gets the tables only.)"""
    with conn:  # (a savepoint inside a running transaction)
        for sql in statements(group):
            conn.execute(sql)
        if conn.execute("SELECT 1 FROM sqlite_schema WHERE name = '_ab_migrations'").fetchall():
            conn.execute("INSERT OR REPLACE INTO _ab_migrations(name, applied) VALUES (?, ?)",
                         (f"group_{group}", time.time()))


def needed_by(changes: Iterable[bytes]) -> set[str]:
    """The lazy groups whose tables the changesets *changes* may write. A changeset names
    each table it touches; a name that appears only in a value counts too (creating a
    group no row needs costs its pages, nothing else)."""
    return {group for group, marks in _MARKS.items()
            if any(mark in part for part in changes for mark in marks)}


def ensure_for(conn: apsw.Connection, changes: Iterable[bytes]) -> None:
    """Create the groups *changes* need that *conn*'s store lacks (before applying them)."""
    parts = [part for part in changes if part]
    wanted = needed_by(parts) if parts else set()
    if wanted:
        for group in sorted(wanted - present(conn)):
            create(conn, group)


def read(conn: apsw.Connection, query: str, params: tuple = ()) -> list[tuple]:
    """Rows of *query* on a connection from outside (a reader, a copy); none when a table
    it reads is one of a group the store does not have."""
    try:
        return conn.execute(query, params).fetchall()
    except apsw.SQLError as exc:
        text = str(exc)
        if "no such table" in text and any(t in text for t in LAZY_TABLES):
            return []
        raise
