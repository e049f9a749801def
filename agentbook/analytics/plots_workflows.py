"""``rt.plot.workflows()``: where the time of workflow runs goes, and which runs wait for a person.

One row per run (oldest on top), on the runtime's clock: a thin grey line from the moment the
run started to the moment it ended (or *now*), and a bar per step from its start to its end,
coloured by kind - ``do`` (a step's function ran; a diamond marks its end, since on a virtual
clock it takes no time at all), ``sleep``, waiting for an event, waiting for a person. A step
still waiting reaches *now*, hatched; a red X marks a step that failed for good, an orange x
one that failed and was retried (the count beside it). A run waiting for a person has its
label in orange, with how long it has waited so far.

The legend gives each kind's share of all the time the selected runs spent in steps (also
those not drawn), and the title how many runs wait for a person and the longest of those
waits. Everything is read from the DuckDB views ``workflows`` and ``workflow_steps``; the
distribution per step (``by="step"`` or ``"kind"``) is drawn in :mod:`.plots_sql`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UsageError
from ..workflow.engine import TERMINAL
from .plotkit import (
    AgentSelection,
    When,
    canvas,
    datenum_epoch,
    duration,
    filters,
    say,
    time_axis,
    views,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..core.runtime import Runtime

__all__ = ["ENDED", "KINDS", "WorkflowRuns", "draw_workflow_runs", "method_filter",
           "workflow_runs"]

#: How each kind of step is drawn: ``kind: (colour, legend text)``.
KINDS: dict[str, tuple[str, str]] = {
    "do": ("tab:blue", "do"),
    "sleep": ("0.65", "sleep"),
    "event": ("tab:purple", "waiting for an event"),
    "approval": ("tab:orange", "waiting for a person"),
}
_OTHER_KIND = ("tab:brown", "")
#: The statuses of a run that is over, as an SQL list (its line ends when it was last updated).
ENDED = ", ".join(f"'{status}'" for status in sorted(TERMINAL))
#: Up to this many agents, a row's label names the agent too.
_FEW_AGENTS = 5
#: What a run that has not ended is doing, by the kind of its waiting step.
_WAITING_WORDS = {"approval": "waiting for a person", "event": "waiting for an event",
                  "sleep": "sleeping", "do": "retrying"}
_BAR = 0.56  # a bar's height, in rows


class WorkflowRuns(NamedTuple):
    """The runs :func:`draw_workflow_runs` draws, and what it says of all selected runs."""

    runs: pd.DataFrame  #: agent, name, run, method, status, created, updated, waiting, waiting_since
    steps: pd.DataFrame  #: agent, name, run, seq, step, kind, status, attempts, started, ended, until
    total: int  #: runs selected (drawn or not)
    for_person: int  #: of those, runs waiting for a person now
    longest_person: float  #: the longest of those waits so far, in seconds (0 when none)
    seconds: dict[str, float]  #: per kind, the seconds all selected runs spent in steps of it
    now: float  #: the runtime clock's time, epoch seconds


def method_filter(method: str | list[str] | tuple[str, ...] | None, where: list[str],
                  params: dict[str, Any]) -> None:
    """Add the condition of ``method=`` (a workflow method's name, or several) to *where*."""
    if method is None:
        return
    names = [method] if isinstance(method, str) else list(method)
    if not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"method= takes a workflow method's name or a list of names, not "
                         f"{method!r}")
    params["methods"] = names
    where.append("method IN (SELECT unnest($methods::VARCHAR[]))")


