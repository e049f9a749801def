"""The figures of ``rt.plot`` that aggregate in the DuckDB views: latency, throughput, queue wait,
and how long workflow steps took (``workflows(by="step")``).

:class:`agentbook.plots.Plots` holds their signatures and documentation; this module
gathers (in DuckDB: percentiles, histograms and time bins are computed there, so a million
history rows cost a query, not a million Python objects) and draws, sharing the canvas,
time axis and wording helpers of :mod:`agentbook.plots`.

Distributions are drawn on a log scale, one row per group with the worst p99 on top: a
histogram "ridge" of the values, markers at p50 / p95 / p99 and the numbers beside the
row. A value of zero has no place on a log scale; zeros (a queued item that started at the
very instant it was queued, as on a virtual clock) get a grey bar of their own, left of
the other values past a break in the axis, labelled ``0`` and with their share of the row
written on it. Handler durations are floored the same way: a run under a microsecond was
not measured, only bounded, so it joins a bar labelled ``< 1 µs`` instead of stretching the
axis over decades nothing was measured in. The bar and the histogram are each scaled to the
row's height: compare their shapes, and read the counts from the numbers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UsageError
from .plotkit import (
    AgentSelection,
    When,
    canvas,
    duration,
    filters,
    nice_width,
    per_unit,
    say,
    time_axis,
    views,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..core.runtime import Runtime

__all__ = ["draw_latency", "draw_queue_wait", "draw_throughput", "draw_workflow_steps"]

#: Log-spaced bins of each distribution.
_BINS = 48
#: What ``by=`` may group on, as SQL over the ``history`` view.
_GROUPS = {"method": "agent || '.' || method", "agent": "agent || '/' || name", "class": "agent",
           "name": "name", "source": "split_part(source, ':', 1)", "outcome": "outcome"}
_PLURAL = {"method": "methods", "agent": "agents", "class": "classes", "name": "names",
           "source": "sources", "outcome": "outcomes", "step": "steps", "kind": "kinds"}
#: What ``rt.plot.workflows(by=)`` may group steps on, as SQL over its rows.
_STEP_GROUPS = {"step": "agent || '.' || method || ' · ' || step",
                "kind": "agent || '.' || method || ' · ' || kind"}
#: Percentile markers: ``gid: (marker, face colour, edge colour, size)``.
_MARKS = {"p50": ("o", "white", "black", 34), "p95": ("s", "tab:orange", "tab:orange", 26),
          "p99": ("D", "tab:red", "tab:red", 26)}
#: ``throughput()`` picks the narrowest nice bin width (of a second at least) giving at most
#: this many bins.
_MAX_BARS = 60
#: How a rate's unit is written after a slash.
_SHORT_UNITS = {"second": "s", "minute": "min", "hour": "h", "day": "d"}
#: ``throughput()`` draws at most this many lines; further classes are summed as "other".
_MAX_LINES = 8
#: Queued runs with their attempt number (a retry keeps the occurrence id of the first).
_QUEUED = ("(SELECT *, row_number() OVER (PARTITION BY agent, name, occurrence ORDER BY ts,"
           " version) AS attempt FROM history WHERE source LIKE 'queue:%' AND due IS NOT NULL"
           " AND version IS NOT NULL)")
#: The zero bar sits this far left of the first bin, as a fraction of the axis' decades.
_ZERO_GAP = 0.1
#: Handler durations under this (seconds) are drawn as "under it", not on the log scale.
_LATENCY_FLOOR = 1e-6


# -- the figures --------------------------------------------------------------------------------
def draw_latency(rt: Runtime, by: str, agents: AgentSelection, ax: Axes | None, since: When,
                 until: When, top: int) -> Figure:
    """:meth:`agentbook.plots.Plots.latency`."""
    where, params = filters(rt, agents, since, until)
    # a skipped tick ran nothing, and a fork's version copies its parent's: no handler ran
    where += ["duration_ms IS NOT NULL", "outcome <> 'skipped'", "source NOT LIKE 'fork:%'"]
    dist = _distribution(rt, "duration_ms / 1000.0", _group_sql(by), where, params, top,
                         floor=_LATENCY_FLOOR)
    return _draw(ax, dist, f"Handler duration by {by}", "duration of one run (log scale)",
                 "handler runs", by, top, since, until)


def draw_queue_wait(rt: Runtime, by: str, agents: AgentSelection, ax: Axes | None, since: When,
                    until: When, retries: bool, top: int) -> Figure:
    """:meth:`agentbook.plots.Plots.queue_wait`."""
    where, params = filters(rt, agents, since, until)
    if not retries:
        where.append("attempt = 1")
    dist = _distribution(rt, "lateness_s", _group_sql(by), where, params, top, source=_QUEUED)
    title = "Queue wait" + (", every attempt," if retries else "") + f" by {by}"
    return _draw(ax, dist, title, "from queued to started (log scale)", "queued runs", by, top,
                 since, until)


def draw_throughput(rt: Runtime, agents: AgentSelection, ax: Axes | None, since: When,
                    until: When, every: float | timedelta | None) -> Figure:
    """:meth:`agentbook.plots.Plots.throughput`."""
    where, params = filters(rt, agents, since, until)
    rates, width = _throughput(rt, where, params, None if every is None else _seconds(every))
    fig, ax = canvas(ax, rows=6)
    if rates.empty:
        say(ax, _nothing("versions", since, until), "Versions committed")
        return fig
    _draw_throughput(ax, rates, width, since, until)
    return fig


def draw_workflow_steps(rt: Runtime, by: str, agents: AgentSelection, method: Any,
                        ax: Axes | None, since: When, until: When, top: int) -> Figure:
    """:meth:`agentbook.analytics.plots.Plots.workflows` with ``by="step"`` or ``"kind"``."""
    from .plots_workflows import ENDED, method_filter

    if by not in _STEP_GROUPS:
        raise UsageError(f"by= takes 'run', {', '.join(map(repr, _STEP_GROUPS))}, not {by!r}")
    where, params = filters(rt, agents, since, until)
    method_filter(method, where, params)
    params["now"] = rt.clock.now()
    # a step still waiting counts until now (or until its run ended, if it did)
    steps = ("(SELECT s.agent, s.name, w.method, s.step, s.kind, s.started AS ts,"
             " coalesce(epoch(s.ended), CASE WHEN w.status IN"
             f" ({ENDED}) THEN epoch(w.updated) ELSE $now END) - epoch(s.started) AS seconds"
             " FROM workflow_steps s JOIN workflows w"
             " ON w.agent = s.agent AND w.name = s.name AND w.id = s.run)")
    dist = _distribution(rt, "seconds", _STEP_GROUPS[by], where, params, top, source=steps)
    return _draw(ax, dist, f"Workflow step time by {by}",
                 "from a step's start to its end, or to now while it waits (log scale)",
                 "workflow steps", by, top, since, until, noun="step")


def _draw(ax: Axes | None, dist: _Distribution, title: str, xlabel: str, what: str, by: str,
          top: int, since: When, until: When, noun: str = "run") -> Figure:
    fig, ax = canvas(ax, rows=len(dist.stats))
    if dist.stats.empty:
        say(ax, _nothing(what, since, until), title)
        return fig
    _draw_distribution(ax, dist, xlabel)
    shown = ""
    if dist.groups > len(dist.stats):
        shown = f" · the {len(dist.stats)} highest p99 of {dist.groups:,} {_PLURAL[by]}"
    ax.set_title(f"{title} · {_count(dist.rows, noun)}{shown}", loc="left", fontsize="medium")
    return fig


# -- data --------------------------------------------------------------------------------------
class _Distribution(NamedTuple):
    """A value's distribution per group, in seconds (see :func:`_distribution`)."""

    stats: pd.DataFrame  #: label, n, p50, p95, p99: the groups drawn, highest p99 first
    hist: np.ndarray  #: positive values per (group, bin), shape (len(stats), _BINS)
    zeros: np.ndarray  #: values of zero (or less) per group
    edges: np.ndarray  #: the bins' edges, log-spaced
    rows: int  #: values counted in every group, drawn or not
    groups: int  #: groups in all
    floor: float  #: values under it (and zeros) are counted in ``zeros``, not binned


