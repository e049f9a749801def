"""The reliability suite (TESTING.md, "Faults and bad input"): shared fixtures, the soak
switch and the figures printed at the end of every run.

Figures: a test records what it measured with the ``figure`` fixture,

    figure("load", agents=50, messages=10_000, lost=0, out_of_order=0)

which appends ``("agentbook_figure", {...})`` to the test's ``request.node.user_properties``
(what pytest's ``record_property`` does, without its warning under ``--junitxml``'s default
xunit2 family - an error here, with ``filterwarnings = error``). Any test anywhere in the
suite can record a figure the same way without importing anything from here: each test of
``tests/test_serve_auth.py`` records one case of the serve path's auth matrix,

    request.node.user_properties.append(
        ("agentbook_figure", {"name": f"serve_auth_matrix:{name}", "cases": 1}))

and a case whose test did not pass counts as a bypass (``failed`` in :func:`_merge`).

At the end of the run :func:`pytest_terminal_summary` prints every figure the issue asks
for (and the extra ones), saying "not run" for those whose test did not run here.

Soak: tests marked ``@pytest.mark.soak`` in this folder are skipped unless the marker
expression asks for them (``pytest -m soak``), so a plain ``pytest`` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

FIGURE_KEY = "agentbook_figure"


def _workflow_kill(f: dict) -> str:
    return (f"{f['cycles']} cycles ({f['killed_inside']} inside a step, {f['killed_between']} "
            f"between steps, {f['killed_random']} at random), {f['workflows']} workflows, "
            f"{f['steps']} steps completed ({f['retried']} interrupted and "
            f"{f['failed_on_purpose']} failed attempts run again): "
            f"{f['rerun']} completed steps re-run, {f['lost']} workflows lost, "
            f"{f['half_written']} half-written, {f['retried_without_a_kill']} retried without a kill")


def _workflow_kill_ok(f: dict) -> bool:
    return f["rerun"] == f["retried_without_a_kill"] == f["lost"] == f["half_written"] == 0


#: What the summary prints, in order: (figure name, label, how to show its values).
#: Each ``show`` gets the recorded dict; ``target`` says what must hold.
_REPORT: list[tuple[str, str, Callable[[dict], str], Callable[[dict], bool]]] = [
    ("sigkill_fast", "SIGKILL cycles (fast run, >= 200)",
     lambda f: (f"{f['cycles']} cycles, {f['acknowledged']} acknowledged: {f['lost']} lost, "
                f"{f['duplicated']} duplicated, {f['half_written']} half-written"),
     lambda f: f["cycles"] >= 200 and f["lost"] == f["duplicated"] == f["half_written"] == 0),
    ("sigkill_soak", "SIGKILL cycles (soak, >= 1000)",
     lambda f: (f"{f['cycles']} cycles, {f['acknowledged']} acknowledged: {f['lost']} lost, "
                f"{f['duplicated']} duplicated, {f['half_written']} half-written"),
     lambda f: f["cycles"] >= 1000 and f["lost"] == f["duplicated"] == f["half_written"] == 0),
    ("two_processes", "Two processes on one folder, random SIGKILLs",
     lambda f: (f"{f['kills']} kills, {f['acknowledged']} acknowledged ({f['shared_acknowledged']}"
                f" to the shared agent): {f['lost']} lost, {f['duplicated']} duplicated, "
                f"{f['raw_errors']} raw errors, {f['stale_reads']} stale reads, takeover <= "
                f"{f['max_takeover_s']} s"),
     lambda f: f["lost"] == f["duplicated"] == f["raw_errors"] == f["stale_reads"] == 0),
    ("outbox_kill", "Kill right after an acknowledged send (outbox)",
     lambda f: (f"{f['cycles']} cycles, {f['acknowledged']} acknowledged sends: {f['lost']} lost, "
                f"{f['duplicated']} duplicated, {f['left_in_outbox']} left in the outbox"),
     lambda f: f["cycles"] >= 50 and f["lost"] == f["duplicated"] == f["left_in_outbox"] == 0),
    ("workflow_kill", "SIGKILL between and inside workflow steps (>= 200)",
     _workflow_kill, lambda f: f["cycles"] >= 200 and _workflow_kill_ok(f)),
    ("workflow_kill_soak", "SIGKILL between and inside workflow steps (soak, >= 1000)",
     _workflow_kill, lambda f: f["cycles"] >= 1000 and _workflow_kill_ok(f)),
    ("crash_points", "Named crash points",
     lambda f: (f"{f['points']} points x {f['runs']} runs: {f['mixed']} mixed stores, "
                f"{f['lost']} acknowledged-but-lost, {f['twice']} run twice"),
     lambda f: f["mixed"] == f["lost"] == f["twice"] == 0),
    ("bad_input", "Hypothesis examples of bad input (>= 1000)",
     lambda f: (f"{f['examples']} examples: {f['crashes']} runtime crashes, "
                f"{f['partial_writes']} partial writes, {f['untyped']} untyped errors"),
     lambda f: f["examples"] >= 1000 and f["crashes"] == f["partial_writes"] == f["untyped"] == 0),
    ("secret_canary", "Secret canary across every surface",
     lambda f: f"{f['surfaces']} surfaces scanned ({f['bytes']} bytes): {f['appearances']} appearances",
     lambda f: f["appearances"] == 0),
    ("serve_auth_matrix", "Serve-path auth matrix (tests/test_serve_auth.py)",
     lambda f: f"{f['cases']} cases: {f['failed']} bypasses (failed cases)",
     lambda f: f["cases"] > 0 and f["failed"] == 0),
    ("load", "Load: agents x messages x senders, schedules firing",
     lambda f: (f"{f['agents']} agents x {f['per_agent']} messages x {f['senders']} senders "
                f"({f['messages']} messages, {f['firings']} schedule firings): {f['lost']} lost, "
                f"{f['out_of_order']} out of order, max {f['max_concurrent']} handler(s) per "
                f"agent at once, {f['seconds']:.1f} s"),
     lambda f: f["lost"] == f["out_of_order"] == 0 and f["max_concurrent"] == 1),
    ("load_soak", "Load (soak)",
     lambda f: (f"{f['agents']} agents x {f['per_agent']} messages x {f['senders']} senders: "
                f"{f['lost']} lost, {f['out_of_order']} out of order, max {f['max_concurrent']}"),
     lambda f: f["lost"] == f["out_of_order"] == 0 and f["max_concurrent"] == 1),
    ("approval_attacks", "Approval attacks",
     lambda f: f"{f['attacks']} attacks: {f['unapproved']} unapproved executions",
     lambda f: f["unapproved"] == 0),
    ("model_sql", "SQL written by a model (readonly=True)",
     lambda f: f"{f['refused']} hostile statements refused, {f['writes']} writes got through",
     lambda f: f["writes"] == 0),
    ("atomic_failure", "Handlers that write everything, then fail",
     lambda f: f"{f['cases']} cases: {f['changed_stores']} stores changed, {f['leaks']} effects leaked",
     lambda f: f["changed_stores"] == f["leaks"] == 0),
    ("corrupt_store", "Damaged, full and read-only stores",
     lambda f: (f"{f['cases']} cases: {f['untyped']} untyped errors, {f['others_broken']} other "
                f"agents broken, {f['undetected']} damages undetected"),
     lambda f: f["untyped"] == f["others_broken"] == f["undetected"] == 0),
]


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a figure for the summary at the end of the run (see the module docstring)."""

    def record(name: str, **values: Any) -> None:
        request.node.user_properties.append((FIGURE_KEY, {"name": name, **values}))

    return record


