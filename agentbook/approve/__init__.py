"""Human in the loop: approvals bound to one exact action (a concept: it takes the awake
agent, its handler context and the runtime as arguments and never imports ``core``).

- :mod:`.requests`: the agent's half, inside its mailbox: ``request`` (write a pending
  approval in the handler's transaction), ``claim`` (check one and mark it approved before
  its method runs), and recording the result, a failure, a rejection or an expiry.
- :mod:`.inbox`: ``rt.approvals``: listing, approving and rejecting from code (or from the
  inbox widget, whose buttons call the same methods); ``Approval``, one approval.

The rows are read and written by name in :mod:`agentbook.store.approvals`; the catalog's
index of them, and which methods they guard, is :mod:`agentbook.store.approval_index`.
"""
