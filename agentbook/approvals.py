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
keeps an index of them in its catalog for the inbox; the agent's store is the truth.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import hmac
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import jsonvalue
from .errors import (
    ApprovalDecidedError,
    ApprovalExpiredError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    ApprovalTamperedError,
    UsageError,
)
from .faults import crash_point

if TYPE_CHECKING:
    import pandas as pd

    from .handler import HandlerContext
    from .mailbox import Envelope, Instance
    from .runtime import Runtime

__all__ = ["Approval", "Approvals"]

_ROW = ("SELECT method, args, kwargs, nonce, digest, approvers, expires, status, decided_by,"
        " expiry_schedule FROM _ab_approvals WHERE id = ?")


def _digest(key: tuple[str, str], method: str, args: str, kwargs: str, nonce: str,
            expires: float | None) -> str:
    text = jsonvalue.canonical([key[0], key[1], method, args, kwargs, nonce, expires])
    return hashlib.sha256(text.encode()).hexdigest()


def default_person() -> str:
    """Who decides when nobody says: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


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

    def __init__(self, rt: Runtime, row: tuple) -> None:
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
        return self._rt.approvals._wait(self.id).__await__()

    def __repr__(self) -> str:
        return (f"<Approval {self.id} {self.agent}({self.name!r}).{self.method} {self.status}: "
                f"{self.summary!r}>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from .widgets.approvals import approval_widget

        return approval_widget(self._rt, self.id)._repr_mimebundle_(include=include,
                                                                    exclude=exclude)


# -- inside the agent (called by Agent.request_approval and the mailbox) ----------------
def request(inst: Instance, ctx: HandlerContext, method: str, args: Any, summary: str,
            side_effects: list, expires_in: float | None, approvers: list | None) -> Approval:
    """Write a pending approval in the running handler's transaction."""
    from .agent import FRAMEWORK_NAMES, method_info
    from .calls import check_arguments
    from .scheduler import insert

    cls = type(inst.agent)
    fn, _ = method_info(cls, method)
    if fn is None or method.startswith("_") or method in FRAMEWORK_NAMES:
        raise UsageError(f"{cls.__name__} has no public method {method!r} to ask approval for")
    if isinstance(args, dict):
        pos, kw = (), args
    elif isinstance(args, (list, tuple)):
        pos, kw = tuple(args), {}
    else:
        raise UsageError("args is a dict of keyword arguments or a list of positional ones")
    check_arguments(cls, fn, method, pos, kw)
    pos_json = jsonvalue.dumps(jsonvalue.freeze(list(pos), "args"))
    kw_json = jsonvalue.dumps(jsonvalue.freeze(kw, "args"))
    if not isinstance(summary, str) or not summary.strip():
        raise UsageError("request_approval needs a summary= a person can read")
    effects = jsonvalue.freeze([str(s) for s in (side_effects or [])], "side_effects")
    if approvers is not None:
        approvers = [str(a) for a in approvers]
    now = inst.runtime.clock.now()
    expires = None
    if expires_in is not None:
        if not isinstance(expires_in, (int, float)) or expires_in <= 0:
            raise UsageError(f"expires_in is a positive number of seconds, not {expires_in!r}")
        expires = now + float(expires_in)
    approval_id = "ap-" + secrets.token_hex(8)
    nonce = secrets.token_hex(16)
    store = inst.store
    ctx.capture(store)
    expiry = None
    if expires is not None:
        ctx.sched_dirty = True
        expiry = insert(store, "scheduled", expires, "_ab_expire_approval", approval_id, now).id
    store.internal(
        "INSERT INTO _ab_approvals(id, method, args, kwargs, nonce, digest, summary, side_effects,"
        " approvers, created, expires, status, expiry_schedule, requested_at_version)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,'pending',?,?)",
        (approval_id, method, pos_json, kw_json, nonce,
         _digest(inst.key, method, pos_json, kw_json, nonce, expires), summary,
         jsonvalue.dumps(effects), None if approvers is None else jsonvalue.dumps(approvers),
         now, expires, expiry, inst.version),
    )
    row = (approval_id, inst.key[0], inst.key[1], method, pos_json, kw_json, summary,
           jsonvalue.dumps(effects), now, expires, "pending", None, None, None)
    inst.runtime.catalog.index_approval(row)  # before the commit: the index is a superset
    ctx.approvals.append(("request", row))
    return Approval(inst.runtime, row)


