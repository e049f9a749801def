"""Operations that run alone in an agent's mailbox, in order with its messages (an
envelope's ``op``): destroying an agent here; pruning its history is time travel's
(:mod:`agentbook.travel.prune`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Re-exported for agentbook/backends/ray.py, which still imports it from here.

if TYPE_CHECKING:
    from .mailbox import Instance

__all__ = ["destroy_op"]


async def destroy_op(inst: Instance) -> None:
    """Close the agent, delete its store file, and forget it in the catalog and timers."""
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
