"""Group 6: SQL that a model wrote runs through ``self.sql(query, *params, readonly=True)``:
queries only, on the agent's own tables, with values bound as parameters.

``RelAnalyst.model_sql`` plays the part of a tool a model calls with SQL of its own
making. Every hostile statement below - writes of every kind, schema changes, temporary
tables, ``ATTACH``, ``load_extension``, ``PRAGMA`` writes (and reads), the internal
``_ab_`` tables under any spelling, transaction control, ``VACUUM INTO``, a write hidden
after a harmless ``SELECT`` - must come back as a typed error with the store unchanged,
and the agent must go on working. Values the model passes (quotes, ``OR 1=1``, another
statement) are bound parameters, never SQL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import agentbook as ab

from . import storeutil

SECRET = "sk-model-must-not-see-this"

HOSTILE = [
    # writes to the agent's own tables
    "INSERT INTO orders(amount, customer) VALUES (1, 'x')",
    "INSERT INTO orders(amount, customer) VALUES (1, 'x') RETURNING id",
    "REPLACE INTO orders(id, amount, customer) VALUES (1, 0, 'x')",
    "INSERT INTO orders(id, amount, customer) VALUES (1, 0, 'x') "
    "ON CONFLICT(id) DO UPDATE SET amount = 0",
    "UPDATE orders SET amount = 0",
    "DELETE FROM orders",
    "WITH doomed AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN doomed",
    "SELECT count(*) FROM orders; DELETE FROM orders",
    "SELECT 1; UPDATE orders SET customer = 'pwned'",
    # schema
    "CREATE TABLE evil(x)",
    "CREATE TEMP TABLE evil AS SELECT * FROM orders",
    "CREATE INDEX evil ON orders(customer)",
    "CREATE VIEW evil AS SELECT * FROM orders",
    "CREATE TRIGGER evil AFTER INSERT ON orders BEGIN DELETE FROM orders; END",
    "DROP TABLE orders",
    "ALTER TABLE orders ADD COLUMN evil TEXT",
    "ALTER TABLE orders RENAME TO gone",
    # other databases and extensions
    "ATTACH DATABASE ':memory:' AS other",
    "ATTACH DATABASE '/tmp/agentbook-evil.db' AS other",
    "DETACH DATABASE main",
    "SELECT load_extension('/usr/lib/evil.so')",
    "SELECT load_extension('evil', 'entry')",
    "SELECT writefile('/tmp/agentbook-evil', 'x')",
    "SELECT readfile('/etc/passwd')",
    "VACUUM INTO '/tmp/agentbook-evil-copy.db'",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
    # pragmas
    "PRAGMA user_version = 99",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA query_only = OFF",
    "PRAGMA max_page_count = 1",
    "PRAGMA table_info(_ab_secrets)",
    "SELECT * FROM pragma_table_info('_ab_approvals')",
    "SELECT * FROM pragma_database_list",
    # the internal tables, under any spelling
    "SELECT * FROM _ab_secrets",
    "SELECT value FROM _AB_SECRETS",
    'SELECT * FROM "_ab_secrets"',
    "SELECT * FROM main._Ab_Secrets",
    "SELECT * FROM orders WHERE customer IN (SELECT value FROM _ab_secrets)",
    "SELECT (SELECT group_concat(value) FROM _ab_secrets) AS leak",
    "SELECT * FROM _ab_approvals",
    "SELECT * FROM _ab_history",
    "SELECT * FROM _ab_state",
    "SELECT * FROM _ab_kv",
    "UPDATE _ab_approvals SET status = 'approved'",
    "INSERT INTO _ab_history(version, ts, method, args, source, duration_ms, outcome)"
    " VALUES (999, 0, 'x', '[]', 'x', 0, 'ok')",
    # transactions
    "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT evil", "RELEASE ab_msg", "ROLLBACK TO ab_msg",
    "END TRANSACTION",
]


class RelAnalyst(ab.Agent):
    initial_state = {"asked": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, amount REAL, customer TEXT)")

    @ab.callable
    async def seed(self) -> None:
        self.sql("INSERT INTO orders(amount, customer) VALUES (10, 'ada'), (20, 'bob'), (30, 'cy')")
        self.secrets["bank"] = ab.Secret(SECRET, "bank")
        await self.request_approval("seed", [], summary="a pending approval to forge")

    @ab.callable
    async def model_sql(self, query: str, params: Any = ()) -> list:
        """What a model's SQL tool does: the model's text, the model's values."""
        self.set_state({"asked": self.state["asked"] + 1})
        if isinstance(params, dict):
            return self.sql(query, params, readonly=True)
        return self.sql(query, *params, readonly=True)

    @ab.callable
    async def model_sql_with_watchdog(self, query: str, seconds: float) -> tuple[list | None, float]:
        """Run the model's SQL, interrupting it from another thread after *seconds* (the
        test's own guard, so a runaway query can't hang the suite)."""
        timer = threading.Timer(seconds, self._ab_instance.store.conn.interrupt)
        timer.start()
        started = time.monotonic()
        try:
            return self.sql(query, readonly=True), time.monotonic() - started
        except Exception:
            return None, time.monotonic() - started
        finally:
            timer.cancel()


