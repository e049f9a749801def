"""Group 3: a callback that fails is retried with backoff on the virtual clock, then
dead-lettered; other schedules are unaffected.

``tests/test_scheduler.py`` covers queued work (FIFO, a retry without jitter, dead letters
retried and dropped) and the backoff formula. The gaps filled here:

* a *scheduled* callback with jitter: each retry happens exactly at the
  ``Retry.delay(attempt, occurrence)`` the policy promises, on the virtual clock;
* every failed attempt's own writes are rolled back;
* meanwhile a cron schedule on the same agent and another agent's interval fire exactly
  on time (lateness 0), untouched by the failures;
* a recurring schedule whose occurrence dies keeps its next occurrences;
* the attempt count survives a restart: no attempt is lost or repeated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import agentbook as ab

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
POLICY = ab.Retry(max_attempts=4, base=30, max_delay=600, jitter=True)


class RelFlaky(ab.Agent):
    initial_state = {"ok": [], "attempts": 0}
    fail: set[str] = set()

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS tries(label TEXT, occurrence TEXT, attempt INT)")

    @ab.callable
    async def plan(self) -> dict:
        return {
            "flaky": (await self.schedule(60, "work", "flaky", retry=POLICY)).id,
            "steady": (await self.schedule("* * * * *", "work", "steady")).id,
            "pulse": (await self.schedule_every(300, "work", "pulse", retry=2)).id,
        }

    async def work(self, label: str) -> None:
        occ = self.occurrence
        self.sql("INSERT INTO tries VALUES (?, ?, ?)", label, occ.id, occ.attempt)
        self.set_state({**self.state, "attempts": self.state["attempts"] + 1})
        if label in type(self).fail:
            raise ConnectionError(f"{label} attempt {occ.attempt} failed")
        self.set_state({**self.state, "ok": [*self.state["ok"], [label, occ.id, occ.due]]})


class RelSteady(ab.Agent):
    initial_state = {"ticks": 0}

    @ab.callable
    async def start(self) -> None:
        await self.schedule_every(45, "tick")

    async def tick(self) -> None:
        self.set_state({"ticks": self.state["ticks"] + 1})


def _attempt_times(ref: ab.AgentRef, label: str) -> list[tuple[float, str]]:
    frame = ref.history(limit=500, failures=False)
    rows = frame[frame.args.astype(str) == f"['{label}']"].sort_values("version")
    return [(ts.timestamp(), outcome) for ts, outcome in zip(rows.ts, rows.outcome, strict=True)]


async def test_a_failing_schedule_retries_on_its_backoff_then_dead_letters_and_others_run_on_time(
        tmp_path: Path) -> None:
    RelFlaky.fail = {"flaky"}
    clock = ab.VirtualClock(T0)
    rt = ab.Runtime(tmp_path / "store", clock=clock)
    flaky, steady = rt.get(RelFlaky, "f"), rt.get(RelSteady, "s")
    ids = await flaky.plan()
    await steady.start()
    await clock.advance(hours=1)

    occurrence = f"{ids['flaky']}:0"
    times = _attempt_times(flaky, "flaky")
    want, at = [], T0 + 60
    for attempt in range(1, POLICY.max_attempts + 1):
        want.append((at, "retry" if attempt < POLICY.max_attempts else "dead"))
        at += POLICY.delay(attempt, occurrence)
    assert [o for _, o in times] == [o for _, o in want]
    assert [t for t, _ in times] == pytest.approx([t for t, _ in want], abs=1e-3), (
        "each retry must come exactly after its backoff")
    letters = rt.dead_letters()
    assert list(letters.callback) == ["work"] and list(letters.attempts) == [POLICY.max_attempts]
    assert "ConnectionError" in letters.error[0]
    # The failed attempts wrote a row and the state each time: none of it remained.
    assert flaky.sql("SELECT count(*) AS n FROM tries WHERE label = 'flaky'").n[0] == 0
    # Unaffected: the cron ran every minute, exactly on time; the other agent too.
    steady_runs = [row for row in flaky.state["ok"] if row[0] == "steady"]
    assert len(steady_runs) == 60
    lateness = flaky.history(limit=500, failures=False)
    lateness = lateness[lateness.args.astype(str) == "['steady']"]
    assert ((lateness.ts - lateness.due).dt.total_seconds() == 0).all()
    assert steady.state["ticks"] == 3600 // 45
    assert flaky.state["attempts"] == 60 + 12  # steady and pulse; the flaky ones rolled back
    await rt.aclose()


async def test_a_dead_occurrence_of_a_recurring_schedule_keeps_the_next_ones(tmp_path: Path) -> None:
    RelFlaky.fail = {"pulse"}
    clock = ab.VirtualClock(T0)
    rt = ab.Runtime(tmp_path / "store", clock=clock)
    ref = rt.get(RelFlaky, "p")
    ids = await ref.plan()
    await clock.advance(300)  # the first pulse fails ...
    await clock.advance(60)  # ... and its one retry too: dead
    assert len(rt.dead_letters()) == 1
    RelFlaky.fail = set()
    await clock.advance(300)  # the next occurrence runs
    pulses = [row for row in ref.state["ok"] if row[0] == "pulse"]
    assert [p[1] for p in pulses] == [f"{ids['pulse']}:1"]
    # Due one interval after the first occurrence - plus the retry's delay: an interval
    # counts from the attempt that ended the occurrence (a retried occurrence shifts
    # the ones after it by its backoff; cron schedules stay on their ticks).
    assert T0 + 600 <= pulses[0][2] <= T0 + 600 + ab.Retry(max_attempts=2).max_delay
    await rt.aclose()


async def test_the_attempt_count_survives_a_restart(tmp_path: Path) -> None:
    RelFlaky.fail = {"flaky"}
    clock = ab.VirtualClock(T0)
    folder = tmp_path / "store"
    rt = ab.Runtime(folder, clock=clock)
    ids = await rt.get(RelFlaky, "r").plan()
    occurrence = f"{ids['flaky']}:0"
    first_retry = T0 + 60 + POLICY.delay(1, occurrence)
    await clock.advance(first_retry - T0)  # attempts 1 and 2 failed
    rt.close()  # the kernel restarts

    rt2 = ab.Runtime(folder, clock=clock)
    ref = rt2.get(RelFlaky, "r")
    sched = ref.schedules().set_index("id").loc[ids["flaky"]]
    assert sched.attempt == 2 and sched.occurrence == 0
    await clock.advance(hours=1)
    times = _attempt_times(ref, "flaky")
    assert len(times) == POLICY.max_attempts, "an attempt was lost or repeated by the restart"
    assert [o for _, o in times] == ["retry"] * (POLICY.max_attempts - 1) + ["dead"]
    assert len(rt2.dead_letters()) == 1
    await rt2.aclose()