def _soak_wanted(config: pytest.Config) -> bool:
    expr = config.getoption("markexpr") or ""
    return re.search(r"(?<!not )\bsoak\b", expr) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's soak variants unless ``-m soak`` asks for them."""
    if _soak_wanted(config):
        return
    skip = pytest.mark.skip(reason="a soak variant: run it with pytest -m soak")
    here = str(config.rootpath / "tests" / "reliability")
    for item in items:
        if item.get_closest_marker("soak") is not None and str(item.path).startswith(here):
            item.add_marker(skip)


def _merge(records: list[tuple[dict, str, str]]) -> tuple[dict, str]:
    """One figure from several tests (``name:part`` figures): numbers add up; ``failed``
    counts the tests that recorded a part and did not pass."""
    merged: dict[str, Any] = {}
    for values, _nodeid, _outcome in records:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged[key] = value
    merged["failed"] = sum(outcome != "passed" for *_, outcome in records)
    outcomes = {outcome for *_, outcome in records}
    worst = "passed" if outcomes <= {"passed"} else ", ".join(sorted(outcomes - {"passed"}))
    return merged, worst


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print every figure recorded in this run (and which ones did not run).

    A figure named ``base:part`` is added into ``base`` (parametrized tests each record
    their part; numbers are summed)."""
    found: dict[str, list[tuple[dict, str, str]]] = {}
    for outcome, reports in terminalreporter.stats.items():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == FIGURE_KEY and isinstance(value, dict) and "name" in value:
                    base = str(value["name"]).split(":")[0]
                    found.setdefault(base, []).append((value, report.nodeid, outcome))
    if not found:
        return
    terminalreporter.section("agentbook reliability figures")
    known = {name for name, *_ in _REPORT}
    for name, label, show, target in _REPORT:
        if name not in found:
            hint = " (pytest -m soak)" if "soak" in name else ""
            terminalreporter.write_line(f"{label}: not run{hint}")
            continue
        values, outcome = _merge(found[name])
        try:
            text, ok = show(values), target(values)
        except (KeyError, TypeError, ValueError) as exc:
            text, ok = f"{values} (unreadable: {exc})", False
        mark = "ok" if ok and outcome == "passed" else f"NOT MET ({outcome})"
        terminalreporter.write_line(f"{label}: {text} -- {mark}")
    for name in sorted(set(found) - known):
        values, outcome = _merge(found[name])
        extra = ", ".join(f"{k}={v}" for k, v in values.items() if k != "name")
        terminalreporter.write_line(f"{name}: {extra} ({outcome})")
