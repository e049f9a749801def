"""Human in the loop: durable approvals bound to one exact action.

``await self.request_approval("issue_refund", {"order_id": "o1", "amount": 20}, ...)``
writes a *pending* approval into the agent's own store, in the same commit as the
handler, and returns at once. Nothing waits inside a cell. The approval binds the agent,
the method, its exact arguments, a random nonce and the expiry under a SHA-256 digest.

Approving (``rt.approvals.approve(id)``, or the inbox widget's button, which calls the
same method) sends one message to the agent. In its mailbox, and so one at a time, the
approval is checked (still pending, not expired, an allowed approver, digest intact),
marked approved, and the method runs with exactly the stored arguments, as an ordinary
handler: its effects and the decision commit together, once. If the method raises, its
effects roll back and the approval is recorded as ``failed``; it never runs again.
Rejection and expiry are recorded and never run anything.

Approvals live in a table that time travel does not track, so no rewind can bring a
decided approval back, and an agent's own SQL can't read or forge them. The runtime
keeps an index of them in its catalog for the inbox; the agent's store is the truth, and
the index is checked against it after a crash (:mod:`agentbook.store.approval_index`). Other
agents can't call a method an approval guards; a replay never asks a person (a request it
re-runs is recorded on the fork as ``cancelled``) and never re-runs an approved method.

The mailbox tells the inbox what committed (:meth:`Approvals.after_commit`) and what rolled
back (:meth:`Approvals.forget`); those, like the runtime's own internal API, are named in
``Approvals._ab_internal`` and hidden from ``dir()``.
"""

from __future__ import annotations

import asyncio
import builtins
import getpass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import ApprovalDecidedError, ApprovalNotFoundError
from . import requests
from .requests import claim, decide_without_running, record_failure, record_result

if TYPE_CHECKING:
    import pandas as pd

    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..core.runtime import Runtime
    from ..store.approvals import Decision, IndexedApproval

__all__ = ["Approval", "Approvals", "claim", "decide_without_running", "record_failure",
           "record_result", "request"]


