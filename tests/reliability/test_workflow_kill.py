"""SIGKILL between workflow steps and inside them (issue 19): a completed step never runs
again, and no workflow is lost.

A child process (``tests/reliability/workflow_child.py``) opens ``ab.Runtime(folder)`` on
the real clock and keeps a few runs of ``Flow.job`` going over three agents (each run: 2-6
``step.do`` steps, sometimes a short ``step.sleep``, sometimes a step that raises the first
time each process runs it and is retried per ``ab.Retry``), starting new ones as runs end. Every
execution of a step's function writes to the agent's SQL and state (committed with the step's
journal record, or not at all) and appends ``<step id> <mark>`` to a log file outside the
store before it returns; *mark* (``<cycle>.<n>``) names that one execution, and the function
also puts it in its ``did`` row and in the result the journal keeps. The parent SIGKILLs the
child, in each cycle one of:

* **inside** a step: the K-th step function of the process tells the parent (a pipe) after
  its outside record and its writes, before it returns, and blocks;
* **between** steps: the K-th ``workflow:step`` event of a completed step tells it - the
  output gate delivers it after the step's commit, before the next step starts - and blocks;
* **random**: after a random delay from the child's ``import agentbook`` (opening the stores,
  recovery, a commit, a sleep's timer...).

The next child reopens the folder; unfinished runs go on from their durable wakes. At the end
a last child (no kill) lets every run end and prints the journal, the ``did`` rows and the
states. What is checked:

* **completed steps re-run** (must be 0). The log is in time order (one file, appended by one
  process at a time, each record one ``write(2)``). For a step the journal says completed, the
  journaled mark names the execution whose commit completed it. Any execution of the same step
  logged *after* that one is counted: it started after the committing execution started, so it
  either ran after the step had completed (a completed step re-run) or alongside the committing
  one (a step run twice at once). Executions logged *before* it are attempts that raised on
  purpose (their log line says so), or interrupted attempts, run again after a kill - allowed
  (at least once outside, for the step running when the process died) - but only if each
  came from an earlier, killed process; one from the committing process itself would be a
  retry without a kill (``retried_without_a_kill``, must be 0).
* **workflows lost** (must be 0): every run a child acknowledged (its start call returned)
  is in the store, and every run in the store ends ``completed`` with the right result and the
  steps its arguments ask for, in order; a step whose completion was announced before a
  ``between`` kill is completed (the announcement came after a durable commit).
* **half-written** (must be 0): each completed step's writes are in the agent exactly once,
  from the execution the journal names (one ``did`` row with its mark and value); there is
  no ``did`` row of a step that did not complete; each agent's state counts and sums exactly
  its completed steps; an execution on record outside belongs to a step that completed; the
  journaled mark is on record outside; neither an execution that raised nor the one an
  ``inside`` kill stopped (before it returned) is the one that committed; ``PRAGMA
  quick_check`` is ok on every store file.

Figures: ``workflow_kill`` (``workflow_kill_soak`` for the 1000-cycle soak variant). Set
``AGENTBOOK_CRASH_SEED`` to replay a run with the same random choices.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest

CHILD = Path(__file__).with_name("workflow_child.py")

#: Where the kill lands: (mode, share of cycles); K (the step or completion to die at) is
#: drawn from 1..K_MAX, so a process gets a few steps done before it dies.
MODES = (("inside", 0.4), ("between", 0.35), ("random", 0.25))
K_MAX = 6
RANDOM_WINDOW = 0.08  # seconds after the child's import: opening, recovery, the first steps
REACH_DEADLINE = 30.0  # seconds a child gets to reach its kill point (it takes ~0.01-0.1)

#: What must never happen; each is counted, printed and asserted to be zero.
PROBLEMS = ("rerun", "retried_without_a_kill", "lost", "half_written", "wrong")


def value_of(key: int, i: int) -> int:
    """What step *i* of a run with *key* returns (as in workflow_child.py)."""
    return (key * 31 + i * 7) % 1009


@dataclass
class Tally:
    """What the children said, and what the final check found."""

    acked: dict[str, str] = field(default_factory=dict)  # run id -> agent
    done: set[str] = field(default_factory=set)  # runs a child saw complete
    killed_inside: dict[str, list[str]] = field(default_factory=dict)  # step -> marks
    killed_after: set[str] = field(default_factory=set)  # steps announced completed
    kills: collections.Counter = field(default_factory=collections.Counter)
    problems: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    cycles: int = 0
    workflows: int = 0
    steps: int = 0
    retried: int = 0  # interrupted executions that ran again in a later process
    failed_on_purpose: int = 0  # executions that raised (then retried per ab.Retry)
    executions: int = 0

    def problem(self, kind: str, text: str) -> None:
        self.problems[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {text}")


def read_output(text: str, tally: Tally) -> dict | None:
    """Record a child's lines; returns the final dump if there is one."""
    dump = None
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "start":
            agent, run_id, *_ = rest.split()
            tally.acked[run_id] = agent
        elif word == "done":
            tally.done.add(rest)
        elif word == "inside":
            step_id, mark = rest.split()
            tally.killed_inside.setdefault(step_id, []).append(mark)
        elif word == "between":
            tally.killed_after.add(rest)
        elif word == "dump":
            dump = json.loads(rest)
        else:
            tally.problem("wrong", f"child said: {line[:300]}")
    return dump


