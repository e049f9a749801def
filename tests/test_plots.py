"""``rt.plot``: figures drawn from history, checked through their artists, on the virtual clock."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pandas as pd
import pytest

import agentbook as ab
from agentbook import plots
from agentbook.scheduler import Retry

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
DAY = 86400.0


@pytest.fixture(autouse=True, scope="module")
def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


class Reminders(ab.Agent):
    """Delayed, cron (run-once and skip-if-missed) and interval work."""

    @ab.callable
    async def plan(self) -> None:
        await self.schedule(300, "ring", "tea")
        await self.schedule("0 9 * * *", "digest")
        await self.schedule("30 12 * * *", "lunch", missed="skip")
        await self.schedule_every(6 * 3600, "poll")

    @ab.callable
    async def hello(self) -> str:
        return "hi"

    async def ring(self, text: str) -> None:
        pass

    async def digest(self) -> None:
        pass

    async def lunch(self) -> None:
        pass

    async def poll(self) -> None:
        pass


class Uploads(ab.Agent):
    """Queued work: ``ok-*`` items succeed, ``flaky-*`` fail once, ``broken-*`` always fail."""

    @ab.callable
    async def enqueue(self, items: list) -> None:
        for item in items:
            await self.queue("upload", item, retry=Retry(max_attempts=3, base=60, jitter=False))

    async def upload(self, item: str) -> None:
        attempt = self.occurrence.attempt
        if item.startswith("broken") or (item.startswith("flaky") and attempt == 1):
            raise ConnectionError(f"{item}: attempt {attempt} failed")


async def _busy_week(rt: ab.Runtime, clock: ab.VirtualClock) -> None:
    """Two reminder agents and an upload queue; a day of work, two days down, half a day more."""
    await rt.get(Reminders, "alice").plan()
    await rt.get(Reminders, "bob").plan()
    await rt.get(Uploads, "jobs").enqueue(["ok-1", "flaky-1", "broken-1"])
    await clock.advance(days=1)
    clock.set(clock.now() + 2 * DAY)  # down: nothing fires while the clock jumps
    await clock.advance(0)  # back: overdue work is due now
    await clock.advance(hours=12)


def _runs_from_history(rt: ab.Runtime) -> pd.DataFrame:
    frames = []
    for class_name, name in zip(rt.agents()["class"], rt.agents()["name"], strict=True):
        page = rt.get(class_name, name).history(limit=10_000, failures=False)
        frames.append(page[page.due.notna()])
    return pd.concat(frames, ignore_index=True)


def _days(column: pd.Series) -> list[float]:
    """matplotlib date numbers (days since 1970-01-01, its default epoch), computed by hand."""
    return [t.timestamp() / DAY for t in column]


def _by_gid(ax, gid: str):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) <= 1, gid
    return found[0] if found else None


def _points(ax, gid: str) -> list[tuple[float, str]]:
    """``(x, row label)`` of every marker of one kind, sorted."""
    labels = [t.get_text() for t in ax.get_yticklabels()]
    offsets = _by_gid(ax, gid).get_offsets()
    return sorted((round(float(x), 8), labels[int(y)]) for x, y in offsets)


def _expected(runs: pd.DataFrame, column: str) -> list[tuple[float, str]]:
    labels = runs.agent + "/" + runs.name + "." + runs.method
    return sorted((round(x, 8), label) for x, label in zip(_days(runs[column]), labels, strict=True))


@pytest.fixture(params=["files", ":memory:"])
async def any_rt(request, tmp_path, clock):
    """A runtime on SQLite files, then an ephemeral one, both on the virtual clock."""
    path = tmp_path / "store" if request.param == "files" else ":memory:"
    runtime = ab.Runtime(path, clock=clock)
    yield runtime
    await runtime.aclose()


async def test_schedule_plot_puts_every_due_and_run_time_on_its_row(any_rt, clock):
    rt = any_rt
    await _busy_week(rt, clock)
    runs = _runs_from_history(rt)

    fig = rt.plot.schedule()
    assert isinstance(fig, plots._figure_class()) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == sorted([
        *(f"Reminders/{n}.{m}" for n in ("alice", "bob") for m in ("digest", "lunch", "poll", "ring")),
        "Uploads/jobs.upload",
    ])
    assert _points(ax, "planned") == _expected(runs, "due")
    for outcome in ("ok", "retry", "dead", "skipped"):
        assert _points(ax, outcome) == _expected(runs[runs.outcome == outcome], "ts"), outcome
    counts = {o: len(_by_gid(ax, o).get_offsets()) for o in ("ok", "retry", "dead", "skipped")}
    # flaky-1 failed once, broken-1 twice before its last attempt; lunch was skipped by each
    assert counts["retry"] == 3 and counts["dead"] == 1 and counts["skipped"] == 2
    assert counts["ok"] == (runs.outcome == "ok").sum() > 20
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"ok ({counts['ok']})" in legend and "failed, dead letter (1)" in legend
    assert "due" in legend and "due → ran" in legend


async def test_the_lateness_line_joins_due_and_run_time(rt, clock):
    await _busy_week(rt, clock)
    runs = _runs_from_history(rt)
    ax = rt.plot.schedule().axes[0]
    segments = _by_gid(ax, "lateness").get_segments()
    assert len(segments) == len(runs)
    spans = sorted((round(s[0][0], 8), round(s[1][0], 8)) for s in segments)
    want = sorted((round(d, 8), round(t, 8))
                  for d, t in zip(_days(runs.due), _days(runs.ts), strict=True))
    assert spans == want
    assert all(s[0][1] == s[1][1] for s in segments), "a lateness line stays on its row"
    # the poll due on Jan 2 06:00 ran when the runtime came back, Jan 4 00:00: 42 h late
    longest = max(s[1][0] - s[0][0] for s in segments)
    assert longest == pytest.approx(42 / 24, abs=1e-9)


async def test_title_gives_the_count_and_lateness_percentiles(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    runs = _runs_from_history(mem_rt)
    lateness = (runs.ts - runs.due).dt.total_seconds()[runs.outcome != "skipped"]
    title = mem_rt.plot.schedule().axes[0].get_title(loc="left")
    assert title == (f"{len(runs)} scheduled runs · lateness p50 "
                     f"{plots._duration(lateness.quantile(0.5))}, "
                     f"p99 {plots._duration(lateness.quantile(0.99))}")
    assert "p50 0 s" in title and "p99 1." in title  # most run on time; the worst a day late


def test_durations_read_like_a_person_wrote_them():
    assert [plots._duration(s) for s in (0, 0.25, 1, 12.34, 90, 3600 * 3.25, 3 * DAY)] == [
        "0 s", "250 ms", "1 s", "12 s", "1.5 min", "3.2 h", "3 d"]


async def test_scheduled_runs_frame_has_the_swappable_columns_and_pages_through_history(
        mem_rt, clock, monkeypatch):
    await _busy_week(mem_rt, clock)
    whole = plots._scheduled_runs(mem_rt, None, None, None)
    assert list(whole.columns) == ["agent", "name", "method", "due", "ts", "lateness_s", "outcome"]
    assert (whole.lateness_s == (whole.ts - whole.due).dt.total_seconds()).all()
    assert whole.ts.is_monotonic_increasing
    assert len(whole) == len(_runs_from_history(mem_rt))
    monkeypatch.setattr(plots, "_PAGE", 4)  # many small pages via before=
    paged = plots._scheduled_runs(mem_rt, None, None, None)
    pd.testing.assert_frame_equal(paged, whole)


async def test_many_agents_share_one_row_per_class_and_method(mem_rt, clock):
    for i in range(plots._FEW_AGENTS + 1):
        await mem_rt.get(Reminders, f"r{i}").plan()
    await clock.advance(hours=7)
    ax = mem_rt.plot.schedule().axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Reminders.poll", "Reminders.ring"]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    ok = [rows[int(y)] for _, y in _by_gid(ax, "ok").get_offsets()]
    assert ok.count("Reminders.ring") == ok.count("Reminders.poll") == plots._FEW_AGENTS + 1


async def test_agents_selects_by_reference_class_name_or_path(mem_rt, clock):
    await _busy_week(mem_rt, clock)

    def rows(**kw) -> set[str]:
        ax = mem_rt.plot.schedule(**kw).axes[0]
        return {t.get_text().rsplit(".", 1)[0] for t in ax.get_yticklabels()}

    assert rows(agents=mem_rt.get(Reminders, "alice")) == {"Reminders/alice"}
    assert rows(agents=Uploads) == rows(agents="Uploads") == {"Uploads/jobs"}
    assert rows(agents=["Reminders/bob", Uploads]) == {"Reminders/bob", "Uploads/jobs"}
    with pytest.raises(ab.UsageError, match="agents="):
        mem_rt.plot.schedule(agents=[42])


async def test_since_and_until_keep_the_runs_that_started_in_between(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    since, until = datetime(2026, 1, 1, 5, tzinfo=timezone.utc), T0 + 13 * 3600
    ax = mem_rt.plot.schedule(since=since, until=until).axes[0]
    ran = sorted(x for gid in ("ok", "retry", "dead", "skipped") if _by_gid(ax, gid)
                 for x, _ in _by_gid(ax, gid).get_offsets())
    # alice and bob: poll 06:00 and 12:00, digest 09:00, lunch 12:30
    assert len(ran) == 8
    assert ran[0] == pytest.approx((T0 + 6 * 3600) / DAY) and ran[-1] == pytest.approx(
        (T0 + 12.5 * 3600) / DAY)
    assert ax.get_xlim() == pytest.approx((since.timestamp() / DAY, until / DAY))
    empty = mem_rt.plot.schedule(since=T0 + 30 * DAY).axes[0]
    assert [t.get_text() for t in empty.texts] == ["no scheduled runs in this time range"]


async def test_ax_is_honoured(mem_rt, clock):
    from matplotlib.figure import Figure

    await _busy_week(mem_rt, clock)
    mine = Figure(figsize=(12, 4))
    left, right = mine.subplots(1, 2)
    got = mem_rt.plot.schedule(ax=right)
    assert got is mine
    assert tuple(mine.get_size_inches()) == (12, 4) and len(mine.axes) == 2
    assert not left.collections and _by_gid(right, "planned") is not None
    sub = Figure().subfigures(1, 2)[1]
    assert mem_rt.plot.schedule(ax=sub.add_subplot()) is sub.get_figure(root=True)


async def test_an_empty_runtime_plots_a_friendly_message(mem_rt):
    fig = mem_rt.plot.schedule()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["no scheduled runs yet"]
    assert not ax.collections
    await mem_rt.get(Reminders, "quiet").hello()  # an agent with history but nothing scheduled
    assert [t.get_text() for t in mem_rt.plot.schedule().axes[0].texts] == ["no scheduled runs yet"]


async def test_figures_render_with_agg_and_show_in_notebooks_without_pyplot(rt, clock):
    from matplotlib import _pylab_helpers
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    await _busy_week(rt, clock)
    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    fig = rt.plot.schedule()
    FigureCanvasAgg(fig).draw()
    assert fig._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers, "pyplot must not track it"


async def test_the_plot_survives_a_restart_of_a_file_runtime(tmp_path):
    before = ab.Runtime(tmp_path / "s", clock=ab.VirtualClock(T0))
    await before.get(Reminders, "alice").plan()
    await before.clock.advance(hours=1)
    await before.aclose()
    clock = ab.VirtualClock(T0 + 2 * DAY)  # the kernel was down for two days
    after = ab.Runtime(tmp_path / "s", clock=clock)
    await clock.advance(0)
    ax = after.plot.schedule().axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    late = [rows[int(y)] for (x0, y), (x1, _) in _by_gid(ax, "lateness").get_segments() if x1 > x0]
    # each ran (or, for lunch, was skipped) once, late, when the runtime came back
    assert sorted(late) == ["Reminders/alice.digest", "Reminders/alice.lunch", "Reminders/alice.poll"]
    assert [rows[int(y)] for _, y in _by_gid(ax, "skipped").get_offsets()] == ["Reminders/alice.lunch"]
    await after.aclose()


def test_importing_agentbook_and_its_plots_does_not_import_matplotlib():
    code = ("import sys, agentbook, agentbook.plots; "
            "assert 'matplotlib' not in sys.modules and 'pandas' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
