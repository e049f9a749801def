"""The hash chain over an agent's history: each row's link hashes the previous link and
the row, so a changed byte that SQLite's own checks can't see (a row's JSON, same length)
is still found, and named by its version."""

from __future__ import annotations

import hashlib

import apsw

from .history import HistoryRow, meta_value

__all__ = ["chain_hash", "verify_chain"]

_SELECT = f"SELECT {', '.join(HistoryRow._fields)}, chain FROM _ab_history ORDER BY version"


def chain_hash(prev: str, row: tuple) -> str:
    """The hash-chain link of one history row (a :class:`HistoryRow`, or the same values
    as a plain tuple: the link hashes the values, never the type's name)."""
    return hashlib.sha256(
        prev.encode() + repr(tuple(row)).encode("utf-8", "surrogatepass")).hexdigest()


def verify_chain(conn: apsw.Connection) -> int | None:
    """The first version whose row no longer matches its hash chain, or ``None`` if all
    do (rows written before the chain existed are skipped)."""
    pruned = meta_value(conn, "first_version") is not None
    prev: str | None = None if pruned else ""  # a pruned history starts at a trusted row
    for values in conn.execute(_SELECT):
        row, stored = HistoryRow._make(values[:-1]), values[-1]
        if stored is None:
            prev = None
            continue
        if prev is not None and chain_hash(prev, row) != stored:
            return row.version
        prev = str(stored)
    return None