def run_child(folder: Path, work: Path, cycle: int, mode: str, k: int, seed: int,
              delay: float, tally: Tally) -> str:
    """Start a child; unless *mode* is ``finish``, SIGKILL it where *mode* says. Returns its
    stdout."""
    going = work / "going.json"
    going.write_text(json.dumps([[agent, run_id] for run_id, agent in tally.acked.items()
                                 if run_id not in tally.done]))
    out_path, err_path = work / "child.out", work / "child.err"
    r, w = os.pipe()
    child = None
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            child = subprocess.Popen(
                [sys.executable, str(CHILD), str(folder), str(cycle), str(seed), str(w),
                 str(work / "executions.log"), mode, str(k), str(going)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(w,))
        os.close(w)
        w = -1
        if mode == "finish":
            try:
                child.wait(timeout=120)  # (it gives up waiting for runs after 60 s)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the last child hangs:\n{err_path.read_text()[-3000:]}")
        else:
            want = {"random": b"r", "inside": b"i", "between": b"b"}[mode]
            deadline = time.monotonic() + REACH_DEADLINE
            got = b""
            while want not in got and (left := deadline - time.monotonic()) > 0:
                if select.select([r], [], [], left)[0]:
                    byte = os.read(r, 1)
                    if not byte:
                        break  # the child ended (the checks below say how)
                    got += byte
            if want not in got:
                pytest.fail(f"cycle {cycle}: the child never reached its kill point ({mode} "
                            f"{k}):\n{err_path.read_text()[-3000:]}")
            end = time.monotonic() + delay
            while (left := end - time.monotonic()) > 0:  # (random: the delay; wakes on EOF)
                if select.select([r], [], [], left)[0] and not os.read(r, 1):
                    break
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()
        os.close(r)
        if w >= 0:
            os.close(w)
    expected = 0 if mode == "finish" else -signal.SIGKILL
    if child.returncode != expected:
        pytest.fail(f"cycle {cycle} ({mode}): the child ended with {child.returncode}:\n"
                    f"{err_path.read_text()[-3000:]}")
    return out_path.read_text()


def read_log(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    """Step id -> the marks of its executions, in the order they ran; and the marks of the
    executions that failed on purpose."""
    runs: dict[str, list[str]] = collections.defaultdict(list)
    failing: set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            step_id, mark, *fail = line.split()
            runs[step_id].append(mark)
            if fail:
                failing.add(mark)
    return runs, failing


def cycle_of(mark: str) -> int:
    return int(mark.split(".")[0])


def check(dump: dict, executions: dict[str, list[str]], failing: set[str], folder: Path,
          tally: Tally) -> None:
    """The final check (see the module docstring)."""
    runs = {run["id"]: run for run in dump["runs"]}
    tally.workflows = len(runs)
    for run_id, agent in tally.acked.items():
        if run_id not in runs:
            tally.problem("lost", f"{agent}: acknowledged run {run_id} is not in the store")
    committed: dict[str, tuple[str, str, int]] = {}  # step id -> (agent, mark, value)
    for run_id, run in runs.items():
        key, n, nap_at, _fail_at = run["args"]
        if run["status"] != "completed" or run["result"] != sum(value_of(key, i)
                                                                for i in range(n)):
            tally.problem("lost", f"{run_id} ended {run['status']} with {run['result']!r} "
                                  f"({run['error']})")
        want = [("do", f"s{i}") for i in range(n)]
        if nap_at >= 0:
            want.insert(nap_at, ("sleep", "nap"))
        have = [(s["kind"], s["step"]) for s in run["steps"]]
        if have != want or [s["seq"] for s in run["steps"]] != list(range(len(want))):
            tally.problem("lost", f"{run_id}: steps {have}, asked for {want}")
        for s in run["steps"]:
            if s["status"] != "completed":
                tally.problem("lost", f"{run_id}:{s['seq']} ({s['step']}) is {s['status']}")
            elif s["kind"] == "do":
                i = int(s["step"][1:])
                result = s["result"]
                if result["value"] != value_of(key, i):
                    tally.problem("half_written", f"{run_id}:{s['seq']} journaled {result}")
                committed[f"{run_id}:{s['seq']}"] = (run["agent"], result["mark"],
                                                     result["value"])
    tally.steps = len(committed)
    tally.executions = sum(len(marks) for marks in executions.values())

    for step_id, (_agent, mark, _value) in committed.items():
        marks = executions.get(step_id, [])
        if mark not in marks:
            tally.problem("half_written", f"{step_id}: committed execution {mark} is not on "
                                          f"record outside ({marks})")
            continue
        if mark in failing:
            tally.problem("half_written", f"{step_id}: {mark} raised, yet it committed")
        at = marks.index(mark)
        if len(marks) > at + 1:
            tally.problem("rerun", f"{step_id}: committed by {mark}, then ran as "
                                   f"{marks[at + 1:]}")
        for earlier in marks[:at]:
            if earlier in failing:
                tally.failed_on_purpose += 1
                continue
            tally.retried += 1
            if cycle_of(earlier) >= cycle_of(mark):
                tally.problem("retried_without_a_kill", f"{step_id}: {earlier} did not commit, "
                                                        f"{mark} did")
    for step_id, marks in tally.killed_inside.items():
        if step_id in committed and committed[step_id][1] in marks:
            tally.problem("half_written", f"{step_id}: execution {committed[step_id][1]} was "
                                          "killed before it returned, yet it committed")
    for step_id in tally.killed_after - committed.keys():
        tally.problem("lost", f"{step_id}: announced completed before the kill, yet it is not")
    for step_id in executions.keys() - committed.keys():
        tally.problem("half_written", f"{step_id} ran ({executions[step_id]}) but never completed")

    for agent, seen in dump["agents"].items():
        rows: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
        for step_id, mark, value in seen["did"]:
            rows[step_id].append((mark, value))
        mine = {sid: c for sid, c in committed.items() if c[0] == agent}
        for step_id, (_agent, mark, value) in mine.items():
            if rows.get(step_id) != [(mark, value)]:
                tally.problem("half_written", f"{agent}: {step_id} committed {mark} but its "
                                              f"rows are {rows.get(step_id)}")
        for step_id in rows.keys() - mine.keys():
            tally.problem("half_written", f"{agent}: rows of {step_id}, which did not complete")
        want_state = {"steps": len(mine), "total": sum(c[2] for c in mine.values())}
        if seen["state"] != want_state:
            tally.problem("half_written", f"{agent}: state {seen['state']}, journal says "
                                          f"{want_state}")

    for path in sorted(folder.rglob("*.db")):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            result = "; ".join(r[0] for r in conn.execute("PRAGMA quick_check"))
        finally:
            conn.close()
        if result != "ok":
            tally.problem("half_written", f"{path.name}: quick_check {result}")


def kill_cycles(tmp_path: Path, cycles: int) -> tuple[Tally, float]:
    seed = int(os.environ.get("AGENTBOOK_CRASH_SEED", random.randrange(2**32)))
    print(f"\nworkflow kill seed {seed} (set AGENTBOOK_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    folder, tally = tmp_path / "store", Tally()
    started = time.monotonic()
    for cycle in range(cycles):
        mode = rng.choices([m for m, _ in MODES], [w for _, w in MODES])[0]
        delay = rng.uniform(0, RANDOM_WINDOW) if mode == "random" else 0.0
        text = run_child(folder, tmp_path, cycle, mode, rng.randint(1, K_MAX),
                         rng.randrange(2**32), delay, tally)
        read_output(text, tally)
        tally.kills[mode] += 1
        tally.cycles += 1
    text = run_child(folder, tmp_path, cycles, "finish", 0, 0, 0.0, tally)
    dump = read_output(text, tally)
    if dump is None:
        pytest.fail(f"seed {seed}: the last child printed no dump:\n{text[-3000:]}")
    check(dump, *read_log(tmp_path / "executions.log"), folder, tally)
    seconds = time.monotonic() - started
    if tally.problems:
        print(f"seed {seed}: {dict(tally.problems)}\n" + "\n".join(tally.examples))
    return tally, seconds


def report(tally: Tally, seconds: float, figure, name: str) -> None:
    figures = {
        "cycles": tally.cycles,
        **{f"killed_{mode}": tally.kills[mode] for mode, _ in MODES},
        "workflows": tally.workflows,
        "acknowledged": len(tally.acked),
        "steps": tally.steps,
        "executions": tally.executions,
        "retried": tally.retried,
        "failed_on_purpose": tally.failed_on_purpose,
        **{kind: tally.problems[kind] for kind in PROBLEMS},
        "seconds": round(seconds, 1),
    }
    figure(name, **figures)
    print(f"workflow kill group in {seconds:.1f} s: "
          + ", ".join(f"{k}={v}" for k, v in figures.items()))


def assert_nothing_rerun_or_lost(tally: Tally, cycles: int) -> None:
    assert tally.cycles == cycles
    for mode, _ in MODES:
        assert tally.kills[mode] > 0, mode
    assert sum(map(len, tally.killed_inside.values())) == tally.kills["inside"]
    assert len(tally.killed_after) == tally.kills["between"]
    assert tally.steps > cycles and tally.workflows > 0
    assert not tally.problems, (dict(tally.problems), tally.examples)


def test_the_check_counts_reruns_losses_and_half_writes(tmp_path: Path) -> None:
    """The check itself (no processes): a clean record passes, and each kind of damage is
    counted as the module docstring says."""
    key = 5
    v0, v1 = value_of(key, 0), value_of(key, 1)

    def checked(damage=None, said=None) -> Tally:
        steps = [{"seq": 0, "step": "s0", "kind": "do", "status": "completed",
                  "result": {"value": v0, "mark": "1.1"}},
                 {"seq": 1, "step": "nap", "kind": "sleep", "status": "completed",
                  "result": None},
                 {"seq": 2, "step": "s1", "kind": "do", "status": "completed",
                  "result": {"value": v1, "mark": "2.2"}}]
        run = {"agent": "f0", "id": "wf-a", "args": [key, 2, 1, 1], "status": "completed",
               "result": v0 + v1, "error": None, "steps": steps}
        agent = {"state": {"steps": 2, "total": v0 + v1},
                 "did": [["wf-a:0", "1.1", v0], ["wf-a:2", "2.2", v1]]}
        dump = {"runs": [run], "agents": {"f0": agent}}
        # s1 was interrupted in cycle 0, failed on purpose in cycle 2, then completed
        log = {"wf-a:0": ["1.1"], "wf-a:2": ["0.3", "2.1", "2.2"]}
        failing = {"2.1"}
        if damage is not None:
            damage(dump, log, failing)
        tally = Tally(acked={"wf-a": "f0"})
        if said is not None:
            said(tally)
        check(dump, log, failing, tmp_path, tally)
        return tally

    def problems(damage=None, said=None) -> dict[str, int]:
        return dict(checked(damage, said).problems)

    def rerun(dump: dict, log: dict, failing: set) -> None:
        log["wf-a:0"].append("3.1")  # ran again in cycle 3, after it committed in cycle 1

    def retried_in_its_own_process(dump: dict, log: dict, failing: set) -> None:
        failing.clear()  # 2.1 did not commit, and no kill explains it

    def a_failure_committed(dump: dict, log: dict, failing: set) -> None:
        failing.add("2.2")

    def not_completed(dump: dict, log: dict, failing: set) -> None:
        dump["runs"][0]["status"] = "running"

    def written_twice(dump: dict, log: dict, failing: set) -> None:
        dump["agents"]["f0"]["did"].append(["wf-a:0", "1.1", v0])

    def written_by_another_execution(dump: dict, log: dict, failing: set) -> None:
        dump["agents"]["f0"]["did"][1][1] = "2.1"

    def unrecorded_outside(dump: dict, log: dict, failing: set) -> None:
        del log["wf-a:0"]

    def killed_inside(tally: Tally) -> None:  # the kill stopped 2.2 before it returned
        tally.killed_inside["wf-a:2"] = ["2.2"]

    def announced(tally: Tally) -> None:  # a completion announced, then no such step
        tally.killed_after.add("wf-a:7")

    clean = checked()
    assert (dict(clean.problems), clean.steps, clean.retried, clean.failed_on_purpose) == (
        {}, 2, 1, 1)
    assert problems(rerun) == {"rerun": 1}
    assert problems(retried_in_its_own_process) == {"retried_without_a_kill": 1}
    assert problems(a_failure_committed) == {"half_written": 1}
    assert problems(not_completed) == {"lost": 1}
    assert problems(lambda dump, log, failing: dump["runs"].clear())["lost"] == 1
    assert problems(written_twice) == {"half_written": 1}
    assert problems(written_by_another_execution) == {"half_written": 1}
    assert problems(unrecorded_outside) == {"half_written": 1}
    assert problems(said=killed_inside) == {"half_written": 1}
    assert problems(said=announced) == {"lost": 1}


@pytest.mark.crash
def test_sigkill_between_and_inside_steps_reruns_no_completed_step(tmp_path: Path, figure) -> None:
    tally, seconds = kill_cycles(tmp_path, cycles=200)
    report(tally, seconds, figure, "workflow_kill")
    assert_nothing_rerun_or_lost(tally, 200)


@pytest.mark.crash
@pytest.mark.soak
def test_a_thousand_sigkills_between_and_inside_steps(tmp_path: Path, figure) -> None:
    # Skipped unless -m soak (tests/reliability/conftest.py); a few minutes.
    tally, seconds = kill_cycles(tmp_path, cycles=1000)
    report(tally, seconds, figure, "workflow_kill_soak")
    assert_nothing_rerun_or_lost(tally, 1000)
