"""The changeset of one row, written by hand, byte for byte as SQLite's session extension
writes it.

A version's row changes are recorded with a session (see
:mod:`agentbook.store.agentstore`). A firing whose callback wrote no SQL changes one row,
its schedule's (deleted after a one-shot, advanced after a recurring run), and attaching a
session for that costs more than the row write itself: SQLite prepares its table look-ups
(``PRAGMA table_xinfo``) at the first change and a ``SELECT`` of the row when the
changeset is made, about 80 us a firing (issue 20). :func:`delete` and :func:`update`
write the same bytes from values the statement already has. ``tests/test_rowchange.py``
holds them to the session's output, byte for byte.

The format (SQLite's ``sqlite3session_changeset``): per table, ``'T'``, the column
count (a varint), one byte per column (its primary-key ordinal, 0 if none) and the table
name with a NUL; then per row the operation (9 DELETE, 23 UPDATE), an "indirect" byte
(0), and records of values: ``0x00`` undefined, ``0x01`` integer (8 bytes big-endian),
``0x02`` real (8 bytes big-endian IEEE), ``0x03``/``0x04`` text/blob (a varint length, the
bytes), ``0x05`` NULL. A DELETE carries the whole old row. An UPDATE carries the old row
with only its primary key and the changed columns defined, then the new row with only the
changed columns defined; an UPDATE that changed nothing is left out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, cast

import apsw

from .schema import migrate

__all__ = ["Table", "delete", "records", "table", "update", "update_at"]

_DELETE = b"\x09\x00"
_UPDATE = b"\x17\x00"
#: A column a record leaves undefined (an update's columns it did not change).
_UNDEFINED = object()
_NULL = b"\x05"
_INT = struct.Struct(">q").pack
_REAL = struct.Struct(">d").pack
#: The one-byte varints (lengths under 128).
_SMALL = [bytes((n,)) for n in range(0x80)]


class Table:
    """What a changeset needs to know of one internal table: its columns in table order,
    which of them make the primary key, and the table's header bytes."""

    __slots__ = ("columns", "header", "key_at", "name", "pk")

    def __init__(self, name: str, columns: Sequence[str], pk: Sequence[int]) -> None:
        self.name = name
        self.columns = tuple(columns)
        #: Each column's primary-key ordinal (0: not in the key), as the session writes it.
        self.pk = tuple(pk)
        #: The positions of the primary key's columns.
        self.key_at = tuple(i for i, k in enumerate(self.pk) if k)
        self.header = (b"T" + varint(len(self.columns)) + bytes(self.pk)
                       + name.encode() + b"\x00")


@cache
def table(name: str) -> Table:
    """The layout of internal table *name* as every store has it once migrated (the
    migrations run once per process on an in-memory database: no statement on a store)."""
    conn = apsw.Connection(":memory:")
    try:
        migrate(conn)
        info = conn.execute("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid",
                            (name,)).fetchall()
    finally:
        conn.close()
    if not info:
        raise LookupError(f"no internal table named {name!r}")
    return Table(name, [str(r[0]) for r in info], [cast(int, r[1]) for r in info])


def varint(n: int) -> bytes:
    """SQLite's variable-length integer (``sqlite3PutVarint``): 7 bits a byte, most
    significant first, the high bit set on every byte but the last (a 9th byte, if any,
    takes 8 bits)."""
    if n < 0x80:
        return bytes((n,))
    if n >> 56:
        out = [n & 0xFF]
        n >>= 8
        for _ in range(8):
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        return bytes(reversed(out))
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def records(values: Iterable[Any]) -> bytes:
    """The record of *values* (as SQLite returns them: int, float, str, bytes, None; or
    ``_UNDEFINED``), one value after another, in one loop (a firing's changeset encodes a
    whole row of 18 values: issue 20)."""
    out: list[bytes] = []
    add = out.append
    for v in values:
        if v is None:
            add(_NULL)
            continue
        if v is _UNDEFINED:
            add(b"\x00")
            continue
        kind = type(v)
        if kind is int:
            add(b"\x01" + _INT(v))
        elif kind is float:
            add(b"\x02" + _REAL(v))
        else:
            data = v.encode() if kind is str else bytes(v)
            size = len(data)
            add((b"\x03" if kind is str else b"\x04")
                + (_SMALL[size] if size < 0x80 else varint(size)) + data)
    return b"".join(out)


def _same(old: Any, new: Any) -> bool:
    """Whether the session sees a column as unchanged: the same storage class and value."""
    return type(old) is type(new) and old == new


def delete(tab: Table, old: Sequence[Any]) -> bytes:
    """The changeset of deleting the row whose values (in table order) were *old*."""
    return tab.header + _DELETE + records(old)


def update(tab: Table, old: Sequence[Any], new: Sequence[Any]) -> bytes | None:
    """The changeset of updating a row from *old* to *new* (both whole rows in table
    order, values as SQLite returns them); ``None`` when no column changed."""
    if len(old) != len(tab.columns):
        raise ValueError(f"{tab.name} has {len(tab.columns)} columns, not {len(old)}")
    return update_at(tab, new, range(len(tab.columns)), old)


def update_at(tab: Table, row: Sequence[Any], at: Iterable[int],
              old: Sequence[Any]) -> bytes | None:
    """:func:`update` when only some columns may have changed: *row* is the whole row
    after the update, *at* the positions of the columns the statement set and *old* their
    values before (the other columns kept theirs)."""
    before: list[Any] = [_UNDEFINED] * len(tab.columns)
    after = list(before)
    for i in tab.key_at:
        before[i] = row[i]
    changed = False
    for i, was in zip(at, old, strict=True):
        now = row[i]
        if not _same(was, now):
            changed = True
            before[i] = was
            after[i] = now
    if not changed:
        return None
    return tab.header + _UPDATE + records(before) + records(after)
