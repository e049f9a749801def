"""``rt.plot``: matplotlib figures of what a runtime's agents did.

A face over committed data, never an agent's store: every figure reads the DuckDB views
(``rt.analytics``), so a thousand agents or a million history rows cost a query, not a
store opened per agent or a million Python objects. Gathering and drawing are kept apart
(each figure gets its rows from private functions returning DataFrames), so tests can
check the data and the artists separately. ``latency()``, ``throughput()``,
``queue_wait()`` and ``workflows(by="step")`` are gathered and drawn in
:mod:`agentbook.analytics.plots_sql`, ``workflows()`` (one row per run) in
:mod:`agentbook.analytics.plots_workflows`.

matplotlib is imported only when a plot is drawn, and only ``matplotlib.figure.Figure``
is used, never ``pyplot``: figures don't pile up in pyplot's registry, nothing depends on
the backend, and a figure shows itself in a notebook (it has a ``_repr_png_``) even when
pyplot was never imported.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..core.runtime import Runtime

from .plotkit import (
    AgentSelection,
    When,
    canvas,
    datenum_epoch,
    duration,
    figure_class,
    filters,
    nice_width,
    per_unit,
    say,
    time_axis,
    views,
)

__all__ = ["Plots"]

#: Up to this many agents, ``schedule()`` draws one row per agent and method.
_FEW_AGENTS = 5
#: Columns and dtypes of :func:`_scheduled_runs`.
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
#: ``schedule()`` cuts its time axis into at most this many buckets (of a nice width).
_BUCKETS = 150
#: A row with more ok runs than this in one bucket draws them as bars (runs per bucket).
_CROWDED = 3
#: Retried attempts sit this far above a row's centre line, dead letters this far below.
_LANE = 0.27
#: The bars of a crowded row reach this far either side of its centre line.
_STRIP = 0.2


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
        return (f"<agentbook plots of {self.runtime!r}: latency(), throughput(), schedule(), "
                "queue_wait(), workflows()>")

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
        retried (orange x, just above the row's line), failed for good (red X, a dead
        letter, just below it), skipped because its tick was missed (hollow circle). Where
        several failures of one kind fall in one bucket of time (the axis is cut into at
        most 150), their count is written beside them, so they show at any zoom.

        A row with more than three ok runs in one bucket (hundreds of runs over a week, or
        many agents of one class) draws them as bars instead of markers piled into a solid
        line: runs per bucket, on one scale for every such row (the legend gives the
        bucket's width and the count of the tallest bar). There, only runs late by half a
        bucket or more keep their marker and line.

        The title gives the count and the median, 99th percentile and worst lateness of the
        runs that ran (skipped ones excluded), or says that every run started when it was
        due. The time axis fits the runs, from seconds to months. Steps replayed on a fork
        are not runs of their own and are left out.

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
        fig, ax = canvas(ax, rows=labels.nunique())
        if runs.empty:
            ranged = since is not None or until is not None
            say(ax, "no scheduled runs in this time range" if ranged else "no scheduled runs yet",
                 "Scheduled runs")
            return fig
        _draw_schedule(ax, runs, labels, since, until)
        return fig

    def latency(
        self,
        by: str = "method",
        agents: AgentSelection = None,
        ax: Axes | None = None,
        since: When = None,
        until: When = None,
        top: int = 12,
    ) -> Figure:
        """How long handlers took: the distribution and p50 / p95 / p99, per group.

        One row per group, slowest (by p99) on top: a histogram of durations on a log
        scale, with markers at the median (white dot), p95 (orange square) and p99 (red
        diamond); the numbers are written beside each row. Failed runs count (they took
        time too); skipped scheduled ticks and forks don't (no handler ran). Durations under
        a microsecond have no honest place on a log scale: they are counted in a grey bar
        labelled ``< 1 µs``, left of a break in the axis, with their share of the row.

        Args:
            by: Group by ``"method"`` (``Class.method``, the default), ``"agent"``
                (``Class/name``), ``"class"``, ``"name"``, ``"source"`` (``cell``,
                ``schedule``, ``queue``, ``agent`` ...) or ``"outcome"``.
            agents: Which agents, as in :meth:`schedule`.
            ax: Axes to draw on; by default a new figure is made.
            since: Only runs that started at or after this time (epoch seconds or a datetime).
            until: Only runs that started before this time.
            top: Draw at most this many groups, the slowest by p99 (the title says how
                many there were).

        Returns:
            The figure (``ax``'s figure when ``ax`` is given).

        Example:
            >>> rt.plot.latency(by="agent", top=10)   # doctest: +SKIP
        """
        from .plots_sql import draw_latency

        return draw_latency(self.runtime, by, agents, ax, since, until, top)

    def throughput(
        self,
        agents: AgentSelection = None,
        ax: Axes | None = None,
        since: When = None,
        until: When = None,
        every: float | timedelta | None = None,
    ) -> Figure:
        """Versions committed per unit of time, one line per agent class.

        Time is cut into equal bins (a "nice" width giving at most 60 of them, or
        ``every``); each line is a class's versions in a bin divided by the bin's width, in
        the unit the width reads best in: per second for bins under a minute, per minute
        under an hour, per hour under a day, per day beyond (a simulated week, in bins of
        three hours, reads "versions per hour"). Up to eight classes are drawn, the busiest
        first; the others are summed as "other".

        Args:
            agents: Which agents, as in :meth:`schedule`.
            ax: Axes to draw on; by default a new figure is made.
            since: Only versions committed at or after this time.
            until: Only versions committed before this time.
            every: The bin width, in seconds or as a ``timedelta``.

        Returns:
            The figure (``ax``'s figure when ``ax`` is given).
        """
        from .plots_sql import draw_throughput

        return draw_throughput(self.runtime, agents, ax, since, until, every)

    def queue_wait(
        self,
        by: str = "method",
        agents: AgentSelection = None,
        ax: Axes | None = None,
        since: When = None,
        until: When = None,
        retries: bool = False,
        top: int = 12,
    ) -> Figure:
        """How long queued work (``self.queue(...)``) waited before it started.

        The wait of a queued item is ``ts - due`` of its history row: from the moment the
        handler that queued it ran (``due``) to the moment the item's own run started
        (``ts``), on the runtime's clock. Drawn like :meth:`latency`; waits of zero (all first
        attempts, on a virtual clock that stands still) get a grey bar of their own at ``0``.

        Only queued work is covered: a plain message's wait in the mailbox is not recorded.

        Args:
            by: Group as in :meth:`latency` (default ``Class.method``).
            agents: Which agents, as in :meth:`schedule`.
            ax: Axes to draw on; by default a new figure is made.
            since: Only runs that started at or after this time.
            until: Only runs that started before this time.
            retries: Also count retried attempts (their wait runs from when the item was
                first queued, so it includes the backoff). By default only first attempts.
            top: Draw at most this many groups, the longest waits (p99) first.

        Returns:
            The figure (``ax``'s figure when ``ax`` is given).
        """
        from .plots_sql import draw_queue_wait

        return draw_queue_wait(self.runtime, by, agents, ax, since, until, retries, top)

    def workflows(
        self,
        by: str = "run",
        agents: AgentSelection = None,
        method: str | list[str] | None = None,
        ax: Axes | None = None,
        since: When = None,
        until: When = None,
        top: int = 30,
    ) -> Figure:
        """Where the time of workflow runs goes, and which runs wait for a person.

        ``by="run"`` (the default): one row per run, the oldest on top, on the runtime's
        clock. A grey line spans the run (to now while it goes on); a bar per step from its
        start to its end, coloured by kind: ``do`` (blue, a diamond at its end: a step that
        ran may take no time), ``sleep`` (grey), waiting for an event (purple), waiting for a
        person (orange). A step still waiting is hatched and reaches *now* (a dotted line).
        A red X marks a step that failed for good, an orange x one that was retried (with
        how often). A run waiting for a person has an orange label saying for how long. The
        legend gives each kind's share of the time all selected runs spent in steps; the
        title how many runs wait for a person, and the longest wait.

        ``by="step"`` or ``"kind"``: the distribution of each step's time (per
        ``Class.method · step name``, or per ``Class.method · kind``), drawn like
        :meth:`latency`: a step still waiting counts until now.

        Args:
            by: ``"run"``, ``"step"`` or ``"kind"``.
            agents: Which agents, as in :meth:`schedule`.
            method: Only runs of this workflow method (a name, or a list of names).
            ax: Axes to draw on; by default a new figure is made.
            since: Only runs (``by="run"``) or steps that started at or after this time.
            until: Only runs or steps that started before this time.
            top: Draw at most this many rows. For runs: those waiting for a person first
                (the longest wait first), then the other unfinished ones, then the newest;
                for steps, the longest p99. The title says how many there were.

        Returns:
            The figure (``ax``'s figure when ``ax`` is given).

        Example:
            >>> rt.plot.workflows(agents=desk, method="refund")   # doctest: +SKIP
        """
        if by == "run":
            from .plots_workflows import draw_workflow_runs

            return draw_workflow_runs(self.runtime, agents, method, ax, since, until, top)
        from .plots_sql import draw_workflow_steps

        return draw_workflow_steps(self.runtime, by, agents, method, ax, since, until, top)


# -- data ----------------------------------------------------------------------------------
def _scheduled_runs(rt: Runtime, agents: AgentSelection, since: When, until: When) -> pd.DataFrame:
    """Every scheduled or queued run of the selected agents, oldest first.

    A run is a history row whose ``due`` is set: one per attempt (``ok``, ``retry``,
    ``dead``) or skipped tick (``skipped``); replayed steps (on a fork, by ``replay`` or
    ``sweep``) are left out. Read from the DuckDB ``history`` view: one
    query, however many agents (paging each agent's ``ref.history()`` took seconds for
    a thousand of them).

    Returns:
        A DataFrame with :data:`_RUN_COLUMNS`: ``due`` and ``ts`` are UTC timestamps,
        ``lateness_s`` is ``ts - due`` in seconds.
    """

    where, params = filters(rt, agents, since, until)
    # a replayed step re-enacts a run on a fork (at the time it first ran): not a run of its own
    conditions = " AND ".join(["due IS NOT NULL", "version IS NOT NULL",
                               "coalesce(source, '') NOT LIKE 'replay:%'", *where])
    runs = views(rt).execute(
        f"SELECT agent, name, method, due, ts, outcome FROM history WHERE {conditions}"
        " ORDER BY ts, due, agent, name, version", params).df()
    runs["lateness_s"] = (runs["ts"] - runs["due"]).dt.total_seconds()
    return runs[list(_RUN_COLUMNS)].astype(_RUN_COLUMNS)


# -- drawing -------------------------------------------------------------------------------
def _row_labels(runs: pd.DataFrame) -> pd.Series:
    """The y-axis row of each run: ``Class.method``, or ``Class/name.method`` for few agents."""
    if runs[["agent", "name"]].drop_duplicates().shape[0] <= _FEW_AGENTS:
        return runs["agent"] + "/" + runs["name"] + "." + runs["method"]
    return runs["agent"] + "." + runs["method"]


def _draw_schedule(ax: Axes, runs: pd.DataFrame, labels: pd.Series, since: When,
                   until: When) -> None:
    """Draw :func:`_scheduled_runs` rows (not empty) on *ax*, one y row per label.

    Each row has three lanes: runs that went through (ok, or skipped) on its centre line,
    retried attempts just above it and dead letters just below, so a failure is never
    hidden under another marker. Where failures of one kind crowd into one bucket of time
    (the axis is cut into at most :data:`_BUCKETS`), their count is written beside them.
    A row whose ok runs crowd (more than :data:`_CROWDED` in one bucket) draws them as a
    strip of bars, runs per bucket (one scale for every such row), instead of markers stacked
    into a solid line; there
    only runs that were visibly late (by half a bucket or more) keep their marker, due tick
    and lateness line.
    """
    import numpy as np
    from matplotlib.collections import LineCollection

    rows = sorted(labels.unique())
    row = labels.map({label: i for i, label in enumerate(rows)}).to_numpy(dtype=int)
    due_s = runs["due"].astype("int64").to_numpy() / 1e9
    ts_s = runs["ts"].astype("int64").to_numpy() / 1e9
    lo, hi = float(min(due_s.min(), ts_s.min())), float(max(due_s.max(), ts_s.max()))
    width = nice_width(lo, hi, _BUCKETS, smallest=0.001)
    bucket = np.floor(ts_s / width).astype(np.int64)
    outcomes = runs["outcome"].to_numpy()
    crowded = _crowded_rows(row, bucket, outcomes == "ok")
    y = row + np.select([outcomes == "retry", outcomes == "dead"], [-_LANE, _LANE], 0.0)
    late = runs["lateness_s"].to_numpy() >= width / 2
    binned = (outcomes == "ok") & np.isin(row, crowded) & ~late  # drawn as bars, not markers
    due, ts = datenum_epoch(due_s), datenum_epoch(ts_s)

    segments = np.stack([np.column_stack([due, y]), np.column_stack([ts, y])], axis=1)[~binned]
    lines = LineCollection(list(segments), colors=_GREY, linewidths=1.4, zorder=1, gid="lateness",
                           label="due → ran" if len(segments) else None)
    ax.add_collection(lines, autolim=False)
    ax.scatter(due[~binned], y[~binned], marker="|", s=110, color=_GREY, linewidths=1.4, zorder=2,
               label="due" if len(segments) else None, gid="planned")
    if crowded:
        _draw_strips(ax, ts_s[binned], row[binned], crowded, width)
    markers = ~binned
    for outcome in [*_OUTCOME_STYLE, *sorted(set(outcomes) - set(_OUTCOME_STYLE))]:
        hit = outcomes == outcome
        if not hit.any():
            continue
        marker, colour, hollow, size, text = _OUTCOME_STYLE.get(outcome, _OTHER_STYLE)
        paint: dict[str, Any] = ({"facecolors": "none", "edgecolors": colour} if hollow
                                 else {"color": colour})
        drawn = hit & markers
        ax.scatter(ts[drawn], y[drawn], marker=marker, s=size, zorder=3, gid=outcome,
                   linewidths=1.3, label=f"{text or outcome} ({int(hit.sum())})", **paint)
        if outcome in ("retry", "dead"):
            _count_crowds(ax, ts_s[hit], row[hit], y[hit], bucket[hit], width, colour, outcome)

    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    time_axis(ax, float(min(due.min(), ts.min())), float(max(due.max(), ts.max())), since, until)
    ax.grid(axis="x", color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0,
              fontsize="small")
    ax.set_title(_schedule_title(runs), loc="left", fontsize="medium")


def _crowded_rows(row: Any, bucket: Any, ok: Any) -> list[int]:
    """The rows with more than :data:`_CROWDED` ok runs in one bucket of time."""
    import numpy as np

    if not ok.any():
        return []
    pairs, counts = np.unique(np.column_stack([row[ok], bucket[ok]]), axis=0, return_counts=True)
    return sorted({int(r) for r in pairs[counts > _CROWDED, 0]})


def _draw_strips(ax: Axes, ts_s: Any, row: Any, crowded: list[int], width: float) -> None:
    """Runs per bucket as bars on each crowded row, on one scale for all of them: the tallest
    bar is the busiest bucket of any row, its count in the legend."""
    import numpy as np

    unit, name = per_unit(width)
    per = name if unit == width else f"{duration(width)}"
    strips = []
    for i in crowded:
        times = ts_s[row == i]
        if times.size:
            first, last = np.floor(times.min() / width), np.floor(times.max() / width)
            edges = np.arange(first, last + 2) * width
            strips.append((i, edges, np.histogram(times, bins=edges)[0]))
    tallest = max((int(counts.max()) for _, _, counts in strips), default=1)
    for n, (i, edges, counts) in enumerate(strips):
        base = i + _STRIP
        share = np.where(counts > 0, np.maximum(counts / tallest, 0.08), 0.0)  # 1 run shows
        ax.stairs(base - share * 2 * _STRIP, datenum_epoch(edges), baseline=base,
                  fill=True, color="tab:blue", alpha=0.55, linewidth=0, zorder=2,
                  gid="runs per bucket",
                  label=f"ok runs per {per} (bars; the tallest: {tallest:,})" if n == 0 else None)


def _count_crowds(ax: Axes, ts_s: Any, row: Any, y: Any, bucket: Any, width: float, colour: str,
                  outcome: str) -> None:
    """Beside each bucket holding several failures of one kind on one row, how many (in the
    failures' colour)."""
    import numpy as np

    _, first, counts = np.unique(np.column_stack([row, bucket]), axis=0, return_index=True,
                                    return_counts=True)
    for at, n in zip(first, counts, strict=True):
        if n > 1:
            ax.annotate(f"{n}", (float(datenum_epoch(ts_s[at])), float(y[at])),
                        xytext=(6, 0), textcoords="offset points", va="center",
                        fontsize="x-small", color=colour, gid=f"{outcome} count")


def _schedule_title(runs: pd.DataFrame) -> str:
    """How many runs, and how late the ones that ran were: p50, p99 and the worst (or that
    every one started when it was due)."""
    ran = runs.loc[runs["outcome"] != "skipped", "lateness_s"]
    if ran.empty:
        lateness = "nothing ran"
    elif ran.max() == 0:
        lateness = "every run started when it was due"
    else:
        p50, p99, worst = ran.quantile(0.5), ran.quantile(0.99), ran.max()
        lateness = f"lateness p50 {duration(p50)}, p99 {duration(p99)}"
        if duration(worst) != duration(p99):  # a few late runs hide under the percentiles
            lateness += f", max {duration(worst)}"
    count = f"{len(runs):,} scheduled run{'s' if len(runs) != 1 else ''}"
    return f"{count} · {lateness}"


def __getattr__(name: str) -> Any:
    # ``agentbook.plots.AgentbookFigure`` resolves lazily, so figures pickle and unpickle.
    if name == "AgentbookFigure":
        return figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
