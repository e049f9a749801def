"""Operations that run alone in an agent's mailbox, in order with its messages (an
envelope's ``op``): destroying an agent, pruning its history."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mailbox import Instance

__all__ = ["destroy_op", "prune_op"]


async def destroy_op(inst: Instance) -> None:
    rt = inst.runtime
    path = rt.path_of(inst.key)
    inst.close()
    rt.open_stores.pop(inst.key, None)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    rt.catalog.remove(*inst.key)
    rt.timers.set(inst.key, None)
    rt.timers.index_exact([(inst.key, None)])
    inst.version, inst.state, inst.state_json = 0, None, ""
    inst.committed = (0, None, "")
    if rt.events.active:
        rt.emit_event("destroy", inst.key, {})


async def prune_op(inst: Instance, before: int, vacuum: bool) -> int:
    from ..store.history import state_at
    from ..travel.versions import check_version, schema_at

    inst.open()
    store = inst.store
    conn = store.conn
    key = inst.key
    before = check_version(conn, before, f"{key[0]}({key[1]!r})")
    store.begin()
    try:
        conn.execute("UPDATE _ab_history SET state = ? WHERE version = ? AND state IS NULL",
                     (state_at(conn, before), before))
        conn.execute("UPDATE _ab_history SET schema = ? WHERE version = ? AND schema IS NULL",
                     (schema_at(conn, before), before))
        dropped = conn.execute("SELECT count(*) FROM _ab_history WHERE version < ?",
                               (before,)).fetchall()[0][0]
        conn.execute("DELETE FROM _ab_history WHERE version < ?", (before,))
        store.set_meta({"first_version": str(before)})
        store.commit()
    except BaseException:
        store.rollback()
        raise
    if vacuum:
        conn.execute("VACUUM")
    return dropped