def workflow_runs(rt: Runtime, agents: AgentSelection, method: Any, since: When, until: When,
                  top: int) -> WorkflowRuns:
    """The selected runs (those started in [since, until)), at most *top* of them chosen:
    those waiting for a person first (the longest wait first), then the other unfinished
    ones, then the newest; returned oldest first, with their steps."""
    if top < 1:
        raise UsageError(f"top= must be at least 1, not {top!r}")
    where, params = filters(rt, agents, since, until)
    method_filter(method, where, params)
    now = rt.clock.now()
    params["now"] = now
    db = views(rt)
    conditions = " AND ".join(where) or "true"
    selected = f"(SELECT * FROM (SELECT *, created AS ts FROM workflows) WHERE {conditions})"
    # a run's end: when it ended, or now; a step's: when it ended, else its run's end
    runs_sql = (
        "SELECT w.agent, w.name, w.id AS run, w.method, w.status, epoch(w.created) AS created,"
        " epoch(w.updated) AS updated,"
        f" CASE WHEN w.status IN ({ENDED}) THEN epoch(w.updated) ELSE $now END AS run_end,"
        " any_value(s.kind) FILTER (WHERE s.status IN ('waiting', 'retrying')) AS waiting,"
        " min(epoch(s.started)) FILTER (WHERE s.status IN ('waiting', 'retrying'))"
        " AS waiting_since"
        f" FROM {selected} w LEFT JOIN workflow_steps s"
        " ON s.agent = w.agent AND s.name = w.name AND s.run = w.id GROUP BY ALL")
    summary = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE waiting = 'approval'),"
        " coalesce(max($now - waiting_since) FILTER (WHERE waiting = 'approval'), 0)"
        f" FROM ({runs_sql})", params).fetchone()
    total, for_person, longest = int(summary[0]), int(summary[1]), float(summary[2])
    picked = db.execute(
        f"SELECT * FROM ({runs_sql}) ORDER BY"
        f" CASE WHEN waiting = 'approval' THEN waiting_since END NULLS LAST,"
        f" status IN ({ENDED}),"
        f" created DESC, agent, name, run LIMIT {int(top)}", params).df()
    picked = picked.sort_values(["created", "agent", "name", "run"], kind="stable")
    steps = db.execute(
        "SELECT s.agent, s.name, s.run, s.seq, s.step, s.kind, s.status, s.attempts,"
        " epoch(s.started) AS started, epoch(s.ended) AS ended, epoch(s.until) AS until"
        " FROM workflow_steps s"
        " WHERE [s.agent, s.name, s.run] IN (SELECT unnest($picked::VARCHAR[][]))"
        " ORDER BY s.agent, s.name, s.run, s.seq",
        {"picked": picked[["agent", "name", "run"]].values.tolist()}).df()
    spent = db.execute(
        "SELECT s.kind, sum(coalesce(epoch(s.ended), r.run_end) - epoch(s.started)) AS seconds"
        f" FROM ({runs_sql}) r JOIN workflow_steps s"
        " ON s.agent = r.agent AND s.name = r.name AND s.run = r.run GROUP BY s.kind",
        params).fetchall()
    seconds = {str(kind): max(float(s or 0.0), 0.0) for kind, s in spent}
    return WorkflowRuns(picked.reset_index(drop=True).drop(columns="run_end"),
                        steps.astype({"attempts": "int64"}) if len(steps) else steps, total,
                        for_person, longest, seconds, now)


def draw_workflow_runs(rt: Runtime, agents: AgentSelection, method: Any, ax: Axes | None,
                       since: When, until: When, top: int) -> Figure:
    """:meth:`agentbook.analytics.plots.Plots.workflows` with ``by="run"``."""
    data = workflow_runs(rt, agents, method, since, until, top)
    own = ax is None
    fig, ax = canvas(ax, rows=len(data.runs))
    if data.runs.empty:
        ranged = since is not None or until is not None
        say(ax, "no workflow runs in this time range" if ranged else "no workflow runs yet",
            "Workflow runs")
        return fig
    handles = _draw_runs(ax, data, since, until)
    if own:  # the figure is ours: the legend goes below, leaving the width to the runs
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)),
                   frameon=False, fontsize="small")
    else:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  borderaxespad=0, fontsize="small")
    return fig


# -- drawing -------------------------------------------------------------------------------
def _labels(runs: pd.DataFrame, now: float) -> list[str]:
    """``method wf-1234ab · what it is doing``, with ``Class/name.`` first when the runs
    are of several agents (``Class.`` when of many)."""
    agents = runs[["agent", "name"]].drop_duplicates().shape[0]
    labels = []
    for r in runs.itertuples(index=False):
        who = "" if agents == 1 else f"{r.agent}/{r.name}." if agents <= _FEW_AGENTS else (
            f"{r.agent}.")
        if r.status in TERMINAL or not isinstance(r.waiting, str):
            doing = str(r.status)
        else:
            doing = _WAITING_WORDS.get(r.waiting, f"waiting ({r.waiting})")
            doing += f", {duration(now - float(r.waiting_since))}"
        labels.append(f"{who}{r.method} {str(r.run)[:9]} · {doing}")
    return labels


