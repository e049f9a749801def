"""Named crash points, for the reliability suite only.

Setting ``AGENTBOOK_CRASH_AT`` to one of :data:`POINTS` (comma-separated for several) makes
the process exit at once (``os._exit(137)``, like SIGKILL) when it reaches that point, so
tests can prove that a crash exactly there loses nothing and leaves nothing half-written.
Unset (always, outside tests), each check is a single global lookup.
"""

from __future__ import annotations

import os

__all__ = ["POINTS", "crash_point"]

POINTS = frozenset({"before-commit", "after-commit-before-reply", "mid-schedule-fire",
                    "mid-approval", "mid-rewind"})

_ARMED = frozenset(p.strip() for p in os.environ.get("AGENTBOOK_CRASH_AT", "").split(",")
                   if p.strip())


def crash_point(name: str) -> None:
    """Exit the process now if *name* is armed (see the module docstring)."""
    if name in _ARMED:
        os._exit(137)
