"""An agent's rows in its runtime's catalog, read, taken up and forgotten together: its
entry, its timer, its approvals in the index, its recorded failures and its dead letters.
A Ray shard move carries them along with the agents' store files (see
:mod:`.shard_image`), so the approval inbox, ``ref.failures()`` and the pending timers
are where the agents are.

They are a :class:`CatalogEntries`: one :class:`TableRows` (the table's columns, and
each row's values in that order) per table. They travel as JSON, never pickled:
``{table: {"columns": [...], "rows": [[...], ...]}}``, so a host with a newer catalog
takes the columns it knows.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import apsw

from .sqlaccess import translate_error

__all__ = ["TABLES", "CatalogEntries", "TableRows", "add_timers", "entries_of",
           "forget_entries", "take_entries"]

Key = tuple[str, str]


class TableRows(NamedTuple):
    """Some rows of one catalog table: its columns, and each row's values in their order."""

    columns: list[str]
    rows: list[list[Any]]

    def at(self, column: str) -> int:
        """Where *column* is in each row (``ValueError`` if the table has none)."""
        return self.columns.index(column)

    def column(self, name: str) -> list[Any]:
        """The value of column *name* in each row."""
        at = self.at(name)
        return [row[at] for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows}

    @classmethod
    def from_json(cls, part: Any) -> TableRows:
        if not part:
            return cls([], [])
        return cls(list(part["columns"]), [list(row) for row in part["rows"]])


class CatalogEntries(NamedTuple):
    """The catalog rows of some agents, by table (see the module docstring)."""

    agents: TableRows
    timers: TableRows
    approvals: TableRows
    failures: TableRows
    dead_letters: TableRows

    def agents_only(self) -> CatalogEntries:
        """Only the agents' own rows (a replica's host lists the agents it keeps copies
        of, and takes up none of their schedules, approvals or failures)."""
        empty = TableRows([], [])
        return CatalogEntries(self.agents, empty, empty, empty, empty)

    def to_json(self) -> dict[str, Any]:
        """``{table: {"columns", "rows"}}``, the form a shard image carries."""
        return {table: part.to_json() for table, part in zip(self._fields, self, strict=True)}

    @classmethod
    def from_json(cls, entries: dict[str, Any]) -> CatalogEntries:
        """The entries in a :meth:`to_json` form (a table missing there has no rows)."""
        return cls(*(TableRows.from_json(entries.get(table)) for table in cls._fields))


#: The catalog tables that hold rows of one agent (by its ``class`` and ``name``).
TABLES: tuple[str, ...] = CatalogEntries._fields
#: Names asked for in one statement (well under SQLite's limit of bound values).
_CHUNK = 500


def _columns(conn: apsw.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")]


def entries_of(conn: apsw.Connection, keys: list[Key]) -> CatalogEntries:
    """The catalog rows of the agents *keys* (a catalog's connection), by table; one read
    transaction. Only their rows are read (by class and name), not the whole catalog."""
    names: dict[str, list[str]] = {}
    for class_name, name in dict.fromkeys(keys):
        names.setdefault(class_name, []).append(name)
    found: list[TableRows] = []
    with conn:
        for table in TABLES:
            columns = _columns(conn, table)
            rows: list[list[Any]] = []
            for class_name, some in names.items():
                for at in range(0, len(some), _CHUNK):
                    part = some[at:at + _CHUNK]
                    rows += [list(r) for r in conn.execute(
                        f"SELECT * FROM {table} WHERE class = ? AND name IN"
                        f" ({','.join('?' * len(part))})", (class_name, *part))]
            if table == "failures":  # (in the order they were recorded)
                rows.sort(key=operator.itemgetter(columns.index("id")))
            found.append(TableRows(columns, rows))
    return CatalogEntries(*found)


def add_timers(entries: CatalogEntries, due: dict[Key, float | None]) -> None:
    """Add to *entries* (from :func:`entries_of`) a timer row for each agent of *due*
    with a due time and no timer row there yet (the catalog's timer index may lag what
    the runtime holds in memory)."""
    part = entries.timers
    at_class, at_name, at_due = (part.at(c) for c in ("class", "name", "due"))
    have = set(zip(part.column("class"), part.column("name"), strict=True))
    for (class_name, name), when in due.items():
        if when is None or (class_name, name) in have:
            continue
        row: list[Any] = [None] * len(part.columns)
        row[at_class], row[at_name], row[at_due] = class_name, name, when
        part.rows.append(row)


def take_entries(conn: apsw.Connection, entries: CatalogEntries, path: str) -> None:
    """Write catalog rows from :func:`entries_of` (another host's) into this catalog, in
    one transaction; a row that is here already is replaced."""
    try:
        with conn:
            for table, part in zip(TABLES, entries, strict=True):
                if not part.rows:
                    continue
                here = set(_columns(conn, table))
                if table == "failures":  # (numbered per catalog: numbered again here)
                    here.discard("id")
                columns = [c for c in part.columns if c in here]
                picks = [part.at(c) for c in columns]
                marks = ",".join("?" * len(columns))
                conn.executemany(
                    f"INSERT OR REPLACE INTO {table}({','.join(columns)}) VALUES ({marks})",
                    [[row[i] for i in picks] for row in part.rows])
    except apsw.Error as exc:
        raise translate_error(exc, path) from None


def forget_entries(conn: apsw.Connection, keys: list[Key], path: str) -> None:
    """Delete every catalog row of the agents *keys* (they moved away), in one
    transaction."""
    try:
        with conn:
            for table in TABLES:
                conn.executemany(f"DELETE FROM {table} WHERE class = ? AND name = ?", keys)
    except apsw.Error as exc:
        raise translate_error(exc, path) from None
