"""``rt.plot``: figures drawn from history, checked through their artists, on the virtual clock."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pandas as pd
import pytest

import agentbook as ab
from agentbook.analytics import plotkit, plots, plots_sql
from agentbook.schedule.policy import Retry

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
    return sorted((round(float(x), 8), labels[round(y)]) for x, y in offsets)


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
    assert isinstance(fig, plotkit.figure_class()) and len(fig.axes) == 1
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
                     f"{plotkit.duration(lateness.quantile(0.5))}, "
                     f"p99 {plotkit.duration(lateness.quantile(0.99))}")
    # most run on time; the worst 42 h late (the max reads as the p99: it is left out)
    assert "p50 0 s" in title and title.endswith("p99 1.8 d")


def test_durations_read_like_a_person_wrote_them():
    assert [plotkit.duration(s) for s in (0, 0.25, 1, 12.34, 90, 3600 * 3.25, 3 * DAY)] == [
        "0 s", "250 ms", "1 s", "12 s", "1.5 min", "3.2 h", "3 d"]


async def test_scheduled_runs_frame_has_the_columns_and_rows_of_the_history(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    whole = plots._scheduled_runs(mem_rt, None, None, None)
    assert list(whole.columns) == ["agent", "name", "method", "due", "ts", "lateness_s", "outcome"]
    assert (whole.lateness_s == (whole.ts - whole.due).dt.total_seconds()).all()
    assert whole.ts.is_monotonic_increasing
    runs = _runs_from_history(mem_rt)
    key = ["agent", "name", "method", "outcome"]
    assert sorted(whole[key].itertuples(index=False)) == sorted(runs[key].itertuples(index=False))
    assert sorted(whole.due) == sorted(runs.due) and sorted(whole.ts) == sorted(runs.ts)
    empty = plots._scheduled_runs(mem_rt, "Nobody", None, None)
    assert empty.empty and list(empty.dtypes.astype(str)) == list(whole.dtypes.astype(str))


async def test_many_agents_share_one_row_per_class_and_method(mem_rt, clock):
    import numpy as np

    for i in range(plots._FEW_AGENTS + 1):
        await mem_rt.get(Reminders, f"r{i}").plan()
    await clock.advance(hours=7)
    ax = mem_rt.plot.schedule().axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Reminders.poll", "Reminders.ring"]
    # six agents' runs at one instant crowd their row: a bar of six per row, not six markers
    assert not len(_by_gid(ax, "ok").get_offsets())
    strips = [p for p in ax.patches if p.get_gid() == "runs per bucket"]
    assert [round(float(np.ravel(p.get_data()[2])[0])) for p in strips] == [0, 1]
    assert ax.get_legend().get_texts()[0].get_text() == (
        f"ok runs per 5 min (bars; the tallest: {plots._FEW_AGENTS + 1})")


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
    late = [rows[round(y)] for (x0, y), (x1, _) in _by_gid(ax, "lateness").get_segments() if x1 > x0]
    # each ran (or, for lunch, was skipped) once, late, when the runtime came back
    assert sorted(late) == ["Reminders/alice.digest", "Reminders/alice.lunch", "Reminders/alice.poll"]
    assert [rows[round(y)] for _, y in _by_gid(ax, "skipped").get_offsets()] == ["Reminders/alice.lunch"]
    await after.aclose()


def test_importing_agentbook_and_its_plots_does_not_import_matplotlib():
    code = ("import sys, agentbook, agentbook.analytics.plots; "
            "assert 'matplotlib' not in sys.modules and 'pandas' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- latency, throughput, queue wait (drawn from the DuckDB views) ----------------------------
class Flaky(ab.Agent):
    """Handlers that fail (they count in latency) and one that is slow on purpose."""

    @ab.callable
    async def boom(self) -> None:
        raise ValueError("boom")

    @ab.callable
    async def crunch(self, n: int) -> int:
        return sum(range(n))


def _history_of_all(rt: ab.Runtime, failures: bool = True) -> pd.DataFrame:
    frames = [rt.get(c, n).history(limit=100_000, failures=failures)
              for c, n in zip(rt.agents()["class"], rt.agents()["name"], strict=True)]
    return pd.concat(frames, ignore_index=True)


def _rows(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def _marks(ax, gid: str) -> dict[str, float]:
    """Row label -> x of the percentile marker *gid* on that row."""
    rows = _rows(ax)
    return {rows[round(y)]: float(x) for x, y in _by_gid(ax, gid).get_offsets()}


def _ridges(ax, gid: str = "hist") -> list:
    return [p for p in ax.patches if p.get_gid() == gid]


async def test_latency_marks_p50_p95_p99_of_each_method_slowest_first(mem_rt, clock):
    import numpy as np

    await _busy_week(mem_rt, clock)
    flaky = mem_rt.get(Flaky, "f")
    for n in (10, 10_000, 100_000):
        await flaky.crunch(n)
    with pytest.raises(ValueError):
        await flaky.boom()
    history = _history_of_all(mem_rt)
    ran = history[history.outcome != "skipped"]
    seconds = (ran.duration_ms / 1000).groupby(ran.agent + "." + ran.method)

    ax = mem_rt.plot.latency().axes[0]
    p99 = seconds.quantile(0.99)
    assert _rows(ax) == sorted(p99.index, key=lambda label: (-p99[label], label))
    for gid, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        want = seconds.quantile(q)
        got = _marks(ax, gid)
        assert got == pytest.approx(want.to_dict(), rel=1e-9), gid
    assert "Flaky.boom" in _rows(ax), "failed runs took time too"
    assert (history.outcome == "skipped").sum() == 2, "and skipped ticks are left out"
    # each row's ridge is the histogram of that row's durations over the shared log bins
    ridges = _ridges(ax)
    assert len(ridges) == len(_rows(ax))
    for i, (ridge, label) in enumerate(zip(ridges, _rows(ax), strict=True)):
        heights, edges, base = ridge.get_data()
        assert base == pytest.approx(i + 0.4)
        counts, _ = np.histogram(seconds.get_group(label), bins=edges)
        assert np.allclose((base - heights) / (base - heights).max(), counts / counts.max())
    numbers = [t.get_text() for t in ax.texts if t.get_gid() == "numbers"]
    assert numbers[0].startswith("p50 ") and f"({seconds.size().max():,})" in "".join(numbers)
    assert ax.get_xscale() == "log"
    assert ax.get_title(loc="left") == f"Handler duration by method · {len(ran):,} runs"


async def test_latency_by_agent_keeps_the_top_rows_and_says_how_many_there_were(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    history = _history_of_all(mem_rt)
    ran = history[history.outcome != "skipped"]
    p99 = (ran.duration_ms / 1000).groupby(ran.agent + "/" + ran.name).quantile(0.99)
    ax = mem_rt.plot.latency(by="agent", top=2).axes[0]
    assert _rows(ax) == list(p99.sort_values(ascending=False).index[:2])
    assert ax.get_title(loc="left").endswith("· the 2 highest p99 of 3 agents")
    assert _marks(ax, "p99") == pytest.approx(p99.sort_values(ascending=False)[:2].to_dict())
    by_class = mem_rt.plot.latency(by="class").axes[0]
    assert sorted(_rows(by_class)) == ["Reminders", "Uploads"]
    by_source = mem_rt.plot.latency(by="source").axes[0]
    assert sorted(_rows(by_source)) == sorted({s.split(":")[0] for s in ran.source})
    with pytest.raises(ab.UsageError, match="by= takes one of"):
        mem_rt.plot.latency(by="colour")
    with pytest.raises(ab.UsageError, match="top="):
        mem_rt.plot.latency(top=0)


async def test_latency_selects_agents_and_a_time_range(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    alice = mem_rt.get(Reminders, "alice")
    history = alice.history(limit=1000)
    window = history[(history.ts >= pd.Timestamp(T0 + 3600, unit="s", tz="UTC"))
                     & (history.ts < pd.Timestamp(T0 + DAY, unit="s", tz="UTC"))
                     & (history.outcome != "skipped")]
    ax = mem_rt.plot.latency(agents=alice, since=T0 + 3600, until=T0 + DAY).axes[0]
    want = (window.duration_ms / 1000).groupby("Reminders." + window.method).quantile(0.5)
    assert _marks(ax, "p50") == pytest.approx(want.to_dict())
    assert ax.get_title(loc="left").endswith(f"· {len(window)} runs")
    empty = mem_rt.plot.latency(since=T0 + 30 * DAY).axes[0]
    assert [t.get_text() for t in empty.texts] == ["no handler runs in this time range"]


async def test_throughput_counts_versions_per_class_in_each_bin(mem_rt, clock):
    import numpy as np

    await _busy_week(mem_rt, clock)
    versions = _history_of_all(mem_rt, failures=False)
    ax = mem_rt.plot.throughput().axes[0]
    lines = {p.get_label(): p for p in ax.patches if p.get_gid() == "rate"}
    assert list(lines) == ["Reminders", "Uploads"], "busiest class first"
    width = 7200.0  # 3.5 days: the narrowest width with at most 60 bins
    # bins of hours read in versions per hour
    assert ax.get_title(loc="left") == (f"Versions per hour · {len(versions)} versions · peak "
                                        f"{_peak(versions, width) * 3600:.3g}/h · bins of 2 h")
    assert ax.get_ylabel() == "versions per hour"
    for cls, line in lines.items():
        rates, edges, _ = line.get_data()
        assert np.allclose(np.diff(edges), width / DAY)
        starts = np.round(edges[:-1] * DAY).astype(int)
        ts = np.array([t.timestamp() for t in versions[versions.agent == cls].ts])
        want = {int(b * width): n / width * 3600 for b, n in
                zip(*np.unique(np.floor(ts / width), return_counts=True), strict=True)}
        assert dict(zip(starts.tolist(), rates.tolist(), strict=True)) == pytest.approx(
            {s: want.get(s, 0.0) for s in starts.tolist()})
        assert rates.sum() * width / 3600 == pytest.approx((versions.agent == cls).sum())
    total = next(p for p in ax.patches if p.get_gid() == "total")
    assert np.allclose(total.get_data()[0], sum(p.get_data()[0] for p in lines.values()))


def _peak(versions: pd.DataFrame, width: float) -> float:
    import numpy as np

    bins = np.floor(np.array([t.timestamp() for t in versions.ts]) / width)
    return np.unique(bins, return_counts=True)[1].max() / width


async def test_throughput_bins_by_every_and_filters(mem_rt, clock):
    from datetime import timedelta

    import numpy as np

    await _busy_week(mem_rt, clock)
    ax = mem_rt.plot.throughput(agents=Uploads, every=timedelta(minutes=1)).axes[0]
    (line,) = [p for p in ax.patches if p.get_gid() == "rate"]
    rates, edges, _ = line.get_data()
    assert line.get_label() == "Uploads" and not [p for p in ax.patches if p.get_gid() == "total"]
    assert np.allclose(np.diff(edges), 60 / DAY)
    uploads = mem_rt.get(Uploads, "jobs").history(limit=1000, failures=False)
    assert rates.sum() == pytest.approx(len(uploads)), "per minute, in bins of a minute"
    assert ax.get_title(loc="left").startswith("Versions per minute · ")
    assert "bins of 1 min" in ax.get_title(loc="left")
    with pytest.raises(ab.UsageError, match="every="):
        mem_rt.plot.throughput(every=0)


async def test_throughput_sums_the_quiet_classes_as_other(mem_rt, monkeypatch):
    monkeypatch.setattr(plots_sql, "_MAX_LINES", 2)
    await mem_rt.get(Reminders, "a").hello()
    await mem_rt.get(Reminders, "b").hello()
    await mem_rt.get(Uploads, "u").enqueue([])
    await mem_rt.get(Flaky, "f").crunch(1)
    ax = mem_rt.plot.throughput().axes[0]
    lines = {p.get_label(): p.get_data()[0].sum() for p in ax.patches if p.get_gid() == "rate"}
    assert list(lines) == ["Reminders", "other"]
    assert lines["Reminders"] == 2 and lines["other"] == 2  # one bin of 1 s


async def test_queue_wait_is_the_time_from_queued_to_first_attempt(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    ax = mem_rt.plot.queue_wait().axes[0]
    assert _rows(ax) == ["Uploads.upload"]
    # on the virtual clock a queued item starts at the instant it was queued
    (zeros,) = _ridges(ax, "zeros")
    assert zeros.get_data()[0] == pytest.approx([0.4 - 0.8]), "a full-height bar"
    assert [t.get_text() for t in ax.texts if t.get_gid() == "zero share"] == ["100%"]
    assert _ridges(ax)[0].get_data()[0] == pytest.approx([0.4] * plots_sql._BINS), "no others"
    assert {gid: _marks(ax, gid)["Uploads.upload"] for gid in ("p50", "p99")} == {
        "p50": ax.get_xticks()[0], "p99": ax.get_xticks()[0]}
    assert ax.get_xticklabels()[0].get_text() == "0"
    assert ax.get_title(loc="left") == "Queue wait by method · 3 runs"


async def test_queue_wait_with_retries_counts_the_backoff(mem_rt, clock):
    import numpy as np

    await _busy_week(mem_rt, clock)
    runs = mem_rt.get(Uploads, "jobs").history(limit=100, failures=False)
    runs = runs[runs.source.str.startswith("queue:")]
    waits = (runs.ts - runs.due).dt.total_seconds()
    assert sorted(waits) == [0, 0, 0, 60, 60, 180], "retries wait 60 s, then 120 s more"
    ax = mem_rt.plot.queue_wait(retries=True).axes[0]
    assert _marks(ax, "p99")["Uploads.upload"] == pytest.approx(np.quantile(waits, 0.99))
    assert _marks(ax, "p50")["Uploads.upload"] == pytest.approx(np.quantile(waits, 0.5))
    heights, edges, base = _ridges(ax)[0].get_data()
    counts, _ = np.histogram(waits[waits > 0], bins=edges)
    assert np.allclose((base - heights) / 0.8, counts / counts.max())
    assert [t.get_text() for t in ax.texts if t.get_gid() == "zero share"] == ["50%"]
    assert ax.get_title(loc="left") == "Queue wait, every attempt, by method · 6 runs"
    texts = [t.get_text() for t in ax.texts if t.get_gid() == "numbers"]
    assert texts == ["p50 30 s · p95 2.5 min · p99 2.9 min  (6)"]


async def test_every_new_plot_honours_ax_and_says_when_there_is_nothing(mem_rt, clock):
    from matplotlib.figure import Figure

    for draw, empty in ((mem_rt.plot.latency, "no handler runs yet"),
                        (mem_rt.plot.throughput, "no versions yet"),
                        (mem_rt.plot.queue_wait, "no queued runs yet")):
        assert [t.get_text() for t in draw().axes[0].texts] == [empty]
    await _busy_week(mem_rt, clock)
    mine = Figure(figsize=(12, 4))
    axes = mine.subplots(1, 3)
    assert mem_rt.plot.latency(ax=axes[0]) is mine
    assert mem_rt.plot.throughput(ax=axes[1]) is mine
    assert mem_rt.plot.queue_wait(ax=axes[2]) is mine
    assert len(mine.axes) == 3 and _ridges(axes[0]) and _ridges(axes[2])


async def test_new_figures_render_with_agg_without_pyplot(rt, clock):
    from matplotlib import _pylab_helpers
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    await _busy_week(rt, clock)
    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    for fig in (rt.plot.latency(), rt.plot.throughput(), rt.plot.queue_wait(retries=True)):
        assert isinstance(fig, plotkit.figure_class())
        FigureCanvasAgg(fig).draw()
        assert fig._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers


# -- readable at any zoom: crowds, failures, short runs, zero durations ------------------------
class Ticker(ab.Agent):
    """Work at a fixed interval (twice: every *every* seconds and every ten times that)."""

    @ab.callable
    async def start(self, every: float) -> None:
        await self.schedule_every(every, "tick")
        await self.schedule_every(10 * every, "tick")

    async def tick(self) -> None:
        pass


async def test_hundreds_of_on_time_runs_are_drawn_as_runs_per_bucket(mem_rt, clock):
    import numpy as np

    await mem_rt.get(Ticker, "t").start(60)
    await clock.advance(hours=6)
    runs = plots._scheduled_runs(mem_rt, None, None, None)
    assert len(runs) == 396 and (runs.lateness_s == 0).all()
    ax = mem_rt.plot.schedule().axes[0]
    assert not len(_by_gid(ax, "ok").get_offsets()), "no markers piled into a solid line"
    assert not _by_gid(ax, "lateness").get_segments(), "nothing was late: no lines"
    assert not len(_by_gid(ax, "planned").get_offsets())
    (strip,) = [p for p in ax.patches if p.get_gid() == "runs per bucket"]
    heights, edges, base = strip.get_data()
    width = 300  # 6 h in at most 150 buckets
    assert np.allclose(np.diff(edges) * DAY, width)
    counts, _ = np.histogram([t.timestamp() for t in runs.ts], bins=np.round(edges * DAY))
    # five one-minute ticks in each 5 minutes, and a ten-minute one in every other
    assert set(counts[1:-1]) == {5, 6}
    assert np.allclose(base - heights, counts / counts.max() * 2 * plots._STRIP)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["ok runs per 5 min (bars; the tallest: 6)", "ok (396)"]
    assert ax.get_title(loc="left") == "396 scheduled runs · every run started when it was due"


async def test_replayed_steps_are_not_scheduled_runs_of_their_own(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    before = plots._scheduled_runs(mem_rt, None, None, None)
    alice = mem_rt.get(Reminders, "alice")
    replay = await alice.replay(2, on="alice-again")
    assert any(step[3] == "ok" for step in replay.steps)
    assert "alice-again" in set(_history_of_all(mem_rt).name)
    after = plots._scheduled_runs(mem_rt, None, None, None)
    assert len(after) == len(before) and "alice-again" not in set(after.name)


async def test_a_late_run_in_a_crowded_row_keeps_its_marker_and_line(mem_rt, clock):
    await mem_rt.get(Ticker, "t").start(60)
    await clock.advance(hours=6)
    clock.set(clock.now() + 3 * 3600)  # down for three hours
    await clock.advance(0)
    ax = mem_rt.plot.schedule().axes[0]
    assert [p.get_gid() for p in ax.patches] == ["runs per bucket"]
    late = [s for s in _by_gid(ax, "lateness").get_segments() if s[1][0] > s[0][0]]
    assert len(late) == len(_by_gid(ax, "ok").get_offsets()) == 2, "each schedule ran once, late"
    assert ax.get_title(loc="left").endswith("p99 0 s, max 3 h"), "the two stay in the title"


async def test_retries_and_dead_letters_keep_lanes_of_their_own_at_the_overview_zoom(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    ax = mem_rt.plot.schedule().axes[0]
    upload = _rows(ax).index("Uploads/jobs.upload")

    def lanes(gid: str) -> set[float]:
        return {float(y) for _, y in _by_gid(ax, gid).get_offsets() if round(y) == upload}

    assert lanes("ok") == {upload}
    assert lanes("retry") == {upload - plots._LANE} and lanes("dead") == {upload + plots._LANE}
    retried = {tuple(p) for p in _by_gid(ax, "retry").get_offsets()}
    others = {tuple(p) for g in ("ok", "dead", "skipped") for p in _by_gid(ax, g).get_offsets()}
    assert not retried & others, "no retry hides under another marker"
    # 3.5 days on one axis: the three failed attempts fall in one bucket, and say how many
    assert [t.get_text() for t in ax.texts if t.get_gid() == "retry count"] == ["3"]
    # zoomed in, only the two that failed at the same instant share a count
    zoomed = mem_rt.plot.schedule(agents=Uploads, until=T0 + 600).axes[0]
    assert [t.get_text() for t in zoomed.texts if t.get_gid() == "retry count"] == ["2"]
    assert len(_by_gid(zoomed, "retry").get_offsets()) == 3


async def test_a_run_of_a_few_seconds_fills_the_time_axis(mem_rt, clock):
    await mem_rt.get(Ticker, "t").start(0.25)
    await clock.advance(3)
    ax = mem_rt.plot.schedule().axes[0]
    left, right = ax.get_xlim()
    first, last = (T0 + 0.25) / DAY, (T0 + 3) / DAY
    assert left < first and right > last
    assert (right - left) * DAY == pytest.approx((last - first) * DAY * 1.08), "4% either side"
    one = mem_rt.plot.schedule(until=T0 + 0.3).axes[0]
    assert (one.get_xlim()[1] - one.get_xlim()[0]) * DAY < 2


async def test_throughput_reads_in_the_unit_of_its_bins(mem_rt, clock):
    await _busy_week(mem_rt, clock)
    versions = _history_of_all(mem_rt, failures=False)
    per = {"second": 1, "minute": 60, "hour": 3600, "day": DAY}
    for every, unit, until in ((1, "second", T0 + 300), (60, "minute", None),
                               (600, "minute", None), (3600, "hour", None), (DAY, "day", None)):
        ax = mem_rt.plot.throughput(every=every, until=until).axes[0]
        assert ax.get_ylabel() == f"versions per {unit}", every
        assert ax.get_title(loc="left").startswith(f"Versions per {unit} · "), every
        total = next(p for p in ax.patches if p.get_gid() == "total").get_data()[0]
        counted = versions if until is None else versions[versions.ts < pd.Timestamp(
            until, unit="s", tz="UTC")]
        assert total.sum() * every / per[unit] == pytest.approx(len(counted)), every


async def test_latency_leaves_forks_out_and_puts_no_zero_on_its_log_axis(mem_rt, clock, monkeypatch):
    await _busy_week(mem_rt, clock)
    await mem_rt.get(Reminders, "alice").fork("alice-2")
    assert "fork" in set(_history_of_all(mem_rt).method)
    ax = mem_rt.plot.latency().axes[0]
    assert not [r for r in _rows(ax) if r.endswith(".fork")], "a fork ran no handler"
    assert "0" not in [t.get_text() for t in ax.get_xticklabels()]
    assert not [line for line in ax.lines if line.get_gid() == "axis break"]
    # durations under the floor (here every one: 10 s) join a bar of their own, past a break
    monkeypatch.setattr(plots_sql, "_LATENCY_FLOOR", 10.0)
    ax = mem_rt.plot.latency().axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "< 10 s" and "0" not in ticks and "0 s" not in ticks
    assert ax.get_xlim()[0] > 0 and ax.get_xscale() == "log"
    assert [line.get_gid() for line in ax.lines if line.get_gid()] == ["axis break"]
    for gid in ("p50", "p95", "p99"):
        assert set(_marks(ax, gid).values()) == {ax.get_xticks()[0]}, gid
    numbers = [t.get_text() for t in ax.texts if t.get_gid() == "numbers"]
    assert numbers and all(t.startswith("p50 < 10 s · p95 < 10 s · p99 < 10 s") for t in numbers)