@pytest.fixture
async def analyst(rt: ab.Runtime) -> ab.AgentRef:
    ref = rt.get(RelAnalyst, "model")
    await ref.seed()
    return ref


async def test_every_hostile_statement_is_refused_and_writes_nothing(rt: ab.Runtime,
                                                                    analyst: ab.AgentRef,
                                                                    figure) -> None:
    path = rt.path_of(analyst._ab_key)
    before = storeutil.dump(path)
    accepted, untyped = [], []
    for query in HOSTILE:
        try:
            result = await analyst.model_sql(query)
            accepted.append((query, result))
        except ab.SQLError as exc:
            assert str(exc), query
        except Exception as exc:
            untyped.append((query, f"{type(exc).__name__}: {exc}"))
    after = storeutil.dump(path)
    writes = storeutil.diff_tables(before, after)
    figure("model_sql", refused=len(HOSTILE) - len(accepted) - len(untyped),
           writes=len(writes) + len(accepted))
    assert accepted == [] and untyped == []
    assert writes == []
    assert rt.approvals.pending().status.tolist() == ["pending"]
    # Harmless queries still work, and the refusals left nothing half-done behind.
    rows = await analyst.model_sql("SELECT customer, amount FROM orders ORDER BY amount")
    assert rows == [{"customer": "ada", "amount": 10.0}, {"customer": "bob", "amount": 20.0},
                    {"customer": "cy", "amount": 30.0}]
    assert analyst.verify()["ok"]


async def test_a_refused_statement_inside_a_handler_rolls_back_the_handlers_other_writes(
        rt: ab.Runtime, analyst: ab.AgentRef) -> None:
    version, state = analyst.version, analyst.state
    with pytest.raises(ab.SQLError):
        await analyst.model_sql("DELETE FROM orders")  # model_sql set the state first
    assert (analyst.version, analyst.state) == (version, state)


@pytest.mark.parametrize("value", [
    "ada' OR '1'='1", "x'; DELETE FROM orders; --", "1 OR 1=1", "\" OR \"\"=\"", "%",
    "'); DROP TABLE orders; --", "_ab_secrets",
])
async def test_values_are_bound_never_spliced_into_the_sql(rt: ab.Runtime, analyst: ab.AgentRef,
                                                           value: str) -> None:
    rows = await analyst.model_sql("SELECT id FROM orders WHERE customer = ?", [value])
    assert rows == []
    rows = await analyst.model_sql("SELECT id FROM orders WHERE customer = :who", {"who": value})
    assert rows == []
    assert len(await analyst.model_sql("SELECT id FROM orders")) == 3


async def test_the_model_cannot_read_secrets_or_approvals_by_any_route(rt: ab.Runtime,
                                                                      analyst: ab.AgentRef) -> None:
    """What a model *can* read: its own tables, the schema's text, page statistics - none
    of which holds a secret value or an approval."""
    leaks = []
    for query in ["SELECT * FROM sqlite_schema", "SELECT * FROM dbstat",
                  "SELECT * FROM sqlite_temp_schema", "SELECT * FROM orders"]:
        try:
            rows = await analyst.model_sql(query)
        except ab.SQLError:
            continue
        if SECRET in repr(rows):
            leaks.append(query)
    assert leaks == []


RUNAWAY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT count(*) FROM c")


async def test_a_runaway_query_is_stopped_by_the_runtime(rt: ab.Runtime, analyst: ab.AgentRef) -> None:
    """A model's runaway query (an unbounded recursive CTE) would block the event loop -
    the whole kernel: readonly=True queries run on a time budget
    (``ab.Runtime(max_query_seconds=...)``, well under a second by default)."""
    _, seconds = await analyst.model_sql_with_watchdog(RUNAWAY, 1.5)
    assert seconds < 1.0, f"the query ran {seconds:.1f} s until the test's own watchdog fired"
    version = analyst.version
    with pytest.raises(ab.SQLError, match="max_query_seconds"):
        await analyst.model_sql(RUNAWAY)
    assert analyst.version == version, "the failed handler wrote nothing"
    assert len(await analyst.model_sql("SELECT id FROM orders")) == 3


async def test_the_query_budget_is_configurable(tmp_path: Path, clock) -> None:
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_query_seconds=0.05)
    ref = rt.get(RelAnalyst, "model")
    await ref.seed()
    started = time.monotonic()
    with pytest.raises(ab.SQLError, match="0.05 s"):
        await ref.model_sql(RUNAWAY)
    assert time.monotonic() - started < 0.5
    # a bounded query that takes a while is fine with a bigger budget (or none)
    slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) "
            "SELECT count(*) AS n FROM c")
    for budget in (30.0, None):
        rt.max_query_seconds = budget
        rt.hibernate()
        assert await ref.model_sql(slow) == [{"n": 300000}]
    await rt.aclose()


async def test_the_analytics_views_cannot_read_local_files(rt: ab.Runtime, analyst: ab.AgentRef,
                                                          tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    target.write_text("not for the model")
    with pytest.raises(ab.AgentbookError):
        rt.sql(f"SELECT content FROM read_text('{target}')")
