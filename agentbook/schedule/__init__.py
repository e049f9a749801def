"""Scheduling: durable schedules, queues, retries and dead letters (a concept layer).

A map of the package:

``policy``
    The rules, free of any runtime: when a ``when`` is due, cron and intervals, what a
    missed tick does, :class:`Retry` backoff, and the public records :class:`Schedule`
    and :class:`Occurrence`.
``agentside``
    What ``self.schedule``, ``schedule_every``, ``queue``, ``get_schedules``,
    ``cancel_schedule`` and the dead-letter operations do inside a handler; making a
    schedule that is already pending returns it (schedules are idempotent).
``firing``
    A due row becomes a scheduled envelope; after it runs, the row advances, retries or
    goes to the dead letters, in the handler's own transaction.
``timers``
    The runtime's one clock timer over every agent's next due time (``rt.settle()`` also
    runs what is due at the current instant through it).

The rows themselves are read and written only by :mod:`agentbook.store.schedules`. Nothing
here imports the core: the runtime, the mailbox instance and the handler context arrive as
arguments.
"""

from .policy import Occurrence, Retry, Schedule, ScheduleError

__all__ = ["Occurrence", "Retry", "Schedule", "ScheduleError"]
