"""``agentbook bench`` still runs: the quick suite produces every figure.

Benchmarks are never timed tests: nothing here asserts on speed, only that each
benchmark ran and reported finite numbers in the documented shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import math
import os
import sys
import tempfile

import pytest

from agentbook.bench import main
from agentbook.bench.core import GROUPS
from agentbook.bench.report import Result, Target, format_table
from agentbook.bench.timing import Sizes, in_flight, interleave_many

EXPECTED = [name for _, names in GROUPS.values() for name in names]
HAVE_LANGGRAPH = importlib.util.find_spec("langgraph") is not None
HAVE_OPENAI = importlib.util.find_spec("openai") is not None
HAVE_DBOS = importlib.util.find_spec("dbos") is not None
NEEDS_LANGGRAPH = {"durable_vs_langgraph", "approval_vs_langgraph", "at_state_vs_langgraph",
                   "at_state_vs_langgraph_filter"}
NEEDS_DBOS = {"workflow_steps", "workflow_steps_same_durability"}
#: Figures reported as a value alone (no floor, no ratio).
VALUE_ONLY = {"schedules_pending_memory", "lateness_real_clock_p50", "lateness_real_clock_p99",
              "ray_host_memory", "workflow_recovery_s", "workflow_recovery_twice",
              "ray_failover_s", "ray_move_s_per_1000"}
#: Figures whose value may be 0 (a count that must stay 0).
ZERO_OK = {"workflow_recovery_twice"}
WORKFLOW_GROUPS = ("workflow_steps", "workflow_step_overhead", "workflow_recovery")
RAY = {"ray_msgs_sequential", "ray_msgs_inflight", "ray_scaling", "ray_host_memory",
       "ray_nodes_msgs_1", "ray_nodes_msgs_2", "ray_nodes_msgs_3", "ray_replicated_cost",
       "ray_async_cost", "ray_failover_s", "ray_move_s_per_1000"}
#: Unit and target of the figures added with scheduling, approvals, time travel, Ray, chat,
#: workflows and real time at scale (issue 20: lateness awake, a call during a storm).
SHAPES = {
    "schedules_pending_memory": ("B/sched", None),
    "schedule_add_cost": ("us", "ratio <= 2"),
    "cron_day_firings": ("firings/s", "ratio >= 0.5"),
    "lateness_real_clock_p50": ("ms", None),
    "lateness_real_clock_p99": ("ms", None),
    "lateness_awake_p99": ("ms", "value <= 10"),
    "firing_us": ("us", None),
    "firing_us_cron": ("us", None),
    "call_p99_during_storm_ms": ("ms", "value <= 5"),
    "approval_round_trip": ("ms", "value <= 1"),
    "approval_vs_langgraph": ("trips/s", "ratio >= 5"),
    "at_state_ms": ("ms", "ratio <= 2"),
    "at_sql_ms": ("ms", "ratio <= 2"),
    "rewind_ms": ("ms", "ratio <= 2"),
    "fork_ms": ("ms", "ratio <= 2"),
    "at_state_vs_langgraph": ("lookups/s", "ratio >= 50"),
    "at_state_vs_langgraph_filter": ("lookups/s", None),
    "bisect_ms": ("ms", "ratio <= 0.05"),
    "sweep_step_ms": ("ms", "ratio <= 1.5"),
    "ray_msgs_sequential": ("msg/s", "ratio >= 0.8"),
    "ray_msgs_inflight": ("msg/s", "ratio >= 0.8"),
    "ray_scaling": ("msg/s", None),
    "ray_host_memory": ("B/agent", None),
    "ray_nodes_msgs_1": ("msg/s", "ratio >= 0.8"),
    "ray_nodes_msgs_2": ("msg/s", "ratio >= 0.8"),
    "ray_nodes_msgs_3": ("msg/s", "ratio >= 0.8"),
    "ray_replicated_cost": ("msg/s", None),
    "ray_async_cost": ("msg/s", None),
    "ray_failover_s": ("s", None),
    "ray_move_s_per_1000": ("s", None),
    "chat_turn": ("turns/s", "ratio >= 0.8"),
    "chat_wire_ttft": ("ms", "ratio <= 1.25"),
    "chat_wire_chars": ("chars/s", "ratio >= 0.8"),
    "chat_wire_ttft_100conn": ("ms", "ratio <= 1.25"),
    "chat_wire_chars_100conn": ("chars/s", "ratio >= 0.8"),
    "catchup_rows_per_s": ("rows/s", "value >= 500000"),
    "p99_by_method_ms": ("ms", "value <= 200"),
    "workflow_steps": ("steps/s", "ratio >= 10"),
    "workflow_steps_same_durability": ("steps/s", None),
    "workflow_step_overhead": ("us", "ratio <= 1.5"),
    "workflow_recovery_s": ("s", None),
    "workflow_recovery_twice": ("steps", "value <= 0"),
}


@contextlib.contextmanager
def _bench_dir():
    """Stores on tmpfs when there is one: creating thousands of agent files on a shared
    disk is slow (every checkpoint fsyncs) and the quick figures mean nothing anyway."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="ab-bench-test-", dir=base) as d:
        yield d


