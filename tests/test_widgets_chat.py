"""The chat box: a view over a chat agent that streams answers and decides approvals as code does.

In-process tests drive it with ``send()`` and ``Button.click()`` on the builtin model; one
test runs a real kernel and types and clicks the way a browser does (comm messages).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re

import ipywidgets as w
import pytest

import agentbook as ab
from agentbook.models.builtin import BuiltinModel
from agentbook.widgets.chat import ChatWidget, chat_widget

from .waiting import IN_KERNEL, eventually

RAN: list[tuple[str, float]] = []


@ab.tool
def lookup_order(order_id: str) -> dict:
    """Look up an order by its id.

    Args:
        order_id: The order's id, like o-1001.
    """
    return {"order": order_id, "status": "shipped", "note": "<b>fragile</b>"}


@ab.tool(needs_approval=True)
def refund_order(order_id: str, amount: float) -> dict:
    """Refund an amount of money for an order."""
    RAN.append((order_id, amount))
    return {"refunded": amount, "order": order_id}


class BoxDesk(ab.ChatAgent):
    tools = [lookup_order, refund_order]


class Paced(BuiltinModel):
    """The builtin model's answers, streamed the way a network delivers them: one chunk
    per turn of the event loop."""

    async def stream(self, messages, tools=None, **options):
        async for chunk in super().stream(messages, tools, **options):
            await asyncio.sleep(0)
            yield chunk


class PacedBoxDesk(BoxDesk):
    model = Paced()


class BrokenBoxDesk(ab.ChatAgent):
    model = ab.models.scripted([])  # has no answer at all


@pytest.fixture
async def box(rt):
    widget = chat_widget(rt.get(BoxDesk, "desk"), by="ada")
    yield widget
    widget.close()


def texts(box: ChatWidget) -> list[str]:
    """What the conversation shows, oldest first, as plain text: one item per message,
    tool line or approval row."""
    out = []
    for child in box.conversation.children:
        if child.layout.display == "none":
            continue
        if isinstance(child, w.HTML):  # a run of messages
            out += [text_of(m) for m in re.findall(r"<div\b[^>]*>(.*?)</div>", child.value, re.S)]
        else:  # an approval row
            out.append(text_of(child.children[0].value))
    return out


def text_of(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", value))


def stored_answer(box: ChatWidget) -> str:
    return box.ref.messages().content.iloc[-1]


async def test_a_sent_message_streams_into_the_box_and_equals_the_stored_answer(box):
    task = box.send("hello there")
    assert isinstance(task, asyncio.Task)
    assert await task == stored_answer(box) == box.last_answer
    assert "builtin offline model" in box.last_answer
    assert texts(box) == ["hello there", box.last_answer]
    assert box.status.value == "" and box.last_error == ""
    assert box.ref.messages().role.tolist() == ["user", "assistant"]


async def test_the_answer_grows_chunk_by_chunk_while_it_streams(rt):
    box = chat_widget(rt.get(PacedBoxDesk, "paced"))
    draft = box.conversation.children[-1]  # drawn into while a turn streams, reused after
    seen: list[str] = []
    draft.observe(lambda change: seen.append(change["new"]), names="value")
    answer = await box.send("hello there")
    drafts = [text_of(m) for v in seen for m in re.findall(r"chat-assistant.*?>(.*?)</div>", v)]
    assert len(drafts) >= 5  # one redraw per chunk
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(drafts))
    assert drafts[-1] == answer == stored_answer(box)
    assert texts(box) == ["hello there", answer]  # stored messages replaced the draft
    assert draft in box.conversation.children and draft.value == ""
    box.close()


async def test_a_turn_typed_elsewhere_streams_into_the_box_word_by_word(rt):
    # a turn over the wire (a browser page, Cloudflare's client, here ab.connect) is drawn
    # as it streams, the way one sent from the box is - not only when it commits
    server = rt.serve()
    box = chat_widget(rt.get(PacedBoxDesk, "wire"))
    draft = box.conversation.children[-1]
    seen: list[str] = []
    draft.observe(lambda change: seen.append(change["new"]), names="value")
    try:
        async with await ab.connect(server.url_for(PacedBoxDesk, "wire"),
                                    token=server.token) as client:
            said = "".join([str(c) async for c in client.stream_chat("hello from a page")])
        await eventually(lambda: texts(box) == ["hello from a page", said],
                         what="the stored turn in the box")
    finally:
        box.close()
        await server.stop()
    drafts = [text_of(m) for v in seen for m in re.findall(r"chat-assistant.*?>(.*?)</div>", v)]
    assert len(drafts) >= 5  # one redraw per chunk, before the commit
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(drafts))
    assert drafts[-1] == said == stored_answer(box)
    assert all("hello from a page" in text_of(v) for v in seen if v)  # the user's words first
    assert draft.value == ""  # the stored messages replaced the draft


async def test_a_turn_from_another_cell_streams_into_an_open_box(rt):
    box = chat_widget(rt.get(PacedBoxDesk, "cell"))
    draft = box.conversation.children[-1]
    seen: list[str] = []
    draft.observe(lambda change: seen.append(change["new"]), names="value")
    said = "".join([str(c) async for c in box.ref.stream_chat("hello from a cell")])
    await eventually(lambda: texts(box) == ["hello from a cell", said], what="the stored turn")
    box.close()
    assert len([v for v in seen if said[:20] in text_of(v)]) >= 1
    assert len(seen) >= 5


async def test_tool_calls_and_results_show_inline_escaped(box):
    answer = await box.send("Where is my order o-1001?")
    shown = texts(box)
    assert shown[0] == "Where is my order o-1001?"
    assert shown[1] == '→ lookup_order(order_id="o-1001")'
    assert shown[2].startswith("← lookup_order: ") and "fragile" in shown[2]
    assert answer == shown[3] and "shipped" in answer
    drawn = "".join(c.value for c in box.conversation.children)
    assert "<b>fragile" not in drawn and "&lt;b&gt;fragile" in drawn  # the tool's output is escaped


async def test_turns_redraw_the_same_widgets_instead_of_making_new_ones(box):
    await box.send("hello")
    before = box.conversation.children
    await box.send("Where is my order o-1?")
    assert box.conversation.children == before  # same models: a chunk is one value update
    assert len(texts(box)) == 6


async def test_an_approval_gated_tool_shows_buttons_and_approve_runs_it_once(rt, box):
    RAN.clear()
    await box.send("Please refund 42.5 for order o-1001")
    ((approval_id, (approve, reject)),) = box.buttons.items()
    assert rt.approvals.get(approval_id).status == "pending"
    assert (approve.description, reject.description) == ("Approve", "Reject")
    assert approval_id in approve.tooltip
    assert not approve.disabled and approve.layout.display is None
    assert any("waiting for a person" in t for t in texts(box))
    assert RAN == []

    approve.click()
    assert approve.disabled  # in flight: no second click
    await rt.settle()
    await asyncio.sleep(0)
    assert RAN == [("o-1001", 42.5)]
    assert rt.approvals.get(approval_id).decided_by == "ada"
    shown = texts(box)
    assert shown[1:] == [
        '→ refund_order(order_id="o-1001", amount=42.5)',
        "refund_order(order_id='o-1001', amount=42.5) · ✓ approved by ada",
        "I've asked a person to approve: refund_order(order_id='o-1001', amount=42.5).",
        '→ refund_order(order_id="o-1001", amount=42.5) · the approved call',
        '← refund_order: {"refunded": 42.5, "order": "o-1001"}',
        stored_answer(box)]
    assert "refunded: 42.5" in shown[-1]
    assert approve.layout.display == "none" and reject.layout.display == "none"

    assert box.approve(approval_id) is None  # decided once
    assert "already approved" in box.last_error
    await rt.settle()
    assert RAN == [("o-1001", 42.5)]


async def test_the_approval_row_drawn_while_streaming_is_the_one_that_stays(rt):
    box = chat_widget(rt.get(PacedBoxDesk, "paced"))
    task = box.send("Please refund 3 for order o-5")
    # every turn of the loop (interval=0): the row is caught while the answer streams
    await eventually(lambda: box.buttons, interval=0, what="the approval row was drawn")
    ((approval_id, buttons),) = box.buttons.items()
    assert all(b.disabled for b in buttons)  # not committed yet: nothing to decide
    await task
    assert box.buttons == {approval_id: buttons} and not any(b.disabled for b in buttons)
    assert buttons[0].comm is not None  # still the live model the browser shows
    box.close()


async def test_reject_never_runs_the_tool_and_shows_who_and_why(rt, box):
    RAN.clear()
    await box.send("Please refund 10 for order o-7")
    (approval_id,) = box.buttons
    await box.reject(approval_id, "already refunded <twice>")
    await asyncio.sleep(0)
    assert RAN == [] and rt.approvals.get(approval_id).status == "rejected"
    assert any("rejected by ada: already refunded <twice>" in t for t in texts(box))


async def test_an_approval_decided_elsewhere_updates_the_box(rt, box):
    RAN.clear()
    await box.send("Please refund 5 for order o-9")
    (approval_id,) = box.buttons
    follow_up = await rt.approvals.approve(approval_id, by="grace")
    assert texts(box)[-1] == follow_up
    assert any("approved by grace" in t for t in texts(box))
    assert RAN == [("o-9", 5.0)]


async def test_turns_made_in_code_show_in_an_open_box(box):
    await box.ref.chat("hello from a cell")
    assert texts(box)[0] == "hello from a cell"
    assert len(texts(box)) == 2


async def test_old_turns_folded_into_a_summary_show_as_one_line_first(rt):
    class ShortBoxDesk(BoxDesk):
        max_messages = 4

    box = chat_widget(rt.get(ShortBoxDesk, "short"))
    for i in range(4):
        await box.send(f"hello {i}")
    shown = texts(box)
    assert shown[0].startswith("… user: hello 0\nassistant: Hello!")
    assert shown[-2:] == ["hello 3", box.last_answer] and "hello 0" not in shown[1:]
    box.close()


async def test_sends_made_while_a_turn_runs_wait_their_turn(box):
    first, second = box.send("hello one"), box.send("hello two")
    await asyncio.gather(first, second)
    users = box.ref.messages().query("role == 'user'").content.tolist()
    assert users == ["hello one", "hello two"]
    assert [t for t in texts(box) if t.startswith("hello")] == users


async def test_enter_in_the_text_field_sends_and_clears_it(box):
    box.input.value = "hello"
    box.input._handle_custom_msg({"event": "submit"}, [])  # what the browser sends on Enter
    assert box.input.value == ""
    await box.task
    assert box.ref.messages().content.tolist()[0] == "hello"


async def test_a_failed_turn_is_one_short_line_and_keeps_the_text(rt):
    box = chat_widget(rt.get(BrokenBoxDesk, "b"))
    box.input.value = "hi"
    box.send_button.click()
    assert await box.task is None
    assert box.last_error.startswith("ModelResponseError: the scripted model has only 0")
    assert "\n" not in box.last_error and "&#9888;" in box.status.value
    assert box.input.value == "hi"  # nothing was stored: try again
    assert texts(box) == [] and box.ref.messages().empty
    box.close()


async def test_nothing_to_send_or_no_runtime_is_refused_at_once(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "s", clock=clock)
    box = chat_widget(rt.get(BoxDesk, "d"))
    assert box.send("   ") is None and box.last_error == "Type a message first"
    await rt.aclose()
    assert box.send("hello") is None and "closed" in box.last_error
    box.refresh()
    assert box.send_button.disabled
    box.close()


async def test_closing_the_box_stops_listening(rt, box):
    box.close()
    assert not rt.events.active
    await rt.get(BoxDesk, "desk").chat("hello")  # no error from a closed view


async def test_displaying_it_gives_a_widget_view(rt):
    bundle = rt.get(BoxDesk, "d").chat_widget()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# -- a real kernel, typed into and clicked the way the browser does it ------------------
SETUP = """
import agentbook as ab

