"""Notebook faces of agentbook: ipywidgets views over the runtime's state.

Imported lazily (``rt.approvals`` displayed, ``ref.widget()``, ``ref.timeline()``,
``ref.diff_widget()``, ``ref.chat_widget()``, ``rt.dashboard()``), so ``import agentbook``
never pays for ipywidgets.
"""

from .approvals import ApprovalInbox, approval_widget, inbox_widget
from .chat import ChatWidget, chat_widget
from .dashboard import Dashboard, dashboard_widget
from .diff import DiffWidget, diff_widget
from .inspector import inspector_widget
from .timeline import TimelineWidget, timeline_widget

__all__ = ["ApprovalInbox", "ChatWidget", "Dashboard", "DiffWidget", "TimelineWidget",
           "approval_widget", "chat_widget", "dashboard_widget", "diff_widget", "inbox_widget",
           "inspector_widget", "timeline_widget"]
