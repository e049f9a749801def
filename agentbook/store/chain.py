"""The hash chain over an agent's history: each link hashes the previous link and the
rows it covers, so a changed byte that SQLite's own checks can't see (a row's JSON, same
length) is still found, and named by its version.

A link covers the rows one flush inserts (:meth:`AgentStore._flush`): a message alone in
its batch is one row and one link; a burst's batch of *k* rows inserted together gets one
link, on its last row, and its other rows have none (``NULL``). A link is
``"<sha256>/<k>"`` (:func:`link_rows`): the hash of the previous link's text and the
*k* rows' values in ``marshal``'s format version 2 (fixed: no references, no interning
marks; floats as their 8 bytes, so no float is turned into text, which made the hashing
the costliest step of a burst). Each message still stands or falls on its own: the rows
of a message that failed are never linked (links are made when rows go in, never before).

Stores written before group links have one link per row, without a ``/``: the hash of the
previous link and ``repr`` of the row (:func:`chain_hash`). :func:`verify_chain` checks both
kinds. A row changed inside a group is named by the group's first version (the first
version that can no longer be trusted).
"""

from __future__ import annotations

import hashlib
import marshal
from typing import Any

import apsw

from .history import HistoryRow, meta_value

__all__ = ["chain_hash", "link_rows", "verify_chain"]

_SELECT = f"SELECT {', '.join(HistoryRow._fields)}, chain FROM _ab_history ORDER BY version"
_sha256 = hashlib.sha256


def chain_hash(prev: str, row: tuple) -> str:
    """The link of one history row as stores before group links made it (a
    :class:`HistoryRow`, or the same values as a plain tuple: the link hashes the values,
    never the type's name)."""
    return _sha256(
        prev.encode() + repr(tuple(row)).encode("utf-8", "surrogatepass")).hexdigest()


def link_rows(prev: str, rows: list[tuple]) -> str:
    """The link of *rows* (plain tuples of a history row's values, oldest first) inserted
    together after the link *prev*."""
    try:
        data = marshal.dumps(rows, 2)
    except ValueError:  # a subclass of str, int...: its plain value is what SQLite keeps
        data = marshal.dumps([tuple(map(_plain, row)) for row in rows], 2)
    return f"{_sha256(prev.encode() + data).hexdigest()}/{len(rows)}"


def _plain(value: Any) -> Any:
    """*value* as the plain type SQLite gives back (a bool is an int there)."""
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes(value)
    return value


def verify_chain(conn: apsw.Connection) -> int | None:
    """The first version whose row no longer matches its hash chain, or ``None`` if all
    do (rows written before the chain existed are skipped; after the first link, every
    row must be covered by one). A row changed inside a group of rows sharing one link is
    named by the group's first version."""
    pruned = meta_value(conn, "first_version") is not None
    prev: str | None = None if pruned else ""  # a pruned history starts at a trusted row
    linked = False  # a link was seen: from then on every row is covered by a link
    waiting: list[tuple] = []  # rows without a link of their own, since the last link
    for values in conn.execute(_SELECT):
        row, stored = values[:-1], values[-1]
        if stored is None:
            waiting.append(row)
            continue
        link = str(stored)
        _hash, sep, count = link.partition("/")
        covered = int(count) if sep and count.isdigit() and count[0] != "0" else 1
        if covered - 1 > len(waiting):  # rows of its group are missing
            if prev is not None:
                return waiting[0][0] if waiting else row[0]
        elif covered - 1 < len(waiting):  # rows no link covers
            if linked:
                return waiting[0][0]
            prev = None  # rows from before the chain existed: the first link is trusted
        if prev is not None:
            group = [*waiting[len(waiting) - covered + 1:], row] if covered > 1 else [row]
            if (link_rows(prev, group) if sep else chain_hash(prev, row)) != link:
                return group[0][0]
        prev, linked = link, True
        waiting = []
    return waiting[0][0] if waiting and linked else None
