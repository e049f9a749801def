"""The output gate for connections: what a handler sends leaves after its commit.

``conn.send(...)`` and ``conn.close(...)`` called inside a handler are held in the
handler's context (``ctx.extras``) instead of written. The server releases the held
items of its own envelopes (hooks, RPC, client state) when the envelope's future
succeeds - after the commit, before the RPC result. For any other handler (a cell's
call, a schedule) the first held item adds an ``op`` envelope to the handler's outbox,
which the mailbox queues only if the handler committed. A failed handler's items are
dropped with its context.
"""

from __future__ import annotations

from typing import Any

from ..handler import current_chain
from ..mailbox import Envelope

__all__ = ["OWN", "hold", "release", "released"]

#: ``ctx.extras`` keys: the held items, and "this envelope is the server's own".
HELD = "_ab_serve_held"
OWN = "_ab_serve_own"


def hold(rt: Any, conn: Any, item: dict) -> bool:
    """Inside a handler, keep *item* for *conn* until the commit; whether it was kept."""
    chain = current_chain.get()
    if not chain:
        return False
    inst = rt._instances.get(chain[-1])
    ctx = None if inst is None else inst.ctx
    if ctx is None:
        return False
    held = ctx.extras.get(HELD)
    if held is None:
        held = ctx.extras[HELD] = []
        if not ctx.extras.get(OWN):  # the server releases its own envelopes itself
            ctx.outbox.append((inst.key, Envelope("_ab_release", (), {}, "[]", None, "serve",
                                                  op=_ReleaseOp(held))))
    held.append((conn, item))
    return True


def release(held: list) -> None:
    """Let held items go (their handler committed)."""
    for conn, item in held:
        conn._write(item)
    held.clear()


def released(env: Envelope) -> None:
    """Release what the handler of the server's own *env* held."""
    if env.extras is not None:
        release(env.extras.get(HELD, []))


class _ReleaseOp:
    """The body of the ``op`` envelope that releases an outside handler's items."""

    __slots__ = ("held",)

    def __init__(self, held: list) -> None:
        self.held = held

    async def __call__(self, inst: Any) -> None:
        release(self.held)