def _group_sql(by: str) -> str:
    if by not in _GROUPS:
        raise UsageError(f"by= takes one of {', '.join(map(repr, _GROUPS))}, not {by!r}")
    return _GROUPS[by]


def _distribution(rt: Runtime, value: str, group: str, where: list[str], params: dict[str, Any],
                  top: int, source: str = "history", floor: float = 0.0) -> _Distribution:
    """Percentiles and a log-spaced histogram of *value* (seconds) per *group*, in DuckDB.

    Keeps the *top* groups with the highest p99. Percentiles are DuckDB's ``quantile_cont``
    (linear interpolation, as ``numpy.quantile``) of the values, zeros included; the bins
    cover the positive values from *floor* up, from the decade below the smallest to the
    largest. Zeros and values under *floor* are counted apart.
    """
    import numpy as np

    if top < 1:
        raise UsageError(f"top= must be at least 1, not {top!r}")
    db = views(rt)
    conditions = " AND ".join([f"{value} IS NOT NULL", *where])
    rows = f"SELECT {group} AS label, {value} AS v FROM {source} WHERE {conditions}"
    measured = f"v > 0 AND v >= {float(floor)!r}"
    stats = db.execute(
        "SELECT label, count(*) AS n, quantile_cont(v, 0.5) AS p50, quantile_cont(v, 0.95) AS p95,"
        f" quantile_cont(v, 0.99) AS p99, min(v) FILTER (WHERE {measured}) AS lo, max(v) AS hi,"
        f" count(*) FILTER (WHERE NOT ({measured})) AS zeros, count(*) OVER () AS groups,"
        f" sum(count(*)) OVER () AS total FROM ({rows}) GROUP BY label"
        f" ORDER BY p99 DESC, label LIMIT {int(top)}", params).df()
    if stats.empty:
        return _Distribution(stats, np.zeros((0, _BINS)), np.zeros(0),
                             np.geomspace(1e-3, 1e-2, _BINS + 1), 0, 0, floor)
    lo, hi = stats["lo"].min(), stats["hi"].max()
    # lo is NaN: only zeros (or values under the floor)
    left = max(1e-3, floor) if lo != lo else 10.0 ** np.floor(np.log10(lo))
    right = max(float(hi), left * 10) * (1 + 1e-9)
    edges = np.geomspace(left, right, _BINS + 1)
    binned = db.execute(
        f"SELECT label, least(CAST(floor((log10(v) - $l0) / $step) AS BIGINT), {_BINS - 1})"
        f" AS bin, count(*) AS n FROM ({rows}) WHERE {measured}"
        " AND label IN (SELECT unnest($labels::VARCHAR[])) GROUP BY ALL",
        {**params, "l0": float(np.log10(left)),
         "step": float((np.log10(right) - np.log10(left)) / _BINS),
         "labels": stats["label"].astype(str).tolist()}).df()
    hist = np.zeros((len(stats), _BINS))
    index = {str(label): i for i, label in enumerate(stats["label"])}
    for label, b, n in binned.itertuples(index=False):
        hist[index[str(label)], max(int(b), 0)] += n
    return _Distribution(stats[["label", "n", "p50", "p95", "p99"]].astype({"label": str}), hist,
                         stats["zeros"].to_numpy(dtype=float), edges,
                         int(stats["total"].iloc[0]), int(stats["groups"].iloc[0]), floor)


