"""Schedules survive a killed process: overdue one-shots fire once, recurring ones re-arm
once, nothing runs twice."""

from __future__ import annotations

import asyncio
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


def _define_reminder() -> type[ab.Agent]:
    """A fresh definition of ``LateReminder`` (the cell that defines it, run again)."""

    class LateReminder(ab.Agent):
        initial_state = {"rang": 0}

        @ab.callable
        async def plan(self) -> None:
            await self.schedule(60, "ring")

        async def ring(self) -> None:
            self.set_state({"rang": self.state["rang"] + 1})

    return LateReminder


async def test_a_schedule_due_before_its_class_is_defined_fires_once_the_cell_has_run(tmp_path):
    """A kernel restarts with a schedule due, and the cell that defines its agent's class has
    not run yet: the due wake-up is looked at again later, not dropped, and the schedule
    fires once after the class is defined."""
    import gc

    from agentbook.core.agent import agent_classes

    store = str(tmp_path / "store")
    clock = ab.VirtualClock(T0)
    rt = ab.Runtime(store, clock=clock)
    await rt.get(_define_reminder(), "r").plan()
    await rt.aclose()
    del rt, clock  # (the runtime remembers the classes it was given)
    for _ in range(20):  # the loop's last callbacks of the closed runtime let go of it
        await asyncio.sleep(0)
        gc.collect()
        if "LateReminder" not in agent_classes():
            break
    assert "LateReminder" not in agent_classes(), "the test needs the class undefined"

    clock = ab.VirtualClock(T0 + 120)  # the new kernel: the schedule is overdue
    rt = ab.Runtime(store, clock=clock)
    await clock.advance(0)  # due now, but no class of that name in this process
    await clock.advance(1)
    cls = _define_reminder()  # the cell runs
    await clock.advance(30)  # past the pause before the next look
    ref = rt.get(cls, "r")
    assert ref.state == {"rang": 1}
    assert len(ref.schedules()) == 0
    await clock.advance(3600)
    assert ref.state == {"rang": 1}, "fired once, not again"
    await rt.aclose()
