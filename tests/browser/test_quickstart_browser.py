"""A newcomer's first notebook, run in JupyterLab in a real browser: every cell runs,
nothing goes to stderr, and the exercise's solution prints what it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from .lab import run_to_the_end

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_quickstart.ipynb"


def test_the_quickstart_runs_top_to_bottom_in_jupyterlab(lab, page):
    # the exercise's solution (a collapsed cell) prints one line per agent
    run_to_the_end(page, lab, NOTEBOOK, "alice: 1 open")
