"""Issue 20: a firing whose callback writes no SQL records its schedule row's change
without a session (agentbook.store.rowchange). A crash between the callback and the commit
(``mid-schedule-fire``, ``before-commit``) or just after it (``after-commit-before-reply``)
must still leave each occurrence run exactly once: a fresh runtime runs what was not
committed, once, and nothing that was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentbook as ab

from .firing_agents import Chime

CHILD = Path(__file__).with_name("firing_child.py")
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z


@pytest.mark.parametrize("point", ["mid-schedule-fire", "before-commit",
                                   "after-commit-before-reply"])
async def test_a_crash_around_a_state_only_firing_runs_each_occurrence_once(tmp_path, point):
    folder = tmp_path / "rt"
    async with ab.Runtime(folder, clock=ab.VirtualClock(T0)) as rt:
        await rt.get(Chime, "c").plan()
    env = {**os.environ, "AGENTBOOK_CRASH_AT": point,
           "PYTHONPATH": os.pathsep.join([str(CHILD.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(CHILD), str(folder), str(T0)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, (done.stdout, done.stderr)
    assert "done" not in done.stdout
    clock = ab.VirtualClock(T0 + 60)
    async with ab.Runtime(folder, clock=clock) as rt:
        chime = rt.get(Chime, "c")
        await clock.advance(0)  # the restart: what is due runs now
        assert sorted(chime.state["fired"]) == ["every", "once"]
        await clock.advance(60)
        assert sorted(chime.state["fired"]) == ["every", "every", "once"]
        assert chime.verify()["ok"]
        history = chime.history()
        fired = history[history.method == "ring"]
        assert len(fired) == 3
        assert fired.occurrence.is_unique
        assert len(chime.schedules()) == 1
