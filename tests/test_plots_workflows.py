"""``rt.plot.workflows()``: a week of refunds drawn from the workflow views, checked through
the figure's artists, on the virtual clock (every duration below is known in advance)."""

from __future__ import annotations

import numpy as np
import pytest

import agentbook as ab
from agentbook.analytics import plotkit

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z, where the clock fixture starts
DAY = 86400.0
HOUR = 3600.0
#: Tries of each order's payment so far (``flaky`` fails its first, ``broken`` every one).
TRIES: dict[str, int] = {}


@pytest.fixture(autouse=True, scope="module")
def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


class Refunds(ab.Agent):
    """A refund (a person approves above 100, an hour's cooling off, a payment retried once)
    and an onboarding that waits for an event."""

    @ab.workflow
    async def refund(self, step: ab.Step, order: str, amount: float) -> str:
        await step.do("look up", lambda: {"order": order})
        if amount > 100:
            decision = await step.wait_for_approval(f"refund {order}", timeout=DAY)
            if not decision.approved:
                return "declined"
        await step.sleep("cool off", HOUR)
        await step.do("pay", pay, order, retry=ab.Retry(max_attempts=2, base=60, jitter=False))
        return "paid"

    @ab.workflow
    async def onboard(self, step: ab.Step, who: str) -> str:
        await step.do("create", lambda: who)
        verified = await step.wait_for_event("verified", timeout=DAY)
        return "welcome" if verified else "expired"


def pay(order: str) -> str:
    TRIES[order] = TRIES.get(order, 0) + 1
    if order == "broken" or (order == "flaky" and TRIES[order] == 1):
        raise ConnectionError(f"the bank refused {order}")
    return order


async def _five_hours(rt: ab.Runtime, clock: ab.VirtualClock, agent: str = "a") -> dict:
    """Six runs; returns them by order (and ``ana``) with the clock at T0 + 5 h.

    small: look up, cool off 0-1 h, pay at 1 h.  big: approved at 2 h, cool off 2-3 h, pay.
    stuck: waits for a person from 0 on.  flaky: pay 1 h - 1 h 1 min (one retry).
    broken: pay fails at 1 h and for good at 1 h 1 min.  ana (onboard, started at 10 min):
    waits for "verified" from 10 to 30 min.
    """
    TRIES.clear()
    desk = rt.get(Refunds, agent)
    runs = {order: await desk.refund(order, amount) for order, amount in
            (("small", 50.0), ("big", 500.0), ("stuck", 900.0), ("flaky", 20.0),
             ("broken", 20.0))}
    await clock.advance(600)
    runs["ana"] = await desk.onboard("ana")
    await rt.settle()
    await clock.advance(1200)
    await runs["ana"].send_event("verified", True)
    await clock.advance(2 * HOUR - 1800)
    pending = rt.approvals.pending()
    await rt.approvals.approve(pending.id[list(pending.summary).index("refund big")], by="ann")
    await clock.advance(3 * HOUR)
    assert clock.now() == T0 + 5 * HOUR
    assert {k: r.status for k, r in runs.items()} == {
        "small": "completed", "big": "completed", "stuck": "waiting", "flaky": "completed",
        "broken": "failed", "ana": "completed"}
    return runs


def _day(seconds: float) -> float:
    """matplotlib's date number of T0 + *seconds* (days since 1970, its default epoch)."""
    return (T0 + seconds) / DAY