RAN = []

@ab.tool
def lookup_order(order_id: str) -> dict:
    \"\"\"Look up an order by its id.\"\"\"
    return {"order": order_id, "status": "shipped"}

@ab.tool(needs_approval=True)
def refund_order(order_id: str, amount: float) -> dict:
    \"\"\"Refund an amount of money for an order.\"\"\"
    RAN.append(order_id)
    return {"refunded": amount}

class Desk(ab.ChatAgent):
    tools = [lookup_order, refund_order]

rt = ab.Runtime(":memory:", clock=ab.VirtualClock())
desk = rt.get(Desk, "desk")
box = desk.chat_widget()
box
"""
WAIT = IN_KERNEL.replace("{", "{{").replace("}", "}}") + """
import json
# the messages arrive on another connection: wait for them to land
await eventually(lambda: {until}, timeout=30)
await rt.settle()
print(json.dumps({{"messages": desk.messages()[["role", "content"]].values.tolist(),
                  "ran": RAN, "error": box.last_error}}))
"""


@pytest.mark.notebook
def test_typing_and_clicking_through_comm_messages_chats_in_the_kernel(kernel_name, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in [
        SETUP,
        WAIT.format(until="box.task is not None and box.task.done()"),
        "await box.send('Please refund 20 for order o-1001')",
        WAIT.format(until="RAN"),
    ]]
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})

    def model_id(**match: str) -> str:
        client.set_widgets_metadata()
        state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
        return next(key for key, model in state.items()
                    if all(match[k] in str(model["state"].get(k, "")) for k in match))

    def comm(kc, comm_id: str, data: dict) -> None:
        kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))

    with client.setup_kernel():
        kc = client.km.blocking_client()
        kc.start_channels()
        try:
            client.execute_cell(nb.cells[0], 0)
            text = model_id(_model_name="TextModel", placeholder="Message")
            send = model_id(_model_name="ButtonModel", description="Send")
            comm(kc, text, {"method": "update", "state": {"value": "Where is my order o-1001?"},
                            "buffer_paths": []})
            comm(kc, send, {"method": "custom", "content": {"event": "click"}})
            client.execute_cell(nb.cells[1], 1)
            client.execute_cell(nb.cells[2], 2)
            approve = model_id(_model_name="ButtonModel", description="Approve")
            comm(kc, approve, {"method": "custom", "content": {"event": "click"}})
            client.execute_cell(nb.cells[3], 3)
        finally:
            kc.stop_channels()
    chatted = json.loads(nb.cells[1].outputs[0]["text"])
    assert chatted["messages"][0] == ["user", "Where is my order o-1001?"]
    assert "shipped" in chatted["messages"][-1][1] and chatted["error"] == ""
    approved = json.loads(nb.cells[3].outputs[0]["text"])
    assert approved["ran"] == ["o-1001"]
    assert "refunded: 20.0" in approved["messages"][-1][1] and approved["error"] == ""
