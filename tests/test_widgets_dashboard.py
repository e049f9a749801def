"""The dashboard (``rt.dashboard()``): one live view over a whole runtime, that costs nothing
before it is made or after it is closed, and draws a storm of events a few times a second.

Checked in-process, at the comm level (the model updates a browser would get), and in a
fresh interpreter (nothing imported or subscribed before the call). The browser test is
``tests/browser/test_dashboard_browser.py``.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time

import pytest

import agentbook as ab
from agentbook.widgets.dashboard import Dashboard, dashboard_widget
from agentbook.widgets.inspector import InspectorWidget
from agentbook.widgets.timeline import TimelineWidget

from .test_widgets_inspector import RecordingComm
from .waiting import eventually


class Desk(ab.Agent):
    initial_state = {"tickets": 0, "ticks": 0}

    @ab.callable
    async def open_ticket(self, text: str) -> int:
        self.set_state({**self.state, "tickets": self.state["tickets"] + 1, "last": text})
        return self.state["tickets"]

    @ab.callable
    async def later(self, seconds: float, callback: str = "follow_up") -> None:
        await self.schedule(seconds, callback, {"why": "check"})

    @ab.callable
    async def every_second(self) -> None:
        await self.schedule_every(1, "tick")

    @ab.callable
    async def ask(self, amount: float) -> str:
        return (await self.request_approval("refund", {"amount": amount},
                                            summary=f"Refund {amount}", expires_in=86400)).id

    @ab.workflow
    async def onboarding(self, step: ab.Step, who: str) -> str:
        await step.do("greet", lambda: f"hello {who}")
        await step.sleep("let it sink in", 2 * 3600)
        return "done"

    async def follow_up(self, payload) -> None:
        self.set_state({**self.state, "followed": payload["why"]})

    async def tick(self, payload=None) -> None:
        self.set_state({**self.state, "ticks": self.state["ticks"] + 1})

    async def refund(self, amount: float) -> None:
        self.set_state({**self.state, "refunded": amount})


def text(fragment: str) -> str:
    """What a person reads in an HTML fragment: tags dropped, entities decoded."""
    fragment = re.sub(r"</?code>", "", fragment)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()


def rows(box) -> list[str]:
    """The text of each row of a section (its cell after the buttons)."""
    return [text(row.children[-1].value) for row in box.children]


async def settled(board: Dashboard) -> None:
    await eventually(lambda: not board.pending, interval=0, timeout=5,
                     what="the dashboard redrew")


@pytest.fixture
def comms(monkeypatch):
    """Every message the widgets send, as a kernel's comm would carry them."""
    import comm

    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    return RecordingComm.sent


@pytest.fixture
async def board(rt):
    widget = dashboard_widget(rt, every=0, by="ada")
    yield widget
    widget.close()


async def test_rt_dashboard_lists_agents_with_version_state_and_owner(rt):
    front, back = rt.get(Desk, "front"), rt.get(Desk, "back")
    await front.open_ticket("printer")
    await back.open_ticket("scanner")
    await back.open_ticket("toner")
    rt.hibernate()
    await front.open_ticket("paper")  # awake again; back stays hibernated
    board = rt.dashboard(every=0)
    try:
        assert isinstance(board, Dashboard) and board.live
        assert "2 agents, 1 awake" in text(board.header.value)
        shown = rows(board._agent_rows)
        assert shown[0].startswith("Desk front v2 ● awake this kernel (pid ")
        assert shown[1] == "Desk back v2 ○ hibernated nobody runs it now"
        assert "clock Jan 01 00:00:00 (virtual)" in text(board.header.value)
    finally:
        board.close()


async def test_a_second_process_holding_an_agent_is_named_by_its_pid(rt, tmp_path):
    await rt.get(Desk, "shared").open_ticket("x")
    rt.hibernate()
    other = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, agentbook as ab, asyncio\n"
            "from agentbook.store import lease\n"
            f"rt = ab.Runtime({str(tmp_path / 'store')!r})\n"
            "held = lease.take(rt.catalog.lock_path('Desk', 'shared'), 'Desk')\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        board = dashboard_widget(rt, every=0)
        try:
            (row,) = rows(board._agent_rows)
            assert f"pid {other.pid} on " in row and "hibernated" in row
        finally:
            board.close()
    finally:
        other.communicate("", timeout=30)


