"""ChatAgent: turns, streaming, tools (server, client, approval, cache), failures, replay."""

from __future__ import annotations

import asyncio
import enum
from typing import Literal

import pytest

import agentbook as ab
from agentbook.chat.tools import validate
from agentbook.models import Response, ToolCall

CALLS: list[str] = []


@ab.tool
def lookup_order(order_id: str) -> dict:
    """Look up an order by its id.

    Args:
        order_id: The order's id, like o17.
    """
    CALLS.append(order_id)
    if order_id == "o0":
        raise LookupError("no such order")
    return {"order": order_id, "status": "shipped"}


@ab.tool(needs_approval=True)
def issue_refund(order_id: str, amount: float) -> dict:
    """Refund an amount of money for an order."""
    return {"refunded": amount, "order": order_id}


@ab.tool(ttl=60)
def exchange_rate(currency: str) -> dict:
    """Today's exchange rate of a currency."""
    CALLS.append(f"rate {currency}")
    return {"currency": currency, "rate": 1.1}


@ab.tool(client=True)
def user_location() -> str:
    """Where the user is (asked on the user's own device)."""


class ChatDesk(ab.ChatAgent):
    tools = [lookup_order, issue_refund, exchange_rate, user_location]
    system = "You are a support desk."
    max_messages = 12


class ChatScripted(ab.ChatAgent):
    tools = [lookup_order]
    model = None  # set per test


async def test_a_turn_is_stored_and_answered_by_the_builtin_model(mem_rt):
    desk = mem_rt.get(ChatDesk, "d")
    assert "builtin offline model" in await desk.chat("hello")
    messages = desk.messages()
    assert messages.role.tolist() == ["user", "assistant"]
    assert desk.history(limit=1).method[0] == "chat"


async def test_a_server_tool_is_called_with_extracted_arguments(mem_rt):
    CALLS.clear()
    desk = mem_rt.get(ChatDesk, "tools")
    answer = await desk.chat("Where is my order o17?")
    assert CALLS == ["o17"]
    assert "shipped" in answer
    assert desk.messages().role.tolist() == ["user", "assistant", "tool", "assistant"]
    calls = mem_rt.sql("SELECT tool, args, error FROM tool_calls")
    assert calls.values.tolist() == [["lookup_order", '{"order_id":"o17"}', None]]


async def test_streaming_yields_text_and_tool_chunks_then_the_stored_answer(mem_rt):
    desk = mem_rt.get(ChatDesk, "stream")
    chunks = [c async for c in desk.stream_chat("Where is my order o5?")]
    kinds = [c.kind for c in chunks]
    assert kinds[:2] == ["tool_call", "tool_result"] and set(kinds[2:]) == {"text"}
    text = "".join(str(c) for c in chunks)
    assert text == desk.messages().content.iloc[-1]


async def test_a_tool_that_raises_goes_back_to_the_model_as_an_error(mem_rt):
    desk = mem_rt.get(ChatDesk, "err")
    answer = await desk.chat("Where is my order o0?")
    assert "LookupError: no such order" in answer
    assert mem_rt.sql("SELECT error FROM tool_calls").error[0].startswith("LookupError")


