"""The per-agent SQLite store and the catalog, directly and through a runtime."""

from __future__ import annotations

import os

import apsw
import pytest

import agentbook as ab
from agentbook.store import AgentStore, Catalog, agent_file
from agentbook.store.schema import MIGRATIONS


def test_a_new_store_is_a_wal_file_with_every_migration(tmp_path):
    store = AgentStore(str(tmp_path / "a.db"))
    assert store.conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS)
    names = [r[0] for r in store.conn.execute("SELECT name FROM _ab_migrations")]
    assert names == [m[0] for m in MIGRATIONS]
    assert store.load_state() is None
    store.close()


def test_changesets_capture_the_agents_rows_and_invert_exactly(tmp_path):
    store = AgentStore(str(tmp_path / "a.db"))
    store.conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    store.conn.execute("CREATE TABLE nopk(a, b)")
    store.conn.execute("INSERT INTO t VALUES (1, 'one')")
    session = store.start_capture()
    store.conn.execute("UPDATE t SET x = 'uno' WHERE id = 1")
    store.conn.execute("INSERT INTO nopk VALUES (1, 2)")
    store.internal("INSERT INTO _ab_kv VALUES ('k', '1')")
    store.write_state(1, "{}")  # untracked: the record of versions itself
    changes = store.finish_capture(session)
    tables = {change.name for change in apsw.Changeset.iter(changes)}
    assert tables == {"t", "nopk", "_ab_kv"}
    apsw.Changeset.apply(apsw.Changeset.invert(changes), store.conn)
    assert store.conn.execute("SELECT x FROM t").fetchall() == [("one",)]
    assert store.conn.execute("SELECT count(*) FROM nopk").fetchall() == [(0,)]
    store.close()


def test_an_empty_capture_is_none(tmp_path):
    store = AgentStore(str(tmp_path / "a.db"))
    assert store.finish_capture(store.start_capture()) is None
    store.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("alice", "agents/Support/alice.db"), ("a.b-c_d", "agents/Support/a.b-c_d.db")],
)
def test_plain_names_are_visible_in_file_names(name, expected):
    assert agent_file("Support", name) == expected


@pytest.mark.parametrize("name", ["../etc/passwd", "é", "with space", ".hidden", "x" * 150, "a.tmp"])
def test_other_names_are_hashed_into_safe_file_names(name):
    path = agent_file("Support", name)
    stem = os.path.basename(path)
    assert stem.startswith("~") and stem.endswith(".db")
    assert os.path.dirname(path) == "agents/Support"


class StoreAgent(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def inc(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


async def test_the_catalog_can_be_rebuilt_from_the_files(tmp_path):
    rt = ab.Runtime(tmp_path / "s")
    for name in ["a", "b", "weird name"]:
        await rt.get(StoreAgent, name).inc()
    await rt.aclose()
    os.remove(tmp_path / "s" / "catalog.db")
    catalog = Catalog(str(tmp_path / "s"))
    assert catalog.count() == 0
    assert catalog.rebuild() == 3
    assert sorted(r[1] for r in catalog.rows()) == ["a", "b", "weird name"]
    catalog.close()


async def test_a_corrupt_store_fails_its_agent_with_a_clear_error_and_others_keep_working(tmp_path):
    rt = ab.Runtime(tmp_path / "s")
    bad, good = rt.get(StoreAgent, "bad"), rt.get(StoreAgent, "good")
    await bad.inc()
    await good.inc()
    rt.hibernate()
    with open(rt.path_of(bad._ab_key), "r+b") as fh:
        fh.write(b"this is not a database at all" * 100)
    with pytest.raises(ab.StoreCorruptError, match="damaged"):
        await bad.inc()
    assert await good.inc() == 2
    await rt.aclose()


async def test_reading_an_agent_that_was_never_messaged(tmp_path):
    rt = ab.Runtime(tmp_path / "s")
    ref = rt.get(StoreAgent, "ghost")
    assert ref.state == {"n": 0}
    assert ref.history().empty
    with pytest.raises(ab.AgentNotFoundError, match="first message"):
        ref.sql("SELECT 1")
    assert not os.path.exists(rt.path_of(ref._ab_key))
    await rt.aclose()


async def test_memory_runtimes_leave_nothing_behind(clock):
    rt = ab.Runtime(":memory:", clock=clock)
    root = rt.root
    await rt.get(StoreAgent, "m").inc()
    assert os.path.isdir(root)
    await rt.aclose()
    assert not os.path.exists(root)
