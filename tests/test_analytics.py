"""DuckDB views: caught up incrementally, equal to a rebuild, read-only, never fatal."""

from __future__ import annotations

import pytest

import agentbook as ab


class Metric(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def work(self, k: int) -> int:
        if k < 0:
            raise ValueError("negative work")
        self.set_state({"n": self.state["n"] + k})
        return self.state["n"]

    @ab.callable
    async def later(self, seconds: float) -> None:
        await self.schedule(seconds, "tick")

    async def tick(self) -> None:
        self.set_state({"n": self.state["n"] + 1000})


async def _fill(rt, agents=5, steps=4):
    for i in range(agents):
        ref = rt.get(Metric, f"m{i}")
        for k in range(steps):
            await ref.work(k)
    with pytest.raises(ValueError):
        await rt.get(Metric, "m0").work(-1)


async def test_history_view_has_every_version_and_failure(mem_rt):
    await _fill(mem_rt)
    frame = mem_rt.sql("SELECT agent, name, outcome, count(*) AS n FROM history GROUP BY ALL"
                       " ORDER BY name, outcome")
    assert frame[frame.outcome == "ok"].n.tolist() == [4] * 5
    assert frame[frame.outcome == "error"].name.tolist() == ["m0"]
    p99 = mem_rt.sql("SELECT method, quantile_cont(duration_ms, .99) AS p99 FROM history"
                     " GROUP BY ALL")
    assert p99.method.tolist() == ["work"] and p99.p99[0] >= 0


async def test_catch_up_adds_exactly_the_new_rows_and_equals_a_rebuild(mem_rt):
    await _fill(mem_rt)
    before = mem_rt.sql("SELECT count(*) AS n FROM history").n[0]
    await mem_rt.get(Metric, "m3").work(5)
    await mem_rt.get(Metric, "new").work(1)
    assert mem_rt.analytics.catch_up() == 2
    assert mem_rt.analytics.catch_up() == 0
    after = mem_rt.sql("SELECT * FROM history ORDER BY agent, name, version NULLS LAST, ts")
    assert len(after) == before + 2
    mem_rt.analytics.rebuild()
    rebuilt = mem_rt.sql("SELECT * FROM history ORDER BY agent, name, version NULLS LAST, ts")
    assert after.drop(columns=["duration_ms"]).equals(rebuilt.drop(columns=["duration_ms"]))


async def test_agents_schedules_and_approvals_views(mem_rt, clock):
    await _fill(mem_rt, agents=2, steps=1)
    await mem_rt.get(Metric, "m1").later(60)
    agents = mem_rt.sql("SELECT name, version, state->>'n' AS n FROM agents ORDER BY name")
    assert agents.name.tolist() == ["m0", "m1"]
    assert agents.version.tolist() == [1, 2]
    sched = mem_rt.sql("SELECT name, callback, type FROM schedules")
    assert sched.values.tolist() == [["m1", "tick", "delayed"]]
    await clock.advance(61)
    assert mem_rt.sql("SELECT count(*) AS n FROM schedules").n[0] == 0
    late = mem_rt.sql("SELECT lateness_s FROM history WHERE due IS NOT NULL")
    assert late.lateness_s.tolist() == [0.0]


async def test_events_are_on_record_without_asking(mem_rt):
    await mem_rt.get(Metric, "e").work(1)
    mem_rt.capture_events()  # (a no-op now: kept so old notebooks run)
    await mem_rt.get(Metric, "e").work(2)
    types = mem_rt.sql("SELECT type FROM events ORDER BY version, type").type.tolist()
    assert types == ["rpc", "state:update", "rpc", "state:update"]


async def test_the_views_are_read_only_and_errors_are_short(mem_rt):
    await _fill(mem_rt, agents=1, steps=1)
    for statement in ["DELETE FROM history", "DROP TABLE agents", "INSERT INTO events VALUES"
                      " ('x', 'a', 'b', '{}', now())", "CREATE TABLE x(a INT)"]:
        with pytest.raises(ab.ReadOnlyError, match="only reads"):
            mem_rt.sql(statement)
    with pytest.raises(ab.SQLError, match="syntax error") as info:
        mem_rt.sql("SELEC 1")
    assert "\n" not in str(info.value)
    with pytest.raises(ab.SQLError, match="nope"):
        mem_rt.sql("SELECT * FROM nope")
    assert mem_rt.sql("SELECT count(*) AS n FROM history").n[0] == 2  # one version, one failure


async def test_a_damaged_store_is_reported_and_skipped(rt, capsys):
    await rt.get(Metric, "ok").work(1)
    bad = rt.get(Metric, "bad")
    await bad.work(1)
    rt.hibernate()
    with open(rt.path_of(bad._ab_key), "r+b") as fh:
        fh.write(b"garbage" * 1000)
    frame = rt.sql("SELECT name FROM history")
    assert frame.name.tolist() == ["ok"]
    assert "skipped Metric('bad')" in capsys.readouterr().err


def test_the_ipython_extension_registers_the_magics():
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "agentbook")
    assert "agents" in ip.magics_manager.magics["line"]
    assert "sql" in ip.magics_manager.magics["cell"]
