"""Notebook traps: mistakes a workshop attendee makes in a cell get a loud, helpful answer."""

from __future__ import annotations

import asyncio
import gc

import pytest

import agentbook as ab
from agentbook.methods import FRAMEWORK_NAMES


class NTCounter(ab.Agent):
    initial_state = {"count": 0}

    @ab.callable
    async def bump(self) -> int:
        self.set_state({"count": self.state["count"] + 1})
        return self.state["count"]

    @ab.callable
    async def fail(self) -> None:
        raise ValueError("no")


# -- time travel without await ------------------------------------------------------------
async def test_fork_replay_prune_without_await_say_so_and_warn(mem_rt):
    ref = mem_rt.get(NTCounter, "c")
    await ref.bump()
    await ref.bump()
    makers = [lambda: ref.fork("c2"), lambda: ref.replay(1), lambda: ref.prune(keep_last=1)]
    for make in makers:
        pending = make()
        assert "not run yet: add await" in repr(pending)
        with pytest.warns(RuntimeWarning, match="never awaited"):
            del pending
            gc.collect()
    assert ref.history_range() == (0, 2)  # nothing ran
    assert "c2" not in set(mem_rt.agents().name)  # never forked


async def test_fork_replay_prune_await_gather_and_create_task(mem_rt):
    ref = mem_rt.get(NTCounter, "c")
    await ref.bump()
    await ref.bump()
    fork = await ref.fork("c2", at=1)
    assert fork.state == {"count": 1}
    forked, replayed = await asyncio.gather(ref.fork("c3"), ref.replay(1))
    assert forked.state == {"count": 2} and replayed.identical
    task = asyncio.create_task(ref.prune(keep_last=1))
    assert await task == 1
    assert ref.history_range() == (2, 2)


# -- framework names ------------------------------------------------------------------------
def test_a_method_shadowing_a_framework_name_is_refused_at_class_definition():
    with pytest.raises(ab.UsageError, match=r"defines now.*framework's names: .*schedule"):
        class NTShadow(ab.Agent):
            @ab.callable
            async def now(self) -> str:
                return "later"

    with pytest.raises(ab.UsageError, match="state"):
        class NTShadowState(ab.Agent):
            state = {"x": 1}

    assert "now" in FRAMEWORK_NAMES


def test_hooks_and_chat_settings_stay_overridable():
    class NTHooks(ab.Agent):
        initial_state = {"a": 1}

        async def on_start(self): ...
        async def on_request(self, request): ...
        async def on_connect(self, connection, ctx): ...
        async def on_message(self, connection, message): ...
        async def on_close(self, connection, code, reason): ...
        async def on_error(self, error): ...
        def validate_state_change(self, state, source): ...
        def on_state_changed(self, state, source): ...

    class NTChat(ab.ChatAgent):
        model = ab.models.builtin()
        tools: list = []
        system = "Be brief."
        max_steps = 3

    assert NTHooks.initial_state == {"a": 1} and NTChat.system == "Be brief."


# -- SQL parameters -------------------------------------------------------------------------
async def test_rt_sql_and_ref_sql_take_parameters_the_same_way(mem_rt):
    ref = mem_rt.get(NTCounter, "c")
    await ref.bump()
    await ref.bump()
    frame = mem_rt.sql("SELECT version FROM history WHERE name = ? AND version >= ? "
                       "ORDER BY version", "c", 2)
    assert list(frame.version) == [2]
    frame = mem_rt.sql("SELECT count(*) AS n FROM history WHERE name = $who", who="c")
    assert int(frame.n[0]) == 2
    assert ref.sql("SELECT ? + ? AS s", 1, 2).s[0] == 3
    with pytest.warns(DeprecationWarning, match="one by one"):
        old = mem_rt.sql("SELECT count(*) AS n FROM history WHERE name = ?", ["c"])
    assert int(old.n[0]) == 2
    with pytest.warns(DeprecationWarning):
        mem_rt.sql("SELECT count(*) AS n FROM history WHERE name = $who", {"who": "c"})


# -- history pages --------------------------------------------------------------------------
async def test_history_limit_counts_failures_too(mem_rt):
    ref = mem_rt.get(NTCounter, "c")
    await ref.bump()
    await ref.bump()
    with pytest.raises(ValueError):
        await ref.fail()
    page = ref.history(limit=2)
    assert len(page) == 2
    assert list(page.outcome) == ["error", "ok"]
    assert list(ref.history(limit=3).outcome) == ["error", "ok", "ok"]
    assert len(ref.history(limit=2, failures=False)) == 2


# -- a redefined state design ---------------------------------------------------------------
async def test_a_redefinition_reading_a_missing_state_key_names_it(mem_rt):
    class NTRedef(ab.Agent):
        initial_state = {"tickets": 0}

        @ab.callable
        async def open(self) -> int:
            self.set_state({"tickets": self.state["tickets"] + 1})
            return self.state["tickets"]

    ref = mem_rt.get(NTRedef, "r")
    await ref.open()

    class NTRedef(ab.Agent):  # a cell run again with a new design
        initial_state = {"open": 0, "closed": 0}

        @ab.callable
        async def open(self) -> int:
            self.set_state({**self.state, "open": self.state["open"] + 1})
            return self.state["open"]

    with pytest.raises(ab.IncompatibleStateError, match="'open'") as info:
        await mem_rt.get(NTRedef, "r").open()
    assert "tickets" in str(info.value)
    assert mem_rt.get(NTRedef, "r").state == {"tickets": 1}

    class NTRedef(ab.Agent):  # any other KeyError stays a KeyError
        initial_state = {"open": 0, "closed": 0}

        @ab.callable
        async def open(self) -> int:
            return {}["missing"]

    with pytest.raises(KeyError):
        await mem_rt.get(NTRedef, "r").open()
