"""The inspector (``ref.widget()``): a live view of one agent that follows it while open,
checked in-process, at the comm level (the messages a browser would get), and in a real kernel."""

from __future__ import annotations

import html
import re

import pytest

import agentbook as ab
from agentbook.widgets.inspector import InspectorWidget, inspector_widget

from .waiting import IN_KERNEL, eventually


class Desk(ab.Agent):
    initial_state = {"tickets": 0, "owner": {"name": "ada", "tags": ["a", "b"]}}

    @ab.callable
    async def open_ticket(self, text: str) -> int:
        self.set_state({**self.state, "tickets": self.state["tickets"] + 1, "last": text})
        return self.state["tickets"]

    @ab.callable
    async def later(self, seconds: float) -> None:
        await self.schedule(seconds, "follow_up", {"why": "check"})

    @ab.callable
    async def nightly(self) -> None:
        await self.schedule("0 2 * * *", "follow_up", {"why": "nightly"})

    @ab.callable
    async def ask(self, amount: float) -> str:
        return (await self.request_approval("refund", {"amount": amount},
                                            summary=f"Refund {amount}")).id

    async def follow_up(self, payload) -> None:
        self.set_state({**self.state, "followed": payload["why"]})

    async def refund(self, amount: float) -> None:
        self.set_state({**self.state, "refunded": amount})

    @ab.callable
    async def fail(self) -> None:
        raise ValueError("no")


def text(fragment: str) -> str:
    """What a person reads in an HTML fragment: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment)).replace("  ", " ")


def leaves(widget: InspectorWidget) -> dict[str, str]:
    """``key: value`` of every leaf of the state tree."""
    found = re.findall(r"<div><span[^>]*>([^<]*)</span>: <span[^>]*>([^<]*)</span></div>",
                       widget.state_html.value)
    return {html.unescape(k): html.unescape(v) for k, v in found}


async def settled(widget: InspectorWidget) -> None:
    """Let the widget's refresh timer fire (every=0: the next turns of the loop)."""
    await eventually(lambda: not widget.pending, interval=0, timeout=5,
                     what="the inspector refreshed")


@pytest.fixture
async def desk(rt):
    ref = rt.get(Desk, "front")
    await ref.open_ticket("printer")
    return ref


@pytest.fixture
async def inspector(desk):
    widget = inspector_widget(desk, every=0)
    yield widget
    widget.close()


async def test_ref_widget_is_the_inspector_at_the_current_version(desk):
    widget = desk.widget()
    try:
        assert isinstance(widget, InspectorWidget) and widget.live
        assert "Desk('front')" in text(widget.header.value)
        assert "version 1" in text(widget.header.value)
        assert leaves(widget) == {"tickets": "1", "name": '"ada"', "0": '"a"', "1": '"b"',
                                  "last": '"printer"'}
    finally:
        widget.close()


async def test_the_state_is_a_collapsible_tree(inspector):
    tree = inspector.state_html.value
    assert tree.count("<details") == 3, "state, owner and owner.tags fold"
    assert "<details open><summary>" in tree
    assert "{3 keys}" in text(tree) and "[2 items]" in text(tree)
    deep = re.search(r"<details([^>]*)><summary><span[^>]*>tags", tree)
    assert deep.group(1) == "", "levels below the second start folded"


async def test_the_inspector_follows_state_changes(desk, inspector):
    await desk.open_ticket("scanner")
    assert inspector.pending, "the change is rendered by a timer, not inside the handler"
    await settled(inspector)
    assert leaves(inspector)["tickets"] == "2"
    assert leaves(inspector)["last"] == '"scanner"'
    assert "version 2" in text(inspector.header.value)
    types = [e["type"] for e in inspector.events]
    assert types == ["rpc", "state:update"]
    shown = text(inspector.events_html.value)
    assert shown.index("state:update") < shown.index("rpc"), "newest first"


