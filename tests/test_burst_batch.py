"""What the messages of one batch share (issue 20): the call chain and the events flag are
set once per batch (``handler.enter_batch``), a message that leaves nothing after the
commit gives the shared ``QUIET`` outcome, and its handler context is handed to the next
message unless something else still holds it. Each message still sees its own chain and
context, and one that fails, suspends or is called from another agent stays itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import agentbook as ab
from agentbook.core import handler
from agentbook.core.handler import current_chain, current_context

#: What each handler saw, by message: (label, chain, source of its context).
SEEN: list[tuple[str, tuple, str]] = []
#: The task a handler left running, and the event that lets it end.
KEPT: list[tuple[asyncio.Task, asyncio.Event]] = []


class Seer(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def look(self, label: str) -> int:
        ctx = current_context.get()
        assert ctx is not None
        SEEN.append((label, current_chain.get(), ctx.source))
        if label.startswith("bad"):
            raise ValueError("this one fails")
        if label.startswith("slow"):
            await asyncio.sleep(0)  # suspends mid-batch
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def leave_a_task(self) -> None:
        """Leaves a task running that keeps this handler's context (and so its context
        variables) after the handler is over."""
        release = asyncio.Event()

        async def later() -> Any:
            await release.wait()
            return current_context.get()

        KEPT.append((asyncio.get_running_loop().create_task(later()), release))
        self.set_state({"n": self.state["n"] + 1})


    @ab.callable
    async def bump(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


class Relay(ab.Agent):
    @ab.callable
    async def fan(self, times: int) -> None:
        for _ in range(times):  # (a handler's sends: each gets its own outbox tag)
            self.ref(Seer, "s").send("bump")


class Caller(ab.Agent):
    @ab.callable
    async def ask(self, label: str) -> int:
        return await self.ref(Seer, "s").look(label)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SEEN.clear()
    KEPT.clear()


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Returns a function that starts counting the handler contexts made (their sources)
    from then on."""
    sources: list[str] = []
    make = handler.HandlerContext.__init__

    def counting(self: handler.HandlerContext, source: str) -> None:
        sources.append(source)
        make(self, source)

    def start() -> list[str]:
        monkeypatch.setattr(handler.HandlerContext, "__init__", counting)
        return sources

    return start


async def test_each_message_of_a_batch_sees_its_own_chain_and_context(tmp_path: Path) -> None:
    """In one burst: sends from the cell, one that fails, one that suspends, and a call
    from another agent's handler. Each handler sees its own chain (the other agent's
    call: caller, then this agent) and a context with its own source; the failed one is
    undone alone."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    seer, caller = rt.get(Seer, "s"), rt.get(Caller, "c")
    await seer.look("first")
    SEEN.clear()
    ref_key = seer._ab_key
    asked = asyncio.ensure_future(caller.ask("from-caller"))
    await asyncio.sleep(0)  # (the caller's handler runs and sends its call first)
    for label in ["a", "bad-1", "b", "slow-1", "c", "d"]:
        seer.send("look", label)
    assert await seer.look("last") == 8
    assert await asked in range(2, 9)
    by_label = {label: (chain, source) for label, chain, source in SEEN}
    assert by_label["from-caller"] == ((caller._ab_key, ref_key), "agent:Caller/c")
    for label in ["a", "bad-1", "b", "slow-1", "c", "d", "last"]:
        assert by_label[label] == ((ref_key,), rt.source), label
    assert seer.state == {"n": 8}, "seven messages that worked after the first; bad-1 undone"
    history = seer.history(limit=20)
    assert history[history.outcome == "error"].args.tolist() == [["bad-1"]]
    assert seer.verify()["ok"]
    await rt.aclose()


async def test_a_quiet_burst_runs_in_one_handler_context(tmp_path: Path, made: Any) -> None:
    """Messages that leave nothing after the commit hand their context on: a burst of 50
    sends makes one handler context, not 50 (each made context also cost the garbage
    collector), and every message is still its own version."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Seer, "q")
    await ref.look("first")
    contexts = made()
    for i in range(50):
        ref.send("look", f"m{i}")
    assert await ref.look("last") == 52
    assert contexts == [rt.source], "one context for the burst (the awaited last one reuses it too)"
    assert ref.version == 52 and ref.verify()["ok"]
    await rt.aclose()


async def test_a_context_something_still_holds_is_not_handed_on(tmp_path: Path,
                                                                made: Any) -> None:
    """A handler that leaves a task running gives that task a copy of its context
    variables, its handler context among them: that context is not handed to the next
    message, so what the task sees later is still the context of the handler that made
    it, untouched by the messages after it."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Seer, "t")
    await ref.look("first")
    contexts = made()
    ref.send("look", "before")
    ref.send("leave_a_task")
    for i in range(5):
        ref.send("look", f"after-{i}")
    assert await ref.look("last") == 9
    assert len(contexts) == 2, "one context before the task's handler, a new one after it"
    [(task, release)] = KEPT
    release.set()
    kept = await task
    assert kept is not None and kept.source == rt.source
    assert kept.state_changed, "left as its handler left it, not set up for another message"
    assert ref.version == 9 and ref.verify()["ok"]
    await rt.aclose()


async def test_sends_without_arguments_share_one_envelope_and_each_runs(tmp_path: Path) -> None:
    """A burst of sends without arguments from a cell queues one envelope, not one per send
    (they are all the same, and nothing changes them), and each still runs once as its
    own version. An awaited call gets its own (its future), and so does each send from a
    handler (its outbox tag): a handler's three sends arrive three times."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    seer = rt.get(Seer, "s")
    assert await seer.bump() == 1
    for _ in range(5):
        seer.send("bump")
    queued = list(rt.instances[seer._ab_key].queue)
    assert len(queued) == 5 and all(env is queued[0] for env in queued)
    assert queued[0].future is None and queued[0].extras is None
    assert await seer.bump() == 7
    await rt.get(Relay, "r").fan(3)
    seer.send("bump")
    await rt.settle()
    assert seer.state == {"n": 11}, "the relay's three sends and the cell's one, each once"
    sources = seer.history(limit=20).source.tolist()
    assert sources.count("agent:Relay/r") == 3 and sources.count(rt.source) == 8, \
        "each envelope says who sent it"
    assert seer.version == 11 and seer.verify()["ok"]
    await rt.aclose()