def default_person() -> str:
    """Who decides when nobody says: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def request(inst: Instance, ctx: HandlerContext, method: str, args: Any, summary: str,
            side_effects: list, expires_in: float | None, approvers: list | None) -> Approval:
    """``self.request_approval(...)``: write a pending approval in the running handler's
    transaction (see :func:`agentbook.approve.requests.request`) and return it."""
    return Approval(inst.runtime, requests.request(inst, ctx, method, args, summary,
                                                   side_effects, expires_in, approvers))


class Approval:
    """One approval: what is proposed, and what became of it.

    Awaiting an approval (``await approval``) waits for its decision; that works only
    where the kernel can take a click while a cell awaits (JupyterLab with ipykernel 7.4
    or newer). Prefer letting the cell finish and deciding in the inbox.
    """

    _ab_needs_person = True

    __slots__ = (
        "_rt",
        "agent",
        "args",
        "created",
        "decided_at",
        "decided_by",
        "expires",
        "id",
        "kwargs",
        "method",
        "name",
        "reason",
        "side_effects",
        "status",
        "summary",
    )

    def __init__(self, rt: Runtime, row: IndexedApproval) -> None:
        (self.id, self.agent, self.name, self.method, args, kwargs, self.summary, side_effects,
         self.created, self.expires, self.status, self.decided_by, self.decided_at,
         self.reason) = row
        self.args = jsonvalue.loads(args)
        self.kwargs = jsonvalue.loads(kwargs)
        self.side_effects = jsonvalue.loads(side_effects)
        self._rt = rt

    @property
    def time_left(self) -> float | None:
        """Seconds until expiry on the runtime's clock (``None``: never expires)."""
        if self.expires is None:
            return None
        return max(0.0, self.expires - self._rt.clock.now())

    @property
    def pending(self) -> bool:
        """Whether it still waits for a decision (and hasn't run out of time)."""
        return self.status == "pending" and (self.time_left is None or self.time_left > 0)

    def refresh(self) -> Approval:
        """The approval as the inbox knows it now."""
        return self._rt.approvals.get(self.id)

    def __await__(self) -> Any:
        return self._rt.approvals.wait(self.id).__await__()

    def __repr__(self) -> str:
        return (f"<Approval {self.id} {self.agent}({self.name!r}).{self.method} {self.status}: "
                f"{self.summary!r}>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from ..widgets.approvals import approval_widget

        return approval_widget(self._rt, self.id)._repr_mimebundle_(include=include,
                                                                    exclude=exclude)


# -- the inbox (rt.approvals) -----------------------------------------------------------
_EVENT = {"request": "approval:request", "approve": "approval:approve",
          "approved": "approval:approve", "failed": "approval:approve",
          "rejected": "approval:reject", "expired": "approval:expire",
          "cancelled": "approval:cancel"}


class Approvals:
    """The approval inbox of a runtime (``rt.approvals``).

    Displayed in a notebook it is a live widget with Approve and Reject buttons; the
    buttons call :meth:`approve` and :meth:`reject`, exactly as code can.
    """

    #: What the mailbox and the approvals themselves call on the inbox, by name: not part of
    #: the public API, hidden from ``dir()`` (tab completion).
    _ab_internal = frozenset({"after_commit", "forget", "wait"})

    def __dir__(self) -> list[str]:
        return [name for name in super().__dir__() if name not in self._ab_internal]

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._waiters: dict[str, list[asyncio.Future]] = {}

    def get(self, approval_id: str) -> Approval:
        """One approval by id."""
        reads = self._rt.reads  # (a Ray runtime with node-local stores: the hosts know)
        row = (self._rt.catalog.approval(approval_id) if reads is None
               else reads.approval(approval_id))
        if row is None:
            raise ApprovalNotFoundError(f"no approval has id {approval_id!r}; see "
                                        "rt.approvals.pending()")
        return Approval(self._rt, row)

    def list(self, status: str | None = "pending", *, limit: int | None = None,
             newest_first: bool = False) -> list[Approval]:
        """Approvals with *status* (``None`` for all), in the order they were requested
        (``newest_first`` reverses it); pending ones that ran out of time are left out of
        ``"pending"``. ``limit`` keeps the first *limit*."""
        reads = self._rt.reads
        rows = self._rt.catalog.approvals(status) if reads is None else reads.approvals(status)
        out = [Approval(self._rt, row) for row in rows]
        if status == "pending":
            out = [a for a in out if a.pending]
        if newest_first:
            out.reverse()
        return out if limit is None else out[:limit]

    def pending(self) -> pd.DataFrame:
        """Pending approvals across all agents, as a DataFrame."""
        return self._frame(self.list("pending"))

    def history(self) -> pd.DataFrame:
        """Every approval with its decision (who, when, why)."""
        return self._frame(self.list(None))

    def approve(self, approval_id: str, *, by: str | None = None) -> Any:
        """Approve: the agent runs the approved method once, in the background.

        Returns an awaitable of the method's result (``await`` it in code, or ignore it:
        the work goes on). Raises at once if the approval is unknown or already decided.
        """
        return self._decide(approval_id, "approve", by or default_person(), None)

    def reject(self, approval_id: str, reason: str | None = None, *,
               by: str | None = None) -> Any:
        """Reject: the method never runs; who, when and why are recorded."""
        return self._decide(approval_id, "reject", by or default_person(), reason)

    def _decide(self, approval_id: str, what: str, by: str, reason: str | None) -> Any:
        rt = self._rt
        rt.check_open()
        approval = self.get(approval_id)
        if approval.status != "pending":
            raise ApprovalDecidedError(
                f"approval {approval_id} was already {approval.status}"
                + (f" by {approval.decided_by}" if approval.decided_by else "")
                + "; a decision is made once")
        key = (approval.agent, approval.name)
        if what == "approve":
            env = Envelope.approved(approval_id, by)
        else:
            env = Envelope.call("_ab_reject_approval", (approval_id, by, reason),
                                source=f"approval:{approval_id}", label="reject_approval")
        return rt.submit(key, env)

    def after_commit(self, key: tuple[str, str], kind: str,
                     data: IndexedApproval | Decision) -> None:
        """Called by the mailbox once a request (*data* an :class:`IndexedApproval`) or a
        decision (a :class:`Decision`) is durable; *kind* is the first item of the
        handler context's ``approvals`` entry."""
        rt = self._rt
        if kind == "replayed":
            rt.catalog.index_approval(cast("IndexedApproval", data))
            return
        if kind == "request":
            if rt.events.active:
                row = cast("IndexedApproval", data)
                payload = {"id": row.id, "method": row.method, "summary": row.summary,
                           "expires": row.expires}
                rt.emit_event("approval:request", key, payload)
                rt.emit_event("tool:approval", key, payload)
            return
        approval_id, status, by, at, reason = cast("Decision", data)
        rt.catalog.decide_approval(approval_id, status, by, at, reason)
        if rt.events.active:
            rt.emit_event(_EVENT[status if kind != "approve" else "approve"], key,
                          {"id": approval_id, "status": status, "by": by, "reason": reason})
        for fut in self._waiters.pop(approval_id, []):
            if not fut.done():
                fut.set_result(self.get(approval_id))

    def forget(self, approval_id: str) -> None:
        """A request rolled back: drop its index entry (and tell any open inbox)."""
        row = self._rt.catalog.approval(approval_id, sync=False)
        self._rt.catalog.drop_approval(approval_id)
        if row is not None and self._rt.events.active:
            self._rt.emit_event("approval:cancel", (row.agent, row.name),
                                {"id": approval_id, "status": "rolled back", "by": None,
                                 "reason": "the handler that asked for it failed"})

    async def wait(self, approval_id: str) -> Approval:
        """The approval once it is decided (``await approval`` does this)."""
        approval = self.get(approval_id)
        if approval.status != "pending":
            return approval
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(approval_id, []).append(fut)
        return await fut

    def _frame(self, items: builtins.list[Approval]) -> pd.DataFrame:
        import pandas as pd

        rows = [(a.id, a.agent, a.name, a.method, jsonvalue.thaw(a.args),
                 jsonvalue.thaw(a.kwargs), a.summary, list(a.side_effects), a.status,
                 _ts(a.created), _ts(a.expires), a.time_left, a.decided_by, _ts(a.decided_at),
                 a.reason) for a in items]
        return pd.DataFrame.from_records(rows, columns=[
            "id", "agent", "name", "method", "args", "kwargs", "summary", "side_effects",
            "status", "created", "expires", "time_left_s", "decided_by", "decided_at",
            "reason"])

    def __repr__(self) -> str:
        return f"<approval inbox: {len(self.list('pending'))} pending>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from ..widgets.approvals import inbox_widget

        return inbox_widget(self._rt)._repr_mimebundle_(include=include, exclude=exclude)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)
