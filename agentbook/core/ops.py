"""Operations that run alone in an agent's mailbox, in order with its messages (an
envelope's ``op``): destroying an agent here; pruning its history is time travel's
(:mod:`agentbook.travel.prune`)."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from ..errors import OwnedElsewhereError
from ..store import lease

# Re-exported for agentbook/backends/ray.py, which still imports it from here.

if TYPE_CHECKING:
    from .mailbox import Instance

__all__ = ["destroy_op"]


async def destroy_op(inst: Instance) -> None:
    """Close the agent, delete its store file, and forget it in the catalog and timers.

    The files are deleted under the agent's lease (one owner per agent across processes):
    the lease this process holds while the agent is awake here, or else one taken for
    the deletion, waiting ``owner_wait`` seconds like a call while another process runs
    the agent (then its ``OwnedElsewhereError``, and nothing is deleted).
    """
    rt = inst.runtime
    held, inst.ownership = inst.ownership, None  # (kept while the files go)
    try:
        if held is None and not rt.memory:  # (not awake here: its store is not open)
            held = await _take_waiting(inst)
        inst.close()
        rt.closer.forget(inst.key)
        rt.open_stores.pop(inst.key, None)
        path = rt.path_of(inst.key)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass
        rt.catalog.remove(*inst.key)
        rt.timers.set(inst.key, None)
        rt.timers.index_exact([(inst.key, None)])
    finally:
        if held is not None:
            held.release(remove=True)
    inst.version, inst.state, inst.state_json = 0, None, ""
    inst.committed = (0, None, "")
    if rt.events.active:
        rt.emit_event("destroy", inst.key, {})


async def _take_waiting(inst: Instance) -> lease.Lease:
    """The agent's lease, waiting up to ``owner_wait`` seconds (polling, the event loop
    runs on) while another process holds it; then its ``OwnedElsewhereError``."""
    rt = inst.runtime
    what = f"{inst.key[0]}({inst.key[1]!r})"
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + rt.owner_wait
    pause = 0.002
    while True:
        try:
            return lease.take(rt.catalog.lock_path(*inst.key), what)
        except OwnedElsewhereError as exc:
            now = loop.time()
            if now >= deadline or rt.closed:
                raise lease.owned_elsewhere(what, exc.owner, now - started) from None
            await asyncio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.05)