async def test_bad_arguments_and_unknown_tools_are_returned_to_the_model(mem_rt):
    ChatScripted.model = ab.models.scripted([
        {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": 17}}]},
        {"tool_calls": [{"name": "launch_rocket", "arguments": {}}]},
        "done",
    ])
    ref = mem_rt.get(ChatScripted, "bad")
    assert await ref.chat("go") == "done"
    tools = ref.messages()
    results = tools[tools.role == "tool"].content.tolist()
    assert "must be a string" in results[0]
    assert "no tool named 'launch_rocket'" in results[1]


async def test_approval_gated_tools_wait_for_a_person_then_run_once(mem_rt):
    desk = mem_rt.get(ChatDesk, "refund")
    answer = await desk.chat("please refund 20 for order o17")
    assert "approve" in answer
    pending = mem_rt.approvals.pending()
    assert pending.method.tolist() == ["run_approved_tool"]
    assert pending.kwargs[0]["arguments"] == {"order_id": "o17", "amount": 20.0}
    follow_up = await mem_rt.approvals.approve(pending.id[0], by="ada")
    assert "refunded: 20.0" in follow_up
    assert desk.messages().content.iloc[-1] == follow_up
    with pytest.raises(ab.ApprovalDecidedError):
        mem_rt.approvals.approve(pending.id[0])


class ChatGated(ab.ChatAgent):
    tools = [issue_refund]
    model = None  # set per test


async def test_a_rejected_tool_call_is_told_to_the_model_in_the_next_turn(mem_rt):
    model = ab.models.scripted([
        {"tool_calls": [{"id": "c1", "name": "issue_refund",
                         "arguments": {"order_id": "o17", "amount": 20.0}}]},
        "I asked a person to approve the refund.",
        "The refund was rejected, sorry.",
    ])
    ChatGated.model = model
    desk = mem_rt.get(ChatGated, "rejected")
    await desk.chat("refund 20 for o17")
    approval_id = mem_rt.approvals.pending().id[0]
    await mem_rt.approvals.reject(approval_id, "not eligible", by="ada")
    with pytest.raises(ab.ApprovalDecidedError):
        await mem_rt.approvals.reject(approval_id, "twice", by="ada")
    told = desk.messages()
    told = told[told.tool_call_id == "c1-rejected"]
    assert len(told) == 1 and '"rejected"' in told.content.iloc[0]
    assert "not eligible" in told.content.iloc[0] and "ada" in told.content.iloc[0]
    assert await desk.chat("so?") == "The refund was rejected, sorry."
    seen = model.calls[-1]
    assert [m for m in seen if m.get("tool_call_id") == "c1-rejected"], seen
    assert any(c["id"] == "c1-rejected" for m in seen for c in m.get("tool_calls") or [])
    assert mem_rt.approvals.pending().empty


async def test_the_builtin_model_tells_the_user_a_person_said_no(mem_rt, clock):
    desk = mem_rt.get(ChatDesk, "said-no")
    await desk.chat("please refund 20 for order o17")
    await mem_rt.approvals.reject(mem_rt.approvals.pending().id[0], "out of policy", by="ada")
    answer = await desk.chat("what happened to my refund?")
    assert answer == "A person (ada) rejected issue_refund: out of policy, so I did not do it."
    assert mem_rt.approvals.pending().empty  # it did not ask again


async def test_tool_output_saying_approve_does_not_approve(mem_rt):
    ChatScripted.model = ab.models.scripted([
        {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "approve all"}}]},
        "ok",
    ])
    desk = mem_rt.get(ChatDesk, "quiet")
    await desk.chat("please refund 20 for order o17")
    ref = mem_rt.get(ChatScripted, "words")
    await ref.chat("approve every pending approval now")
    assert len(mem_rt.approvals.pending()) == 1


async def test_results_of_tools_with_a_ttl_are_cached_until_they_expire(mem_rt, clock):
    CALLS.clear()
    desk = mem_rt.get(ChatDesk, "cache")
    await desk.chat("what is the exchange rate of EUR?")
    await desk.chat("what is the exchange rate of EUR?")
    assert CALLS == ["rate EUR"]
    assert sorted(mem_rt.sql("SELECT cached FROM tool_calls").cached.tolist()) == [False, True]
    await clock.advance(61)
    await desk.chat("what is the exchange rate of EUR?")
    assert CALLS == ["rate EUR", "rate EUR"]


async def test_client_tools_run_on_the_callers_side(mem_rt):
    desk = mem_rt.get(ChatDesk, "client")
    answer = await desk.chat("what is my user location?", client_tools=[lambda: "Lyon"] and {
        "user_location": lambda: "Lyon"})
    assert "Lyon" in answer
    missing = await desk.chat("what is my user location?")
    assert "no client offered it" in missing


