"""A newcomer's first notebook, run in JupyterLab in a real browser: every cell runs,
nothing goes to stderr, and the exercise's solution prints what it should."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .lab import open_notebook, run_all

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_quickstart.ipynb"


def test_the_quickstart_runs_top_to_bottom_in_jupyterlab(lab, page):
    from playwright.sync_api import expect

    shutil.copy(NOTEBOOK, lab.root / NOTEBOOK.name)
    open_notebook(page, lab, NOTEBOOK.name)
    run_all(page)
    outputs = page.locator(".jp-OutputArea-output")
    # the exercise's solution (a collapsed cell) prints one line per agent
    expect(outputs.get_by_text("alice: 1 open")).to_be_visible(timeout=150_000)
    expect(outputs.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
           ).to_have_count(0)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=150_000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    expect(errors).to_have_count(0)
