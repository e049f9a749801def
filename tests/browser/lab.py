"""Driving a JupyterLab page the way a person does.

Every test opens its notebook in a workspace of its own. JupyterLab saves the open tabs
in the workspace on the server, and ``/lab/tree/NAME`` opens NAME in the *default*
workspace: a later test's page would restore every notebook an earlier test had open
(and start a kernel for each). The status bar could then say "Idle" for another
notebook, Run All would race this notebook's kernel start (the "Select Kernel" dialog
then blocks the page), and ``.jp-InputPrompt`` look-ups would see the other notebooks'
cells.
"""

from __future__ import annotations

import secrets


def open_notebook(page, lab, name: str) -> None:
    """Open notebook ``name`` (in the Lab's root folder) alone in a fresh workspace and
    wait until its own kernel is connected and idle."""
    from playwright.sync_api import expect

    workspace = f"test-{secrets.token_hex(6)}"
    page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}")
    # The toolbar says idle before a kernel exists; the status bar waits for the kernel.
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=150_000)
    expect(page.locator(".jp-NotebookPanel")).to_have_count(1)  # nothing else restored
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
           ).to_have_text(name)
    sessions = [s for s in lab.api("/api/sessions") if s["path"] == name]
    assert len(sessions) == 1 and sessions[0]["kernel"], sessions


def run_all(page) -> None:
    """Run All Cells once (from the Run menu) and check that it took: the first code
    cell is queued or has run. Never clicks twice: a second Run All would run the
    notebook twice."""
    from playwright.sync_api import expect

    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    first = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").first
    expect(first).not_to_have_text("[ ]:", timeout=60_000)


def run_to_the_end(page, lab, notebook, last_words: str) -> None:
    """Copy *notebook* into the Lab, open it, Run All, and wait until *last_words* (printed
    by its last cells) show and the kernel is idle: no cell wrote to stderr or failed."""
    import shutil

    from playwright.sync_api import expect

    shutil.copy(notebook, lab.root / notebook.name)
    open_notebook(page, lab, notebook.name)
    run_all(page)
    outputs = page.locator(".jp-OutputArea-output")
    expect(outputs.get_by_text(last_words)).to_be_visible(timeout=150_000)
    expect(outputs.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
           ).to_have_count(0)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=150_000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    expect(errors).to_have_count(0)
