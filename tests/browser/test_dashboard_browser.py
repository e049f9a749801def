"""The dashboard in real browsers: click Approve in ``rt.dashboard()`` in JupyterLab and in
Voila, then check the kernel and, once it is gone, the store: the decision is durable and
the approved refund ran once. In JupyterLab a row's **inspect** also opens the agent's
inspector under the dashboard.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import agentbook as ab

from .conftest import ARTIFACTS, REPO
from .lab import open_notebook, run_all
from .test_approvals_browser import evaluate, wait_for
from .voila import voila

pytestmark = pytest.mark.browser

NAME = "dashboard_browser.ipynb"
DOCS_IMAGE = REPO / "docs" / "img" / "dashboard.png"
CELLS = [
    "import agentbook as ab\n\nrt = ab.Runtime({store!r}, clock=ab.VirtualClock())",
    "class Desk(ab.Agent):\n"
    "    initial_state = {{'refunded': 0.0}}\n\n"
    "    async def on_start(self):\n"
    "        self.sql('CREATE TABLE IF NOT EXISTS refunds(order_id TEXT PRIMARY KEY, amount REAL)')\n\n"
    "    @ab.callable\n"
    "    async def propose(self, order_id: str, amount: float) -> str:\n"
    "        approval = await self.request_approval(\n"
    "            'refund', {{'order_id': order_id, 'amount': amount}},\n"
    "            summary=f'Refund {{amount:.2f}} EUR for order {{order_id}}', expires_in=86400)\n"
    "        return approval.id\n\n"
    "    async def refund(self, order_id: str, amount: float) -> None:\n"
    "        self.sql('INSERT INTO refunds VALUES (?, ?)', order_id, amount)\n"
    "        self.set_state({{'refunded': self.state['refunded'] + amount}})\n\n\n"
    "desk = rt.get(Desk, 'desk')\n"
    "keep = await desk.propose('d-1', 42.5)\n"
    "drop = await desk.propose('d-2', 900.0)",
    "board = rt.dashboard()\nboard",
    "class Reminders(ab.Agent):\n"
    "    @ab.callable\n"
    "    async def remind(self, minutes: int, text: str) -> None:\n"
    "        await self.schedule(minutes * 60, 'send', {{'text': text}})\n\n"
    "    async def send(self, payload) -> None:\n"
    "        self.set_state({{'last': payload['text']}})\n\n\n"
    "team = rt.get(Reminders, 'team')\n"
    "await team.remind(20, 'call the customer of d-2')\n"
    "await team.remind(45, 'check the parcel of d-1')",
]


def write_notebook(path: Path, store: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source.format(store=str(store))) for source in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, path)


def approve_in_the_dashboard(page: object, shot: str) -> str:
    """Click Approve on the refund for d-1 in the dashboard; its approval id."""
    from playwright.sync_api import expect

    board = page.locator(".agentbook-dashboard")
    expect(board).to_have_count(1, timeout=120_000)
    board.scroll_into_view_if_needed()
    expect(board).to_contain_text("2 agents, 2 awake")  # (a cell after the dashboard's)
    expect(board.locator(".agentbook-dashboard-schedules")).to_contain_text("in 20 min")
    expect(board.locator(".agentbook-dashboard-agents")).to_contain_text("awake")
    row = board.locator(".agentbook-approval", has_text="order d-1")
    approve = row.get_by_role("button", name="Approve", exact=True)
    approve.wait_for(state="attached")
    approval_id = approve.get_attribute("title").split()[-1]
    expect(board).to_contain_text("2 pending approvals")
    approve.click()
    expect(row).to_have_count(0)  # the decision came back and the dashboard redrew
    expect(board).to_contain_text("1 pending approval")
    expect(board.locator("option", has_text="approval:approve")).to_have_count(1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    board.screenshot(path=str(ARTIFACTS / f"dashboard-{shot}.png"))
    if shot == "lab" and (not DOCS_IMAGE.exists() or os.environ.get("AGENTBOOK_UPDATE_DOCS_IMAGES")):
        shutil.copy(ARTIFACTS / "dashboard-lab.png", DOCS_IMAGE)
    return approval_id


def check_kernel(connection_file: Path, approval_id: str, *, shutdown: bool) -> None:
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(connection_file))
    kc.load_connection_file()
    kc.start_channels()
    try:
        expression = (f"__import__('json').dumps([rt.approvals.get({approval_id!r}).status,"
                      " desk.state, board.live])")
        status, state, live = wait_for(lambda: evaluate(kc, expression),
                                       lambda r: r[0] != "pending" and r[1]["refunded"] > 0)
        if shutdown:
            kc.shutdown()
    finally:
        kc.stop_channels()
    assert (status, state, live) == ("approved", {"refunded": 42.5}, True)


def check_store(store: Path, approval_id: str) -> None:
    """Open the store after the kernel is gone: the decision and its refund are durable."""
    rt = ab.Runtime(store)
    try:
        approved = rt.approvals.get(approval_id)
        assert approved.status == "approved" and approved.decided_by
        # (on the virtual clock it was still pending; this runtime's real clock is later)
        assert [(a.summary, a.status) for a in rt.approvals.list(None) if a.id != approval_id
                ] == [("Refund 900.00 EUR for order d-2", "pending")]
        desk = rt.get("Desk", "desk")
        assert desk.sql("SELECT * FROM refunds").to_dict("records") == [
            {"order_id": "d-1", "amount": 42.5}]
        assert desk.state == {"refunded": 42.5}
    finally:
        rt.close()


def test_approve_in_the_dashboard_in_jupyterlab(lab, page, tmp_path):
    from playwright.sync_api import expect

    store = tmp_path / "store"
    write_notebook(lab.root / NAME, store)
    open_notebook(page, lab, NAME)
    run_all(page)
    approval_id = approve_in_the_dashboard(page, "lab")
    board = page.locator(".agentbook-dashboard")
    board.locator(".agentbook-dashboard-row", has_text="desk").get_by_role(
        "button", name="inspect").click()
    expect(board.locator(".agentbook-inspector")).to_contain_text("Desk('desk')")
    expect(page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
           ).to_have_count(0)

    (session,) = [s for s in lab.api("/api/sessions") if s["path"] == NAME]
    check_kernel(lab.runtime_dir / f"kernel-{session['kernel']['id']}.json", approval_id,
                 shutdown=False)
    lab.api(f"/api/sessions/{session['id']}", method="DELETE")  # shuts the kernel down
    wait_for(lambda: [s for s in lab.api("/api/sessions") if s["path"] == NAME], lambda r: not r)
    check_store(store, approval_id)


def test_approve_in_the_dashboard_in_voila(jupyter_env, tmp_path, page):
    notebook, store = tmp_path / NAME, tmp_path / "store"
    write_notebook(notebook, store)
    with voila(notebook, jupyter_env) as server:
        page.goto(server.url)  # Voila shows widgets once all cells ran
        approval_id = approve_in_the_dashboard(page, "voila")
        check_kernel(server.connection_file(), approval_id, shutdown=True)
        server.check_kernel_stopped()
    check_store(store, approval_id)
