"""The agent's half of approvals: rows in its own store, written inside its handlers.

``request`` writes a pending approval in the running handler's transaction; ``claim``
checks one in the mailbox and marks it approved before its method runs; the rest record
the outcome. The inbox and the overview are in :mod:`agentbook.approvals`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..errors import (
    ApprovalDecidedError,
    ApprovalExpiredError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    ApprovalTamperedError,
    UsageError,
)
from ..faults import crash_point

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..envelope import Envelope
    from .inbox import Approval

__all__ = ["claim", "decide_without_running", "record_failure", "record_result", "request"]


_REPLAYED = "replayed on a fork: a replay never asks a person"
_ROW = ("SELECT method, args, kwargs, nonce, digest, approvers, expires, status, decided_by,"
        " expiry_schedule FROM _ab_approvals WHERE id = ?")


def _digest(key: tuple[str, str], method: str, args: str, kwargs: str, nonce: str,
            expires: float | None) -> str:
    text = jsonvalue.canonical([key[0], key[1], method, args, kwargs, nonce, expires])
    return hashlib.sha256(text.encode()).hexdigest()


def request(inst: Instance, ctx: HandlerContext, method: str, args: Any, summary: str,
            side_effects: list, expires_in: float | None, approvers: list | None) -> Approval:
    """Write a pending approval in the running handler's transaction."""
    from ..core.calls import check_arguments
    from ..methods import FRAMEWORK_NAMES, method_info
    from ..schedule.policy import insert
    from .inbox import Approval

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
    # A replay re-runs the request on a fork but never asks a person: recorded as cancelled.
    replayed = _REPLAYED if ctx.replay is not None else None
    if expires is not None and not replayed:
        ctx.sched_dirty = True
        expiry = insert(store, "scheduled", expires, "_ab_expire_approval", approval_id, now).id
    status, decided_at = ("cancelled", now) if replayed else ("pending", None)
    store.internal(
        "INSERT INTO _ab_approvals(id, method, args, kwargs, nonce, digest, summary, side_effects,"
        " approvers, created, expires, status, decided_at, reason, expiry_schedule,"
        " requested_at_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (approval_id, method, pos_json, kw_json, nonce,
         _digest(inst.key, method, pos_json, kw_json, nonce, expires), summary,
         jsonvalue.dumps(effects), None if approvers is None else jsonvalue.dumps(approvers),
         now, expires, status, decided_at, replayed, expiry, inst.version),
    )
    row = (approval_id, inst.key[0], inst.key[1], method, pos_json, kw_json, summary,
           jsonvalue.dumps(effects), now, expires, status, None, decided_at, replayed)
    if replayed:
        ctx.approvals.append(("replayed", row))  # indexed once committed
    else:
        inst.runtime.catalog.index_approval(row)  # before the commit; reconciled after a crash
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
