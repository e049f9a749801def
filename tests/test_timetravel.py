"""Time travel: at, diff, rewind, fork, replay, prune - exact, and never running anything twice."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import agentbook as ab
from agentbook.travel.versions import json_patch


class TTLedger(ab.Agent):
    initial_state = {"total": 0, "notes": []}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS entries(id INTEGER PRIMARY KEY, amount INT, memo TEXT)")

    @ab.callable
    async def add(self, amount: int, memo: str = "") -> int:
        self.sql("INSERT INTO entries(amount, memo) VALUES (?, ?)", amount, memo)
        self.set_state({**self.state, "total": self.state["total"] + amount})
        return self.state["total"]

    @ab.callable
    async def edit(self, entry: int, memo: str) -> None:
        self.sql("UPDATE entries SET memo = ? WHERE id = ?", memo, entry)

    @ab.callable
    async def remove(self, entry: int) -> None:
        self.sql("DELETE FROM entries WHERE id = ?", entry)

    @ab.callable
    async def note(self, text: str) -> None:
        self.set_state({**self.state, "notes": [*self.state["notes"], text]})
        self.kv["last_note"] = text

    @ab.callable
    async def remind(self, seconds: float) -> str:
        return (await self.schedule(seconds, "reminded", {"at": seconds})).id

    async def reminded(self, payload):
        self.set_state({**self.state, "notes": [*self.state["notes"], f"reminded {payload['at']}"]})

    @ab.callable
    async def make_table(self, name: str) -> None:
        self.sql(f'CREATE TABLE "{name}"(x)')
        self.sql(f'INSERT INTO "{name}" VALUES (1), (2)')

    @ab.callable
    async def drop_table(self, name: str) -> None:
        self.sql(f'DROP TABLE "{name}"')

    @ab.callable
    async def ask_refund(self, amount: int) -> str:
        return (await self.request_approval("refund", {"amount": amount},
                                            summary=f"refund {amount}")).id

    async def refund(self, amount: int) -> None:
        await self.add(-amount, "refund")

    @ab.callable
    async def roll(self) -> int:
        value = await self.effect("dice", random.randint, 1, 1_000_000)
        self.set_state({**self.state, "notes": [*self.state["notes"], f"rolled {value}"]})
        return value


def entries(view) -> list:
    return view.sql("SELECT id, amount, memo FROM entries ORDER BY id").values.tolist()


async def test_at_shows_state_and_tables_exactly_as_they_were(rt):
    ref = rt.get(TTLedger, "l")
    await ref.add(10, "a")        # v2 (v1 is on_start)
    await ref.add(5, "b")         # v3
    await ref.edit(1, "a!")       # v4
    await ref.remove(2)           # v5
    assert ref.at(3).state["total"] == 15
    assert entries(ref.at(3)) == [[1, 10, "a"], [2, 5, "b"]]
    assert entries(ref.at(4)) == [[1, 10, "a!"], [2, 5, "b"]]
    assert entries(ref.at(5)) == [[1, 10, "a!"]]
    assert entries(ref.at(-1)) == [[1, 10, "a!"]]
    assert ref.at(0).state == {"total": 0, "notes": []}
    with pytest.raises(ab.VersionNotFoundError, match="covers 0..5"):
        ref.at(6)
    with pytest.raises(ab.ReadOnlyError):
        ref.at(3).sql("DELETE FROM entries")


async def test_diff_is_a_json_patch_plus_row_changes(rt):
    ref = rt.get(TTLedger, "d")
    await ref.add(10, "a")
    await ref.note("hello")
    await ref.edit(1, "changed")
    diff = ref.diff(2, 4)
    assert {"op": "replace", "path": "/notes", "value": ["hello"]} in diff.state or diff.state == [
        {"op": "add", "path": "/notes/0", "value": "hello"}]
    tables = sorted(set(diff.rows.table))
    assert tables == ["_ab_kv", "entries"]
    assert not ref.diff(4, 4).state


def test_json_patch_covers_add_remove_replace_and_lists():
    old = {"a": 1, "b": [1, 2, 3], "c": {"x": 1}}
    new = {"a": 2, "b": [1, 5], "d": True, "c": {}}
    ops = json_patch(old, new)
    assert {"op": "replace", "path": "/a", "value": 2} in ops
    assert {"op": "replace", "path": "/b/1", "value": 5} in ops
    assert {"op": "remove", "path": "/b/2"} in ops
    assert {"op": "remove", "path": "/c/x"} in ops
    assert {"op": "add", "path": "/d", "value": True} in ops


async def test_rewind_restores_everything_is_a_new_version_and_can_be_undone(rt):
    ref = rt.get(TTLedger, "r")
    await ref.add(10, "a")
    await ref.note("n1")
    head_state = None
    await ref.add(7, "b")
    await ref.make_table("extra")
    head_state = ref.state
    head_rows = entries(ref.at(-1))
    result = await ref.rewind(3)
    assert result["rewound_to"] == 3 and ref.version == 6
    assert ref.state == ref.at(3).state
    assert entries(ref.at(-1)) == entries(ref.at(3))
    with pytest.raises(ab.SQLError):
        ref.sql("SELECT * FROM extra")
    assert ref.history(limit=1).method[0] == "rewind"
    await ref.rewind(5)  # undo the rewind
    assert ref.state == head_state
    assert entries(ref.at(-1)) == head_rows
    assert ref.sql("SELECT count(*) AS n FROM extra").n[0] == 2


async def test_dropped_tables_come_back_with_their_rows(rt):
    ref = rt.get(TTLedger, "drop")
    await ref.make_table("t")
    before = ref.version
    await ref.drop_table("t")
    with pytest.raises(ab.SQLError):
        ref.sql("SELECT * FROM t")
    assert ref.at(before).sql("SELECT x FROM t ORDER BY x").x.tolist() == [1, 2]
    await ref.rewind(before)
    assert ref.sql("SELECT x FROM t ORDER BY x").x.tolist() == [1, 2]


async def test_rewind_never_runs_a_side_effect_again(rt, clock):
    ref = rt.get(TTLedger, "sched")
    await ref.remind(60)
    target = ref.version
    await clock.advance(61)
    assert ref.state["notes"] == ["reminded 60"]
    await ref.rewind(target)  # the schedule was pending at the target...
    assert ref.state["notes"] == []
    await clock.advance(3600)
    assert ref.state["notes"] == [], "...but its occurrence already ran: it must not run again"


async def test_rewind_cancels_later_approvals_and_never_revives_decided_ones(rt):
    ref = rt.get(TTLedger, "appr")
    await ref.add(100)
    target = ref.version
    pending = await ref.ask_refund(10)
    decided = await ref.ask_refund(20)
    await rt.approvals.reject(decided, "no")
    await ref.rewind(target)
    assert rt.approvals.get(pending).status == "cancelled"
    assert "rewound to version" in rt.approvals.get(pending).reason
    assert rt.approvals.get(decided).status == "rejected"
    with pytest.raises(ab.ApprovalDecidedError):
        rt.approvals.approve(pending)
    await ref.rewind(ref.version - 1)  # undoing the rewind brings no approval back
    assert rt.approvals.pending().empty
    assert ref.state["total"] == 100


async def test_a_rewind_waits_its_turn_behind_a_running_handler(rt):
    import asyncio

    ref = rt.get(TTLedger, "turn")
    await ref.add(1)
    calls = [ref.add(2), ref.rewind(2), ref.add(4)]
    await asyncio.gather(*calls)
    assert ref.state["total"] == 5
    assert list(ref.history(limit=3).method) == ["add", "rewind", "add"]


async def test_fork_copies_state_and_tables_but_not_approvals_or_schedules(rt):
    ref = rt.get(TTLedger, "parent")
    await ref.add(10, "a")
    await ref.ask_refund(5)
    await ref.remind(600)
    at = ref.version
    await ref.add(1, "after")
    child = await ref.fork("child", at=at)
    assert child.version == at and child.state == ref.at(at).state
    assert entries(child.at(-1)) == entries(ref.at(at))
    assert child.schedules().empty
    assert rt.approvals.list("pending")[0].name == "parent"
    assert len(rt.approvals.list("pending")) == 1
    assert child.history().method[0] == "fork"
    assert child.at(2).state == ref.at(2).state  # reaches back into the parent
    with_sched = await ref.fork("child2", at=at, schedules=True)
    assert len(with_sched.schedules()) == 1
    assert await child.add(1) == 11
    with pytest.raises(ab.UsageError, match="already exists"):
        await ref.fork("child")


async def test_replay_with_journaled_effects_reproduces_history_exactly(rt):
    ref = rt.get(TTLedger, "det")
    for i in range(3):
        await ref.add(i + 1)
        await ref.roll()
    result = await ref.replay(3)
    assert result.identical
    assert result.fork.state == ref.state
    assert result.diff().empty


async def test_replay_can_override_an_effect_from_a_step_on(rt):
    ref = rt.get(TTLedger, "whatif")
    await ref.add(1)
    await ref.roll()
    await ref.roll()
    result = await ref.replay(3, on="whatif-6s", overrides={"dice": 6})
    assert result.fork.state["notes"] == ["rolled 6", "rolled 6"]
    assert not result.identical
    assert any(op["path"].startswith("/notes") for op in result.diff().state)


async def test_replaying_an_effect_that_was_never_journaled_names_it(rt):
    ref = rt.get(TTLedger, "nojournal")
    await ref.add(1)
    # pretend the original ran without the journal: replay a recorded 'roll' whose
    # history row has no effects
    await ref.roll()
    import apsw

    rt.hibernate()
    conn = apsw.Connection(rt.path_of(ref._ab_key))
    conn.execute("UPDATE _ab_history SET effects = NULL WHERE method = 'roll'")
    conn.close()
    with pytest.raises(ab.ReplayError, match="'dice'"):
        await ref.replay(3, on="nojournal-fork")
    result = await ref.replay(3, on="nojournal-live", live={"dice"})
    assert result.steps[0][3] == "ok"


async def test_prune_shrinks_the_range_and_says_so(rt):
    ref = rt.get(TTLedger, "prune")
    for i in range(10):
        await ref.add(i)
    state_at_8 = ref.at(8).state
    assert await ref.prune(keep_last=4) == 7
    assert ref.history_range() == (8, 11)
    assert ref.at(8).state == state_at_8
    assert entries(ref.at(8)) == entries(ref.at(8))
    with pytest.raises(ab.VersionNotFoundError, match="pruned"):
        ref.at(5)
    assert len(ref.history(limit=100, failures=False)) == 4


async def test_keep_last_counts_only_the_versions_time_travel_still_reaches(rt):
    ref = rt.get(TTLedger, "prune-more")
    for i in range(6):
        await ref.add(i)
    assert await ref.prune(keep_last=3) == 4
    assert ref.history_range() == (5, 7)
    # more than the agent still has: nothing to drop (it asked for version 1, long gone)
    assert await ref.prune(keep_last=5) == 0
    assert ref.history_range() == (5, 7)
    copy = await ref.fork("prune-more-copy")  # a fork's own history starts at the fork
    assert copy.history_range() == (7, 7)
    assert await copy.prune(keep_last=2) == 0
    assert copy.state == ref.state


# -- the property: at(k) is what the agent was after step k --------------------------
@settings(max_examples=25, deadline=None, stateful_step_count=12,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
class TimeTravelMachine(RuleBasedStateMachine):
    """Random handlers; after each, remember what the agent looks like; then check that
    at(k) and rewind(k) give back exactly that."""

    @initialize()
    def start(self):
        self.rt = ab.Runtime(":memory:", clock=ab.VirtualClock())
        self.ref = self.rt.get(TTLedger, "p")
        self.snapshots: dict[int, tuple] = {}
        self.ids = []

    def teardown(self):
        self.rt.close()

    def _snap(self):
        self.snapshots[self.ref.version] = (
            self.ref.state, entries(self.ref.at(-1)) if self.ref.version else [],
        )

    @rule(amount=st.integers(-50, 50), memo=st.text(max_size=5))
    def add(self, amount, memo):
        ab.run(self.ref.add(amount, memo))
        self.ids.append(len(self.ids) + 1)
        self._snap()

    @rule(data=st.data())
    def edit_or_remove(self, data):
        if not self.ids:
            return
        entry = data.draw(st.sampled_from(self.ids))
        if data.draw(st.booleans()):
            ab.run(self.ref.edit(entry, "edited"))
        else:
            ab.run(self.ref.remove(entry))
        self._snap()

    @rule(text=st.text(max_size=4))
    def note(self, text):
        ab.run(self.ref.note(text))
        self._snap()

    @rule(data=st.data())
    def rewind(self, data):
        if not self.snapshots:
            return
        k = data.draw(st.sampled_from(sorted(self.snapshots)))
        ab.run(self.ref.rewind(k))
        assert (self.ref.state, entries(self.ref.at(-1))) == self.snapshots[k]
        self._snap()

    @invariant()
    def every_version_reads_back_exactly(self):
        for k in list(self.snapshots)[-3:]:
            view = self.ref.at(k)
            assert (view.state, entries(view)) == self.snapshots[k]


TestTimeTravelProperty = TimeTravelMachine.TestCase