def _draw_runs(ax: Axes, data: WorkflowRuns, since: When, until: When) -> list[Artist]:
    """Draw the runs (not none) on *ax*; returns the legend's handles."""
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    runs, steps, now = data.runs, data.steps, data.now
    row = {(r.agent, r.name, r.run): i for i, r in enumerate(runs.itertuples(index=False))}
    ended = runs["status"].isin(list(TERMINAL)).to_numpy()
    start = datenum_epoch(runs["created"].to_numpy(dtype=float))
    stop = datenum_epoch(np.where(ended, runs["updated"].to_numpy(dtype=float), now))
    y_runs = np.arange(len(runs), dtype=float)
    lines = LineCollection(list(np.stack([np.column_stack([start, y_runs]),
                                          np.column_stack([stop, y_runs])], axis=1)),
                           colors="0.55", linewidths=1.0, zorder=1, gid="run", label="run")
    ax.add_collection(lines, autolim=False)

    y = np.array([row[k] for k in zip(steps["agent"], steps["name"], steps["run"], strict=True)],
                 dtype=float)
    done = steps["ended"].notna().to_numpy()
    run_end = dict(zip(row.values(), stop, strict=True))
    left = datenum_epoch(steps["started"].to_numpy(dtype=float))
    right = np.where(done, datenum_epoch(steps["ended"].to_numpy(dtype=float)),
                     [run_end[int(i)] for i in y])
    kinds = steps["kind"].to_numpy()
    handles: list[Artist] = []
    total_time = sum(data.seconds.values())
    for kind in [*KINDS, *sorted(set(kinds) - set(KINDS))]:
        colour, text = KINDS.get(kind, _OTHER_KIND)
        share = data.seconds.get(kind)
        if share is not None:
            part = share / total_time if total_time > 0 else 0.0
            pct = "<1%" if 0 < part < 0.005 else f"{part:.0%}"
            handles.append(Patch(color=colour, label=f"{text or kind} ({pct} of step time)"))
        for waiting in (False, True):
            hit = (kinds == kind) & (done != waiting)
            if not hit.any():
                continue
            paint: dict[str, Any] = ({"facecolor": "white", "hatch": "////", "edgecolor": colour}
                                     if waiting else {"color": colour, "edgecolor": colour})
            ax.barh(y[hit], right[hit] - left[hit], left=left[hit], height=_BAR, linewidth=1.0,
                    zorder=2, gid=f"{kind} waiting" if waiting else kind, **paint)
    is_do = kinds == "do"
    if is_do.any():  # a step that ran: a diamond where it ended (it may have taken no time)
        ax.scatter(right[is_do], y[is_do], marker="D", s=22, color=KINDS["do"][0], zorder=3,
                   edgecolors="white", linewidths=0.6, gid="do end")
    handles += _draw_failures(ax, steps, y, right)
    if not ended.all():
        ax.axvline(datenum_epoch(now), color="0.25", linestyle=":", linewidth=1.0, zorder=0,
                   gid="now")
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="////",
                             label="still waiting (to now)"))
        handles.append(Line2D([], [], color="0.25", linestyle=":", label="now"))

    labels = _labels(runs, now)
    ax.set_yticks(range(len(runs)), labels)
    for tick, waiting in zip(ax.get_yticklabels(), runs["waiting"], strict=True):
        if waiting == "approval":
            tick.set_color(KINDS["approval"][0])
            tick.set_fontweight("bold")
    ax.set_ylim(len(runs) - 0.5, -0.5)  # the oldest run on top
    time_axis(ax, float(np.min(start)), float(max(np.max(stop), np.max(right, initial=0))),
              since, until)
    ax.grid(axis="x", color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(_title(data), loc="left", fontsize="medium")
    return handles


def _draw_failures(ax: Axes, steps: pd.DataFrame, y: Any, right: Any) -> list[Artist]:
    """Red X where a step failed for good, orange x (and the count) where one was retried.

    A ``do`` step's ``attempts`` counts its tries: a completed or failed step was retried
    ``attempts - 1`` times; a step waiting for its next try (``retrying``) ``attempts``."""
    from matplotlib.lines import Line2D

    status = steps["status"].to_numpy()
    attempts = steps["attempts"].to_numpy(dtype=int)
    retries = attempts - (status != "retrying")
    handles: list[Artist] = []
    failed = status == "failed"
    if failed.any():
        ax.scatter(right[failed], y[failed], marker="X", s=70, color="tab:red", zorder=4,
                   gid="failed")
        handles.append(Line2D([], [], marker="X", color="tab:red", linestyle="",
                              label=f"failed ({int(failed.sum())})"))
    retried = (steps["kind"].to_numpy() == "do") & (retries > 0)
    if retried.any():
        ax.scatter(right[retried], y[retried] - _BAR / 2, marker="x", s=30, color="tab:orange",
                   zorder=4, gid="retried", linewidths=1.4)
        for x, row, n in zip(right[retried], y[retried], retries[retried], strict=True):
            ax.annotate(f"{n}", (x, row - _BAR / 2), xytext=(4, 0), textcoords="offset points",
                        fontsize="x-small", color="tab:orange", va="center", gid="retries")
        handles.append(Line2D([], [], marker="x", color="tab:orange", linestyle="",
                              label=f"retried ({int(retries[retried].sum())} times)"))
    return handles


def _title(data: WorkflowRuns) -> str:
    n = data.total
    parts = [f"{n:,} workflow run{'' if n == 1 else 's'}"]
    agents = data.runs[["agent", "name"]].drop_duplicates()
    if len(agents) == 1:  # (the rows' labels leave it out)
        parts[0] += f" of {agents.agent.iloc[0]}/{agents.name.iloc[0]}"
    if data.for_person:
        parts.append(f"{data.for_person:,} waiting for a person (longest "
                     f"{duration(data.longest_person)})")
    text = " · ".join(parts)
    if len(data.runs) < n:
        text += (f"\nshowing {len(data.runs):,}: those waiting for a person first, then the "
                 "unfinished, then the newest")
    return text
