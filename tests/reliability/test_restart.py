"""Group 2: restart after SIGKILL with pending schedules *and* pending approvals.

``tests/test_scheduler_restart.py`` already kills a process holding a one-shot, a cron
and an interval schedule and checks each ``missed=`` policy (overdue one-shot fires once,
recurring ones re-arm once, a second restart fires nothing). ``tests/test_approvals.py``
checks that a pending approval survives a clean ``rt.close()``. What neither covers, and
this file does: the same kill with approvals pending alongside the schedules -

* an approval keeps its id, its summary and its expiry across the kill;
* one whose expiry passed while the process was down expires exactly once at the restart
  (its expiry is an overdue one-shot) and can no longer be approved;
* one still in time can be approved after the restart and runs exactly once;
* no schedule row is duplicated by the restart, and a second restart fires nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import agentbook as ab

from .night_agents import RelNightly

CHILD = Path(__file__).with_name("night_agents.py")
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
DOWN = 5 * 3600 + 600  # back at 05:10


def _plan_in_a_child_then_kill(folder: Path) -> dict:
    child = subprocess.Popen([sys.executable, str(CHILD), str(folder), repr(T0)],
                             stdout=subprocess.PIPE, text=True, cwd=CHILD.parent)
    try:
        line = child.stdout.readline()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    word, _, rest = line.partition(" ")
    assert word == "planned", line
    return json.loads(rest)


@pytest.mark.crash
async def test_pending_schedules_and_approvals_survive_a_kill_and_run_once(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    planned = _plan_in_a_child_then_kill(folder)
    ids, expires = planned["ids"], planned["expires"]
    assert expires == {"soon": T0 + 2 * 3600, "late": T0 + 10 * 3600}

    clock = ab.VirtualClock(T0 + DOWN)
    rt = ab.Runtime(folder, clock=clock)
    ref = rt.get(RelNightly, "n")
    try:
        # Before anything runs: everything is there once, with its id and its expiry.
        rows = ref.schedules()
        assert sorted(rows.callback) == ["_ab_expire_approval", "_ab_expire_approval", "ran",
                                         "ran", "ran"]
        for label in ("soon", "late"):
            approval = rt.approvals.get(ids[label])
            assert (approval.status, approval.expires, approval.summary) == (
                "pending", expires[label], f"pay {label}")

        await clock.advance(0)  # the restart itself: what is overdue runs now, once
        assert ref.state["runs"] == {"once": 1, "cron": 1, "every": 1}
        soon = rt.approvals.get(ids["soon"])
        assert soon.status == "expired", "its expiry passed while the process was down"
        with pytest.raises(ab.ApprovalDecidedError, match="expired"):
            rt.approvals.approve(ids["soon"])
        late = rt.approvals.get(ids["late"])
        assert late.status == "pending" and late.time_left == expires["late"] - clock.now()
        assert await rt.approvals.approve(ids["late"], by="ops") == "paid late"
        with pytest.raises(ab.ApprovalDecidedError):
            rt.approvals.approve(ids["late"])

        # Re-armed once: one row each (cron at 06:00, the interval one interval after the
        # run at 05:10), and no expiry rows left.
        rows = ref.schedules()
        assert sorted(rows.type) == ["cron", "interval"]
        due = {r.type: r.time.timestamp() for r in rows.itertuples()}
        assert due == {"cron": T0 + 6 * 3600, "interval": T0 + DOWN + 1800}
        await clock.advance(50 * 60)  # to 06:00
        assert ref.state["runs"] == {"once": 1, "cron": 2, "every": 2}
        assert list(ref.state["paid"]) == ["late"]
        state, version = ref.state, ref.version
    finally:
        await rt.aclose()

    # A second restart (same instant) fires nothing and revives nothing.
    rt2 = ab.Runtime(folder, clock=clock)
    try:
        await clock.advance(0)
        ref2 = rt2.get(RelNightly, "n")
        assert (ref2.state, ref2.version) == (state, version)
        assert rt2.approvals.pending().empty
        assert ref2.verify()["ok"]
    finally:
        await rt2.aclose()