async def test_a_burst_of_events_is_rendered_once_per_interval(desk):
    widget = inspector_widget(desk, every=60)  # the first render was at creation
    try:
        before = widget.renders
        for i in range(50):
            await desk.open_ticket(f"t{i}")
        assert widget.pending and widget.renders == before, "nothing rendered inside the burst"
        assert len(widget.events) == 20, "only the last 20 events are kept"
        widget.refresh()
        assert widget.renders == before + 1 and not widget.pending
        assert leaves(widget)["tickets"] == "51"
    finally:
        widget.close()


async def test_schedules_and_pending_approvals_show_and_go(rt, clock, desk, inspector):
    await desk.later(60)
    await desk.nightly()
    approval = await desk.ask(5.0)
    await rt.get(Desk, "other").ask(7.0)  # another agent's approval is not shown
    await settled(inspector)
    schedules = text(inspector.schedules_html.value)
    assert "follow_up" in schedules and "delayed" in schedules and "0 2 * * *" in schedules
    assert schedules.index("Jan 01 00:01:00") < schedules.index("Jan 01 02:00:00")
    approvals = text(inspector.approvals_html.value)
    assert approval in approvals and "Refund 5.0" in approvals and "Refund 7.0" not in approvals
    assert "2 schedules · 1 pending approval" in text(inspector.header.value)

    await clock.advance(61)
    await rt.approvals.approve(approval)
    await rt.settle()
    await settled(inspector)
    assert "delayed" not in text(inspector.schedules_html.value)
    assert "none" in text(inspector.approvals_html.value)
    assert leaves(inspector)["followed"] == '"check"' and leaves(inspector)["refunded"] == "5.0"
    assert "schedule:execute" in text(inspector.events_html.value)


async def test_times_in_events_read_as_clock_times_not_epoch_seconds(rt, desk, inspector):
    await desk.later(60)
    await settled(inspector)
    events = text(inspector.events_html.value)
    assert '"due": "Jan 01 00:01' in events
    assert not re.search(r"\b1[0-9]{9}(\.[0-9]+)?\b", events), "no epoch seconds"


async def test_failures_show_as_events_and_leave_the_state_alone(desk, inspector):
    with pytest.raises(ValueError):
        await desk.fail()
    await settled(inspector)
    assert "rpc:error" in text(inspector.events_html.value)
    assert leaves(inspector)["tickets"] == "1"


async def test_values_are_escaped(rt):
    ref = rt.get(Desk, "xss")
    await ref.open_ticket("<script>alert(1)</script>")
    widget = inspector_widget(ref)
    try:
        assert "<script>" not in widget.state_html.value
        assert leaves(widget)["last"] == '"<script>alert(1)</script>"'
    finally:
        widget.close()


async def test_closing_stops_listening_and_costs_nothing_after(rt, desk):
    assert not rt.events.active, "nothing listens before an inspector is made"
    widget = inspector_widget(desk, every=0)
    assert rt.events.active
    widget.close()
    assert not widget.live and not rt.events.active
    await desk.open_ticket("unseen")
    assert not widget.events and not widget.pending


async def test_an_agent_without_a_store_yet_shows_its_initial_state(rt):
    ref = rt.get(Desk, "new")
    widget = inspector_widget(ref, every=0)
    try:
        assert "version 0" in text(widget.header.value)
        assert leaves(widget)["tickets"] == "0"
        await ref.open_ticket("first")
        await settled(widget)
        assert leaves(widget)["tickets"] == "1"
    finally:
        widget.close()


async def test_after_the_runtime_closes_it_says_so(clock):
    rt = ab.Runtime(":memory:", clock=clock)
    ref = rt.get(Desk, "d")
    await ref.open_ticket("x")
    widget = inspector_widget(ref)
    await rt.aclose()
    widget.refresh()
    assert "closed" in text(widget.header.value) and not widget.live
    widget.close()