def _throughput(rt: Runtime, where: list[str], params: dict[str, Any],
                width: float | None) -> tuple[pd.DataFrame, float]:
    """Versions per second per agent class, in bins of *width* seconds (chosen if ``None``).

    Returns:
        The rates: indexed by each bin's start (epoch seconds; every bin from the first to
        the last, empty ones 0), one column per class, busiest first, those past
        :data:`_MAX_LINES` summed as ``other``. And the width.
    """
    import numpy as np
    import pandas as pd

    db = views(rt)
    cond = " AND ".join(["version IS NOT NULL", *where])
    lo, hi = db.execute(f"SELECT min(epoch(ts)), max(epoch(ts)) FROM history WHERE {cond}",
                        params).fetchone()
    if lo is None:
        return pd.DataFrame(), width or 1.0
    if width is None:
        width = nice_width(lo, hi, _MAX_BARS)
    counts = db.execute(
        "SELECT agent, CAST(floor(epoch(ts) / $width) AS BIGINT) AS bin, count(*) AS n"
        f" FROM history WHERE {cond} GROUP BY ALL", {**params, "width": float(width)}).df()
    table = counts.pivot_table(index="bin", columns="agent", values="n", aggfunc="sum",
                               fill_value=0)
    table = table.reindex(np.arange(table.index.min(), table.index.max() + 1), fill_value=0)
    table = table[table.sum().sort_values(ascending=False, kind="stable").index]
    if table.shape[1] > _MAX_LINES:
        rest = table.iloc[:, _MAX_LINES - 1:].sum(axis=1)
        table = table.iloc[:, : _MAX_LINES - 1].assign(other=rest)
    table.index = table.index.astype("float64") * width
    table.columns = [str(c) for c in table.columns]
    return table.astype("float64") / width, float(width)


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise UsageError(f"every= must be a positive number of seconds, not {value!r}")
    return seconds


