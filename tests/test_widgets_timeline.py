"""The timeline widget: a live view over an agent's versions whose buttons fork and rewind
exactly as code does (``ref.fork``, ``ref.rewind``)."""

from __future__ import annotations

import html
import json
import re

import pytest

import agentbook as ab
from agentbook.widgets.timeline import TimelineWidget, timeline_widget


class Shelf(ab.Agent):
    initial_state = {"stock": 0, "log": []}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS moves(id INTEGER PRIMARY KEY, item TEXT, qty INT)")

    @ab.callable
    async def restock(self, item: str, qty: int = 1) -> int:
        self.sql("INSERT INTO moves(item, qty) VALUES (?, ?)", item, qty)
        self.set_state({"stock": self.state["stock"] + qty, "log": [*self.state["log"], item]})
        return self.state["stock"]

    @ab.callable
    async def later(self, seconds: float) -> None:
        await self.schedule(seconds, "restock", "scheduled")

    @ab.callable
    async def ask_to_clear(self) -> str:
        return (await self.request_approval("clear", {}, summary="clear the shelf")).id

    async def clear(self) -> None:
        self.set_state({"stock": 0, "log": []})


async def shelf_with_ten_versions(rt) -> ab.AgentRef:
    """Version 1 is on_start; versions 2..10 restock item-2 .. item-10 (qty = version)."""
    ref = rt.get(Shelf, "shelf")
    for version in range(2, 11):
        await ref.restock(f"item-{version}", qty=version)
    assert ref.version == 10
    return ref


@pytest.fixture
async def shelf(rt):
    return await shelf_with_ten_versions(rt)


@pytest.fixture
async def timeline(shelf):
    widget = shelf.timeline()
    yield widget
    widget.close()


def moves(view) -> list:
    return view.sql("SELECT item, qty FROM moves ORDER BY id").values.tolist()


def shown_state(widget: TimelineWidget):
    """The state the widget shows, parsed back from its HTML."""
    return json.loads(html.unescape(re.search(r"<pre[^>]*>(.*)</pre>", widget.state_html.value,
                                              re.S).group(1)))


async def test_the_slider_covers_every_version_and_starts_at_the_newest(shelf, timeline):
    assert isinstance(timeline, TimelineWidget)
    assert (timeline.slider.min, timeline.slider.max, timeline.slider.value) == (0, 10, 10)
    assert "version <b>10</b>" in timeline.header.value
    assert "Shelf(&#x27;shelf&#x27;)" in timeline.header.value


async def test_selecting_a_version_shows_its_state_and_the_step_that_made_it(shelf, timeline):
    timeline.select(4)
    assert timeline.slider.value == 4
    assert shown_state(timeline) == shelf.at(4).state == {
        "stock": 9, "log": ["item-2", "item-3", "item-4"]}
    step = timeline.step_html.value
    assert "restock(&quot;item-4&quot;, qty=4)" in step
    source = shelf.history(before=5, limit=1).source[0]  # "script" here, "cell" in a kernel
    assert f"from {source}" in step
    assert "ok" in step and " ms" in step and "2026-01-01" in step
    assert "<b>result</b> <code>9</code>" in step


async def test_moving_the_slider_renders_the_same_as_select(shelf, timeline):
    timeline.slider.value = 3
    by_slider = (timeline.step_html.value, timeline.state_html.value)
    timeline.select(10)
    timeline.select(3)
    assert (timeline.step_html.value, timeline.state_html.value) == by_slider


async def test_version_zero_is_the_initial_state_and_negative_versions_count_from_the_end(
        shelf, timeline):
    timeline.select(0)
    assert "initial state" in timeline.step_html.value
    assert shown_state(timeline) == {"stock": 0, "log": []}
    timeline.select(-2)
    assert timeline.slider.value == 9
    with pytest.raises(ab.VersionNotFoundError, match="0..10"):
        timeline.select(11)
    assert timeline.slider.value == 9


async def test_inputs_and_state_are_escaped(rt):
    ref = rt.get(Shelf, "xss")
    await ref.restock("<script>alert(1)</script>")
    widget = timeline_widget(ref)
    try:
        assert "<script>" not in widget.step_html.value + widget.state_html.value
        assert "&lt;script&gt;" in widget.step_html.value
        assert "&lt;script&gt;" in widget.state_html.value
    finally:
        widget.close()


async def test_fork_here_makes_a_new_agent_holding_the_selected_version(rt, shelf, timeline):
    timeline.select(5)
    timeline.fork_name.value = "what-if"
    timeline.fork_button.click()
    fork = await timeline.task
    assert fork == rt.get(Shelf, "what-if") == timeline.last_result
    assert fork.state == shelf.at(5).state
    assert moves(fork.at(-1)) == moves(shelf.at(5))
    assert "Forked" in timeline.status.value and "what-if" in timeline.status.value
    assert shelf.version == 10, "forking leaves the original alone"
    assert not timeline.fork_button.disabled


