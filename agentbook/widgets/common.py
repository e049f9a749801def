"""What the widgets share: closing a widget with every model it made, the running loop (if
any), HTML escaping, and how times and spans read (one format in every widget)."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ipywidgets as w

__all__ = ["ClockHook", "Coalescer", "clock_time", "close_all", "duration", "escape", "readable",
           "running_loop"]

#: Payload keys whose numbers are times on the runtime's clock (epoch seconds).
TIME_KEYS = frozenset({"due", "expires", "until", "retry_at", "created", "updated",
                       "decided_at", "since", "ts", "time"})
#: The largest share of the event loop's time a widget's timed redraws may take.
SHARE = 0.1
_EPOCH_FLOOR = 1e8  # 1973: a smaller number under a time key is a count, not a time


def close_all(widget: w.Widget) -> None:
    """Close a widget, its children, its layout and its style (each is a model)."""
    for child in getattr(widget, "children", ()):
        close_all(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
        if part is not None:
            part.close()


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def clock_time(seconds: float) -> str:
    """A time on the runtime's clock as ``Jan 01 09:30:00`` (UTC)."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%b %d %H:%M:%S")


def duration(seconds: float) -> str:
    """A span as people say it, in at most two units, the smaller left out when it is
    zero: ``45 s``, ``12 min``, ``1 h 52 min``, ``22 h``, ``1 d``, ``2 d 3 h``."""
    total = max(int(seconds), 0)
    if total < 120:
        return f"{total} s"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def readable(payload: Any) -> Any:
    """An event's payload with its times (``due``, ``expires``, ``until``...) written as
    clock times instead of epoch seconds; other values as they are."""
    if not isinstance(payload, dict):
        return payload
    return {k: clock_time(v) if k in TIME_KEYS and _epoch(v) else readable(v)
            for k, v in payload.items()}


def _epoch(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and _EPOCH_FLOOR <= value < 1e11)


class Coalescer:
    """Redraws a widget at most once per *every* seconds while events arrive.

    :meth:`poke` (an event came) sets one timer on the running event loop, due *every*
    seconds after the last redraw (with ``every=0``, the loop's next turn: never inside the
    handler that emitted); the pokes after it wait for that timer. The widget calls
    :meth:`drawn` when it redraws (also when asked directly), which cancels a waiting timer.
    Without a running loop (a blocking ``ab.run``), a poke redraws at once.

    A widget whose redraw is slow (a large runtime) never takes more than
    :data:`SHARE` of the loop's time this way: the interval grows to fit its last redraw.

    Args:
        redraw: What the timer calls (the widget's refresh).
        every: The shortest time between two redraws, in seconds.
    """

    __slots__ = ("_cost", "_last", "_redraw", "_timer", "every")

    def __init__(self, redraw: Callable[[], Any], every: float) -> None:
        self._redraw, self.every = redraw, every
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._cost = 0.0  # seconds the last timed redraw took

    @property
    def pending(self) -> bool:
        """Whether a redraw waits for its timer."""
        return self._timer is not None

    def poke(self) -> None:
        """Something changed: redraw now or when the interval is over."""
        if self._timer is not None:
            return
        loop = running_loop()
        if loop is None:
            self._redraw()
            return
        gap = max(self.every, self._cost / SHARE)  # (from the start of the last one)
        delay = max(0.0, self._last + gap - time.monotonic())
        self._timer = loop.call_later(delay, self._due)

    def drawn(self) -> None:
        """The widget redraws now: the interval starts again; a waiting timer is dropped."""
        self.cancel()
        self._last = time.monotonic()

    def cancel(self) -> None:
        """Drop the waiting timer (the widget stopped following)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        started = time.monotonic()
        self._redraw()
        self._cost = time.monotonic() - started


class ClockHook:
    """What a widget registers with an ``ab.VirtualClock`` (``clock.add_settler``) to hear of
    each step of ``clock.advance``: the clock holds it weakly, the widget strongly, so it
    goes with the widget.

    Args:
        moved: Called (no arguments) after each step of the clock.
    """

    __slots__ = ("__weakref__", "moved")

    def __init__(self, moved: Callable[[], Any]) -> None:
        self.moved = moved

    async def settle(self) -> None:
        self.moved()
