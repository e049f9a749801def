"""A crash exactly at each named point leaves every store at the old or the new version.

``agentbook.faults`` names the places where a crash is most dangerous: just before a
commit, after a commit but before the caller heard of it, half-way through firing a
schedule, half-way through approving, half-way through a rewind. For each one a child
process (``points_child.py``) runs a scenario with ``AGENTBOOK_CRASH_AT=<point>`` and
exits with status 137 right there. Then, from the outside:

* every store is whole: :func:`points_agents.check_conn` replays its history into a model
  of the tables and finds no version with part of its rows, and no rows without their
  version; the history from before the crash is still there, unchanged;
* what was added is nothing, or one whole batch - never a part of one;
* every message the child acknowledged is in the store;
* ``PRAGMA quick_check`` and the hash chain (``ref.verify()``) are fine;

and a fresh runtime finishes the interrupted work exactly once: the schedule fires once,
the approval runs its method once, the rewind can be done.

The crash points are the product's (``agentbook/faults.py``); the general SIGKILL test at
random moments is ``test_crash.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentbook as ab
from agentbook.faults import POINTS

from . import storeutil
from .points_agents import RelPoints, check_conn

CHILD = Path(__file__).with_name("points_child.py")
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z

ANY_COMMIT = ("before-commit", "after-commit-before-reply")
CASES = [
    ("message", "before-commit"),
    ("message", "after-commit-before-reply"),
    ("schedule", "before-commit"),
    ("schedule", "after-commit-before-reply"),
    ("schedule", "mid-schedule-fire"),
    ("approval", "before-commit"),
    ("approval", "after-commit-before-reply"),
    ("approval", "mid-approval"),
    ("rewind", "before-commit"),
    ("rewind", "after-commit-before-reply"),
    ("rewind", "mid-rewind"),
]
REWIND_TO = 2


def test_every_named_crash_point_is_covered() -> None:
    assert {point for _, point in CASES} == set(POINTS)


def _history(dump: dict) -> list[tuple]:
    return sorted(dump["_ab_history"], key=lambda r: r[0])


def _methods(rows: list[tuple]) -> list[str]:
    return [r[2] for r in rows]


async def _setup(folder: Path, scenario: str) -> str:
    """The stores before the child runs; returns the scenario's argument."""
    rt = ab.Runtime(folder, clock=ab.VirtualClock(T0))
    p1, p2 = rt.get(RelPoints, "p1"), rt.get(RelPoints, "p2")
    for i in range(3):
        await p1.apply(f"s{i}")
    await p2.apply("s")
    arg = ""
    if scenario == "schedule":
        await p1.plan()
    elif scenario == "approval":
        arg = await p1.ask("o1")
    elif scenario == "rewind":
        arg = str(REWIND_TO)
    await rt.aclose()
    return arg


def _run_child(folder: Path, scenario: str, point: str, arg: str) -> list[str]:
    warmup = "0" if point in ANY_COMMIT else "1"
    env = {**os.environ, "AGENTBOOK_CRASH_AT": point}
    done = subprocess.run(
        [sys.executable, str(CHILD), str(folder), scenario, repr(T0), warmup, arg],
        env=env, capture_output=True, text=True, timeout=120, cwd=CHILD.parent)
    assert done.returncode == 137, (
        f"the child did not stop at {point} (exit {done.returncode}):\n{done.stdout}\n"
        f"{done.stderr[-3000:]}")
    assert "done" not in done.stdout.split()
    return done.stdout.splitlines()


def _expected_new(scenario: str, point: str, name: str) -> list[list[str]]:
    """What a committed batch of the scenario adds to agent *name*'s history: the allowed
    lists of added methods (``[]`` = the old version)."""
    if point in ANY_COMMIT:
        old: list[list[str]] = [[]]
        if point == "before-commit":
            return old
        # (a storm's firings commit in batches of about a millisecond, so the two due
        # firings may be one batch or two: the crash then follows the first)
        new = {"message": [["apply"] * 3], "schedule": [["fired", "fired"], ["fired"]],
               "approval": [["pay"]], "rewind": [["rewind"]]}[scenario]
        if scenario == "message":
            return old + new
        return (old + new) if name == "p1" else old
    return [["apply"]]  # the warm-up message; the scenario itself never commits


