"""Chat in a real browser: type, stream, approve inline, then check the kernel and the store.

``notebooks/07_chat_and_tools.ipynb`` runs in JupyterLab (Run All); a person types into the
chat box, presses Enter and Send, watches the answers arrive, and clicks **Approve** on the
refund the model asked for. The refund tool must run exactly once, in the kernel and in the
durable store.
"""

from __future__ import annotations

import os
import shutil

import pytest

import agentbook as ab

from .conftest import ARTIFACTS, REPO
from .lab import open_notebook, run_all
from .test_approvals_browser import evaluate, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = REPO / "notebooks" / "07_chat_and_tools.ipynb"
DOCS_IMAGE = REPO / "docs" / "img" / "chat.png"


def test_typing_streaming_and_approving_in_the_chat_box_in_jupyterlab(lab, page):
    from jupyter_client import BlockingKernelClient
    from playwright.sync_api import expect

    shutil.copy(NOTEBOOK, lab.root / NOTEBOOK.name)  # the session's Lab serves its root folder
    open_notebook(page, lab, NOTEBOOK.name)
    run_all(page)
    outputs = page.locator(".jp-OutputArea-output")
    # The exercise's solution is the last code cell: everything ran once it printed.
    expect(outputs.get_by_text("carrier: DHL, expected: Friday")).to_be_visible(timeout=150_000)
    expect(outputs.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
           ).to_have_count(0)

    chat = outputs.locator(".agentbook-chat")
    chat.scroll_into_view_if_needed()  # JupyterLab may leave cells off screen unrendered
    expect(chat).to_contain_text("approved by notebook")  # the notebook approved o-1001 in code
    field = chat.get_by_placeholder("Message (Enter sends)")
    field.fill("Where is my order o-1002?")
    field.press("Enter")
    expect(chat.locator(".agentbook-chat-assistant").last).to_contain_text("status: in transit")
    expect(field).to_have_value("")

    field.fill("Please refund 19.99 for order o-1002")
    chat.get_by_role("button", name="Send").click()  # its name starts with the icon's glyph
    # the notebook rejected an earlier refund for o-1002 in code: this one is the last row
    row = chat.locator(".agentbook-chat-approval", has_text="o-1002").last
    approve = row.get_by_role("button", name="Approve", exact=True)
    expect(approve).to_be_enabled()  # enabled once the turn committed
    expect(chat.locator(".agentbook-chat-assistant").last).to_contain_text(
        "I've asked a person to approve")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chat.screenshot(path=str(ARTIFACTS / "chat.png"))  # waiting for a person
    if not DOCS_IMAGE.exists() or os.environ.get("AGENTBOOK_UPDATE_DOCS_IMAGES"):
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / "chat.png", DOCS_IMAGE)
    approve.click()
    expect(row).to_contain_text("approved by")
    expect(approve).to_be_hidden()
    expect(chat.locator(".agentbook-chat-assistant").last).to_contain_text(
        "refunded: 19.99, order: o-1002")
    chat.screenshot(path=str(ARTIFACTS / "chat-approved.png"))

    (session,) = [s for s in lab.api("/api/sessions") if s["path"].endswith(NOTEBOOK.name)]
    kc = BlockingKernelClient(
        connection_file=str(lab.runtime_dir / f"kernel-{session['kernel']['id']}.json"))
    kc.load_connection_file()
    kc.start_channels()
    try:
        expression = ("__import__('json').dumps([refunds_paid, rt.sql(\"SELECT args FROM tool_calls"
                      " WHERE agent = 'SupportChat' AND name = 'desk' AND tool = 'refund_order'"
                      " ORDER BY args\").args.tolist(), desk.messages().content.iloc[-1]])")
        paid, calls, last = wait_for(lambda: evaluate(kc, expression), lambda r: len(r[0]) >= 2)
    finally:
        kc.stop_channels()
    assert paid == [["o-1001", 42.5], ["o-1002", 19.99]]  # each refund paid exactly once
    assert calls == ['{"order_id":"o-1001","amount":42.5}', '{"order_id":"o-1002","amount":19.99}']
    assert "refunded: 19.99" in last
    lab.api(f"/api/sessions/{session['id']}", method="DELETE")  # shuts the kernel down

    rt = ab.Runtime(lab.store)  # the store outlives the kernel
    try:
        rows = rt.sql("SELECT args, error FROM tool_calls WHERE agent = 'SupportChat' AND "
                      "name = 'desk' AND tool = 'refund_order' AND args LIKE '%o-1002%'")
        assert rows.to_dict("records") == [{"args": '{"order_id":"o-1002","amount":19.99}',
                                            "error": None}]
        o_1002 = {a.status: a for a in rt.approvals.list(None)  # the session's store is shared
                  if (a.agent, a.name) == ("SupportChat", "desk") and "o-1002" in a.summary}
        assert sorted(o_1002) == ["approved", "rejected"]  # the notebook rejected the first
        approval = o_1002["approved"]
        assert approval.decided_by and approval.decided_by != "notebook"  # the OS user clicked
        desk = rt.get("SupportChat", "desk")
        assert f"approval:{approval.id}" in set(desk.history(limit=3).source)
    finally:
        rt.close()
