"""Approve and reject by clicking in real browsers, then check the kernel and the store.

``notebooks/04_human_in_the_loop.ipynb`` runs in JupyterLab (Run All) and in Voila; a
person's clicks on the inbox's Approve and Reject buttons must reach the kernel, run the
approved refund exactly once and record the rejection with its reason, durably.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import agentbook as ab

from ..waiting import wait_until
from .conftest import ARTIFACTS, NOTEBOOK, REPO
from .lab import open_notebook, run_all
from .voila import voila

pytestmark = pytest.mark.browser

DOCS_IMAGE = REPO / "docs" / "img" / "approval-inbox.png"
REASON = "outside the 30-day window"


def decide_by_clicking(page: object) -> tuple[str, str]:
    """Approve the refund for o-1001 and reject o-1002 with a reason, in the page.

    Returns the approved and the rejected approval's ids (read from the tooltips).
    """
    from playwright.sync_api import expect

    inbox = page.locator(".jp-OutputArea-output .agentbook-approvals")
    keep = inbox.locator(".agentbook-approval", has_text="order o-1001")
    drop = inbox.locator(".agentbook-approval", has_text="order o-1002")
    approve = keep.get_by_role("button", name="Approve", exact=True)
    reject = drop.get_by_role("button", name="Reject", exact=True)
    approve.wait_for(state="attached")
    inbox.scroll_into_view_if_needed()  # JupyterLab may leave cells off screen unrendered
    approved_id = approve.get_attribute("title").split()[-1]
    rejected_id = reject.get_attribute("title").split()[-1]
    expect(inbox).to_contain_text("2 pending approvals")
    expect(inbox).to_contain_text("Recent decisions")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    inbox.screenshot(path=str(ARTIFACTS / "approval-inbox.png"))
    if not DOCS_IMAGE.exists() or os.environ.get("AGENTBOOK_UPDATE_DOCS_IMAGES"):
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / "approval-inbox.png", DOCS_IMAGE)
    drop.get_by_placeholder("reason (optional, for Reject)").fill(REASON)
    approve.click()
    expect(keep).to_have_count(0)  # the decision came back and the inbox re-rendered
    reject.click()
    expect(drop).to_have_count(0)
    expect(inbox).to_contain_text("0 pending approvals")
    expect(inbox).to_contain_text(REASON)
    return approved_id, rejected_id


def check_kernel(connection_file: Path, approved_id: str, rejected_id: str, *,
                 shutdown: bool = False) -> None:
    """Ask the notebook's own kernel (``user_expressions``) what became of both; then
    shut it down if asked."""
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(connection_file))
    kc.load_connection_file()
    kc.start_channels()
    try:
        expression = (
            "__import__('json').dumps([[a.status, a.decided_by, a.reason] for a in "
            f"(rt.approvals.get({approved_id!r}), rt.approvals.get({rejected_id!r}))]"
            " + [desk.state])")
        result = wait_for(lambda: evaluate(kc, expression),
                          lambda r: r[0][0] != "pending" and r[1][0] != "pending")
        if shutdown:
            kc.shutdown()
    finally:
        kc.stop_channels()
    (approved, by, _), (rejected, _, reason), state = result
    assert (approved, rejected, reason) == ("approved", "rejected", REASON)
    assert by  # the person at the keyboard (the OS user)
    assert state == {"refunded": 57.5}  # 15.00 approved in a cell + 42.50 clicked


def check_store(store: Path, approved_id: str, rejected_id: str) -> None:
    """Open the notebook's store after its kernel is gone: the decisions are durable."""
    rt = ab.Runtime(store)
    try:
        assert rt.approvals.get(approved_id).status == "approved"
        rejected = rt.approvals.get(rejected_id)
        assert (rejected.status, rejected.reason) == ("rejected", REASON)
        desk = rt.get("SupportDesk", "desk")
        assert desk.state == {"refunded": 57.5}
        rows = desk.sql("SELECT order_id, amount FROM refunds ORDER BY order_id")
        assert rows.to_dict("records") == [{"order_id": "o-1001", "amount": 42.5},
                                           {"order_id": "o-1003", "amount": 15.0}]
        top = desk.history(limit=2)
        assert f"approval:{approved_id}" in set(top.source)
    finally:
        rt.close()


def evaluate(kc: object, expression: str) -> object:
    msg_id = kc.execute("", silent=True, user_expressions={"x": expression})
    while True:
        reply = kc.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    value = reply["content"]["user_expressions"]["x"]
    assert value["status"] == "ok", value
    return json.loads(ast.literal_eval(value["data"]["text/plain"]))


def wait_for(get: Callable[[], object], ok: Callable[[object], bool], timeout: float = 15.0) -> object:
    """Poll the kernel with ``get()`` until ``ok`` holds for its answer; that answer."""
    return wait_until(get, until=ok, timeout=timeout, what="the kernel's answer came right")


def test_approve_and_reject_by_clicking_in_jupyterlab(lab, page):
    from playwright.sync_api import expect

    open_notebook(page, lab, NOTEBOOK.name)
    run_all(page)
    # The exercise's solution is the last code cell: everything ran once it printed.
    outputs = page.locator(".jp-OutputArea-output")
    expect(outputs.locator("td", has_text="parcel was delivered, see tracking")
           ).to_be_visible(timeout=60_000)
    expect(outputs.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
           ).to_have_count(0)
    approved_id, rejected_id = decide_by_clicking(page)

    (session,) = [s for s in lab.api("/api/sessions") if s["path"].endswith(NOTEBOOK.name)]
    check_kernel(lab.runtime_dir / f"kernel-{session['kernel']['id']}.json",
                 approved_id, rejected_id)
    lab.api(f"/api/sessions/{session['id']}", method="DELETE")  # shuts the kernel down
    check_store(lab.store, approved_id, rejected_id)


def test_approve_and_reject_by_clicking_in_voila(jupyter_env, tmp_path, page):
    notebook, store = tmp_path / NOTEBOOK.name, tmp_path / "store"
    shutil.copy(NOTEBOOK, notebook)
    with voila(notebook, {**jupyter_env, "AGENTBOOK_DEMO_STORE": str(store)}) as server:
        page.goto(server.url)  # Voila shows widgets once all cells ran
        approved_id, rejected_id = decide_by_clicking(page)
        check_kernel(server.connection_file(), approved_id, rejected_id, shutdown=True)
        server.check_kernel_stopped()
    check_store(store, approved_id, rejected_id)
