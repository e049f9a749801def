"""The output gate for connections: what a handler sends leaves after its commit.

``conn.send(...)`` and ``conn.close(...)`` called inside a handler are not written at
once: they join the handler's post-commit events (``ctx.events``, kind
:data:`SEND`), which the mailbox's output gate delivers once the batch is durable -
before the caller sees the result, in order with broadcasts and events. A failed
handler's sends are dropped with its context. Outside any handler they are written at once.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..core.handler import current_chain

__all__ = ["SEND", "hold"]

#: The ``ctx.events`` kind of a held send: its payload writes it (``conn.write_now(item)``).
SEND = "connection:send"


def hold(rt: Any, conn: Any, item: dict) -> bool:
    """Inside a handler, keep *item* for *conn* until the commit; whether it was kept."""
    chain = current_chain.get()
    if not chain:
        return False
    inst = rt.instances.get(chain[-1])
    ctx = None if inst is None else inst.ctx
    if ctx is None:
        return False
    ctx.events.append((SEND, partial(conn.write_now, item)))
    return True
