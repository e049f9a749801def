"""The DuckDB views agree with the refs: history states, agents made again under the same
name, and the agents' own tables across agents."""

from __future__ import annotations

import json

import pytest

import agentbook as ab


class Till(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def add(self, k: int) -> None:
        self.set_state({"n": self.state["n"] + k})

    @ab.callable
    async def same(self) -> int:
        return self.state["n"]

    @ab.callable
    async def sell(self, item: str, total: float) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS orders(item TEXT, total REAL)")
        self.sql("INSERT INTO orders VALUES (?, ?)", item, total)

    @ab.callable
    async def gone(self) -> None:
        self.destroy()


def _states(rt, name):
    frame = rt.sql("SELECT version, state FROM history WHERE name = ? AND version IS NOT NULL"
                   " ORDER BY version", name)
    return [(int(v), json.loads(s)) for v, s in zip(frame.version, frame.state, strict=True)]


def _ref_states(ref):
    rows = ref.history(limit=100).itertuples()
    return sorted((int(r.version), json.loads(r.state) if isinstance(r.state, str) else r.state)
                  for r in rows)


async def test_history_view_state_equals_ref_history(mem_rt):
    till = mem_rt.get(Till, "t")
    await till.same()  # version 1 leaves the initial state
    await till.add(2)
    await till.same()
    mem_rt.sql("SELECT 1")  # a catch-up between versions: the next one starts from it
    await till.same()
    await till.add(3)
    await till.same()
    assert _states(mem_rt, "t") == _ref_states(till)
    assert [s["n"] for _, s in _states(mem_rt, "t")] == [0, 2, 2, 2, 5, 5]
    mem_rt.analytics.rebuild()
    assert _states(mem_rt, "t") == _ref_states(till)


async def test_an_agent_made_again_under_the_same_name_replaces_the_old_one(mem_rt):
    till = mem_rt.get(Till, "t")
    for k in range(4):
        await till.add(k)
    assert len(_states(mem_rt, "t")) == 4
    await till.gone()
    await mem_rt.settle()
    await till.add(7)  # the same name, a new agent (same clock instant, too)
    assert _states(mem_rt, "t") == [(1, {"n": 7})] == _ref_states(till)
    kinds = mem_rt.sql("SELECT type, version FROM events WHERE name = 't' AND version IS NOT NULL"
                       " ORDER BY version")
    assert kinds.version.max() == 1 and kinds.type.tolist() == ["rpc", "state:update"]


async def test_an_agent_made_again_between_two_catch_ups_with_more_versions(mem_rt):
    till = mem_rt.get(Till, "t")
    await till.add(1)
    assert len(_states(mem_rt, "t")) == 1
    await till.gone()
    await mem_rt.settle()
    await till.add(5)
    await till.add(5)
    assert _states(mem_rt, "t") == [(1, {"n": 5}), (2, {"n": 10})] == _ref_states(till)


async def test_an_own_table_is_one_view_across_agents(mem_rt):
    for name, rows in {"a": [("tea", 3.0), ("cake", 4.5)], "b": [("tea", 3.0)]}.items():
        for item, total in rows:
            await mem_rt.get(Till, name).sell(item, total)
    await mem_rt.get(Till, "c").add(1)  # no orders table
    frame = mem_rt.analytics.table("orders")
    assert list(frame.columns) == ["agent", "name", "item", "total"]
    assert len(frame) == 3
    await mem_rt.get(Till, "b").sell("pie", 2.0)
    totals = mem_rt.sql("SELECT name, sum(total) AS total FROM orders GROUP BY ALL ORDER BY name")
    assert totals.values.tolist() == [["a", 7.5], ["b", 5.0]]
    with pytest.raises(ab.UsageError, match="built-in"):
        mem_rt.analytics.table("history")
    mem_rt.analytics.rebuild()
    assert len(mem_rt.sql("SELECT * FROM orders")) == 4