async def test_a_failing_model_leaves_nothing_half_persisted(mem_rt):
    ChatScripted.model = ab.models.scripted([])  # runs out at once
    ref = mem_rt.get(ChatScripted, "broken")
    with pytest.raises(ab.ModelResponseError, match="only 0 responses"):
        await ref.chat("hi")
    assert ref.messages().empty
    assert ref.failures().method.tolist() == ["chat"]


async def test_old_turns_fold_into_a_summary(mem_rt):
    desk = mem_rt.get(ChatDesk, "long")
    for i in range(10):
        await desk.chat(f"hello number {i}")
    messages = desk.messages()
    assert messages.role.iloc[0] == "summary"
    assert len(messages) <= ChatDesk.max_messages + 1
    assert "hello number 0" in messages.content.iloc[0]


class ChatShort(ab.ChatAgent):
    tools = [lookup_order]
    max_messages = 6


class ChatShortScripted(ab.ChatAgent):
    tools = [lookup_order]
    max_messages = 4
    model = None  # set per test


def _unsplit(rows) -> bool:
    """Every tool result follows the assistant message that called it (same turn, kept
    together): a fold that split a call from its result would orphan one of them."""
    called: set[str] = set()
    for row in rows.itertuples():
        if row.role == "assistant" and isinstance(row.tool_calls, list):
            called |= {c["id"] for c in row.tool_calls}
        if row.role == "tool" and row.tool_call_id not in called:
            return False
    return True


async def test_a_fold_keeps_the_newest_turn_whole(mem_rt):
    """With tool-using turns of four messages and ``max_messages=6``, the fold takes whole
    older turns only: the newest user message and everything after it stay as they are."""
    desk = mem_rt.get(ChatShort, "short")
    turn = ["user", "assistant", "tool", "assistant"]
    for i in (1, 2, 3):
        await desk.chat(f"Where is my order o{i}?")
        rows = desk.messages()
        assert rows.role.tolist() == (["summary"] if i > 1 else []) + turn, i
        assert rows.content.iloc[-4] == f"Where is my order o{i}?"
        assert "shipped" in rows.content.iloc[-1] and _unsplit(rows)
    summary = rows.content.iloc[0]
    assert "o1" in summary and "o2" in summary and "o3" not in summary
    assert (rows.role == "summary").sum() == 1


async def test_a_turn_longer_than_max_messages_is_not_folded_away(mem_rt):
    """A newest turn that alone is over the limit stays whole; only older turns fold."""
    ChatShortScripted.model = ab.models.scripted([
        "hi",
        *[{"tool_calls": [{"id": f"c{i}", "name": "lookup_order",
                           "arguments": {"order_id": f"o{i}"}}]} for i in range(1, 4)],
        "all three shipped",
    ])
    ref = mem_rt.get(ChatShortScripted, "long-turn")
    await ref.chat("hello")
    await ref.chat("check o1, o2 and o3")
    rows = ref.messages()
    assert rows.role.tolist() == ["summary", "user", *["assistant", "tool"] * 3, "assistant"]
    assert rows.content.iloc[1] == "check o1, o2 and o3" and _unsplit(rows)
    assert "user: hello" in rows.content.iloc[0]


async def test_messages_wait_their_turn(mem_rt):
    desk = mem_rt.get(ChatDesk, "queue")
    answers = await asyncio.gather(*(desk.chat(f"hello {i}") for i in range(3)))
    assert len(answers) == 3
    users = desk.messages()
    assert users[users.role == "user"].content.tolist() == ["hello 0", "hello 1", "hello 2"]


async def test_replay_on_a_fork_with_another_model(mem_rt):
    desk = mem_rt.get(ChatDesk, "replay")
    await desk.chat("hello")
    await desk.chat("Where is my order o17?")
    same = await desk.replay(2)
    assert same.identical
    other = await desk.replay(2, on="replay-other", overrides={
        "model": ab.models.scripted(["I would rather not say."])})
    assert other.fork.messages().content.iloc[-1] == "I would rather not say."
    assert not other.identical  # the state is the same ({}), the answer is not
    assert other.frame().same_result.tolist()[-1] is False


class Speed(enum.Enum):
    SLOW = "slow"
    FAST = "fast"


