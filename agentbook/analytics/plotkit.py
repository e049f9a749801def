"""What the figures of ``rt.plot`` share: which agents and times a figure is about (turned into
a DuckDB ``WHERE``), and the drawing helpers (an empty canvas, a message instead of an empty
plot, a readable time axis, durations in words).

matplotlib is imported inside the functions that draw, never at import (see
:mod:`agentbook.analytics.plots`)."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..core.runtime import Runtime

__all__ = ["AgentSelection", "When", "agent_keys", "canvas", "datenum", "datenum_epoch", "duration",
           "epoch", "figure_class", "filters", "nice_width", "per_unit", "say", "time_axis",
           "views"]


AgentSelection = Any  # an AgentRef, an Agent class, "Class", "Class/name", or an iterable of them


When = float | datetime | None

#: Bucket widths (seconds) :func:`nice_width` picks from.
_WIDTHS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120,
           300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400,
           30 * 86400)
#: Units a rate or a count per bucket is given in: ``(seconds, name)``.
_UNITS = ((86400.0, "day"), (3600.0, "hour"), (60.0, "minute"), (1.0, "second"))


def agent_keys(rt: Runtime, agents: AgentSelection) -> list[tuple[str, str]]:
    """``(class name, name)`` of the agents a plot's ``agents=`` selects, in catalog order."""
    from ..core.agent import Agent
    from ..core.ref import AgentRef
    from ..errors import UsageError

    known = rt.agents()
    every = list(zip(known["class"], known["name"], strict=True))
    if agents is None:
        return every
    if isinstance(agents, (str, type, AgentRef)) or not isinstance(agents, Iterable):
        agents = [agents]
    keys: list[tuple[str, str]] = []
    for item in agents:
        if isinstance(item, AgentRef):
            found = [(item.class_name, item.name)]
        elif isinstance(item, type) and issubclass(item, Agent):
            found = [k for k in every if k[0] == item.__name__]
        elif isinstance(item, str) and "/" in item:
            class_name, _, name = item.partition("/")
            found = [(class_name, name)]
        elif isinstance(item, str):
            found = [k for k in every if k[0] == item]
        else:
            raise UsageError(
                f"agents= takes agent references, agent classes, class names or 'Class/name' "
                f"strings (or a list of them), not {item!r}"
            )
        keys.extend(k for k in found if k not in keys)
    return keys


def nice_width(lo: float, hi: float, most: int, smallest: float = 1.0) -> float:
    """The narrowest "nice" bucket width (seconds, at least *smallest*) that cuts the epoch
    seconds [lo, hi] into at most *most* buckets aligned on multiples of the width."""
    return next((w for w in _WIDTHS if w >= smallest and hi // w - lo // w < most),
                float(_WIDTHS[-1]))


def per_unit(width: float) -> tuple[float, str]:
    """The unit a count per *width* seconds reads best in: ``(seconds, "hour")`` for
    buckets of an hour or more (less than a day), and so on down to seconds."""
    return next(((s, n) for s, n in _UNITS if width >= s), _UNITS[-1])


def time_axis(ax: Axes, lo: float, hi: float, since: When, until: When) -> None:
    """UTC dates on the x axis, padded around [lo, hi] and clipped to since/until.

    The padding is a small share of the span (a second either side of a single instant), so
    a three-second run fills the axis instead of sitting in a minute of margin."""
    import matplotlib.dates as mdates

    pad = (hi - lo) * 0.04 if hi > lo else 1 / 86400
    left = datenum_one(since) if since is not None else lo - pad
    right = datenum_one(until) if until is not None else hi + pad
    ax.set_xlim(left, right)
    locator = mdates.AutoDateLocator(tz=timezone.utc)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    ax.set_xlabel("time (UTC)")


def datenum(column: pd.Series) -> Any:
    """matplotlib date numbers of a UTC timestamp column (a float array)."""
    import matplotlib.dates as mdates

    return mdates.date2num(column.dt.tz_convert(None).to_numpy())


def datenum_epoch(seconds: Any) -> Any:
    """matplotlib date numbers of epoch seconds (a number or an array)."""
    import matplotlib.dates as mdates

    return seconds / 86400.0 + mdates.date2num(datetime(1970, 1, 1, tzinfo=timezone.utc))


def datenum_one(value: float | datetime) -> float:
    import matplotlib.dates as mdates

    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(float(value), timezone.utc)
    elif value.tzinfo is None:
        value = value.astimezone()  # naive means local time, as in ref.history()
    return float(mdates.date2num(value))


def duration(seconds: float) -> str:
    """``0 s``, ``250 ms``, ``12 s``, ``4.5 min``, ``3.2 h``, ``2.1 d``."""
    size = abs(seconds)
    if size < 0.0005:
        return "0 s"
    if size < 1:
        return f"{seconds * 1000:.0f} ms"
    unit, scale = "d", 86400.0
    for name, factor, limit in (("s", 1.0, 60), ("min", 60.0, 3600), ("h", 3600.0, 86400)):
        if size < limit:
            unit, scale = name, factor
            break
    value = seconds / scale
    text = f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


# -- figures -------------------------------------------------------------------------------
def canvas(ax: Axes | None, rows: int) -> tuple[Figure, Axes]:
    """*ax* and its figure, or a new figure sized for *rows* rows and its axes."""
    if ax is not None:
        try:
            return cast("Figure", ax.get_figure(root=True)), ax  # (an Axes has a figure)
        except TypeError:  # matplotlib < 3.10 has no root=
            return ax.figure.figure, ax
    height = min(12.0, max(2.8, 1.6 + 0.42 * rows))
    fig = figure_class()(figsize=(10, height), layout="constrained")
    return fig, fig.add_subplot()


def say(ax: Axes, message: str, title: str) -> None:
    """An empty plot that says why it is empty."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center",
            fontsize="large", color="0.4", gid="empty")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, loc="left", fontsize="medium")


@functools.cache
def figure_class() -> type[Figure]:
    """A ``Figure`` that shows itself in notebooks without pyplot (made on first use)."""
    from matplotlib.figure import Figure

    class AgentbookFigure(Figure):
        """A matplotlib figure that renders itself as PNG in Jupyter."""

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", bbox_inches="tight")
            return buf.getvalue()

    AgentbookFigure.__module__ = __name__
    AgentbookFigure.__qualname__ = "AgentbookFigure"
    return AgentbookFigure


def filters(rt: Runtime, agents: AgentSelection, since: When,
             until: When) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions on the ``history`` view for ``agents=``, ``since=``, ``until=``."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if agents is not None:
        params["keys"] = [list(k) for k in agent_keys(rt, agents)]
        where.append("[agent, name] IN (SELECT unnest($keys::VARCHAR[][]))")
    if since is not None:
        params["since"] = epoch(since)
        where.append("ts >= to_timestamp($since)")
    if until is not None:
        params["until"] = epoch(until)
        where.append("ts < to_timestamp($until)")
    return where, params


def views(rt: Runtime) -> Any:
    """The runtime's DuckDB connection, its views caught up (once per figure)."""
    rt.analytics.catch_up()
    return rt.db


def epoch(value: float | datetime) -> float:
    """Epoch seconds of a number or a datetime (naive means local time, as in history())."""
    return value.timestamp() if isinstance(value, datetime) else float(value)
