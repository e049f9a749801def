"""The Agent API inside handlers: sql, kv, hot redefinition, guards."""

from __future__ import annotations

import pytest

import agentbook as ab


class SqlAgent(ab.Agent):
    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT, qty INT)")

    @ab.callable
    async def add(self, name: str, qty: int) -> list:
        self.sql("INSERT INTO items(name, qty) VALUES (?, ?)", name, qty)
        self.sql("INSERT INTO items(name, qty) VALUES (:n, :q)", {"n": name + "!", "q": qty})
        return self.sql("SELECT name, qty FROM items ORDER BY id")

    @ab.callable
    async def run(self, query: str):
        return self.sql(query)


async def test_sql_binds_parameters_and_returns_rows_as_dicts(rt):
    ref = rt.get(SqlAgent, "s")
    rows = await ref.add("o'brien; DROP TABLE items", 2)
    assert rows == [{"name": "o'brien; DROP TABLE items", "qty": 2},
                    {"name": "o'brien; DROP TABLE items!", "qty": 2}]
    assert await ref.run("SELECT count(*) AS n FROM items WHERE qty > 5") == [{"n": 0}]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM _ab_history",
        "INSERT INTO _ab_kv(key, value) VALUES ('approved', 'true')",
        "UPDATE _ab_state SET state = '{}'",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA journal_mode=DELETE",
        "PRAGMA writable_schema=ON",
        "COMMIT",
        "SAVEPOINT x",
        "SELECT load_extension('x')",
    ],
)
async def test_agent_sql_cannot_reach_internals_or_escape_its_transaction(rt, query):
    ref = rt.get(SqlAgent, "guard")
    await ref.add("a", 1)
    version = ref.version
    with pytest.raises(ab.SQLError):
        await ref.run(query)
    assert ref.version == version
    assert await ref.run("SELECT count(*) AS n FROM items") == [{"n": 2}]


async def test_malformed_sql_is_a_short_sql_error(rt):
    ref = rt.get(SqlAgent, "bad")
    with pytest.raises(ab.SQLError, match="syntax error"):
        await ref.run("SELEC nonsense")
    with pytest.raises(ab.SQLError, match="no such table"):
        await ref.run("SELECT * FROM missing")


async def test_pragma_table_info_is_allowed(rt):
    ref = rt.get(SqlAgent, "pragma")
    cols = await ref.run("PRAGMA table_info(items)")
    assert [c["name"] for c in cols] == ["id", "name", "qty"]


async def test_agent_apis_outside_a_handler_say_how_to_use_them(rt):
    ref = rt.get(SqlAgent, "outside")
    await ref.add("a", 1)
    agent = rt.instances[ref._ab_key].agent
    with pytest.raises(ab.NotInHandlerError, match="@ab.callable"):
        agent.sql("SELECT 1")
    with pytest.raises(ab.NotInHandlerError):
        agent.set_state({})


def test_initial_state_must_be_json():
    with pytest.raises(ab.JSONValueError, match=r"BadInit.initial_state\['when'\]"):

        class BadInit(ab.Agent):
            initial_state = {"when": object()}


def _define_v1():
    class HotAgent(ab.Agent):
        initial_state = {"n": 0}

        @ab.callable
        async def step(self) -> str:
            self.set_state({"n": self.state["n"] + 1})
            return "v1"

    return HotAgent


def _define_v2():
    class HotAgent(ab.Agent):
        initial_state = {"n": 0}

        async def on_start(self):
            self.sql("CREATE TABLE IF NOT EXISTS log(x)")

        @ab.callable
        async def step(self) -> str:
            self.set_state({"n": self.state["n"] + 10})
            self.sql("INSERT INTO log VALUES (1)")
            return "v2"

        @ab.callable
        async def new_method(self) -> int:
            return self.state["n"]

    return HotAgent


def _define_incompatible():
    class HotAgent(ab.Agent):
        initial_state = ["now", "a", "list"]

        @ab.callable
        async def step(self) -> str:
            return "v3"

    return HotAgent


async def test_redefining_a_class_switches_running_agents_at_their_next_message(rt):
    v1 = _define_v1()
    ref = rt.get(v1, "hot")
    assert await ref.step() == "v1"
    _define_v2()  # re-running the cell
    assert await ref.step() == "v2"
    assert ref.state == {"n": 11}
    assert await ref.new_method() == 11
    assert len(ref.sql("SELECT * FROM log")) == 1


async def test_a_redefinition_with_an_incompatible_state_is_refused_and_others_keep_going(rt):
    v1 = _define_v1()
    ref = rt.get(v1, "shape")
    await ref.step()
    _define_incompatible()
    with pytest.raises(ab.IncompatibleStateError, match="new class name"):
        await ref.step()
    assert ref.state == {"n": 1}
    fresh = rt.get("HotAgent", "brand-new")
    assert await fresh.step() == "v3"
    _define_v1()
    assert await ref.step() == "v1"


async def test_unknown_class_names_are_explained(rt):
    ref = rt.get("NeverDefined", "x")
    with pytest.raises(ab.UsageError, match="run the cell"):
        ref.call("anything")
    assert ref.state is None
    assert ref.version == 0