def claim(inst: Instance, ctx: HandlerContext, env: Envelope) -> None:
    """Check an approval in the mailbox and mark it approved; set up *env* to run its
    method with the stored arguments. Raises a typed error (and writes nothing) if the
    approval can't be approved."""
    approval_id, by = env.approval
    store = inst.store
    rows = store.internal(_ROW, (approval_id,))
    if not rows:
        raise ApprovalNotFoundError(f"no approval {approval_id!r} in {inst.key[0]}({inst.key[1]!r})")
    method, args, kwargs, nonce, digest, approvers, expires, status, decided_by, expiry = rows[0]
    now = inst.runtime.clock.now()
    if status != "pending":
        who = f" by {decided_by}" if decided_by else ""
        raise ApprovalDecidedError(f"approval {approval_id} was already {status}{who}; "
                                   "a decision is made once")
    if expires is not None and now >= expires:
        raise ApprovalExpiredError(f"approval {approval_id} expired; ask the agent to propose "
                                   "it again")
    if approvers is not None and by not in jsonvalue.loads(approvers):
        raise ApprovalForbiddenError(f"{by!r} may not decide approval {approval_id}; its "
                                     f"approvers are {', '.join(jsonvalue.loads(approvers))}")
    expected = _digest(inst.key, method, args, kwargs, nonce, expires)
    if not hmac.compare_digest(expected, digest):
        raise ApprovalTamperedError(f"approval {approval_id} does not match the action that "
                                    "was requested; it was not run")
    store.internal("UPDATE _ab_approvals SET status = 'approved', decided_by = ?, decided_at = ?"
                   " WHERE id = ?", (by, now, approval_id))
    crash_point("mid-approval")
    _drop_expiry(inst, ctx, expiry)
    env.method = method
    env.args = tuple(jsonvalue.loads(args))
    env.kwargs = dict(jsonvalue.loads(kwargs))
    env.args_json = args
    env.kwargs_json = None if kwargs == "{}" else kwargs
    ctx.approvals.append(("approve", (approval_id, "approved", by, now, None)))


def record_result(inst: Instance, env: Envelope, result_json: str | None) -> None:
    """Keep the approved method's result on the approval."""
    inst.store.internal("UPDATE _ab_approvals SET result = ? WHERE id = ?",
                        (result_json, env.approval[0]))


def record_failure(inst: Instance, ctx: HandlerContext, env: Envelope, error: str) -> tuple:
    """The approved method raised: the approval is consumed as ``failed``."""
    approval_id, by = env.approval
    now = inst.runtime.clock.now()
    rows = inst.store.internal("SELECT expiry_schedule FROM _ab_approvals WHERE id = ?",
                               (approval_id,))
    inst.store.internal(
        "UPDATE _ab_approvals SET status = 'failed', decided_by = ?, decided_at = ?, error = ?"
        " WHERE id = ?", (by, now, error, approval_id))
    _drop_expiry(inst, ctx, rows[0][0] if rows else None)
    return (approval_id, "failed", by, now, error)


def decide_without_running(inst: Instance, ctx: HandlerContext, approval_id: str, status: str,
                           by: str | None, reason: str | None) -> None:
    """Reject or expire a pending approval (from an internal handler)."""
    rows = inst.store.internal(_ROW, (approval_id,))
    if not rows:
        raise ApprovalNotFoundError(f"no approval {approval_id!r} in {inst.key[0]}({inst.key[1]!r})")
    current, decided_by, expiry = rows[0][7], rows[0][8], rows[0][9]
    if current != "pending":
        if status == "expired":
            return  # decided meanwhile: nothing to expire
        who = f" by {decided_by}" if decided_by else ""
        raise ApprovalDecidedError(f"approval {approval_id} was already {current}{who}; "
                                   "a decision is made once")
    now = inst.runtime.clock.now()
    inst.store.internal("UPDATE _ab_approvals SET status = ?, decided_by = ?, decided_at = ?,"
                        " reason = ? WHERE id = ?", (status, by, now, reason, approval_id))
    if status != "expired":
        _drop_expiry(inst, ctx, expiry)
    ctx.approvals.append((status, (approval_id, status, by, now, reason)))