@pytest.mark.crash
@pytest.mark.parametrize(("scenario", "point"), CASES, ids=[f"{p}@{s}" for s, p in CASES])
async def test_a_crash_at_a_named_point_leaves_whole_versions(tmp_path: Path, scenario: str,
                                                              point: str, figure) -> None:
    folder = tmp_path / "store"
    arg = await _setup(folder, scenario)
    paths = {name: folder / "agents" / "RelPoints" / f"{name}.db" for name in ("p1", "p2")}
    before = {name: storeutil.dump(path) for name, path in paths.items()}

    lines = _run_child(folder, scenario, point, arg)
    acked = [line.split() for line in lines if line.startswith("ack ")]

    mixed = lost = twice = 0
    after = {}
    for name, path in paths.items():
        after[name] = storeutil.dump(path)
        assert storeutil.quick_check(path) == "ok"
        with storeutil.reading(path) as conn:
            problems = check_conn(conn)
        assert problems == [], f"{name} holds part of a version: {problems}"
        old_rows, new_rows = _history(before[name]), _history(after[name])
        assert new_rows[:len(old_rows)] == old_rows, f"{name}: committed history changed"
        added = new_rows[len(old_rows):]
        allowed = _expected_new(scenario, point, name)
        if _methods(added) not in allowed:
            mixed += 1
        assert _methods(added) in allowed, f"{name}: added {_methods(added)}, allowed {allowed}"
        if not added:
            assert after[name] == before[name], f"{name} changed without a new version"
    # The batch is all or nothing, across agents too: at most one agent's batch committed
    # (the first commit crashed the process).
    if point in ANY_COMMIT:
        changed = [n for n in paths if after[n] != before[n]]
        assert len(changed) <= (0 if point == "before-commit" else 1)
    # Acknowledged => present.
    for _, agent, msg_id, n in acked:
        ids = json.loads(after[agent]["_ab_state"][0][2])["ids"]
        if msg_id not in ids or ids.index(msg_id) + 1 != int(n):
            lost += 1
    assert lost == 0, f"acknowledged but not in the store: {acked}"
    if point not in ANY_COMMIT:
        assert len(acked) == 2, "the warm-up messages commit before the crash point"

    twice = await _finish_in_a_fresh_runtime(folder, scenario, point, arg, paths)
    assert twice == 0
    figure(f"crash_points:{point}/{scenario}",
           points=int(CASES.index((scenario, point)) == min(
               i for i, (_, p) in enumerate(CASES) if p == point)),
           runs=1, mixed=mixed, lost=lost, twice=twice)


async def _finish_in_a_fresh_runtime(folder: Path, scenario: str, point: str, arg: str,
                                     paths: dict[str, Path]) -> int:
    """Restart, let the interrupted work happen, and count what ran more than once."""
    clock = ab.VirtualClock(T0 + (60 if scenario == "schedule" else 0))
    rt = ab.Runtime(folder, clock=clock)
    p1 = rt.get(RelPoints, "p1")
    twice = 0
    try:
        if scenario == "schedule":
            await clock.advance(0)  # the restart: what is due runs now
            fired = list(p1.state["fired"])
            assert sorted(fired) == ["every", "once"], fired
            await clock.advance(60)
            assert sorted(p1.state["fired"]) == ["every", "every", "once"]
            twice = max(0, len(p1.state["fired"]) - 3)
        elif scenario == "approval":
            committed = "pay" in _methods(_history(storeutil.dump(paths["p1"])))
            if committed:
                with pytest.raises(ab.ApprovalDecidedError):
                    await rt.approvals.approve(arg, by="parent")
            else:
                assert await rt.approvals.approve(arg, by="parent") == "paid o1"
            assert list(p1.state["paid"]) == ["o1"]
            twice = max(0, len(p1.state["paid"]) - 1)
            with pytest.raises(ab.ApprovalDecidedError):
                await rt.approvals.approve(arg, by="parent")
        elif scenario == "rewind":
            rewound = "rewind" in _methods(_history(storeutil.dump(paths["p1"])))
            if not rewound:
                await p1.rewind(REWIND_TO)
            assert p1.state == p1.at(REWIND_TO).state
            assert p1.sql("SELECT count(*) AS n FROM applied").n[0] == REWIND_TO - 1
        for name in paths:
            ref = rt.get(RelPoints, name)
            verdict = ref.verify()
            assert verdict["ok"], (name, verdict)
            assert await ref.apply(f"after-{name}") == ref.state["count"]
    finally:
        await rt.aclose()
    for name, path in paths.items():
        with storeutil.reading(path) as conn:
            assert check_conn(conn) == [], name
    return twice


@pytest.mark.crash
@pytest.mark.parametrize(("scenario", "point"), [("ask", "before-commit"),
                                                 ("approval", "after-commit-before-reply")])
async def test_the_inbox_agrees_with_the_stores_after_a_crash(tmp_path: Path, scenario: str,
                                                              point: str) -> None:
    folder = tmp_path / "store"
    arg = await _setup(folder, "approval" if scenario == "approval" else "message")
    _run_child(folder, scenario, point, arg)
    rt = ab.Runtime(folder, clock=ab.VirtualClock(T0))
    try:
        with storeutil.reading(folder / "agents" / "RelPoints" / "p1.db") as conn:
            in_store = dict(conn.execute("SELECT id, status FROM _ab_approvals").fetchall())
        inbox = {a.id: a.status for a in rt.approvals.list(None)}
        assert inbox == in_store
    finally:
        await rt.aclose()