async def test_events_schedules_approvals_and_workflows_show_and_go(rt, clock, board):
    desk = rt.get(Desk, "front")
    await desk.later(600)
    await desk.later(2 * 3600, "tick")  # beyond the hour: not listed
    approval_id = await desk.ask(20.0)
    run = await desk.onboarding("ann")
    await rt.settle()
    await settled(board)
    assert rows(board._schedule_rows)[0].startswith("Jan 01 00:10:00 in 10 min Desk('front') "
                                                    "follow_up")
    assert len(rows(board._schedule_rows)) == 1, "only what is due within the hour"
    (flight,) = rows(board._run_rows)
    assert flight.startswith("Desk('front') onboarding sleeping 1 step done") and run.id in flight
    assert approval_id in board.inbox.buttons
    labels = board.event_list.options
    assert any("workflow:wait" in line for line in labels)
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", " ".join(labels)), "times, not epoch seconds"
    assert any("until=Jan 01 02:00:00" in line for line in labels)
    board._schedule_rows.children[0].children[0].click()  # a schedule opens its agent
    assert isinstance(board.opened, InspectorWidget) and board.opened.ref == desk
    board._run_rows.children[0].children[0].click()  # a run opens the timeline
    assert isinstance(board.opened, TimelineWidget) and board.opened.ref == desk
    assert run.id in board.opened.workflows_html.value

    await clock.advance(300)  # nothing fires: the clock alone moves "in 10 min"
    await settled(board)
    assert "in 5 min" in rows(board._schedule_rows)[0]
    await clock.advance(300)
    await settled(board)
    assert rows(board._schedule_rows) == []
    assert "nothing due within the hour" in text(board.schedules_html.value)
    await clock.advance(2 * 3600)
    await settled(board)
    assert rows(board._run_rows) == [] and "none in flight" in text(board.runs_html.value)
    assert await run.result() == "done"


async def test_approve_in_the_dashboard_is_the_inbox_decision(rt, board):
    desk = rt.get(Desk, "front")
    approval_id = await desk.ask(20.0)
    await settled(board)
    approve, _ = board.inbox.buttons[approval_id]
    approve.click()
    await eventually(lambda: rt.approvals.get(approval_id).status == "approved",
                     what="the click approved")
    await rt.settle()
    decided = rt.approvals.get(approval_id)
    assert (decided.status, decided.decided_by) == ("approved", "ada")
    assert desk.state["refunded"] == 20.0
    await eventually(lambda: approval_id not in board.inbox.buttons, what="the row went")
    assert "you decide as ada" in text(board.inbox._header.value)
    assert "agentbook-approvals" not in board.inbox._dom_classes, \
        "the inbox cell's own class stays the inbox cell's (browser tests find it by it)"


async def test_rows_open_the_inspector_or_the_timeline(rt, board):
    desk = rt.get(Desk, "front")
    await desk.open_ticket("printer")
    await settled(board)
    (row,) = board._agent_rows.children
    inspect, timeline = row.children[:2]
    inspect.click()
    assert isinstance(board.opened, InspectorWidget) and board.opened.ref == desk
    first = board.opened
    timeline.click()
    assert isinstance(board.opened, TimelineWidget) and board.opened.ref == desk
    assert not first.live, "opening another closes the one before"
    assert board.detail.children[-1] is board.opened
    board.event_list.index = 0  # choosing an event opens its agent's inspector
    assert isinstance(board.opened, InspectorWidget) and board.event_list.index is None
    opened = board.opened
    board.close_detail()
    assert board.opened is None and not opened.live and len(board.detail.children) == 1


async def test_nothing_listens_before_it_is_made_and_after_it_is_closed(rt):
    desk = rt.get(Desk, "front")
    assert not rt.events.live, "nothing listens before the dashboard is made"
    board = rt.dashboard(every=0)
    assert rt.events.live
    board.inspect(desk)
    board.close()
    assert not board.live and not rt.events.live, "closing stops every subscription"
    await desk.open_ticket("unseen")
    assert not board.events and not board.pending


