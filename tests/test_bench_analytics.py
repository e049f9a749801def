"""The analytics benchmark still runs and reports its two figures in the suite's format.

Benchmarks are never timed tests: nothing here asserts on speed.
"""

from __future__ import annotations

import asyncio
import math

import agentbook as ab
from agentbook.bench import analytics


def test_quick_run_reports_both_entries_in_the_suite_format(tmp_path):
    entries = analytics.run(quick=True, directory=str(tmp_path))
    assert list(entries) == ["catchup_rows_per_s", "p99_by_method_ms"]
    for name, entry in entries.items():
        assert {"value", "unit", "floor", "ratio", "target", "met", "note", "samples"} <= set(entry)
        assert entry["skipped"] is None, name
        for key in ("value", "floor", "ratio"):
            assert isinstance(entry[key], float) and math.isfinite(entry[key]) and entry[key] > 0
    assert entries["catchup_rows_per_s"]["unit"] == "rows/s"
    assert entries["catchup_rows_per_s"]["target"] == "value >= 500000"
    assert entries["p99_by_method_ms"]["unit"] == "ms"
    assert entries["p99_by_method_ms"]["target"] == "value <= 200"
    assert list(tmp_path.iterdir()) == [], "the temporary stores are removed"


def test_generated_stores_are_real_stores_the_views_read(tmp_path):
    rows = asyncio.run(analytics.make_stores(str(tmp_path / "s"), agents=3, rows_per_agent=40))
    assert rows == 120

    async def look() -> tuple:
        rt = ab.Runtime(tmp_path / "s")
        try:
            ref = rt.get("BenchAnalytics", "agent-0001")
            counts = rt.sql("SELECT count(*) AS n, count(DISTINCT name) AS agents,"
                            " count(*) FILTER (WHERE source LIKE 'queue:%') AS queued"
                            " FROM history")
            return ref.version, ref.history(limit=1).method[0], counts.values.tolist()[0]
        finally:
            await rt.aclose()

    version, method, (n, agents, queued) = asyncio.run(look())
    assert version == 40 and method in analytics.METHODS
    assert (n, agents) == (120, 3) and queued == 3 * 3  # every tenth generated row


def test_suite_sizes_pick_full_or_quick():
    from agentbook.bench.timing import Sizes

    assert analytics._sizes_for(Sizes.full()).rows == 1_000_000
    assert analytics._sizes_for(Sizes.quick()).rows == analytics.AnalyticsSizes.quick().rows