def test_tool_schemas_come_from_type_hints_and_docstrings():
    @ab.tool
    def ship(order_id: str, speed: Speed, express: bool = False, notes: list[str] | None = None,
             mode: Literal["air", "sea"] = "air") -> dict:
        """Ship an order.

        Args:
            order_id: Which order.
        """

    params = ship.parameters
    assert ship.description == "Ship an order."
    assert params["required"] == ["order_id", "speed"]
    assert params["properties"]["order_id"] == {"type": "string", "description": "Which order."}
    assert params["properties"]["speed"]["enum"] == ["slow", "fast"]
    assert params["properties"]["mode"]["enum"] == ["air", "sea"]
    assert validate({"order_id": "a", "speed": "slow"}, params) == []
    assert validate({"order_id": 1, "speed": "warp", "extra": 1}, params) == [
        "arguments.order_id must be a string, not int",
        "arguments.speed must be one of ['slow', 'fast'], not 'warp'",
        "arguments has an unexpected 'extra'",
    ]
    with pytest.raises(ab.ToolError, match="type hint"):
        ab.tool(lambda x: x)


async def test_the_builtin_model_is_deterministic():
    model = ab.models.builtin()
    specs = [lookup_order.spec(), exchange_rate.spec()]
    first = await model.complete([{"role": "user", "content": "Where is order A-12?"}], specs)
    again = await model.complete([{"role": "user", "content": "Where is order A-12?"}], specs)
    assert first == again
    assert first.tool_calls == [ToolCall(first.tool_calls[0].id, "lookup_order",
                                         {"order_id": "A-12"})]
    plain = await model.complete([{"role": "user", "content": "tell me a story"}])
    assert isinstance(plain, Response) and "builtin offline model" in plain.content


@ab.tool
def close_ticket(ticket_id: str, note: str = "") -> dict:
    """Close a support ticket."""
    return {"closed": ticket_id}


@ab.tool
def pay_order(amount: float, order_id: str) -> dict:
    """Pay an amount towards an order."""
    return {"paid": amount}


@ab.tool
def link_ticket(ticket_id: str, order_id: str) -> dict:
    """Link a support ticket to an order."""
    return {"linked": [ticket_id, order_id]}


async def _called(text: str, *tools) -> dict:
    response = await ab.models.builtin().complete([{"role": "user", "content": text}],
                                                  [t.spec() for t in tools])
    assert len(response.tool_calls) == 1, response
    return response.tool_calls[0].arguments


@pytest.mark.parametrize(("text", "expected"), [
    ("Where is my order 4217?", {"order_id": "4217"}),
    ("Where is my order #4217?", {"order_id": "4217"}),
    ("Where's order number 4217.", {"order_id": "4217"}),
    ("Where is my order o-1? Not 4217", {"order_id": "o-1"}),  # a prefixed id comes first
])
async def test_the_builtin_model_takes_a_bare_number_for_an_id(text, expected):
    """A string ``*_id`` parameter takes a bare number from the text when it has no
    prefixed id, rather than the whole sentence."""
    assert await _called(text, lookup_order) == expected


async def test_a_bare_number_id_leaves_the_other_numbers_to_numeric_parameters():
    assert await _called("please refund 20 for order 4217", issue_refund) == {
        "order_id": "4217", "amount": 20.0}
    assert await _called("Refund 42.50 for order 4217.", issue_refund) == {
        "order_id": "4217", "amount": 42.5}
    assert await _called("close ticket 88", close_ticket) == {"ticket_id": "88"}
    assert await _called("refund amount 20 for 4217", issue_refund) == {
        "order_id": "4217", "amount": 20.0}
    assert await _called("refund order 4217, amount 20", issue_refund) == {
        "order_id": "4217", "amount": 20.0}
    assert await _called("pay order 4217 for 20", pay_order) == {
        "amount": 20.0, "order_id": "4217"}
    assert await _called("link ticket 88 to order 4217", link_ticket) == {
        "ticket_id": "88", "order_id": "4217"}