def test_importing_agentbook_loads_no_widget_and_subscribes_nothing():
    code = ("import sys, agentbook as ab\n"
            "rt = ab.Runtime(':memory:')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('ipywidgets', "
            "'agentbook.widgets'))), rt.events.live)\n"
            "board = rt.dashboard()\n"
            "print('agentbook.widgets.dashboard' in sys.modules, rt.events.live)\n"
            "board.close(); print(rt.events.live)\n"
            "rt.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    assert out[:3] == ["[] False", "True True", "False"]


async def test_a_storm_of_10000_firings_is_drawn_a_few_times_a_second(rt, clock, comms):
    desk = rt.get(Desk, "storm")
    await desk.every_second()
    board = dashboard_widget(rt, every=0.25)
    try:
        models = _model_ids(board)
        comms.clear()
        renders, started = board.renders, time.monotonic()
        await clock.advance(10_000)  # 10 000 firings of tick, one a virtual second
        elapsed = time.monotonic() - started
        assert desk.state["ticks"] == 10_000
        drawn = board.renders - renders
        assert drawn <= elapsed / 0.25 + 2, f"{drawn} redraws in {elapsed:.1f} s"
        updates = [d for kind, d in comms if kind == "msg" and d.get("method") == "update"]
        assert len(updates) <= (drawn + 1) * 12, f"{len(updates)} model updates, {drawn} redraws"
        assert {u["comm_id"] for u in updates} <= models | _model_ids(board)
        await settled(board)
        newest = board.event_list.options
        assert len(newest) == 12 and all("Desk('storm')" in line for line in newest)
        assert any('ticks": 10000' in line for line in newest), "the last redraw is current"
    finally:
        board.close()


async def test_a_storm_within_one_interval_sends_no_update_until_it_is_due(rt, clock, comms):
    desk = rt.get(Desk, "storm")
    await desk.every_second()
    board = dashboard_widget(rt, every=3600)  # the first draw was at creation
    try:
        comms.clear()
        await clock.advance(10_000)
        assert board.pending and board.renders == 1
        sent = [d for kind, d in comms if kind == "msg" and d.get("method") == "update"]
        assert sent == [], "the storm sent nothing while the redraw waited for its time"
        board.refresh()
        assert 'ticks": 10000' in " ".join(board.event_list.options)
    finally:
        board.close()


async def test_a_closed_runtime_is_said_and_stops_the_dashboard(clock):
    rt = ab.Runtime(":memory:", clock=clock)
    await rt.get(Desk, "d").open_ticket("x")
    board = rt.dashboard(every=0)
    await rt.aclose()  # (its runtime:close event redraws the dashboard)
    await eventually(lambda: not board.live, what="the dashboard heard of the close")
    assert "the runtime was closed" in text(board.header.value)
    assert board.inspect(("Desk", "d")) is None and "closed" in text(board.detail_header.value)
    board.close()


@pytest.mark.parametrize("options", [{"every": -1}, {"every": "fast"}, {"events": 0},
                                     {"agents": 2.5}, {"agents": True}])
async def test_bad_options_are_refused_with_what_to_pass(rt, options):
    with pytest.raises(ab.UsageError, match="not "):
        rt.dashboard(**options)
    assert not rt.events.live, "nothing was left listening"


async def test_values_are_escaped(rt, board):
    await rt.get(Desk, "<b>bold").open_ticket("<script>")
    await settled(board)
    (row,) = board._agent_rows.children
    assert "<b>bold" not in row.children[-1].value
    assert "&lt;b&gt;bold" in row.children[-1].value


def _model_ids(board: Dashboard) -> set[str]:
    """Every model the dashboard shows, as far as its children go."""
    found, todo = set(), [board]
    while todo:
        widget = todo.pop()
        found.add(widget.model_id)
        for part in ("layout", "style"):
            if getattr(widget, part, None) is not None:
                found.add(getattr(widget, part).model_id)
        todo += list(getattr(widget, "children", ()))
    return found


async def test_a_slow_redraw_spaces_the_next_ones_to_a_tenth_of_the_loop(monkeypatch):
    import asyncio

    from agentbook.widgets import common

    now = [100.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])

    def redraw() -> None:
        redraws.drawn()
        now[0] += 1.0  # this redraw took a second (a very large runtime)

    redraws = common.Coalescer(redraw, every=0.5)
    redraws.poke()
    await eventually(lambda: not redraws.pending, interval=0, what="the first redraw")
    redraws.poke()
    loop = asyncio.get_running_loop()
    delay = redraws._timer.when() - loop.time()
    assert 8.9 <= delay <= 9.0, f"a 1 s redraw waits 9 s for the next, not 0.5 s ({delay:.2f})"
    redraws.cancel()


async def test_a_store_that_cannot_be_read_now_is_read_again_next_time(rt, monkeypatch):
    from agentbook.widgets import dashboard as module

    await rt.get(Desk, "busy").open_ticket("x")
    rt.hibernate()
    real, calls = module.read_store, []

    def flaky(runtime, key):
        calls.append(key)
        return None if len(calls) == 1 else real(runtime, key)  # busy the first time

    monkeypatch.setattr(module, "read_store", flaky)
    board = dashboard_widget(rt, every=0)
    try:
        assert rows(board._agent_rows) == ["Desk busy \u2013 ○ hibernated nobody runs it now"]
        board.refresh()
        assert rows(board._agent_rows) == ["Desk busy v1 ○ hibernated nobody runs it now"]
        board.refresh()
        assert len(calls) == 2, "a good read is kept until the agent's next event"
    finally:
        board.close()