def _rows(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def _row_of(ax, run: ab.WorkflowRun) -> int:
    (found,) = [i for i, label in enumerate(_rows(ax)) if f" {run.id[:9]} · " in label]
    return found


def _bars(ax, gid: str) -> list[tuple[int, float, float]]:
    """``(row, start, end)`` of each bar *gid*, in seconds since T0, sorted."""
    return sorted((round(p.get_y() + p.get_height() / 2), round(p.get_x() * DAY - T0),
                   round((p.get_x() + p.get_width()) * DAY - T0))
                  for p in ax.patches if p.get_gid() == gid)


def _marks(ax, gid: str) -> list[tuple[int, float]]:
    """``(row, x in seconds since T0)`` of each marker of the scatter *gid*."""
    (points,) = [c for c in ax.collections if c.get_gid() == gid]
    return sorted((round(y), round(x * DAY - T0)) for x, y in points.get_offsets())


async def test_each_run_is_a_row_with_a_bar_per_step_on_the_clock(mem_rt, clock):
    runs = await _five_hours(mem_rt, clock)
    fig = mem_rt.plot.workflows()
    assert isinstance(fig, plotkit.figure_class()) and len(fig.axes) == 1
    ax = fig.axes[0]
    row = {order: _row_of(ax, run) for order, run in runs.items()}
    assert sorted(row.values()) == list(range(6))
    assert row["ana"] == 5, "the oldest run on top: ana started last"
    assert _rows(ax)[row["big"]] == f"refund {runs['big'].id[:9]} · completed"
    assert _rows(ax)[row["broken"]].endswith(" · failed")
    assert _rows(ax)[row["stuck"]] == f"refund {runs['stuck'].id[:9]} · waiting for a person, 5 h"

    assert _bars(ax, "sleep") == sorted([(row["small"], 0, HOUR), (row["big"], 2 * HOUR, 3 * HOUR),
                                         (row["flaky"], 0, HOUR), (row["broken"], 0, HOUR)])
    assert _bars(ax, "approval") == [(row["big"], 0, 2 * HOUR)]
    assert _bars(ax, "approval waiting") == [(row["stuck"], 0, 5 * HOUR)], "to now, hatched"
    assert _bars(ax, "event") == [(row["ana"], 600, 1800)]
    assert not _bars(ax, "event waiting")
    look_ups = [(row[o], 0, 0) for o in ("small", "big", "stuck", "flaky", "broken")]
    pays = [(row["small"], HOUR, HOUR), (row["big"], 3 * HOUR, 3 * HOUR),
            (row["flaky"], HOUR, HOUR + 60), (row["broken"], HOUR, HOUR + 60)]
    assert _bars(ax, "do") == sorted([*look_ups, *pays, (row["ana"], 600, 600)])
    assert _marks(ax, "do end") == sorted((r, end) for r, _, end in _bars(ax, "do"))
    (now,) = [line for line in ax.lines if line.get_gid() == "now"]
    assert now.get_xdata()[0] == pytest.approx(_day(5 * HOUR))
    (lines,) = [c for c in ax.collections if c.get_gid() == "run"]
    spans = sorted((round(s[0][1]), round(s[0][0] * DAY - T0), round(s[1][0] * DAY - T0))
                   for s in lines.get_segments())
    assert spans == sorted([(row["small"], 0, HOUR), (row["big"], 0, 3 * HOUR),
                            (row["stuck"], 0, 5 * HOUR), (row["flaky"], 0, HOUR + 60),
                            (row["broken"], 0, HOUR + 60), (row["ana"], 600, 1800)])


async def test_a_run_waiting_for_a_person_stands_out_and_the_title_counts_them(mem_rt, clock):
    runs = await _five_hours(mem_rt, clock)
    ax = mem_rt.plot.workflows().axes[0]
    stuck = ax.get_yticklabels()[_row_of(ax, runs["stuck"])]
    assert stuck.get_color() == "tab:orange" and stuck.get_fontweight() == "bold"
    others = [t for t in ax.get_yticklabels() if t is not stuck]
    assert len(others) == 5 and all(t.get_color() != "tab:orange" for t in others)
    assert all(t.get_fontweight() == "normal" for t in others)
    assert ax.get_title(loc="left") == (
        "6 workflow runs of Refunds/a · 1 waiting for a person (longest 5 h)")


async def test_failures_and_retries_are_marked_where_the_step_ended(mem_rt, clock):
    runs = await _five_hours(mem_rt, clock)
    ax = mem_rt.plot.workflows().axes[0]
    flaky, broken = _row_of(ax, runs["flaky"]), _row_of(ax, runs["broken"])
    (failed,) = [c for c in ax.collections if c.get_gid() == "failed"]
    assert [(round(y), round(x * DAY - T0)) for x, y in failed.get_offsets()] == [
        (broken, HOUR + 60)]
    (retried,) = [c for c in ax.collections if c.get_gid() == "retried"]
    assert sorted((round(y + 0.28), round(x * DAY - T0)) for x, y in retried.get_offsets()) == (
        sorted([(flaky, HOUR + 60), (broken, HOUR + 60)]))
    assert [t.get_text() for t in ax.texts if t.get_gid() == "retries"] == ["1", "1"]


async def test_the_legend_gives_each_kinds_share_of_the_time_in_steps(mem_rt, clock):
    await _five_hours(mem_rt, clock)
    fig = mem_rt.plot.workflows()
    (legend,) = fig.legends  # below the runs, since the figure is the plot's own
    # do: the two payments' retries (60 s each); sleep: four cooling-off hours;
    # event: ana's 20 min; approval: big's 2 h and stuck's 5 h so far
    total = 120 + 4 * HOUR + 1200 + 7 * HOUR
    assert [t.get_text() for t in legend.get_texts()] == [
        "do (<1% of step time)", f"sleep ({4 * HOUR / total:.0%} of step time)",
        f"waiting for an event ({1200 / total:.0%} of step time)",
        f"waiting for a person ({7 * HOUR / total:.0%} of step time)",
        "failed (1)", "retried (2 times)", "still waiting (to now)", "now"]
    assert "sleep (35% of step time)" in [t.get_text() for t in legend.get_texts()]


async def test_top_keeps_the_runs_waiting_for_a_person_then_the_newest(mem_rt, clock):
    runs = await _five_hours(mem_rt, clock)
    ax = mem_rt.plot.workflows(top=2).axes[0]
    assert [label.split(" · ")[0] for label in _rows(ax)] == [
        f"refund {runs['stuck'].id[:9]}", f"onboard {runs['ana'].id[:9]}"]
    title = ax.get_title(loc="left")
    assert title.startswith("6 workflow runs of Refunds/a · 1 waiting for a person")
    assert title.endswith("\nshowing 2: those waiting for a person first, then the unfinished, "
                          "then the newest")
    with pytest.raises(ab.UsageError, match="top="):
        mem_rt.plot.workflows(top=0)


async def test_agents_method_and_since_select_the_runs(mem_rt, clock):
    await _five_hours(mem_rt, clock, agent="a")
    other = mem_rt.get(Refunds, "b")
    await other.onboard("bo")
    await mem_rt.settle()
    every = _rows(mem_rt.plot.workflows().axes[0])
    assert len(every) == 7 and every[-1].startswith("Refunds/b.onboard wf-")
    assert all(label.startswith("Refunds/a.") for label in every[:-1]), "few agents: named"
    assert _rows(mem_rt.plot.workflows(agents=other).axes[0])[0].startswith("onboard wf-")
    onboard = _rows(mem_rt.plot.workflows(method="onboard").axes[0])
    assert [label.split(".")[1].split(" ")[0] for label in onboard] == ["onboard", "onboard"]
    assert len(_rows(mem_rt.plot.workflows(method=["onboard", "refund"]).axes[0])) == 7
    later = mem_rt.plot.workflows(since=T0 + 60).axes[0]
    assert [label.split(" ")[0] for label in _rows(later)] == ["Refunds/a.onboard",
                                                                "Refunds/b.onboard"]
    empty = mem_rt.plot.workflows(since=T0 + DAY).axes[0]
    assert [t.get_text() for t in empty.texts] == ["no workflow runs in this time range"]
    with pytest.raises(ab.UsageError, match="method="):
        mem_rt.plot.workflows(method=[3])


async def test_no_runs_yet_plots_a_friendly_message(mem_rt):
    for by in ("run", "kind"):
        ax = mem_rt.plot.workflows(by=by).axes[0]
        assert [t.get_text() for t in ax.texts] == [
            "no workflow runs yet" if by == "run" else "no workflow steps yet"]
        assert not ax.patches


async def test_by_kind_and_by_step_draw_the_distribution_of_each_steps_time(mem_rt, clock):
    await _five_hours(mem_rt, clock)
    ax = mem_rt.plot.workflows(by="kind").axes[0]
    seconds = {"Refunds.refund · approval": [2 * HOUR, 5 * HOUR],
               "Refunds.refund · sleep": [HOUR] * 4,
               "Refunds.refund · do": [0] * 5 + [0, 0, 60, 60],
               "Refunds.onboard · event": [1200], "Refunds.onboard · do": [0]}
    p99 = {label: float(np.quantile(v, 0.99)) for label, v in seconds.items()}
    assert _rows(ax) == sorted(p99, key=lambda label: (-p99[label], label))
    rows = _rows(ax)
    for gid, q in (("p50", 0.5), ("p99", 0.99)):
        (marks,) = [c for c in ax.collections if c.get_gid() == gid]
        got = {rows[round(y)]: x for x, y in marks.get_offsets()}
        for label, values in seconds.items():
            want = float(np.quantile(values, q))
            if want > 0:
                assert got[label] == pytest.approx(want), (gid, label)
    assert ax.get_title(loc="left") == "Workflow step time by kind · 17 steps"
    numbers = [t.get_text() for t in ax.texts if t.get_gid() == "numbers"]
    waits = [2 * HOUR, 5 * HOUR]  # the person's wait counts until now
    assert numbers[0] == " · ".join(f"p{q} {plotkit.duration(np.quantile(waits, q / 100))}"
                                    for q in (50, 95, 99)) + "  (2)"

    by_step = mem_rt.plot.workflows(by="step", method="refund").axes[0]
    assert sorted(_rows(by_step)) == sorted(
        f"Refunds.refund · {name}" for name in
        ("look up", "refund big", "refund stuck", "cool off", "pay"))
    with pytest.raises(ab.UsageError, match="by= takes 'run'"):
        mem_rt.plot.workflows(by="colour")


async def test_ax_is_honoured_and_the_legend_stays_beside_it(mem_rt, clock):
    from matplotlib.figure import Figure

    await _five_hours(mem_rt, clock)
    mine = Figure(figsize=(14, 4))
    left, right = mine.subplots(1, 2)
    assert mem_rt.plot.workflows(ax=left) is mine
    assert mem_rt.plot.workflows(by="kind", ax=right) is mine
    assert not mine.legends and left.get_legend() is not None
    assert len(_bars(left, "sleep")) == 4 and not _bars(right, "sleep")


async def test_the_figure_renders_without_pyplot_from_a_file_runtime(rt, clock):
    from matplotlib import _pylab_helpers
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    await _five_hours(rt, clock)
    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    for fig in (rt.plot.workflows(), rt.plot.workflows(by="step")):
        FigureCanvasAgg(fig).draw()
        assert fig._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers
    assert "workflows()" in repr(rt.plot) and "workflows" in dir(rt.plot)