@pytest.fixture
def bench_dir():
    with _bench_dir() as d:
        yield d


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The whole quick suite, once: ``(exit code, table, json entries)``."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    table = io.StringIO()
    with _bench_dir() as d, contextlib.redirect_stdout(table):
        code = main(["--quick", "--json", str(out), "--dir", d])
    return code, table.getvalue(), json.loads(out.read_text())


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_entries(table: str, data: dict) -> None:
    """Every entry ran and has finite figures in the documented shape (or says why not)."""
    for name, entry in data.items():
        assert name in table
        assert {"value", "unit", "floor", "ratio", "target"} <= set(entry), name
        assert isinstance(entry["unit"], str) and entry["unit"], name
        if name in NEEDS_LANGGRAPH and not HAVE_LANGGRAPH:
            assert "pip install" in entry["skipped"]
            continue
        if name in NEEDS_DBOS and not HAVE_DBOS:
            assert "DBOS Transact is not installed" in entry["skipped"]
            assert "pip install" in entry["skipped"]
            continue
        if name in RAY:  # quick mode never starts Ray
            assert "quick mode skips Ray" in entry["skipped"], name
            continue
        if name == "chat_turn" and not HAVE_OPENAI:
            assert "pip install" in entry["skipped"]
            continue
        assert entry["skipped"] is None, (name, entry["skipped"])
        assert _finite(entry["value"]), name
        assert entry["value"] >= 0 if name in ZERO_OK else entry["value"] > 0, name
        if name in VALUE_ONLY:
            assert entry["floor"] is None and entry["ratio"] is None, name
        else:
            for key in ("floor", "ratio"):
                assert _finite(entry[key]), (name, key, entry[key])
            assert entry["floor"] > 0, name
        assert entry["target"] is None or isinstance(entry["target"], str)
        assert entry["met"] in (True, False, None)
        assert entry["note"], name


def test_quick_suite_produces_every_entry(quick_run):
    code, table, data = quick_run
    assert code == 0
    assert list(data) == EXPECTED
    _check_entries(table, data)


def test_new_figures_have_their_units_and_targets(quick_run):
    _, _, data = quick_run
    assert set(SHAPES) <= set(data)
    for name, (unit, target) in SHAPES.items():
        assert (data[name]["unit"], data[name]["target"]) == (unit, target), name
    assert data["schedules_pending_memory"]["note"].startswith("1,000 pending")
    assert "50 agents" in data["cron_day_firings"]["note"]
    assert "file runtime" in data["cron_day_firings"]["note"]
    assert "200 firings" in data["call_p99_during_storm_ms"]["note"]
    assert "value at 300 versions, floor at 60" in data["at_state_ms"]["note"]


def test_only_runs_the_chosen_benchmarks(tmp_path, bench_dir):
    out = tmp_path / "only.json"
    assert main(["--quick", "--only", "import_time,burst_send,lateness_real_clock_p99",
                 "--json", str(out), "--dir", bench_dir]) == 0
    assert list(json.loads(out.read_text())) == [
        "burst_send", "import_time", "lateness_real_clock_p50", "lateness_real_clock_p99"]


