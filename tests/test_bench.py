"""``agentbook bench`` still runs: the quick suite produces every figure.

Benchmarks are never timed tests: nothing here asserts on speed, only that each
benchmark ran and reported finite numbers in the documented shape.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

from agentbook.bench import main
from agentbook.bench.core import GROUPS
from agentbook.bench.report import Result, Target, format_table

EXPECTED = [name for _, names in GROUPS.values() for name in names]
HAVE_LANGGRAPH = importlib.util.find_spec("langgraph") is not None


@pytest.fixture
def bench_dir(tmp_path):
    """Stores on tmpfs when there is one: creating thousands of agent files on a shared
    disk is slow (every checkpoint fsyncs) and the quick figures mean nothing anyway."""
    if os.access("/dev/shm", os.W_OK):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ab-bench-test-", dir="/dev/shm") as d:
            yield d
    else:
        yield str(tmp_path)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quick_suite_produces_every_entry(tmp_path, bench_dir, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out), "--dir", bench_dir]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert list(data) == EXPECTED
    for name, entry in data.items():
        assert name in table
        assert {"value", "unit", "floor", "ratio", "target"} <= set(entry), name
        assert isinstance(entry["unit"], str) and entry["unit"], name
        if name == "durable_vs_langgraph" and not HAVE_LANGGRAPH:
            assert "pip install" in entry["skipped"]
            continue
        assert entry["skipped"] is None, (name, entry["skipped"])
        for key in ("value", "floor", "ratio"):
            assert _finite(entry[key]), (name, key, entry[key])
        assert entry["value"] > 0 and entry["floor"] > 0, name
        assert entry["target"] is None or isinstance(entry["target"], str)
        assert entry["met"] in (True, False, None)


def test_only_runs_the_chosen_benchmarks(tmp_path, bench_dir):
    out = tmp_path / "only.json"
    assert main(["--quick", "--only", "import_time,burst_send", "--json", str(out),
                 "--dir", bench_dir]) == 0
    assert list(json.loads(out.read_text())) == ["burst_send", "import_time"]


def test_unknown_name_is_a_usage_error(capsys):
    assert main(["--quick", "--only", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_langgraph_peer_skips_with_a_clear_message(monkeypatch, tmp_path):
    from agentbook.bench import peers

    monkeypatch.setenv("AGENTBOOK_BENCH_PEERS", str(tmp_path))
    monkeypatch.delitem(sys.modules, "_agentbook_bench_peer_langgraph", raising=False)
    reason = peers.load_peer("langgraph")
    assert isinstance(reason, str) and "AGENTBOOK_BENCH_PEERS" in reason
    missing = "LangGraph is not installed; pip install 'agentbook[bench]'"
    (tmp_path / "langgraph_peer.py").write_text(f"MISSING = {missing!r}\n")
    assert peers.load_peer("langgraph") == missing
    monkeypatch.delitem(sys.modules, "_agentbook_bench_peer_langgraph", raising=False)


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