# -- the comm level: what a browser would receive ----------------------------------------------
class RecordingComm:
    """Stands in for a kernel's comm: keeps every message a widget sends."""

    sent: list[tuple[str, dict]] = []

    def __init__(self, *, target_name: str = "", data: dict | None = None, comm_id: str = "",
                 **_: object) -> None:
        import uuid

        self.comm_id = comm_id or uuid.uuid4().hex
        self.kernel = object()  # ipywidgets sends only on comms with a kernel
        RecordingComm.sent.append(("open", {"comm_id": self.comm_id, **(data or {})}))

    def send(self, data: dict | None = None, buffers: object = None, **_: object) -> None:
        RecordingComm.sent.append(("msg", {"comm_id": self.comm_id, **(data or {})}))

    def on_msg(self, callback: object) -> None:
        pass

    def on_close(self, callback: object) -> None:
        pass

    def close(self, *_: object, **__: object) -> None:
        RecordingComm.sent.append(("close", {"comm_id": self.comm_id}))


def frontend_state(sent: list[tuple[str, dict]], model_id: str) -> dict:
    """A model's state as a frontend knows it: the comm_open's state, then each update."""
    state: dict = {}
    for kind, data in sent:
        if data["comm_id"] == model_id and (kind == "open" or data.get("method") == "update"):
            state.update(data["state"])
    return state


@pytest.fixture
def comms(monkeypatch):
    import comm

    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    return RecordingComm.sent


async def test_a_state_change_sends_one_update_of_the_tree_model(desk, comms):
    widget = inspector_widget(desk, every=0)
    try:
        tree_id = widget.state_html.model_id
        assert "tickets" in frontend_state(comms, tree_id)["value"]
        comms.clear()
        await desk.open_ticket("scanner")
        await settled(widget)
        updates = [d for kind, d in comms if kind == "msg" and d["method"] == "update"]
        tree = [u["state"]["value"] for u in updates if u["comm_id"] == tree_id]
        assert len(tree) == 1 and "scanner" in tree[0]
        assert "scanner" in frontend_state(comms, tree_id)["value"]
        header = [u for u in updates if u["comm_id"] == widget.header.model_id]
        assert len(header) == 1 and "version <b>2</b>" in header[0]["state"]["value"]
        sent = {u["comm_id"] for u in updates}
        assert widget.schedules_html.model_id not in sent, "unchanged parts send nothing"
        comms.clear()
        widget.refresh()
        assert not [d for kind, d in comms if kind == "msg" and d["comm_id"] == tree_id]
    finally:
        widget.close()


# -- a real kernel ----------------------------------------------------------------------------------
KERNEL_CELLS = [
    IN_KERNEL + """
import agentbook as ab

class Counter(ab.Agent):
    initial_state = {"count": 0}

    @ab.callable
    async def bump(self) -> int:
        self.set_state({"count": self.state["count"] + 1})
        return self.state["count"]

rt = ab.Runtime(":memory:", clock=ab.VirtualClock())
ref = rt.get(Counter, "c")
await ref.bump()
inspector = ref.widget()
inspector
""",
    """
await ref.bump()
await ref.bump()
# the inspector's refresh timer (real time, every 0.2 s) fires between cells too; here,
# the cell waits until it has caught up with the agent, so the update is sent in the cell
await eventually(lambda: not inspector.pending
                 and f"version <b>{ref.version}</b>" in inspector.header.value, timeout=30)
print(inspector.state_html.model_id)
""",
]


@pytest.mark.notebook
def test_in_a_kernel_the_frontend_model_follows_the_agent(kernel_name, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in KERNEL_CELLS]
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.set_widgets_metadata()
        state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
        first = [m["state"]["value"] for m in state.values() if "count" in str(m["state"].get("value"))]
        client.execute_cell(nb.cells[1], 1)
        tree_id = nb.cells[1].outputs[0]["text"].strip()
        client.set_widgets_metadata()
        state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    view = nb.cells[0].outputs[-1]["data"]["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] in state, "the inspector was displayed as a widget"
    assert len(first) == 1 and re.search(r"count</span>: <span[^>]*>1<", first[0])
    assert re.search(r"count</span>: <span[^>]*>3<", state[tree_id]["state"]["value"]), \
        "the kernel sent the new state to the frontend's model"
