"""The capstone (``agentbook.cli.capstone``, notebook 10): the notebook's agents are the
module's (``agentbook demo`` runs the module's week; its output is tested in test_cli)."""

from __future__ import annotations

import inspect
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