async def test_fork_here_without_a_name_uses_the_suggested_one(rt, shelf, timeline):
    timeline.select(3)
    assert timeline.fork_name.placeholder == "shelf-at-3"
    fork = await timeline.fork_here()
    assert fork.name == "shelf-at-3" and fork.state == shelf.at(3).state


async def test_a_failed_fork_shows_the_error_and_changes_nothing(rt, shelf, timeline):
    await timeline.fork_here("taken")
    timeline.select(2)
    timeline.fork_name.value = "taken"
    timeline.fork_button.click()
    with pytest.raises(ab.UsageError, match="already exists"):
        await timeline.task
    assert "already exists" in timeline.last_error
    assert "already exists" in timeline.status.value
    assert rt.get(Shelf, "taken").state == shelf.at(10).state


async def test_rewind_here_makes_a_new_version_and_can_be_undone(rt, shelf, timeline):
    timeline.select(3)
    timeline.rewind_button.click()
    assert timeline.rewind_button.disabled and timeline.fork_button.disabled
    await rt.settle()
    result = await timeline.task
    assert result["rewound_to"] == 3 and result["from"] == 10
    assert shelf.version == 11
    assert shelf.state == shelf.at(3).state
    assert moves(shelf.at(-1)) == moves(shelf.at(3))
    assert shelf.history(limit=1).method[0] == "rewind"
    assert (timeline.slider.max, timeline.slider.value) == (11, 11), "it shows the new version"
    assert "rewind(3)" in timeline.step_html.value
    assert "now version 11" in timeline.status.value and "select version 10" in timeline.status.value
    assert not timeline.rewind_button.disabled
    timeline.select(10)
    await timeline.rewind_here()  # the undo
    assert shelf.version == 12 and shelf.state == shelf.at(10).state
    assert moves(shelf.at(-1)) == moves(shelf.at(10))


async def test_rewind_here_says_which_approvals_it_cancelled(rt, shelf, timeline):
    approval_id = await shelf.ask_to_clear()
    timeline.select(10)
    await timeline.rewind_here()
    assert rt.approvals.get(approval_id).status == "cancelled"
    assert f"Cancelled approvals: {approval_id}" in timeline.status.value


async def test_the_range_grows_while_the_widget_is_open(rt, clock, shelf, timeline):
    await shelf.restock("live")
    assert (timeline.slider.max, timeline.slider.value) == (11, 11), "at the newest: it follows"
    timeline.select(4)
    await shelf.restock("live again")
    assert (timeline.slider.max, timeline.slider.value) == (12, 4), "elsewhere: it stays put"
    assert "of 0..12" in timeline.header.value
    await shelf.later(60)
    await clock.advance(61)  # a scheduled run is a version too
    assert timeline.slider.max == 14 == shelf.version
    assert "restock(&quot;scheduled&quot;)" in _at(timeline, 14)


async def test_closing_the_widget_stops_the_updates(rt, shelf):
    widget = timeline_widget(shelf)
    assert widget.live and rt.events.active
    widget.close()
    assert not widget.live
    assert not rt.events.active, "the widget's subscription is gone"
    await shelf.restock("unseen")
    assert widget.slider.max == 10


async def test_an_agent_without_versions_yet_shows_so_and_then_catches_up(rt):
    ref = rt.get(Shelf, "new")
    widget = timeline_widget(ref)
    try:
        assert (widget.slider.min, widget.slider.max) == (0, 0)
        assert "no store yet" in widget.step_html.value
        assert widget.fork_button.disabled and widget.rewind_button.disabled
        await ref.restock("first")
        assert widget.slider.max == 2 and not widget.fork_button.disabled
    finally:
        widget.close()


async def test_a_fork_starts_its_slider_at_the_version_it_was_forked_from(rt, shelf):
    fork = await shelf.fork("branch", at=6)
    await fork.restock("on the branch")
    widget = timeline_widget(fork)
    try:
        assert (widget.slider.min, widget.slider.max) == (6, 7)
        widget.select(6)
        assert "fork(" in widget.step_html.value and "fork:Shelf/shelf@6" in widget.step_html.value
        with pytest.raises(ab.VersionNotFoundError):
            widget.select(5)
    finally:
        widget.close()


async def test_refresh_after_prune_shrinks_the_range(rt, shelf, timeline):
    timeline.select(2)
    await shelf.prune(keep_last=4)
    assert timeline.refresh() == (7, 10)
    assert (timeline.slider.min, timeline.slider.value) == (7, 7)
    assert "item-7" in timeline.state_html.value


async def test_after_the_runtime_closes_the_buttons_say_why_they_do_nothing(clock):
    rt = ab.Runtime(":memory:", clock=clock)
    ref = await shelf_with_ten_versions(rt)
    widget = timeline_widget(ref)
    await rt.aclose()
    with pytest.raises(ab.RuntimeClosedError):
        await widget.fork_here("late")
    assert "closed" in widget.last_error
    assert widget.rewind_here() is None, "refused at once"
    widget.refresh()
    assert "closed" in widget.header.value and widget.rewind_button.disabled
    assert not widget.live
    widget.close()