# -- drawing -----------------------------------------------------------------------------------
def _draw_distribution(ax: Axes, dist: _Distribution, xlabel: str) -> None:
    """One row per group (highest p99 on top): histogram ridge, zero bar, p50/p95/p99."""
    import matplotlib.ticker as mticker
    import numpy as np
    from matplotlib.transforms import blended_transform_factory

    stats, n = dist.stats, len(dist.stats)
    left, right = dist.edges[0], dist.edges[-1]
    has_zeros = bool(dist.zeros.any())
    gap = 10 ** (_ZERO_GAP * max(np.log10(right / left), 1.0))  # as a factor
    zero = left / gap
    for i, counts in enumerate(dist.hist):
        base = i + 0.4
        ax.stairs(base - counts * 0.8 / max(counts.max(), 1), dist.edges, baseline=base,
                  fill=True, color="tab:blue", alpha=0.3, linewidth=0, gid="hist")
        if has_zeros:  # its own bar, full height when there are any, with their share
            share = dist.zeros[i] / int(stats["n"].iloc[i])
            ax.stairs([base - 0.8 * (share > 0)], [zero / gap ** 0.3, zero * gap ** 0.3],
                      baseline=base, fill=True, color="0.55", alpha=0.45, linewidth=0, gid="zeros")
            if share:
                ax.text(zero, base - 0.8, f"{share:.0%}", ha="center", va="bottom",
                        fontsize="x-small", color="0.3", gid="zero share")
    for gid, (marker, face, edge, size) in _MARKS.items():
        values = stats[gid].to_numpy(dtype=float)
        measured = (values > 0) & (values >= dist.floor)
        ax.scatter(np.where(measured, values, zero), np.arange(n, dtype=float), marker=marker,
                   s=size, facecolors=face, edgecolors=edge, linewidths=1.2, zorder=3, gid=gid,
                   label=gid, clip_on=False)
    beside = blended_transform_factory(ax.transAxes, ax.transData)
    for i, row in enumerate(stats.itertuples(index=False)):
        p50, p95, p99 = (_floored(v, dist.floor) for v in (row.p50, row.p95, row.p99))
        ax.text(1.01, i, f"p50 {p50} · p95 {p95} · p99 {p99}  ({row.n:,})", transform=beside,
                va="center", fontsize="small", gid="numbers")

    ax.set_xscale("log")
    pad = 10 ** (0.03 * max(np.log10(right / left), 1.0))  # room for the last marker
    ax.set_xlim(zero / gap ** 0.6 if has_zeros else left, right * pad)
    decades = [10.0 ** k for k in range(int(np.ceil(np.log10(left) - 1e-9)),
                                        int(np.floor(np.log10(right))) + 1)]
    labels = [_decade(d) for d in decades]
    ax.set_xticks([zero, *decades] if has_zeros else decades,
                  [_floored(0.0, dist.floor) if dist.floor else "0", *labels] if has_zeros
                  else labels)
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    if has_zeros:  # the zero bar is not on the log scale: break the axis between the two
        ax.axvline(left, color="0.75", linewidth=0.8, linestyle=":", zorder=0)
        _axis_break(ax, zero * gap ** 0.6)
    ax.set_yticks(range(n), stats["label"].tolist())
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", which="major", color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower left", bbox_to_anchor=(1.0, 1.0), ncols=3, fontsize="small",
              frameon=False, borderaxespad=0.2, handletextpad=0.2, columnspacing=1.0)


