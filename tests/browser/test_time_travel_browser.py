"""Notebook 05 after Run All in JupyterLab, in a real browser: its timeline is still live.

A teacher runs the whole notebook, then shows the timeline: **Refresh** re-reads alice's
versions (it used to say "the runtime was closed", the last cell having closed it) and
**Fork here** makes a fork in the kernel (it used to show RuntimeClosedError).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..waiting import wait_until
from .lab import run_to_the_end
from .test_approvals_browser import evaluate

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "05_time_travel.ipynb"
FORK = "alice-from-the-room"


def run_in_kernel(kc: object, code: str) -> None:
    """Run *code* in the notebook's kernel (as a cell would, unseen) and check it ran."""
    msg_id = kc.execute(code, silent=True)
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    content = reply["content"]
    assert content["status"] == "ok", f"{code}: {content.get('ename')}: {content.get('evalue')}"


def test_the_timeline_refreshes_and_forks_after_run_all(lab, page):
    from jupyter_client import BlockingKernelClient
    from playwright.sync_api import expect

    run_to_the_end(page, lab, NOTEBOOK, "flat price:")  # (the exercise's solution prints it)
    timeline = page.locator(".jp-OutputArea-output .agentbook-timeline")
    expect(timeline).to_have_count(1)
    timeline.scroll_into_view_if_needed()
    header = timeline.locator(".widget-html").first
    expect(header).to_contain_text("version 7 of 0..23")

    (session,) = [s for s in lab.api("/api/sessions") if s["path"] == NOTEBOOK.name]
    kc = BlockingKernelClient(connection_file=str(
        lab.runtime_dir / f"kernel-{session['kernel']['id']}.json"))
    kc.load_connection_file()
    kc.start_channels()
    try:
        # pruning sends no event: only Refresh shows that alice's history now starts at 2
        run_in_kernel(kc, "await alice.prune(before=2)")
        expect(header).to_contain_text("version 7 of 0..23")
        timeline.locator("button[title=\"Re-read the agent's versions\"]").click()
        expect(header).to_contain_text("version 7 of 2..23")
        expect(timeline).not_to_contain_text("closed")

        timeline.locator("input[type='text']").fill(FORK)
        timeline.get_by_role("button", name="Fork here").click()
        expect(timeline).to_contain_text(f"Forked Pricer('{FORK}') at version 7", timeout=30_000)
        expect(timeline).not_to_contain_text("Error")
        expect(timeline.get_by_role("button", name="Fork here")).to_be_enabled()

        # the click made the fork in the kernel, from alice as she was at version 7
        fork = wait_until(
            lambda: evaluate(kc, "__import__('json').dumps([rt.closed, timeline.last_error, "
                                 f"{FORK!r} in set(rt.agents().name), "
                                 f"rt.get(Pricer, {FORK!r}).state, alice.at(7).state])"),
            until=lambda found: found[2], timeout=15, what="the fork in the kernel")
    finally:
        kc.stop_channels()
    closed, error, _, state, at_7 = fork
    assert (closed, error) == (False, "")
    assert state == at_7 == {"day": 6, "price": 169.0, "revenue": 115.04}
