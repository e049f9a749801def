"""``rt.plot``: matplotlib figures of what a runtime's agents did.

A face over committed data: every plot reads through layer-2 APIs (``rt.agents()``,
``ref.history()``), never an agent's store. Gathering and drawing are kept apart - each
plot gets its rows from one private function returning a DataFrame - so the data source
can move to the DuckDB views without touching the drawing.

matplotlib is imported only when a plot is drawn, and only ``matplotlib.figure.Figure``
is used, never ``pyplot``: figures don't pile up in pyplot's registry, nothing depends on
the backend, and a figure shows itself in a notebook (it has a ``_repr_png_``) even when
pyplot was never imported.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .runtime import Runtime

__all__ = ["Plots"]

#: Rows per ``history()`` page when gathering runs.
_PAGE = 1000
#: Up to this many agents, ``schedule()`` draws one row per agent and method.
_FEW_AGENTS = 5
#: Columns and dtypes of :func:`_scheduled_runs` (and of the DuckDB view that may replace it).
_RUN_COLUMNS = {"agent": "str", "name": "str", "method": "str", "due": "datetime64[ns, UTC]",
                "ts": "datetime64[ns, UTC]", "lateness_s": "float64", "outcome": "str"}

#: How each outcome of a scheduled run is drawn at the time it ran:
#: ``outcome: (marker, colour, hollow, size, legend text)``.
_OUTCOME_STYLE: dict[str, tuple[str, str, bool, float, str]] = {
    "ok": ("o", "tab:blue", False, 28, "ok"),
    "retry": ("x", "tab:orange", False, 46, "failed, retried"),
    "dead": ("X", "tab:red", False, 80, "failed, dead letter"),
    "skipped": ("o", "0.3", True, 36, "skipped (missed tick)"),
}
_OTHER_STYLE = ("d", "0.5", False, 30, "")
_GREY = "0.6"

AgentSelection = Any  # an AgentRef, an Agent class, "Class", "Class/name", or an iterable of them
When = float | datetime | None


class Plots:
    """Figures of what the agents of one runtime did (``rt.plot``).

    Every method returns a ``matplotlib.figure.Figure``; pass ``ax=`` to draw on axes of
    your own instead. Reads only what was committed; never waits for a running handler.

    Args:
        runtime: The runtime whose agents are plotted.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __repr__(self) -> str:
        return f"<agentbook plots of {self.runtime!r}: schedule()>"

    def schedule(
        self,
        agents: AgentSelection = None,
        ax: Axes | None = None,
        since: When = None,
        until: When = None,
    ) -> Figure:
        """Planned versus actual firing of scheduled and queued work.

        One row per ``Class.method`` (or per ``Class/name.method`` when at most five agents
        ran scheduled work). A grey tick marks when a run was due, a marker when it ran, and
        a grey line joins them, so late runs stand out. Markers: ok (blue dot), failed and
        retried (orange x), failed for good (red X, a dead letter), skipped because its tick
        was missed (hollow circle). The title gives the count and the median and 99th
        percentile lateness of the runs that ran (skipped ones excluded).

        Args:
            agents: Which agents: ``None`` for all; an ``AgentRef``, an agent class, a class
                name, ``"Class/name"``, or a list of these.
            ax: Axes to draw on; by default a new figure is made.
            since: Only runs that started at or after this time (epoch seconds or a datetime).
            until: Only runs that started before this time.

        Returns:
            The figure (``ax``'s figure when ``ax`` is given).

        Example:
            >>> rt.plot.schedule(agents=[rt.get(Reminders, "alice")])   # doctest: +SKIP
        """
        runs = _scheduled_runs(self.runtime, agents, since, until)
        labels = _row_labels(runs)
        fig, ax = _canvas(ax, rows=labels.nunique())
        if runs.empty:
            ranged = since is not None or until is not None
            _say(ax, "no scheduled runs in this time range" if ranged else "no scheduled runs yet",
                 "Scheduled runs")
            return fig
        _draw_schedule(ax, runs, labels, since, until)
        return fig


# -- data ----------------------------------------------------------------------------------
def _scheduled_runs(rt: Runtime, agents: AgentSelection, since: When, until: When) -> pd.DataFrame:
    """Every scheduled or queued run of the selected agents, oldest first.

    A run is a history row whose ``due`` is set: one per attempt (``ok``, ``retry``,
    ``dead``) or skipped tick (``skipped``). Reads pages of ``ref.history()`` only.

    Returns:
        A DataFrame with :data:`_RUN_COLUMNS`: ``due`` and ``ts`` are UTC timestamps,
        ``lateness_s`` is ``ts - due`` in seconds.
    """
    import pandas as pd

    frames = []
    for class_name, name in _agent_keys(rt, agents):
        ref = rt.get(class_name, name)
        before = None
        while True:
            page = ref.history(limit=_PAGE, before=before, since=since, until=until, failures=False)
            runs = page[page["due"].notna()]
            if not runs.empty:
                frames.append(runs[["agent", "name", "method", "due", "ts", "outcome"]])
            if len(page) < _PAGE:
                break
            before = int(page["version"].min())
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _RUN_COLUMNS.items()})
    runs = pd.concat(frames, ignore_index=True)
    runs["lateness_s"] = (runs["ts"] - runs["due"]).dt.total_seconds()
    runs = runs.sort_values(["ts", "due"], kind="stable", ignore_index=True)
    return runs[list(_RUN_COLUMNS)].astype(_RUN_COLUMNS)


