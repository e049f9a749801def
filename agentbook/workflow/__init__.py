"""Durable workflows inside agents (a concept layer): steps that run once, sleep for days,
and wait for people and events, on the agent's own store.

A map of the package:

``decorator``
    ``@ab.workflow``: a method taking ``step`` first; calling it starts a run.
``step``
    ``ab.Step``: ``do``, ``sleep``, ``wait_for_event``, ``wait_for_approval``, ``id``; and
    the decision an approval step returns.
``engine``
    How a run moves: its code runs from the top in a handler of the agent, completed steps
    come from the journal, the first new one runs or registers its wait; the wakes
    (schedules, events, approvals) and cancelling.
``run``
    ``ab.WorkflowRun``: a run seen from outside (status, steps, result, events, cancel).

The rows are read and written only by :mod:`agentbook.store.workflows`. Nothing here
imports the core: the awake agent and the handler's context arrive as arguments.
"""

from .decorator import is_workflow, workflow
from .run import WorkflowRun
from .step import ApprovalDecision, Step

__all__ = ["ApprovalDecision", "Step", "WorkflowRun", "is_workflow", "workflow"]
