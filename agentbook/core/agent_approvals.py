"""The human-in-the-loop half of :class:`~agentbook.agent.Agent`: ``request_approval``
and the decisions the runtime applies as handlers (see :mod:`agentbook.approvals`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..approve.inbox import Approval
    from .mailbox import Instance


class ApprovalMixin:
    """Approvals of one agent (mixed into ``ab.Agent``)."""

    _ab_instance: Instance

    async def request_approval(
        self,
        method: str,
        args: dict | list | None = None,
        *,
        summary: str,
        side_effects: list[str] | None = None,
        expires_in: float | None = None,
        approvers: list[str] | None = None,
    ) -> Approval:
        """Propose an action for a person to approve; returns at once.

        The pending approval commits with this handler. When a person approves it (in the
        ``rt.approvals`` inbox, or ``rt.approvals.approve(id)``), *method* runs once with
        exactly *args*, as a handler of this agent. Rejection or expiry never run it.

        Args:
            method: A public method of this agent (it need not be ``@ab.callable``, and is
                better not: then only an approval can run it).
            args: Keyword arguments (a dict) or positional ones (a list); JSON values.
            summary: One line a person reads before deciding.
            side_effects: What approving will do in the world, one line each.
            expires_in: Seconds until the approval expires (``None``: never).
            approvers: Who may decide (names given as ``by=``); ``None``: anyone.
        """
        from ..approve import inbox as approvals

        inst = self._ab_instance
        ctx = inst.require_ctx("request_approval")
        return approvals.request(inst, ctx, method, [] if args is None else args, summary,
                                 side_effects or [], expires_in, approvers)

    def _ab_reject_approval(self, approval_id: str, by: str, reason: str | None) -> None:
        from ..approve import inbox as approvals

        inst = self._ab_instance
        approvals.decide_without_running(inst, inst.require_ctx("reject"), approval_id,
                                         "rejected", by, reason)

    def _ab_expire_approval(self, approval_id: str) -> None:
        from ..approve import inbox as approvals

        inst = self._ab_instance
        approvals.decide_without_running(inst, inst.require_ctx("expire"), approval_id,
                                         "expired", None, "expired")
