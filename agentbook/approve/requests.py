"""The agent's half of approvals: rows in its own store, written inside its handlers.

``request`` writes a pending approval in the running handler's transaction; ``claim``
checks one in the mailbox and marks it approved before its method runs; the rest record
the outcome. The rows themselves are read and written by :mod:`agentbook.store.approvals`;
the inbox is in :mod:`agentbook.approve.inbox`.

What the mailbox hands in (the awake agent, its handler context, the envelope) comes as
arguments: this module never imports :mod:`agentbook.core`.
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
from ..methods import FRAMEWORK_NAMES, check_arguments, method_info
from ..schedule.policy import insert as insert_schedule
from ..store import approvals as rows
from ..store import schedules
from ..store.approvals import Decision, IndexedApproval

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.mailbox import Instance
    from ..envelope import Envelope
    from ..store.agentstore import AgentStore

__all__ = ["claim", "decide_without_running", "digest", "record_failure", "record_result",
           "request"]


_REPLAYED = "replayed on a fork: a replay never asks a person"


def digest(key: tuple[str, str], method: str, args: str, kwargs: str, nonce: str,
            expires: float | None) -> str:
    """What binds an approval to its agent, exact action, nonce and expiry (checked before it
    runs; workflows bind theirs the same way)."""
    text = jsonvalue.canonical([key[0], key[1], method, args, kwargs, nonce, expires])
    return hashlib.sha256(text.encode()).hexdigest()


def _store(inst: Instance) -> AgentStore:
    """The awake agent's open store (a handler runs only while it is open)."""
    store = inst.store
    assert store is not None, "approvals are written inside a handler, with the store open"
    return store


def _approval_of(env: Envelope) -> tuple[str, str | None]:
    assert env.approval is not None, "only an approved message carries an approval"
    return env.approval


def request(inst: Instance, ctx: HandlerContext, method: str, args: Any, summary: str,
            side_effects: list, expires_in: float | None,
            approvers: list | None) -> IndexedApproval:
    """Write a pending approval in the running handler's transaction; returns it as the
    inbox will list it."""
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
    store = _store(inst)
    ctx.capture(store)
    expiry = None
    # A replay re-runs the request on a fork but never asks a person: recorded as cancelled.
    replayed = _REPLAYED if ctx.replay is not None else None
    if expires is not None and not replayed:
        ctx.sched_dirty = True
        expiry = insert_schedule(store, "scheduled", expires, "_ab_expire_approval",
                                 approval_id, now).id
    status, decided_at = ("cancelled", now) if replayed else ("pending", None)
    effects_json = jsonvalue.dumps(effects)
    rows.insert(store, id=approval_id, method=method, args=pos_json, kwargs=kw_json,
                nonce=nonce, digest=digest(inst.key, method, pos_json, kw_json, nonce, expires),
                summary=summary, side_effects=effects_json,
                approvers=None if approvers is None else jsonvalue.dumps(approvers),
                created=now, expires=expires, status=status, decided_at=decided_at,
                reason=replayed, expiry_schedule=expiry, requested_at_version=inst.version)
    row = IndexedApproval(approval_id, inst.key[0], inst.key[1], method, pos_json, kw_json,
                          summary, effects_json, now, expires, status, None, decided_at, replayed)
    if replayed:
        ctx.approvals.append(("replayed", row))  # indexed once committed
    else:
        inst.runtime.catalog.index_approval(row)  # before the commit; reconciled after a crash
        ctx.approvals.append(("request", row))
    return row


def claim(inst: Instance, ctx: HandlerContext, env: Envelope) -> None:
    """Check an approval in the mailbox and mark it approved; set up *env* to run its
    method with the stored arguments. Raises a typed error (and writes nothing) if the
    approval can't be approved."""
    approval_id, by = _approval_of(env)
    store = _store(inst)
    row = rows.get(store, approval_id)
    if row is None:
        raise ApprovalNotFoundError(f"no approval {approval_id!r} in {inst.key[0]}({inst.key[1]!r})")
    now = inst.runtime.clock.now()
    if row.status != "pending":
        who = f" by {row.decided_by}" if row.decided_by else ""
        raise ApprovalDecidedError(f"approval {approval_id} was already {row.status}{who}; "
                                   "a decision is made once")
    if row.expires is not None and now >= row.expires:
        raise ApprovalExpiredError(f"approval {approval_id} expired; ask the agent to propose "
                                   "it again")
    if row.approvers is not None and by not in jsonvalue.loads(row.approvers):
        raise ApprovalForbiddenError(f"{by!r} may not decide approval {approval_id}; its "
                                     f"approvers are {', '.join(jsonvalue.loads(row.approvers))}")
    expected = digest(inst.key, row.method, row.args, row.kwargs, row.nonce, row.expires)
    if not hmac.compare_digest(expected, row.digest):
        raise ApprovalTamperedError(f"approval {approval_id} does not match the action that "
                                    "was requested; it was not run")
    rows.mark_approved(store, approval_id, by, now)
    crash_point("mid-approval")
    _drop_expiry(inst, ctx, row.expiry_schedule)
    env.method = row.method
    if row.method.startswith("_ab_"):  # (agentbook's own, e.g. a workflow's decision)
        env.label = row.method[4:]
    env.args = tuple(jsonvalue.loads(row.args))
    env.kwargs = dict(jsonvalue.loads(row.kwargs))
    env.args_json = row.args
    env.kwargs_json = None if row.kwargs == "{}" else row.kwargs
    ctx.approvals.append(("approve", Decision(approval_id, "approved", by, now, None)))


def record_result(inst: Instance, env: Envelope, result_json: str | None) -> None:
    """Keep the approved method's result on the approval."""
    rows.set_result(_store(inst), _approval_of(env)[0], result_json)


def record_failure(inst: Instance, ctx: HandlerContext, env: Envelope, error: str) -> Decision:
    """The approved method raised: the approval is consumed as ``failed``."""
    approval_id, by = _approval_of(env)
    store = _store(inst)
    now = inst.runtime.clock.now()
    expiry = rows.expiry_schedule(store, approval_id)
    rows.mark_failed(store, approval_id, by, now, error)
    _drop_expiry(inst, ctx, expiry)
    return Decision(approval_id, "failed", by, now, error)


def decide_without_running(inst: Instance, ctx: HandlerContext, approval_id: str, status: str,
                           by: str | None, reason: str | None) -> None:
    """Reject or expire a pending approval (from an internal handler)."""
    store = _store(inst)
    row = rows.get(store, approval_id)
    if row is None:
        raise ApprovalNotFoundError(f"no approval {approval_id!r} in {inst.key[0]}({inst.key[1]!r})")
    if row.status != "pending":
        if status == "expired":
            return  # decided meanwhile: nothing to expire
        who = f" by {row.decided_by}" if row.decided_by else ""
        raise ApprovalDecidedError(f"approval {approval_id} was already {row.status}{who}; "
                                   "a decision is made once")
    now = inst.runtime.clock.now()
    rows.decide(store, approval_id, status, by, now, reason)
    if status != "expired":
        _drop_expiry(inst, ctx, row.expiry_schedule)
    ctx.approvals.append((status, Decision(approval_id, status, by, now, reason)))


def _drop_expiry(inst: Instance, ctx: HandlerContext, schedule_id: str | None) -> None:
    if schedule_id:
        store = _store(inst)
        ctx.capture(store)
        ctx.sched_dirty = True
        schedules.delete(store, schedule_id)
