"""Schedules survive a killed process: overdue one-shots fire once, recurring ones re-arm
once, nothing runs twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import agentbook as ab

from .restart_agents import Nightly

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
HERE = os.path.dirname(__file__)


def _plan_in_child_and_kill(store: str, missed: str) -> None:
    child = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "restart_agents.py"), store, str(T0), missed],
        stdout=subprocess.PIPE, text=True, cwd=HERE,
    )
    try:
        assert child.stdout.readline().strip() == "planned"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()


@pytest.mark.parametrize(
    ("missed", "expected"),
    [
        # down from 00:00 to 05:10: cron missed 01..05, interval missed 00:30..05:00
        ("once", {"once": 1, "cron": 1 + 1, "every": 1 + 1}),
        ("skip", {"once": 1, "cron": 0 + 1, "every": 0 + 1}),
        ("all", {"once": 1, "cron": 5 + 1, "every": 10 + 2}),  # 05:30 and 06:00
    ],
)
async def test_after_a_kill_missed_work_runs_by_policy_and_nothing_twice(tmp_path, missed, expected):
    store = str(tmp_path / "store")
    _plan_in_child_and_kill(store, missed)
    # the process comes back 5 h 10 min later
    clock = ab.VirtualClock(T0 + 5 * 3600 + 600)
    rt = ab.Runtime(store, clock=clock)
    ref = rt.get(Nightly, "n")
    assert ref.state == {"runs": {}}
    assert len(ref.schedules()) == 3
    await clock.advance(0)  # the restart itself: overdue work is due now
    await clock.advance(50 * 60)  # to 06:00, one more regular tick of each recurring one
    runs = ref.state["runs"]
    assert runs == expected
    kinds = set(ref.schedules().type)
    assert kinds == {"cron", "interval"}, "the one-shot must be gone, recurring ones re-armed"
    await rt.aclose()


async def test_a_second_restart_does_not_fire_again(tmp_path):
    store = str(tmp_path / "store")
    _plan_in_child_and_kill(store, "once")
    clock = ab.VirtualClock(T0 + 2 * 3600 + 1)
    rt = ab.Runtime(store, clock=clock)
    await clock.advance(0)
    first = dict(rt.get(Nightly, "n").state["runs"])
    rt.close()
    rt2 = ab.Runtime(store, clock=clock)
    await clock.advance(0)
    assert rt2.get(Nightly, "n").state["runs"] == first
    rt2.close()