def test_unknown_name_is_a_usage_error(capsys):
    assert main(["--quick", "--only", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(("peer", "missing"), [
    ("langgraph", "LangGraph is not installed; pip install 'agentbook[bench]'"),
    ("dbos", "DBOS Transact is not installed (dbos); pip install 'agentbook[bench]'"),
])
def test_a_peer_skips_with_a_clear_message(monkeypatch, tmp_path, peer, missing):
    from agentbook.bench import peers

    monkeypatch.setenv("AGENTBOOK_BENCH_PEERS", str(tmp_path))
    monkeypatch.delitem(sys.modules, f"_agentbook_bench_peer_{peer}", raising=False)
    reason = peers.load_peer(peer)
    assert isinstance(reason, str) and "AGENTBOOK_BENCH_PEERS" in reason
    (tmp_path / f"{peer}_peer.py").write_text(f"MISSING = {missing!r}\n")
    try:
        assert peers.load_peer(peer) == missing
        if peer == "dbos":  # the workflow group reports the skip with that reason
            from agentbook.bench.workflows import bench_steps

            result, beside = asyncio.run(bench_steps(Sizes.quick(), str(tmp_path)))
            assert result.name == "workflow_steps" and result.skipped == missing
            assert beside.name == "workflow_steps_same_durability" and beside.skipped == missing
            assert result.target == Target("ratio", ">=", 10) and result.value is None
    finally:  # (not monkeypatch: it would put the stand-in back at teardown)
        sys.modules.pop(f"_agentbook_bench_peer_{peer}", None)


def test_workflow_groups_run_in_quick_mode(tmp_path, bench_dir):
    out = tmp_path / "workflows.json"
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        code = main(["--quick", "--only", ",".join(WORKFLOW_GROUPS), "--json", str(out),
                     "--dir", bench_dir])
    assert code == 0
    data = json.loads(out.read_text())
    assert list(data) == [n for g in WORKFLOW_GROUPS for n in GROUPS[g][1]]
    _check_entries(table.getvalue(), data)
    for name in data:
        assert (data[name]["unit"], data[name]["target"]) == SHAPES[name], name
    assert data["workflow_recovery_twice"]["value"] == 0, data["workflow_recovery_twice"]
    assert "20 runs of 10 steps over 2 agents" in data["workflow_recovery_s"]["note"]
    assert os.listdir(bench_dir) == [], "the groups leave nothing behind"


@pytest.mark.skipif(not HAVE_DBOS, reason="DBOS is not installed (pip install -e '.[test]')")
def test_dbos_peer_runs_and_shuts_down_twice(tmp_path):
    import threading

    from agentbook.bench.peers import load_peer

    peer_mod = load_peer("dbos")
    before = threading.active_count()
    for i in range(2):  # DBOS is a singleton: a closed peer lets the next one launch
        peer = peer_mod.DBOSPeer(str(tmp_path / f"dbos-{i}.sqlite"))
        try:
            assert peer.run(2, 3) > 0
        finally:
            peer.close()
        assert threading.active_count() == before, "DBOS's threads stopped"


def test_ray_group_skips_in_quick_mode_and_without_ray(monkeypatch, tmp_path):
    import dataclasses

    from agentbook.bench.raybench import NAMES, bench_ray

    quick = asyncio.run(bench_ray(Sizes.quick(), str(tmp_path)))
    assert [r.name for r in quick] == list(NAMES)
    assert all("quick mode skips Ray" in r.skipped for r in quick)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    missing = asyncio.run(bench_ray(dataclasses.replace(Sizes.quick(), ray=True), str(tmp_path)))
    assert all("Ray is not installed" in r.skipped for r in missing)
    assert missing[0].target == Target("ratio", ">=", 0.8)


def test_ray_nodes_group_skips_in_quick_mode_and_without_ray(monkeypatch, tmp_path):
    import dataclasses

    from agentbook.bench.raynodes import NAMES, bench_ray_nodes

    quick = asyncio.run(bench_ray_nodes(Sizes.quick(), str(tmp_path)))
    assert [r.name for r in quick] == list(NAMES)
    assert all("quick mode skips Ray" in r.skipped for r in quick)
    monkeypatch.setitem(sys.modules, "ray", None)
    missing = asyncio.run(bench_ray_nodes(dataclasses.replace(Sizes.quick(), ray=True),
                                          str(tmp_path)))
    assert all("Ray is not installed" in r.skipped for r in missing)
    assert missing[0].target == Target("ratio", ">=", 0.8)


@pytest.mark.skipif(not HAVE_OPENAI, reason="the openai SDK is not installed (pip install -e '.[test]')")
def test_chat_skips_without_the_loopback_server(monkeypatch, tmp_path):
    from agentbook.bench import chatbench

    monkeypatch.setattr(chatbench, "load_loopback", lambda: "no loopback server here")
    (result,) = asyncio.run(chatbench.bench_chat(Sizes.quick(), str(tmp_path)))
    assert result.name == "chat_turn" and result.target == Target("ratio", ">=", 0.8)
    assert result.skipped == "no loopback server here"


async def test_interleave_many_rotates_which_side_goes_first():
    calls: list[str] = []

    def side(name: str, figure: float):
        def run() -> float:
            calls.append(name)
            return figure
        return run

    rounds = await interleave_many([side("a", 1), side("b", 2), side("c", 3)], 3, warmup=False)
    assert rounds == [(1, 2, 3)] * 3
    assert calls == list("abc" "bca" "cab")


async def test_in_flight_keeps_that_many_calls_going():
    live, peak, seen = [0], [0], []

    async def call(i: int) -> None:
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        await asyncio.sleep(0)
        seen.append(i)
        live[0] -= 1

    await in_flight(call, 50, 8)
    assert sorted(seen) == list(range(50)) and peak[0] == 8


def test_hand_written_approval_floor(tmp_path):
    from agentbook.bench.floors import HandApproval

    hand = HandApproval(str(tmp_path / "floor.db"))
    try:
        assert [hand.round_trip() for _ in range(3)] == [1, 2, 3]
        rows = hand.conn.execute("SELECT status, result FROM approvals ORDER BY id").fetchall()
        assert rows == [("approved", "1"), ("approved", "2"), ("approved", "3")]
        assert hand.conn.execute("SELECT count(*) FROM history").fetchall() == [(6,)]
    finally:
        hand.close()


def test_replayed_sql_writes_what_agentbook_wrote(tmp_path):
    """The SQL floor of a firing replays agentbook's own statements faithfully: the copies
    end up with the rows the stores got (history with its hash chain, state, events), and
    only the agents' files are copied."""
    import apsw

    import agentbook as ab
    from agentbook.bench.cron import BenchAlarm
    from agentbook.bench.floors import ReplayedSql

    replay = ReplayedSql(str(tmp_path / "sql"))
    replay.watch()
    clock = ab.VirtualClock()

    async def go() -> list[str]:
        rt = ab.Runtime(str(tmp_path / "rt"), clock=clock, durability="normal")
        try:
            refs = [rt.get(BenchAlarm, f"a-{i}") for i in range(3)]
            for ref in refs:
                await ref.ping()
                await ref.arm(clock.now() + 10)
            copied = replay.copy(os.sep + "BenchAlarm" + os.sep)
            assert copied == 3
            replay.recording(True)
            await clock.advance(seconds=10)
            replay.recording(False)
            return [rt.path_of(("BenchAlarm", f"a-{i}")) for i in range(3)]
        finally:
            await rt.aclose()

    paths = asyncio.run(go())
    kinds = sorted({sql.split()[0] for _, sql, _ in replay.log})
    assert kinds == ["BEGIN", "COMMIT", "DELETE", "INSERT", "SELECT"]
    statements, wall, cpu = replay.replay()
    assert statements == len(replay.log) and wall > 0 and cpu >= 0
    query = ("SELECT (SELECT group_concat(version || method || outcome || chain, ';') FROM "
             "_ab_history), (SELECT state FROM _ab_state), (SELECT count(*) FROM _ab_events), "
             "(SELECT count(*) FROM _ab_schedules)")
    for path in paths:
        copy = replay.copies[path][:-3] + "-replay.db"
        rows = [apsw.Connection(p).execute(query).fetchall() for p in (path, copy)]
        assert rows[0] == rows[1] and rows[0][0][1] == '{"rings":1}'
    replay.close()


@pytest.mark.skipif(not HAVE_LANGGRAPH, reason="LangGraph is not installed (pip install -e '.[test]')")
def test_langgraph_approval_and_history_peers(tmp_path):
    from agentbook.bench.peers import load_peer

    peer = load_peer("langgraph")
    approvals = peer.ApprovalPeer(str(tmp_path / "a.db"))
    history = peer.HistoryPeer(str(tmp_path / "h.db"), 60)
    try:
        assert [approvals.round_trip() for _ in range(2)] == [1, 2]
        assert history.count() >= 60
        step = history.newest_step() // 2
        assert history.scan(step) == history.filtered(step)
    finally:
        approvals.close()
        history.close()


def test_time_travel_agents_grow_to_the_asked_length(tmp_path):
    import agentbook as ab
    from agentbook.bench.travel import BenchLedger, grow

    async def go() -> tuple:
        rt = ab.Runtime(str(tmp_path / "rt"))
        try:
            ref = rt.get(BenchLedger, "a")
            await grow(ref, 130)
            past = ref.at(80)
            row = past.sql("SELECT v FROM items WHERE id = ?", 79)
            return ref.version, past.state, int(row.v[0]), len(ref.sql("SELECT * FROM items"))
        finally:
            await rt.aclose()

    assert asyncio.run(go()) == (130, {"n": 79}, 79, 100)


def test_time_travel_whatif_group_runs_in_quick_mode(tmp_path, bench_dir):
    out = tmp_path / "whatif.json"
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        code = main(["--quick", "--only", "whatif", "--json", str(out), "--dir", bench_dir])
    assert code == 0
    data = json.loads(out.read_text())
    assert list(data) == ["bisect_ms", "sweep_step_ms"]
    _check_entries(table.getvalue(), data)
    for name in data:
        assert (data[name]["unit"], data[name]["target"]) == SHAPES[name], name
    assert "over 300 versions" in data["bisect_ms"]["note"]
    assert os.listdir(bench_dir) == [], "the group leaves nothing behind"


def test_table_and_targets():
    good = Result.from_rounds("a", "msg/s", [(10.0, 20.0), (12.0, 20.0), (8.0, 20.0)],
                              Target("ratio", ">=", 0.5))
    assert (good.value, good.floor, good.ratio, good.met) == (10.0, 20.0, 0.5, True)
    small = Result.from_rounds("m", "B/agent", [(2048.0, 400.0)], Target("value", "<=", 1024))
    assert small.met is False
    skipped = Result.skip("lg", "msg/s", "LangGraph is not installed")
    assert skipped.met is None
    table = format_table([good, small, skipped])
    assert "ratio >= 0.5" in table and "skipped - LangGraph is not installed" in table


def test_quick_mode_judges_no_target():
    """--quick's figures mean nothing: its table says n/a where the full one says yes/NO, and
    its JSON has met null; it stays small (hibernated_memory took 8-16 s at 2000 agents)."""
    from agentbook.bench.report import Result, Target, format_table, to_json

    slow = Result.from_rounds("slow", "msg/s", [(1.0, 4.0)], Target("ratio", ">=", 0.5), "n")
    plain = Result.from_rounds("plain", "msg/s", [(1.0, 4.0)], None, "n")
    assert slow.met is False
    full, quick = format_table([slow, plain]), format_table([slow, plain], quick=True)
    assert full.splitlines()[2].endswith("NO") and full.splitlines()[3].endswith("-")
    assert quick.splitlines()[2].endswith("n/a") and " NO" not in quick
    assert to_json([slow], quick=True)["slow"]["met"] is None
    assert to_json([slow])["slow"]["met"] is False
    assert Sizes.quick().memory_agents <= 100 and Sizes.quick().memory_floor_agents <= 100
