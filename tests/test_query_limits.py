"""Queries written by models or people (issue 18): they are capped in memory and result size,
their time budget holds also for steps that make big values, ``ref.sql`` has a budget too,
and ``rt.sql`` is read-only by DuckDB's own parse of the statement and a read-only
transaction, not by a keyword list (``EXPLAIN ANALYZE DELETE`` ran the DELETE).

The budgets are real seconds (SQLite's progress handler reads the monotonic clock); each
test that could run long has its own watchdog that interrupts the connection, so it stays
bounded whatever happens.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import apsw
import pytest

import agentbook as ab
from agentbook.store import sqlaccess

ROWS30 = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {n}) "


class Reader(ab.Agent):
    initial_state = {"asked": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, text TEXT)")

    @ab.callable
    async def seed(self) -> None:
        self.sql("INSERT INTO notes(text) VALUES ('a'), ('b'), ('c')")
        self.set_state({"asked": 0})

    @ab.callable
    async def model_sql(self, query: str, watchdog: float = 15.0) -> Any:
        """A model's SQL tool; the test's own watchdog interrupts it after *watchdog* s."""
        timer = threading.Timer(watchdog, self._ab_instance.store.conn.interrupt)
        timer.start()
        started = time.monotonic()
        try:
            rows = self.sql(query, readonly=True)
            return {"rows": len(rows), "seconds": time.monotonic() - started}
        except ab.SQLError as exc:
            return {"error": str(exc), "seconds": time.monotonic() - started}
        finally:
            timer.cancel()


@pytest.fixture
async def reader(rt: ab.Runtime) -> ab.AgentRef:
    ref = rt.get(Reader, "r")
    await ref.seed()
    return ref


def _watchdog(conn: apsw.Connection, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, conn.interrupt)
    timer.start()
    return timer


async def test_a_model_query_of_huge_values_is_capped_in_memory_and_time(reader):
    """``SELECT zeroblob(100000000)`` x 30 rows peaked at 2.98 GB and ran 2.83 s past a
    0.5 s budget (few VM steps): now its values are capped, so it fails at once."""
    apsw.memory_high_water(True)
    out = await reader.model_sql(ROWS30.format(n=30) + "SELECT zeroblob(100000000) FROM r")
    assert "error" in out, out
    assert "over 4 MB" in out["error"] and "READONLY_LIMITS.value_bytes" in out["error"]
    assert out["seconds"] < 1.0
    assert apsw.memory_high_water() < 64 << 20  # (SQLite's own allocations, all connections)
    # many values under the cap: the result is capped, and says how to raise it
    out = await reader.model_sql(ROWS30.format(n=30) + "SELECT zeroblob(3000000) FROM r")
    assert "result is over 32 MB" in out.get("error", ""), out
    assert "READONLY_LIMITS.result_bytes" in out["error"]
    assert (await reader.model_sql("SELECT text FROM notes"))["rows"] == 3


async def test_the_time_budget_holds_for_steps_that_make_big_values(reader):
    """Steps that each build a string of nearly 4 MB (the cap): the budget is looked at often enough."""
    query = (ROWS30.format(n=400) +
             "SELECT length(replace(replace(replace(hex(zeroblob(1900000 + i)), '0', '1'), '1', '2'),"
             " '2', '3')) AS n FROM r")
    out = await reader.model_sql(query)  # 0.5 s budget (the runtime's default)
    assert "max_query_seconds" in out.get("error", ""), out
    assert out["seconds"] < 1.5, out


async def test_ref_sql_has_a_time_budget(reader):
    """30 M rows read from outside blocked the event loop for 4.8 s."""
    conn = reader._ab_rt.instances[reader._ab_key].store.reader()
    timer = _watchdog(conn, 15.0)
    counting = ROWS30.format(n=30_000_000) + "SELECT count(*) AS n FROM r"
    started = time.monotonic()
    try:
        with pytest.raises(ab.SQLError, match=r"longer than 2 s.*timeout="):
            reader.sql(counting)
        assert time.monotonic() - started < 3.5
        # rows fetched count too, and the budget is the caller's to choose
        started = time.monotonic()
        with pytest.raises(ab.SQLError, match="longer than 0.2 s"):
            reader.sql(ROWS30.format(n=30_000_000) + "SELECT i FROM r", timeout=0.2)
        assert time.monotonic() - started < 1.5
    finally:
        timer.cancel()
    assert len(reader.sql("SELECT * FROM notes", timeout=None)) == 3
    with pytest.raises(ab.SQLError, match="max_bytes="):
        reader.sql("SELECT zeroblob(2000) AS b FROM notes", max_bytes=1000)
    with pytest.raises(ab.UsageError, match="timeout"):
        reader.sql("SELECT 1", timeout=-1)


async def test_the_caps_can_be_raised(reader, monkeypatch):
    monkeypatch.setattr(sqlaccess.READONLY_LIMITS, "value_bytes", 8 << 20)
    out = await reader.model_sql("SELECT zeroblob(6000000) AS b")
    assert out.get("rows") == 1, out
    monkeypatch.setattr(sqlaccess.READONLY_LIMITS, "value_bytes", None)
    monkeypatch.setattr(sqlaccess.READONLY_LIMITS, "result_bytes", None)
    assert (await reader.model_sql(ROWS30.format(n=10) + "SELECT zeroblob(5000000) FROM r"))[
        "rows"] == 10


FORGERIES = [
    "EXPLAIN ANALYZE DELETE FROM history",
    "EXPLAIN ANALYZE UPDATE agents SET state = '{\"forged\": true}'",
    "EXPLAIN ANALYZE INSERT INTO history SELECT * FROM history",
    "EXPLAIN ANALYZE CREATE TABLE forged AS SELECT 1 AS x",
    "explain /* hi */ analyze -- there\n delete from events",
    "EXPLAIN (FORMAT json) DELETE FROM history",
    "EXPLAIN DELETE FROM history",
    "SELECT 1; EXPLAIN ANALYZE DELETE FROM history",
    "CALL pragma_version()",
    "PIVOT history ON outcome",
]


async def test_rt_sql_is_read_only_by_structure(rt, reader):
    before = rt.sql("SELECT count(*) AS n FROM history").n[0]
    state = rt.sql("SELECT state FROM agents").state[0]
    for query in FORGERIES:
        with pytest.raises(ab.ReadOnlyError, match="only reads"):
            rt.sql(query)
    assert rt.sql("SELECT count(*) AS n FROM history").n[0] == before
    assert rt.sql("SELECT state FROM agents").state[0] == state
    assert "forged" not in set(rt.sql("SHOW TABLES").name)
    # queries and their plans still work
    assert len(rt.sql("EXPLAIN SELECT * FROM history")) >= 1
    assert len(rt.sql("EXPLAIN ANALYZE SELECT count(*) FROM history")) >= 1
    assert len(rt.sql("DESCRIBE history")) > 3
    assert rt.sql("FROM agents SELECT name").name.tolist() == ["r"]
