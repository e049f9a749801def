"""Rewinding an agent in place, as a handler of its own.

The rewind runs in the agent's mailbox (so it waits for a running handler), inside one
transaction: the tracked tables go back (:func:`agentbook.store.changesets.undo_to`), the state
becomes the state at the target, and the rewind is recorded as a new version whose own
changeset can undo it. Nothing runs again: schedule occurrences that already ran after
the target are advanced past, and pending approvals requested after the target are
cancelled with a recorded reason; approvals are not tracked, so none is ever revived.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..faults import crash_point
from ..schedule.firing import advance
from ..store import approvals as stored_approvals
from ..store import schedules as stored_schedules
from ..store.changesets import undo_to
from ..store.history import check_version, occurrences_ran_after, state_at

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance

__all__ = ["rewind_in_place"]


def rewind_in_place(inst: Instance, ctx: HandlerContext, version: Any) -> dict[str, Any]:
    """Put the agent back to *version* (inside the running handler's transaction)."""
    store = inst.store
    assert store is not None
    conn = store.conn
    key = inst.key
    version = check_version(conn, version, f"{key[0]}({key[1]!r})")
    head = inst.version
    ctx.capture(store)
    ran = occurrences_ran_after(conn, version)
    undo_to(conn, version, before_drop=lambda: ctx.cut(store))
    crash_point("mid-rewind")
    now = inst.runtime.clock.now()
    for row in stored_schedules.rows(store):
        if f"{row.id}:{row.occurrence}" in ran:  # this occurrence already ran after the target
            advance(inst, row, now)
    ctx.sched_dirty = True
    inst.state = jsonvalue.loads(state_at(conn, version))
    ctx.state_changed = True
    reason = f"rewound to version {version}"
    cancelled = stored_approvals.cancel_pending_since(conn, version, now, reason)
    for approval_id in cancelled:
        ctx.approvals.append(("cancelled", (approval_id, "cancelled", None, now, reason)))
    inst.started = None  # on_start runs again at the next message (its tables may be gone)
    if inst.workflows is not None:  # workflow runs go on from their rewound journals
        inst.workflows.drop()
    ctx.events.append(("timetravel:rewind", {"to": version, "from": head,
                                             "cancelled_approvals": cancelled}))
    return {"rewound_to": version, "from": head, "cancelled_approvals": cancelled}
