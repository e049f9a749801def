"""Notebook faces of agentbook: ipywidgets views over the runtime's state.

Imported lazily (``rt.approvals`` displayed, ``ref.widget()``), so ``import agentbook``
never pays for ipywidgets.
"""

from .approvals import ApprovalInbox, approval_widget, inbox_widget

__all__ = ["ApprovalInbox", "approval_widget", "inbox_widget"]
