"""Driving a JupyterLab page the way a person does."""

from __future__ import annotations


def run_all(page) -> None:
    """Run All Cells, and make sure it took: with other notebooks open, the status bar can
    say "Idle" before this notebook's kernel is connected, and a click then does nothing."""
    from playwright.sync_api import expect

    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    for _ in range(8):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            expect(prompts.first).not_to_have_text("[ ]:", timeout=10_000)
            return
        except AssertionError:
            continue
    raise AssertionError("Run All Cells never started the notebook")