def _agent_keys(rt: Runtime, agents: AgentSelection) -> list[tuple[str, str]]:
    """``(class name, name)`` of the agents a plot's ``agents=`` selects, in catalog order."""
    from .agent import Agent
    from .errors import UsageError
    from .ref import AgentRef

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


# -- drawing -------------------------------------------------------------------------------
def _row_labels(runs: pd.DataFrame) -> pd.Series:
    """The y-axis row of each run: ``Class.method``, or ``Class/name.method`` for few agents."""
    if runs[["agent", "name"]].drop_duplicates().shape[0] <= _FEW_AGENTS:
        return runs["agent"] + "/" + runs["name"] + "." + runs["method"]
    return runs["agent"] + "." + runs["method"]


def _draw_schedule(ax: Axes, runs: pd.DataFrame, labels: pd.Series, since: When,
                   until: When) -> None:
    """Draw :func:`_scheduled_runs` rows (not empty) on *ax*, one y row per label."""
    import numpy as np
    from matplotlib.collections import LineCollection

    rows = sorted(labels.unique())
    y = labels.map({label: i for i, label in enumerate(rows)}).to_numpy(dtype=float)
    due, ts = _datenum(runs["due"]), _datenum(runs["ts"])

    segments = np.stack([np.column_stack([due, y]), np.column_stack([ts, y])], axis=1)
    lines = LineCollection(segments, colors=_GREY, linewidths=1.4, zorder=1, label="due → ran",
                           gid="lateness")
    ax.add_collection(lines, autolim=False)
    ax.scatter(due, y, marker="|", s=110, color=_GREY, linewidths=1.4, zorder=2,
               label="due", gid="planned")
    outcomes = runs["outcome"].to_numpy()
    for outcome in [*_OUTCOME_STYLE, *sorted(set(outcomes) - set(_OUTCOME_STYLE))]:
        hit = outcomes == outcome
        if not hit.any():
            continue
        marker, colour, hollow, size, text = _OUTCOME_STYLE.get(outcome, _OTHER_STYLE)
        paint = {"facecolors": "none", "edgecolors": colour} if hollow else {"color": colour}
        ax.scatter(ts[hit], y[hit], marker=marker, s=size, zorder=3, gid=outcome, linewidths=1.3,
                   label=f"{text or outcome} ({int(hit.sum())})", **paint)

    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    _time_axis(ax, min(due.min(), ts.min()), max(due.max(), ts.max()), since, until)
    ax.grid(axis="x", color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0,
              fontsize="small")

    ran = runs.loc[runs["outcome"] != "skipped", "lateness_s"]
    if ran.empty:
        lateness = "nothing ran"
    else:
        p50, p99 = ran.quantile(0.5), ran.quantile(0.99)
        lateness = f"lateness p50 {_duration(p50)}, p99 {_duration(p99)}"
    count = f"{len(runs)} scheduled run{'s' if len(runs) != 1 else ''}"
    ax.set_title(f"{count} · {lateness}", loc="left", fontsize="medium")


def _time_axis(ax: Axes, lo: float, hi: float, since: When, until: When) -> None:
    """UTC dates on the x axis, padded around [lo, hi] and clipped to since/until."""
    import matplotlib.dates as mdates

    pad = max((hi - lo) * 0.04, 60 / 86400)  # at least a minute either side
    left = _datenum_one(since) if since is not None else lo - pad
    right = _datenum_one(until) if until is not None else hi + pad
    ax.set_xlim(left, right)
    locator = mdates.AutoDateLocator(tz=timezone.utc)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    ax.set_xlabel("time (UTC)")


def _datenum(column: pd.Series) -> Any:
    """matplotlib date numbers of a UTC timestamp column (a float array)."""
    import matplotlib.dates as mdates

    return mdates.date2num(column.dt.tz_convert(None).to_numpy())


def _datenum_one(value: float | datetime) -> float:
    import matplotlib.dates as mdates

    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(float(value), timezone.utc)
    elif value.tzinfo is None:
        value = value.astimezone()  # naive means local time, as in ref.history()
    return float(mdates.date2num(value))


def _duration(seconds: float) -> str:
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
def _canvas(ax: Axes | None, rows: int) -> tuple[Figure, Axes]:
    """*ax* and its figure, or a new figure sized for *rows* rows and its axes."""
    if ax is not None:
        try:
            return ax.get_figure(root=True), ax  # type: ignore[call-arg, return-value]
        except TypeError:  # matplotlib < 3.10 has no root=
            return ax.figure.figure, ax  # type: ignore[union-attr, return-value]
    height = min(12.0, max(2.8, 1.6 + 0.42 * rows))
    fig = _figure_class()(figsize=(10, height), layout="constrained")
    return fig, fig.add_subplot()


def _say(ax: Axes, message: str, title: str) -> None:
    """An empty plot that says why it is empty."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center",
            fontsize="large", color="0.4", gid="empty")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, loc="left", fontsize="medium")


@functools.cache
def _figure_class() -> type[Figure]:
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


def __getattr__(name: str) -> Any:
    # ``agentbook.plots.AgentbookFigure`` resolves lazily, so figures pickle and unpickle.
    if name == "AgentbookFigure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