def _drop_expiry(inst: Instance, ctx: HandlerContext, schedule_id: str | None) -> None:
    if schedule_id:
        ctx.capture(inst.store)
        ctx.sched_dirty = True
        inst.store.internal("DELETE FROM _ab_schedules WHERE id = ?", (schedule_id,))


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

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._waiters: dict[str, list[asyncio.Future]] = {}

    def get(self, approval_id: str) -> Approval:
        """One approval by id."""
        row = self._rt.catalog.approval(approval_id)
        if row is None:
            raise ApprovalNotFoundError(f"no approval has id {approval_id!r}; see "
                                        "rt.approvals.pending()")
        return Approval(self._rt, row)

    def list(self, status: str | None = "pending", *, limit: int | None = None,
             newest_first: bool = False) -> list[Approval]:
        """Approvals with *status* (``None`` for all), in the order they were requested
        (``newest_first`` reverses it); pending ones that ran out of time are left out of
        ``"pending"``. ``limit`` keeps the first *limit*."""
        out = [Approval(self._rt, row) for row in self._rt.catalog.approvals(status)]
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
        from .mailbox import Envelope

        rt = self._rt
        rt._check_open()
        approval = self.get(approval_id)
        if approval.status != "pending":
            raise ApprovalDecidedError(
                f"approval {approval_id} was already {approval.status}"
                + (f" by {approval.decided_by}" if approval.decided_by else "")
                + "; a decision is made once")
        key = (approval.agent, approval.name)
        if what == "approve":
            env = Envelope("__approve__", (), {}, "[]", None, f"approval:{approval_id}")
            env.approval = (approval_id, by)
        else:
            env = Envelope("_ab_reject_approval", (approval_id, by, reason), {},
                           jsonvalue.dumps([approval_id, by, reason]), None,
                           f"approval:{approval_id}", label="reject_approval")
        return rt._submit(key, env)

    def _after_commit(self, key: tuple[str, str], kind: str, data: tuple) -> None:
        """Called by the mailbox once a request or decision is durable."""
        rt = self._rt
        if kind == "request":
            if rt.events.active:
                payload = {"id": data[0], "method": data[3], "summary": data[6],
                           "expires": data[9]}
                rt._emit("approval:request", key, payload)
                rt._emit("tool:approval", key, payload)
            return
        approval_id, status, by, at, reason = data
        rt.catalog.decide_approval(approval_id, status, by, at, reason)
        if rt.events.active:
            rt._emit(_EVENT[status if kind != "approve" else "approve"], key,
                     {"id": approval_id, "status": status, "by": by, "reason": reason})
        for fut in self._waiters.pop(approval_id, []):
            if not fut.done():
                fut.set_result(self.get(approval_id))

    def _forget(self, approval_id: str) -> None:
        """A request rolled back: drop its index entry (and tell any open inbox)."""
        row = self._rt.catalog.approval(approval_id)
        self._rt.catalog.drop_approval(approval_id)
        if row is not None and self._rt.events.active:
            self._rt._emit("approval:cancel", (row[1], row[2]),
                           {"id": approval_id, "status": "rolled back", "by": None,
                            "reason": "the handler that asked for it failed"})

    async def _wait(self, approval_id: str) -> Approval:
        approval = self.get(approval_id)
        if approval.status != "pending":
            return approval
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(approval_id, []).append(fut)
        return await fut

    def _frame(self, items: list[Approval]) -> pd.DataFrame:
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
        from .widgets.approvals import inbox_widget

        return inbox_widget(self._rt)._repr_mimebundle_(include=include, exclude=exclude)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)