def _draw_throughput(ax: Axes, rates: pd.DataFrame, width: float, since: When,
                     until: When) -> None:
    """One step line per class (versions per unit of time in each bin) and, for several, the sum.

    The unit follows the bin width (see :func:`~agentbook.analytics.plotkit.per_unit`): a
    simulated week in bins of two hours reads in versions per hour, not 0.09 per second."""
    import numpy as np

    from .plotkit import datenum_epoch

    unit, name = per_unit(width)
    short = _SHORT_UNITS[name]
    starts = rates.index.to_numpy(dtype=float)
    edges = datenum_epoch(np.append(starts, starts[-1] + width))
    for i, cls in enumerate(rates.columns):
        ax.stairs(rates[cls].to_numpy() * unit, edges, label=cls, gid="rate", linewidth=1.6,
                  color="0.45" if cls == "other" else f"C{i}", baseline=None)
    total = rates.sum(axis=1).to_numpy()
    if rates.shape[1] > 1:
        ax.stairs(total * unit, edges, label="all", gid="total", linewidth=1, linestyle="--",
                  color="0.2", baseline=None)
    ax.set_ylim(0, max(float(total.max()) * unit, 1e-9) * 1.08)
    time_axis(ax, edges[0], edges[-1], since, until)
    ax.set_ylabel(f"versions per {name}")
    ax.grid(color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0,
              fontsize="small")
    versions = round(float(total.sum()) * width)
    ax.set_title(f"Versions per {name} · {_count(versions, 'version')} · peak "
                 f"{total.max() * unit:.3g}/{short} · bins of {duration(width)}", loc="left",
                 fontsize="medium")


def _axis_break(ax: Axes, x: float) -> None:
    """Two slanted strokes across the x axis at *x* (data): the axis is broken there."""
    from matplotlib.path import Path
    from matplotlib.transforms import blended_transform_factory

    strokes = Path([(-1.6, -1.0), (-0.4, 1.0), (0.4, -1.0), (1.6, 1.0)],
                   [Path.MOVETO, Path.LINETO, Path.MOVETO, Path.LINETO])
    ax.plot([x], [0.0], transform=blended_transform_factory(ax.transData, ax.transAxes),
            marker=strokes, markersize=9, markeredgewidth=1.1, color="0.25", linestyle="none",
            clip_on=False, zorder=4, gid="axis break")


# -- words -------------------------------------------------------------------------------------
def _floored(seconds: float, floor: float) -> str:
    """A value as :func:`_short_duration` writes it, or ``< 1 µs`` under a non-zero *floor*."""
    if floor > 0 and seconds < floor:
        return f"< {_short_duration(floor)}"
    return _short_duration(seconds)


def _short_duration(seconds: float) -> str:
    """Like :func:`agentbook.plots.duration`, with µs and three digits below a second."""
    size = abs(seconds)
    if size == 0:
        return "0 s"
    if size < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if size < 1:
        return f"{seconds * 1e3:.3g} ms"
    return duration(seconds)


def _decade(seconds: float) -> str:
    """A power of ten as a tick label: ``1 µs``, ``100 ms``, ``10 s``, ``1,000 s``."""
    return _short_duration(seconds) if seconds < 1 else f"{seconds:,.0f} s"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _nothing(what: str, since: When, until: When) -> str:
    ranged = since is not None or until is not None
    return f"no {what} in this time range" if ranged else f"no {what} yet"
