"""The hash chain over an agent's history: each row's link hashes the previous link and
the row, so a changed byte that SQLite's own checks can't see (a row's JSON, same length)
is still found, and named by its version."""

from __future__ import annotations

import hashlib

import apsw

__all__ = ["chain_hash", "verify_chain"]


def chain_hash(prev: str, row: tuple) -> str:
    """The hash-chain link of one history row (the row without its chain column)."""
    return hashlib.sha256(
        prev.encode() + repr(row).encode("utf-8", "surrogatepass")).hexdigest()


def verify_chain(conn: apsw.Connection) -> int | None:
    """The first version whose row no longer matches its hash chain, or ``None`` if all
    do (rows written before the chain existed are skipped)."""
    pruned = conn.execute("SELECT 1 FROM _ab_meta WHERE key = 'first_version'").fetchall()
    prev: str | None = None if pruned else ""  # a pruned history starts at a trusted row
    for row in conn.execute(
        "SELECT version, ts, method, args, kwargs, source, duration_ms, outcome, error, result,"
        " state, changes, schema, due, occurrence, effects, chain FROM _ab_history"
        " ORDER BY version"
    ):
        stored = row[-1]
        if stored is None:
            prev = None
            continue
        if prev is not None and chain_hash(prev, row[:-1]) != stored:
            return row[0]
        prev = stored
    return None
