"""Forgetting old history: ``ref.prune(before=k)``, an operation in the agent's mailbox.

Time travel then reaches back to *k* and no further: the rows below *k* go, the row at
*k* keeps the state and schema it had spelled out (they may have lived in the rows that
went), and the store's ``first_version`` says where the history now starts. It runs alone
in the mailbox, in order with the agent's messages, in one transaction of its own; with
``vacuum`` SQLite then gives the space back to the disk (a full rewrite of the file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..store.history import check_version, drop_before

if TYPE_CHECKING:
    from ..core.mailbox import Instance

__all__ = ["prune_op"]


async def prune_op(inst: Instance, before: int, vacuum: bool) -> int:
    """Drop the versions below *before*; returns how many were dropped."""
    inst.open()
    store = inst.store
    assert store is not None
    key = inst.key
    before = check_version(store.conn, before, f"{key[0]}({key[1]!r})")
    store.begin()
    try:
        dropped = drop_before(store.conn, before)
        store.set_meta({"first_version": str(before)})
        store.commit()
    except BaseException:
        store.rollback()
        raise
    if vacuum:
        store.conn.execute("VACUUM")
    return dropped
