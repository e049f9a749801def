"""Replays touch nothing real (SPEC §2.10): awaited calls to other agents are journaled
effects, served from the journal when a history is replayed, so a replay, a fork or a
what-if changes no agent but the fork."""

from __future__ import annotations

import pytest

import agentbook as ab


class RBDesk(ab.Agent):
    initial_state = {"tickets": 0}

    @ab.callable
    async def open(self, text: str) -> int:
        if text == "boom":
            raise ValueError(f"desk refuses {text!r}")
        self.set_state({"tickets": self.state["tickets"] + 1})
        return self.state["tickets"]


class RBFront(ab.Agent):
    initial_state = {"seen": [], "errors": []}

    @ab.callable
    async def route(self, text: str) -> int:
        number = await self.ref(RBDesk, "bob").open(text)
        self.set_state({**self.state, "seen": [*self.state["seen"], number]})
        return number

    @ab.callable
    async def route_twice(self, text: str) -> list:
        desk = self.ref(RBDesk, "bob")
        first = await desk.open(text)
        second = await desk.call("open", text + "!")
        self.set_state({**self.state, "seen": [*self.state["seen"], first, second]})
        return [first, second]

    @ab.callable
    async def try_route(self, text: str) -> str:
        try:
            await self.ref(RBDesk, "bob").open(text)
        except ValueError as exc:
            self.set_state({**self.state, "errors": [*self.state["errors"], str(exc)]})
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    @ab.callable
    async def notify(self, text: str) -> None:
        self.ref(RBDesk, "bob").send("open", text)
        self.set_state({**self.state, "seen": [*self.state["seen"], text]})


async def test_replay_serves_calls_to_other_agents_from_the_journal(mem_rt):
    alice = mem_rt.get(RBFront, "alice")
    bob = mem_rt.get(RBDesk, "bob")
    assert await alice.route("printer") == 1
    assert await alice.route_twice("screen") == [2, 3]
    assert bob.state == {"tickets": 3}
    bob_version = bob.version

    result = await alice.replay(1)
    assert result.identical, result.frame()
    assert bob.state == {"tickets": 3}  # bob was not called again
    assert bob.version == bob_version
    assert result.fork.state == alice.state

    # the fork's journal holds the calls too, so a replay of the fork is served as well
    again = await result.fork.replay(1)
    assert again.identical
    assert bob.state == {"tickets": 3}


async def test_replay_raises_the_recorded_error_of_another_agent(mem_rt):
    alice = mem_rt.get(RBFront, "alice")
    bob = mem_rt.get(RBDesk, "bob")
    assert await alice.try_route("boom") == "ValueError: desk refuses 'boom'"
    assert await alice.try_route("fine") == "ok"
    result = await alice.replay(1)
    assert result.identical, result.frame()
    assert result.fork.state["errors"] == ["desk refuses 'boom'"]
    assert bob.state == {"tickets": 1}


async def test_replay_never_sends_to_other_agents(mem_rt):
    alice = mem_rt.get(RBFront, "alice")
    bob = mem_rt.get(RBDesk, "bob")
    await alice.notify("hello")
    await mem_rt.settle()
    assert bob.state == {"tickets": 1}
    result = await alice.replay(1)
    await mem_rt.settle()
    assert result.identical
    assert bob.state == {"tickets": 1}


async def test_agent_calls_can_be_overridden_but_never_made_live(mem_rt):
    alice = mem_rt.get(RBFront, "alice")
    bob = mem_rt.get(RBDesk, "bob")
    await alice.route("printer")
    result = await alice.replay(1, overrides={"agent:RBDesk/bob.open": 41})
    assert result.fork.state["seen"] == [41]
    assert not result.identical
    result = await alice.replay(1, live=True)  # live models and tools, never live agents
    assert result.identical
    assert bob.state == {"tickets": 1}
    with pytest.raises(ab.UsageError, match="other agents"):
        await alice.replay(1, live={"agent:RBDesk/bob.open"})
    assert bob.state == {"tickets": 1}
