"""Chat turns in flight (agentbook.chat.turns): a mark on record while a turn runs, gone
after its commit or failure; a turn an earlier life left unfinished is stored as
interrupted - its message and an empty assistant message - never half of its answer, the
model never sees it, and the next turn supersedes its report."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import agentbook as ab
from agentbook.chat.turns import log_of, store_interrupted
from agentbook.models.base import Chunk
from agentbook.models.builtin import BuiltinModel
from agentbook.store.chatturns import ChatTurns, TurnMark

from .waiting import eventually

SEEN: list[list[dict]] = []  # the messages each model call was given
RELEASE: list[asyncio.Event] = []  # what a stalled turn waits for


class Stalls(BuiltinModel):
    """The builtin model; a message saying "stall" says one word, then waits for
    ``RELEASE``; "fail" raises after a word."""

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None, **options: Any) -> Any:
        SEEN.append(messages)
        return await super().complete(messages, tools, **options)

    async def stream(self, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None, **options: Any) -> Any:
        text = str(messages[-1].get("content") or "")
        if "stall" in text or "fail" in text:
            yield Chunk("Partly")
            if "fail" in text:
                raise RuntimeError("the model broke")
            RELEASE.append(asyncio.Event())
            await RELEASE[-1].wait()
        async for chunk in super().stream(messages, tools, **options):
            yield chunk


class TurnDesk(ab.ChatAgent):
    model = Stalls()


def marks(rt: ab.Runtime) -> list[TurnMark]:
    return ChatTurns(rt.catalog).marks()


def rows(ref: Any) -> list[tuple]:
    return [(r.role, r.content, r.name if isinstance(r.name, str) else None)
            for r in ref.messages().itertuples()]


async def test_a_running_turn_is_on_record_until_its_commit_or_its_failure(rt):
    ref = rt.get(TurnDesk, "a")
    stream = ref.stream_chat("please stall")
    assert str(await stream.__anext__()) == "Partly"
    (mark,) = marks(rt)
    assert (mark.agent, mark.name, mark.asked, mark.state) == ("TurnDesk", "a", "please stall",
                                                               "running")
    assert mark.owner == log_of(rt).owner
    RELEASE[-1].set()
    assert [str(c) async for c in stream]
    assert await ref.chat("hello")
    with pytest.raises(Exception, match="the model broke"):
        assert [c async for c in ref.stream_chat("please fail")]
    await eventually(lambda: not marks(rt), what="the marks of the turns gone")


async def test_a_turn_an_earlier_life_left_running_is_stored_as_interrupted(tmp_path):
    # (a real SIGKILL mid-turn: tests/test_serve_chat_kill.py; here its leftover mark)
    rt = ab.Runtime(tmp_path / "store")
    ref = rt.get(TurnDesk, "b")
    assert await ref.chat("hello")
    await eventually(lambda: not marks(rt), what="the turn's own mark gone")
    ChatTurns(rt.catalog).begin(TurnMark("TurnDesk", "b", "t-1", "gone", 2, "m-asked",
                                         "please stall", "m-reply", "running", 0.0), False)
    await rt.aclose()
    rt = ab.Runtime(tmp_path / "store")
    try:
        ref = rt.get(TurnDesk, "b")
        hello = rows(ref)[1][1]
        assert rows(ref) == [("user", "hello", None), ("assistant", hello, None)]
        (left,) = marks(rt)
        assert left.state == "running" and left.owner != log_of(rt).owner
        assert await store_interrupted(rt, ref._ab_key) == 1
        assert rows(ref) == [("user", "hello", None), ("assistant", hello, None),
                             ("user", "please stall", None), ("assistant", "", "interrupted")]
        assert list(ref.messages().id[2:]) == ["m-asked", "m-reply"]
        await eventually(lambda: [m.state for m in marks(rt)] == ["interrupted"],
                         what="the mark kept as the turn's report")
        assert log_of(rt).reported[("TurnDesk", "b")].id == left.id
        SEEN.clear()
        assert await ref.chat("hello again")
        assert [m["content"] for m in SEEN[0] if m["role"] != "system"] == [
            "hello", hello, "please stall", "hello again"]  # (never the empty answer)
        assert rows(ref)[-2:] == [("user", "hello again", None), ("assistant", hello, None)]
        await eventually(lambda: not marks(rt), what="the report superseded by the next turn")
        assert ("TurnDesk", "b") not in log_of(rt).reported
    finally:
        await rt.aclose()


async def test_a_mark_that_outlived_its_turns_commit_is_dropped(tmp_path):
    rt = ab.Runtime(tmp_path / "store")
    ref = rt.get(TurnDesk, "c")
    assert await ref.chat("hello")
    await eventually(lambda: not marks(rt), what="the turn's own mark gone")
    ChatTurns(rt.catalog).begin(TurnMark("TurnDesk", "c", "t-1", "gone", 0, "m-1", "hello",
                                         "m-2", "running", 0.0), False)
    await rt.aclose()
    rt = ab.Runtime(tmp_path / "store")
    try:
        ref = rt.get(TurnDesk, "c")
        assert await store_interrupted(rt, ref._ab_key) == 0
        assert [r[0] for r in rows(ref)] == ["user", "assistant"]
        await eventually(lambda: not marks(rt), what="the stale mark dropped")
    finally:
        await rt.aclose()
