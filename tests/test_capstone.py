"""The capstone (``agentbook.cli.capstone``, notebook 10): the notebook's agents are the
module's, and its progress stays off a pipe."""

from __future__ import annotations

import inspect
import io
import json
import textwrap
from pathlib import Path

from agentbook.cli import capstone

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "10_capstone.ipynb"


def _code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]).strip() for c in cells if c["cell_type"] == "code"]


def _module_classes() -> list[str]:
    """The two classes :func:`capstone.build_agents` defines, as top-level code."""
    source = inspect.getsource(capstone.build_agents)
    body = source[source.index("    class Customer"):source.index("    return Customer, Desk")]
    customer, desk = textwrap.dedent(body).strip().split("\n\nclass Desk")
    return [customer.strip(), "class Desk" + desk.rstrip()]


def test_the_notebook_writes_out_the_same_agents_the_demo_runs():
    cells = _code_cells()
    shown = [c for c in cells if c.startswith(("class Customer(", "class Desk("))]
    assert shown == _module_classes(), (
        "notebooks/10_capstone.ipynb and agentbook/cli/capstone.py:build_agents differ: "
        "change both")
    policy = inspect.getsource(capstone.refund_policy).strip()
    assert policy in cells, "the notebook defines the desk's refund_policy as the module does"


def test_the_week_shows_no_progress_when_piped(tmp_path):
    out = io.StringIO()
    figures = capstone.run_capstone(customers=20, days=2, path=str(tmp_path / "store"),
                                    plots_dir=None, out=out)
    text = out.getvalue()
    assert figures["customers"] == 20 and "What if refunds were generous" in text
    assert "%|" not in text and "\r" not in text and "simulated" in text.splitlines()[1]
