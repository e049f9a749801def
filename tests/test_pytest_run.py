"""The suite runs the way CI set-ups run it: ``pytest --junitxml=...`` works (tests that
record figures once made it fail with ~120 errors: ``record_property`` warns under xunit2,
an error with ``filterwarnings = error``), and a green run ends quietly - no ``Exception
ignored`` traceback at interpreter shutdown (open widgets' ``__del__`` printed 17).

A small subset runs in a child pytest: tests that record figures (the reliability summary,
the serve auth matrix) and tests that leave widgets behind. ``.ci/run`` checks the whole
run's output for ``Exception ignored`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUBSET = [
    "tests/test_serve_auth.py::test_tickets_need_the_token",
    "tests/test_serve_auth.py::test_a_websocket_may_offer_the_token_as_a_subprotocol",
    "tests/reliability/test_model_sql.py::test_every_hostile_statement_is_refused_and_writes_nothing",
    "tests/test_widgets_diff.py",
]


@pytest.mark.slow
def test_junitxml_works_and_a_green_run_prints_no_exception_ignored(tmp_path):
    report = tmp_path / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         f"--basetemp={tmp_path / 'base'}", *SUBSET],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    assert int(suite.get("errors")) == 0 and int(suite.get("failures")) == 0, output[-4000:]
    assert int(suite.get("tests")) >= 16
    assert "Exception ignored" not in output, output[-4000:]
    # the figures still reach the reliability summary
    assert "Serve-path auth matrix (tests/test_serve_auth.py): 2 cases: 0 bypasses" in output
    assert "SQL written by a model (readonly=True): " in output