def test_without_a_running_loop_the_buttons_explain_instead_of_failing(clock):
    rt = ab.Runtime(":memory:", clock=clock)
    ref = rt.get(Shelf, "sync")
    ab.run(ref.restock("x"))
    widget = timeline_widget(ref)
    try:
        assert widget.rewind_here() is None and widget.fork_here() is None
        assert "no event loop runs here" in widget.last_error and "await" in widget.last_error
        assert ref.version == 2
    finally:
        widget.close()
        rt.close()


def _at(widget: TimelineWidget, version: int) -> str:
    widget.select(version)
    return widget.step_html.value


# -- workflow steps at their version ----------------------------------------------------------
class Refunds(ab.Agent):
    """A refund that asks a person, sleeps an hour, pays and waits for the customer."""

    @ab.workflow
    async def refund(self, step: ab.Step, order: str) -> str:
        await step.do("look up", lambda: {"order": order})
        decision = await step.wait_for_approval(f"refund <{order}>", timeout=86400)
        if not decision.approved:
            return "declined"
        await step.sleep("cool off", 3600)
        await step.do("pay", lambda: order)
        await step.wait_for_event("confirmed", timeout=7 * 86400)
        return "done"


def shown_steps(widget: TimelineWidget) -> list[tuple[str, str, bool]]:
    """``(status, text, written by this version)`` of each step the widget lists."""
    items = re.findall(r"<li([^>]*)>(.*?)</li>", widget.workflows_html.value, re.S)
    return [(re.search(r'data-status="(\w+)"', attrs).group(1),
             html.unescape(re.sub(r"<[^>]+>", "", body)), "background" in attrs)
            for attrs, body in items]


async def test_workflow_steps_appear_at_their_version_and_a_waiting_step_says_so(rt, clock):
    desk = rt.get(Refunds, "desk")
    run = await desk.refund("o-1")
    await rt.settle()
    widget = desk.timeline()
    try:
        head = widget.slider.value
        assert run.id in widget.workflows_html.value
        assert "1 run at version" in widget.workflows_html.value
        assert "1 waiting for a person" in widget.workflows_html.value
        (look_up, ask) = shown_steps(widget)
        assert look_up[0] == "completed" and look_up[1].startswith("✓ look up do · completed at")
        assert ask[0] == "waiting" and "refund <o-1> approval · waiting for a person since " \
            "2026-01-01 00:00:00 UTC, times out at 2026-01-02 00:00:00 UTC" in ask[1]
        assert f"written at version {head}" in ask[1] and ask[2], "the version that asked"

        await rt.approvals.approve(rt.approvals.pending().id[0], by="ann")
        await rt.settle()
        await clock.advance(1800)
        assert widget.slider.value > head, "it follows the run's new versions"
        steps = shown_steps(widget)
        assert [s[0] for s in steps] == ["completed", "completed", "waiting"]
        assert "approved by ann" in steps[1][1]
        assert "cool off sleep · sleeping since 2026-01-01 00:00:00 UTC, until " \
            "2026-01-01 01:00:00 UTC" in steps[2][1]

        await clock.advance(3600)
        steps = shown_steps(widget)
        assert [s[0] for s in steps] == ["completed"] * 4 + ["waiting"]
        assert "confirmed event · waiting for the event since 2026-01-01 01:00:00 UTC" in steps[4][1]
        newest = widget.slider.value
        assert [s[2] for s in steps] == [False, False, True, True, True], "what it wrote"
        assert all(f"written at version {newest}" in s[1] for s in steps[2:])

        widget.select(head)  # back in time: the journal as it was
        assert [s[0] for s in shown_steps(widget)] == ["completed", "waiting"]
        widget.select(head - 1)  # the call that started the run: no step yet
        assert run.id in widget.workflows_html.value and not shown_steps(widget)
        assert "running" in widget.workflows_html.value
        widget.select(0)
        assert "none at version 0" in widget.workflows_html.value
    finally:
        widget.close()


async def test_workflow_steps_are_escaped(rt):
    desk = rt.get(Refunds, "xss")
    await desk.refund("<script>alert(1)</script>")
    await rt.settle()
    widget = desk.timeline()
    try:
        assert "<script>" not in widget.workflows_html.value
        assert "refund &lt;&lt;script&gt;alert(1)&lt;/script&gt;&gt;" in widget.workflows_html.value
    finally:
        widget.close()


async def test_an_agent_without_workflows_shows_no_workflow_section(shelf, timeline):
    assert timeline.workflows_html.value == ""
    timeline.select(3)
    assert timeline.workflows_html.value == ""
    assert timeline.workflows_html in timeline.children
