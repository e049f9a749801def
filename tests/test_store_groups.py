"""store/groups.py: the chat, MCP and workflow tables are made on first use (issue 20). A
new store has none of them; every reader takes a missing group as empty; a group is made
by its first write, inside the writer's transaction; stores made with every table (the
code before) keep working; time travel, forks and replicas cross the version that made one."""

from __future__ import annotations

import os
import subprocess
import sys

import apsw
import pytest

import agentbook as ab
from agentbook.store import AgentStore, agentstore, groups, messages, replica
from agentbook.store.schema import LAZY_GROUPS, LAZY_INDEXES, LAZY_TABLES, MIGRATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def double(x: int) -> int:
    return 2 * x


class Counter(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def inc(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.workflow
    async def job(self, step: ab.Step, x: int) -> int:
        return await step.do("double", double, x)


class Talker(ab.ChatAgent):
    system = "You are brief."


def _objects(path: str, where: str = "1") -> set[str]:
    conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                           | apsw.SQLITE_OPEN_URI)
    try:
        return {r[0] for r in conn.execute(f"SELECT name FROM sqlite_schema WHERE {where}")}
    finally:
        conn.close()


def _tables(path: str) -> set[str]:
    return _objects(path, "type = 'table'")


def _pages(path: str) -> int:
    conn = apsw.Connection(path)
    try:
        return int(conn.execute("PRAGMA page_count").fetchall()[0][0])
    finally:
        conn.close()


async def test_a_new_agents_store_is_23_pages_without_the_lazy_tables(tmp_path):
    rt = ab.Runtime(tmp_path / "rt")
    ref = rt.get(Counter, "c")
    assert await ref.inc() == 1
    path = rt.path_of(ref._ab_key)
    await rt.aclose()
    assert not _objects(path) & (LAZY_TABLES | LAZY_INDEXES)
    # 40 pages with every table (the code before); an eager table back costs a page or more.
    # 23 pages of 512 B fit in three 4 KB file system blocks, as the hand-made floor does.
    assert _pages(path) <= 23
    assert os.path.getsize(path) <= 12 * 1024


async def test_every_reader_takes_a_missing_group_as_empty(tmp_path):
    rt = ab.Runtime(tmp_path / "rt")
    ref = rt.get(Counter, "c")
    await ref.inc()
    await ref.inc()
    assert ref.messages().empty and ref.workflows().empty
    assert ref.at(1).workflows().empty
    for view in ("messages", "tool_calls", "workflows", "workflow_steps"):
        assert rt.sql(f"SELECT count(*) AS n FROM {view}").n[0] == 0
    fork = await ref.fork("c2", at=1)
    assert fork.state == {"n": 1} and fork.workflows().empty
    assert not _tables(rt.path_of(fork._ab_key)) & LAZY_TABLES  # (a fork of nothing makes none)
    ref.export(tmp_path / "c.abagent")
    copy = await rt.import_agent(tmp_path / "c.abagent", name="c3")
    assert copy.state == {"n": 2} and copy.messages().empty
    assert ref.verify()["ok"]
    await rt.aclose()
    from agentbook.cli.doctor import check_stores

    assert all(row["ok"] for row in check_stores(tmp_path / "rt"))
    again = ab.Runtime(tmp_path / "rt")  # a wake: next_due, workflow recovery, MCP look-up
    ref = again.get(Counter, "c")
    assert await ref.inc() == 3
    assert await ref.rewind(1) and ref.state == {"n": 1}
    await again.aclose()
    assert not _tables(again.path_of(ref._ab_key)) & LAZY_TABLES


async def test_a_wake_looks_at_the_schema_once_instead_of_the_missing_tables(tmp_path, monkeypatch):
    rt = ab.Runtime(tmp_path / "rt")
    ref = rt.get(Counter, "c")
    await ref.inc()
    rt.hibernate()
    seen: list[str] = []
    opened = AgentStore.__init__

    def traced(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        self.conn.exec_trace = lambda _cursor, sql, _bindings: seen.append(sql) or True

    monkeypatch.setattr(AgentStore, "__init__", traced)
    assert await ref.inc() == 2  # the store opens: next due, workflow recovery, MCP servers
    await rt.aclose()
    # (the code before ran 16 statements here: three look-ups of the missing tables and one
    # after the commit; now one read of sqlite_schema stands for all of them: 13)
    assert sum("sqlite_schema" in sql for sql in seen) == 1
    assert not [sql for sql in seen if "sqlite_schema" not in sql and any(t in sql for t in LAZY_TABLES)]
    assert len(seen) <= 13


async def test_a_group_is_made_by_its_first_write_and_a_rollback_takes_it_back(tmp_path):
    store = AgentStore(str(tmp_path / "a.db"))
    assert not store.has_group("chat")
    store.begin()
    store.savepoint(lazy=True)
    messages.add_message(store, "m1", "user", "hi", None, None, None, 1.0)
    assert store.has_group("chat") and messages.last_seq(store) == 1
    store.rollback_message()  # the message failed: its group goes with it
    assert not store.has_group("chat") and messages.messages(store) == []
    store.commit()
    assert not _tables(store.path) & LAZY_TABLES
    store.begin()
    messages.add_message(store, "m2", "user", "hi", None, None, None, 1.0)
    store.rollback()
    assert not store.has_group("chat")
    store.begin()
    messages.add_message(store, "m3", "user", "hi", None, None, None, 1.0)
    store.commit()
    store.close()
    assert {"_ab_messages", "_ab_tool_calls", "_ab_tool_cache"} <= _tables(store.path)
    again = AgentStore(store.path)
    assert [m.id for m in messages.messages(again)] == ["m3"]
    rows = again.conn.execute("SELECT name FROM _ab_migrations WHERE name LIKE 'group%'")
    assert [r[0] for r in rows] == ["group_chat"]
    again.close()


_KILLED = """
import os, sys
from agentbook.store import AgentStore, messages
store = AgentStore(sys.argv[1])
store.begin()
messages.add_message(store, "m1", "user", "hi", None, None, None, 1.0)
assert store.has_group("chat")
os._exit(9)  # killed before COMMIT
"""


def test_a_process_killed_before_commit_leaves_no_half_group(tmp_path):
    path = str(tmp_path / "a.db")
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", _KILLED, path], env=env, check=False)
    assert done.returncode == 9
    store = AgentStore(path)
    assert not store.has_group("chat") and messages.messages(store) == []
    assert store.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not {r[0] for r in store.conn.execute("SELECT name FROM _ab_migrations")} \
        - {name for name, _ in MIGRATIONS}
    store.close()
    assert not _tables(path) & LAZY_TABLES


def _old_template() -> bytes:
    """A new store as the code before made it: every table, 13 migrations."""
    conn = apsw.Connection(":memory:")
    conn.execute("PRAGMA page_size=512")
    for index, (name, sql) in enumerate(MIGRATIONS[:13]):
        with conn:
            conn.execute(sql)
            conn.execute("INSERT INTO _ab_migrations(name, applied) VALUES (?, 0)", (name,))
            conn.execute(f"PRAGMA user_version={index + 1}")
    data = bytearray(conn.serialize("main"))
    conn.close()
    data[18] = data[19] = 2  # WAL
    return bytes(data)


async def test_stores_made_with_every_table_keep_working(tmp_path, monkeypatch):
    monkeypatch.setattr(agentstore, "_template_cache", _old_template())
    rt = ab.Runtime(tmp_path / "rt")
    talk, counter = rt.get(Talker, "t"), rt.get(Counter, "c")
    await talk.chat("hello")
    run = await counter.job(21)
    await rt.settle()
    assert run.status == "completed" and await run.result() == 42
    await rt.aclose()
    monkeypatch.setattr(agentstore, "_template_cache", None)
    path = rt.path_of(talk._ab_key)
    assert _tables(path) >= LAZY_TABLES
    again = ab.Runtime(tmp_path / "rt")  # the new code opens them (and migrates to 0014)
    talk, counter = again.get(Talker, "t"), again.get(Counter, "c")
    assert talk.messages().role.tolist() == ["user", "assistant"]
    await talk.chat("again")
    assert len(talk.messages()) == 4
    assert counter.workflows().status.tolist() == ["completed"]
    assert again.sql("SELECT count(*) AS n FROM messages").n[0] == 4
    await again.aclose()
    store = AgentStore(path)
    assert store.conn.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS)
    assert all(store.has_group(g) for g in LAZY_GROUPS)
    assert not store.conn.execute(
        "SELECT 1 FROM _ab_migrations WHERE name LIKE 'group%'").fetchall()
    store.close()


async def test_time_travel_crosses_the_version_that_made_a_group(tmp_path):
    rt = ab.Runtime(tmp_path / "rt")
    ref = rt.get(Counter, "c")
    await ref.inc()
    before = ref.version
    run = await ref.job(5)
    await rt.settle()
    assert await run.result() == 10
    head = ref.version
    assert ref.at(before).workflows().empty
    assert ref.at(head).workflows().status.tolist() == ["completed"]
    early = await ref.fork("early", at=before)  # before the group: the fork has none
    assert not _tables(rt.path_of(early._ab_key)) & LAZY_TABLES
    late = await ref.fork("late", at=head)  # after it: made, with the run
    assert late.workflows().status.tolist() == ["completed"]
    await ref.rewind(before)
    assert ref.workflows().empty and ref.state == {"n": 1}
    run = await ref.job(7)  # the tables are there (empty): a new run uses them
    await rt.settle()
    assert await run.result() == 14 and len(ref.workflows()) == 1
    await rt.aclose()


async def test_a_replica_makes_the_groups_its_versions_write(tmp_path):
    rt = ab.Runtime(tmp_path / "rt")
    talk = rt.get(Talker, "t")
    await talk.chat("hello")
    primary = rt.path_of(talk._ab_key)
    conn = apsw.Connection(f"file:{primary}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                           | apsw.SQLITE_OPEN_URI)
    shipment = replica.versions_since(conn, talk._ab_key, 0, talk.version, "{}")
    conn.close()
    copy = AgentStore(str(tmp_path / "copy.db"))
    replica.apply(copy.conn, shipment)
    # (without the group, SQLite would have skipped the rows, without a word)
    assert [m.role for m in messages.read_messages(copy.conn)] == ["user", "assistant"]
    copy.close()
    await rt.aclose()


class Reminder(ab.Agent):
    initial_state = {"fired": 0}

    @ab.callable
    async def remind(self, key: str) -> str:
        return (await self.schedule(60, "fire", key=key)).id

    async def fire(self) -> None:
        self.set_state({"fired": self.state["fired"] + 1})


async def test_the_first_schedule_makes_its_look_up_indexes(tmp_path):
    clock = ab.VirtualClock(1_767_225_600.0)
    rt = ab.Runtime(tmp_path / "rt", clock=clock)
    ref = rt.get(Reminder, "r")
    assert await ref.call("remind", "a") == await ref.call("remind", "a")  # found by key
    path = rt.path_of(ref._ab_key)
    assert _objects(path) >= LAZY_INDEXES
    conn = apsw.Connection(path)
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT id FROM _ab_schedules WHERE key = 'a'")
    assert "_ab_schedules_key" in str(plan.fetchall())
    conn.close()
    await clock.advance(61)
    await rt.settle()
    assert ref.state == {"fired": 1}
    await rt.aclose()


def test_needed_by_reads_the_table_names_a_changeset_holds():
    conn = apsw.Connection(":memory:")
    for group in ("chat", "workflows"):
        groups.create(conn, group)
    session = apsw.Session(conn, "main")
    session.attach(None)
    conn.execute("INSERT INTO _ab_workflow_events(run, name, value, ts) VALUES ('r', 'e', '1', 0)")
    changes = session.changeset()
    session.close()
    assert groups.needed_by([changes]) == {"workflows"}
    assert groups.needed_by([]) == set()
    with pytest.raises(apsw.SQLError):
        groups.read(conn, "SELECT * FROM no_such_table")  # (only a lazy table reads empty)
    assert groups.read(apsw.Connection(":memory:"), "SELECT * FROM _ab_messages") == []
