"""Where agentbook gets the time.

All time in a runtime comes from one clock object (trio's MockClock idea): timestamps in
history, schedule due times, approval expiry. :class:`SystemClock` is the wall clock;
:class:`VirtualClock` stands still until told to move, so a notebook can simulate a day
in seconds and tests never sleep. Durations (``duration_ms``) are always measured with a
real monotonic timer, since they describe how long the code took.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import datetime, timedelta, timezone

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock:
    """Interface: ``now()`` in epoch seconds and an awaitable ``sleep_until``."""

    virtual = False

    def now(self) -> float:
        """Current time as seconds since the Unix epoch."""
        raise NotImplementedError

    async def sleep_until(self, when: float) -> None:
        """Return once ``now() >= when``."""
        raise NotImplementedError

    def datetime(self) -> datetime:
        """Current time as an aware UTC ``datetime``."""
        return datetime.fromtimestamp(self.now(), timezone.utc)


class SystemClock(Clock):
    """The real wall clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock(Clock):
    """A clock that only moves when told to.

    Args:
        start: The starting time: epoch seconds, an aware ``datetime`` or ``None`` for
            2026-01-01T00:00Z (fixed, so notebooks and tests are repeatable).

    Example:
        >>> clock = VirtualClock()
        >>> rt = Runtime(":memory:", clock=clock)   # doctest: +SKIP
        >>> await clock.advance(hours=24)            # doctest: +SKIP
    """

    virtual = True

    def __init__(self, start: float | datetime | None = None) -> None:
        if start is None:
            start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        if isinstance(start, datetime):
            if start.tzinfo is None:
                start = start.astimezone()
            start = start.timestamp()
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._seq), fut))
        await fut

    async def advance(
        self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0
    ) -> float:
        """Move time forward, waking everything due along the way, in time order.

        Each sleeper wakes with ``now()`` equal to its own due time, and the work it
        starts is allowed to settle before time moves on.

        Returns:
            The new ``now()``.
        """
        total = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if total < 0:
            raise ValueError("a VirtualClock only moves forward; pass a positive amount")
        target = self._now + total
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, when)
            fut.set_result(None)
            await _settle()
        self._now = target
        await _settle()
        return self._now

    def set(self, when: float | datetime) -> None:
        """Jump to an absolute time without waking anything (only forward)."""
        if isinstance(when, datetime):
            when = when.timestamp()
        if when < self._now:
            raise ValueError("a VirtualClock only moves forward")
        self._now = float(when)

    def __repr__(self) -> str:
        return f"VirtualClock({self.datetime().isoformat(timespec='seconds')})"


async def _settle(rounds: int = 20) -> None:
    """Let ready callbacks run for a few loop turns."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def to_seconds(value: float | timedelta) -> float:
    """Seconds from a number or a ``timedelta``."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)
