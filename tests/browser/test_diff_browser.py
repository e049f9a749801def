"""The diff widget in JupyterLab, in a real browser: clicking **previous** on one side moves
that side in the kernel and the diff on the page changes with it."""

from __future__ import annotations

import pytest

from ..waiting import wait_until
from .lab import open_notebook, run_all
from .test_approvals_browser import evaluate

pytestmark = pytest.mark.browser

NAME = "diff_widget.ipynb"
CELLS = [
    "import agentbook as ab\n\nrt = ab.Runtime(':memory:', clock=ab.VirtualClock())",
    "class Cart(ab.Agent):\n"
    "    initial_state = {'items': 0, 'last': None}\n\n"
    "    async def on_start(self):\n"
    "        self.sql('CREATE TABLE IF NOT EXISTS lines(sku TEXT PRIMARY KEY, qty INT)')\n\n"
    "    @ab.callable\n"
    "    async def add(self, sku: str, qty: int) -> None:\n"
    "        self.sql('INSERT INTO lines VALUES (?, ?)', sku, qty)\n"
    "        self.set_state({'items': self.state['items'] + qty, 'last': sku})",
    "cart = rt.get(Cart, 'cart')   # version 1: on_start; 2 apple, 3 pear, 4 plum\n"
    "for sku, qty in [('apple', 1), ('pear', 2), ('plum', 3)]:\n"
    "    await cart.add(sku, qty)",
    "diff = cart.diff_widget(3, 4)\ndiff",
]


def write_notebook(path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, path)


def test_clicking_previous_on_one_side_changes_the_rendered_diff(lab, page):
    from jupyter_client import BlockingKernelClient
    from playwright.sync_api import expect

    write_notebook(lab.root / NAME)
    open_notebook(page, lab, NAME)
    run_all(page)
    widget = page.locator(".jp-OutputArea-output .agentbook-diff")
    expect(widget).to_have_count(1, timeout=60_000)
    widget.scroll_into_view_if_needed()
    header = widget.locator(".widget-html", has_text="\u2194").first
    changes = widget.locator(".agentbook-diff-changes")
    expect(header).to_contain_text("Cart('cart') @ 3")
    expect(changes).to_contain_text("lines table: 1 added, 0 removed, 0 changed")
    expect(changes).to_contain_text("plum")
    expect(changes).not_to_contain_text("pear")
    right_before = widget.locator(".agentbook-diff-right").inner_text()

    # (the button's name also holds its icon's glyph: not exact)
    widget.locator(".agentbook-diff-left").get_by_role("button", name="previous").click()

    expect(header).to_contain_text("Cart('cart') @ 2")
    expect(changes).to_contain_text("lines table: 2 added, 0 removed, 0 changed")
    expect(changes).to_contain_text("pear")
    expect(widget.locator(".agentbook-diff-left")).to_contain_text("at version 2")
    assert widget.locator(".agentbook-diff-right").inner_text() == right_before
    expect(page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
           ).to_have_count(0)

    (session,) = [s for s in lab.api("/api/sessions") if s["path"] == NAME]
    kc = BlockingKernelClient(connection_file=str(
        lab.runtime_dir / f"kernel-{session['kernel']['id']}.json"))
    kc.load_connection_file()
    kc.start_channels()
    try:  # the kernel moved the side: the click went through the widget's own method
        sides = wait_until(
            lambda: evaluate(kc, "__import__('json').dumps([diff.left.version, diff.right.version,"
                                 " [t.table for t in diff.comparison.tables]])"),
            until=lambda found: found[0] == 2, timeout=15, what="the kernel's left side at 2")
        assert sides == [2, 4, ["lines"]]
    finally:
        kc.stop_channels()
    lab.api(f"/api/sessions/{session['id']}", method="DELETE")  # shuts the kernel down


def test_clicking_next_on_one_side_changes_the_diff_in_voila(jupyter_env, tmp_path, page):
    import subprocess
    import sys

    import psutil
    from playwright.sync_api import expect

    from .conftest import ARTIFACTS, free_port, stop_group, wait_for_port

    write_notebook(tmp_path / NAME)
    connections, log = tmp_path / "connections", tmp_path / "voila.log"
    connections.mkdir()
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", str(tmp_path / NAME), "--no-browser",
             f"--port={port}", "--Voila.ip=127.0.0.1",
             f"--Voila.connection_dir_root={connections}"],
            cwd=tmp_path, env=jupyter_env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc, log)
        page.goto(f"http://127.0.0.1:{port}/")  # Voila shows widgets once all cells ran
        widget = page.locator(".agentbook-diff")
        changes = widget.locator(".agentbook-diff-changes")
        expect(changes).to_contain_text("plum", timeout=60_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        widget.screenshot(path=str(ARTIFACTS / "diff-widget.png"))
        widget.locator(".agentbook-diff-left").get_by_role("button", name="next").click()
        expect(widget.locator(".agentbook-diff-left")).to_contain_text("at version 4")
        expect(changes).to_contain_text("no table rows")
        expect(changes).not_to_contain_text("plum")
    finally:
        kernels = [p for p in psutil.process_iter(["cmdline"])
                   if any(str(connections) in part for part in p.info["cmdline"] or [])]
        stop_group(proc)
        for kernel in kernels:  # the kernel runs in a session of its own
            if kernel.is_running():
                kernel.kill()
