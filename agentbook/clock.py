"""Where agentbook gets the time.

All time in a runtime comes from one clock object (trio's MockClock idea): timestamps in
history, schedule due times, approval expiry. :class:`SystemClock` is the wall clock;
:class:`VirtualClock` stands still until told to move, so a notebook can simulate a day
in seconds and tests never sleep. Durations (``duration_ms``) are always measured with a
real monotonic timer, since they describe how long the code took.

Clocks hand out timers with :meth:`Clock.call_at`; the runtime keeps one timer armed for
the earliest due schedule across all of its agents.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["Clock", "SystemClock", "TimerHandle", "VirtualClock"]


class TimerHandle:
    """A timer from :meth:`Clock.call_at`; ``cancel()`` stops it."""

    __slots__ = ("callback", "cancelled", "handle", "when")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        """Stop the timer (harmless if it already fired)."""
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()

    def __lt__(self, other: TimerHandle) -> bool:
        return self.when < other.when


class Clock:
    """Interface: ``now()`` in epoch seconds, ``call_at`` timers, ``sleep_until``."""

    virtual = False

    def now(self) -> float:
        """Current time as seconds since the Unix epoch."""
        raise NotImplementedError

    def call_at(self, when: float, callback: Callable[[], Any]) -> TimerHandle:
        """Call *callback* (a plain function) once ``now() >= when``.

        Needs a running event loop for the :class:`SystemClock`.
        """
        raise NotImplementedError

    async def sleep_until(self, when: float) -> None:
        """Return once ``now() >= when``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_at(when, wake)
        try:
            await fut
        finally:
            timer.cancel()

    def datetime(self) -> datetime:
        """Current time as an aware UTC ``datetime``."""
        return datetime.fromtimestamp(self.now(), timezone.utc)


class SystemClock(Clock):
    """The real wall clock."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], Any]) -> TimerHandle:
        timer = TimerHandle(when, callback)
        loop = asyncio.get_running_loop()
        timer.handle = loop.call_later(max(0.0, when - time.time()), callback)
        return timer

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock(Clock):
    """A clock that only moves when told to.

    Args:
        start: The starting time: epoch seconds, a ``datetime`` (naive means local time)
            or ``None`` for 2026-01-01T00:00Z (fixed, so notebooks and tests repeat).

    Work due at the current instant (queued work, a schedule whose time ``set`` reached)
    runs on ``await rt.settle()`` or ``await clock.advance(0)``.

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
            start = start.timestamp()
        self._now = float(start)
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._settlers: weakref.WeakSet[Any] = weakref.WeakSet()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], Any]) -> TimerHandle:
        timer = TimerHandle(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def add_settler(self, owner: Any) -> None:
        """Register an object whose ``async settle()`` runs after each timer fires
        (a runtime waits there for the work the timer started)."""
        self._settlers.add(owner)

    async def advance(
        self, seconds: float | timedelta = 0.0, *, minutes: float = 0.0, hours: float = 0.0,
        days: float = 0.0,
    ) -> float:
        """Move time forward, firing every timer due along the way, in time order.

        Each timer fires with ``now()`` equal to its own due time, and the work it starts
        is allowed to finish before time moves on, so a simulated day runs in order.

        Returns:
            The new ``now()``.
        """
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        total = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if total < 0:
            raise ValueError("a VirtualClock only moves forward; pass a positive amount")
        target = self._now + total
        await self._settle()
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.cancelled = True
            timer.callback()
            await self._settle()
        self._now = target
        await self._settle()
        return self._now

    async def run_until_idle(self, limit: float | timedelta = 366 * 86400.0) -> float:
        """Advance until no timer is left (at most *limit* seconds); returns ``now()``."""
        if isinstance(limit, timedelta):
            limit = limit.total_seconds()
        end = self._now + limit
        while True:
            live = [t for t in self._timers if not t[2].cancelled]
            if not live:
                return self._now
            nxt = min(live)[0]
            if nxt > end:
                return self._now
            await self.advance(max(0.0, nxt - self._now))

    def set(self, when: float | datetime) -> None:
        """Jump to an absolute time without firing anything (only forward)."""
        if isinstance(when, datetime):
            when = when.timestamp()
        if when < self._now:
            raise ValueError("a VirtualClock only moves forward")
        self._now = float(when)

    async def _settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        for owner in list(self._settlers):
            await owner.settle()

    def __repr__(self) -> str:
        return f"VirtualClock({self.datetime().isoformat(timespec='seconds')})"


def to_seconds(value: float | timedelta) -> float:
    """Seconds from a number or a ``timedelta``."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


