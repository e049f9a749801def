"""The child process of ``tests/reliability/test_workflow_kill.py``: runs workflows until it
is SIGKILLed (or, in ``finish`` mode, until every run has ended).

    python workflow_child.py FOLDER CYCLE SEED SIGNAL_FD LOG MODE K GOING

It opens ``ab.Runtime(FOLDER)`` on the real clock and keeps up to ``IN_FLIGHT`` runs of
``Flow.job`` going over a few agents: the unfinished runs of earlier processes (their
durable wakes resume them; GOING is a JSON file of the ``[agent, run]`` the parent knows
of) and new ones it starts. Each ``do`` step's function

1. appends ``<step id> <mark>`` to LOG with one ``write(2)`` (``O_APPEND``) - the outside
   world, written before the function returns; *mark* is ``<cycle>.<n>``, unique to this
   execution of the function;
2. inserts ``(step id, mark, value)`` into the agent's ``did`` table and adds to its state
   (these commit with the step's journal record, or not at all);
3. returns ``{"value": value, "mark": mark}``, which the journal keeps.

Some runs have a step that fails on purpose the first time each process runs it (after its
writes, which must be undone); its LOG line ends in `` fail``, and ``ab.Retry`` tries it
again a few milliseconds later, from a durable wake.

A ``write(2)`` that returned survives a SIGKILL of the writer (the data is in the kernel's
page cache, which every later reader sees), so no ``fsync`` is needed for this test: what
is killed is the process, not the machine.

MODE says where the parent kills; SIGNAL_FD gets one byte when the child is there:

* ``random``: ``r`` right after ``import agentbook``; the parent kills after a random delay
  (anywhere: opening the stores, recovery, steps, commits, sleeps);
* ``inside``: ``i`` from inside the K-th step function this process runs, after its
  outside record and its writes, before it returns; the child then blocks until killed;
* ``between``: ``b`` from the K-th ``workflow:step`` event of a completed step, which the
  output gate delivers after the step's commit and before the next step starts; the child
  then blocks until killed;
* ``finish``: nothing is killed and nothing new starts: every unfinished run goes on until
  it ends, then everything the parent checks is printed as one JSON line and the child
  exits.

Stdout lines (one ``write(2)`` each): ``start <agent> <run> <args...>`` after a
run's start committed (the call returned), ``done <run>`` when a run completed (or a run
of GOING is found completed: its process died before it said so), ``inside <step> <mark>``
and ``between <step>`` where it waits to be killed, ``wrong <what>`` for anything
unexpected. Only agentbook is imported, to start fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

import agentbook as ab

AGENTS = ("f0", "f1", "f2")
IN_FLIGHT = 6  # runs going at once (all agents together)
NAP = 0.003  # seconds of a run's step.sleep, on the real clock
TERMINAL = {"completed", "failed", "cancelled"}
#: A step that fails is tried again soon, and often enough that a step failing once in
#: each of many killed processes still completes.
RETRY = ab.Retry(max_attempts=100, base=0.002, max_delay=0.01, jitter=False)


class PlannedFailure(Exception):
    """Raised on purpose by a run's step *fail_at* (its writes must be undone)."""


def value_of(key: int, i: int) -> int:
    """What step *i* of a run with *key* returns (the parent computes it again)."""
    return (key * 31 + i * 7) % 1009


class Child:
    """This process's settings and counters (module-level, so the agent can reach them)."""

    cycle = 0
    mode = ""
    k = 0
    log_fd = -1
    signal_fd = -1
    executions = 0  # step functions this process ran
    failed: set[str] = set()  # steps this process failed on purpose
    completions = 0  # workflow:step events of completed steps seen


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def pause(why: bytes, where: str) -> None:
    """Say where we are (a stdout line, then a byte to SIGNAL_FD), and wait to be killed
    (blocking the whole process)."""
    say(where)
    os.write(Child.signal_fd, why)
    time.sleep(60)
    say(f"wrong not killed after signalling {why.decode()}")
    os._exit(3)


class Flow(ab.Agent):
    """Runs ``job``s; every execution of a step's function leaves a ``did`` row (kept
    only if the step's commit happened) and a LOG line (kept in any case)."""

    initial_state = {"steps": 0, "total": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS did("
                 "step TEXT NOT NULL, mark TEXT NOT NULL, value INTEGER NOT NULL)")

    @ab.workflow
    async def job(self, step: ab.Step, key: int, n: int, nap_at: int, fail_at: int) -> int:
        """*n* ``do`` steps, with a short ``step.sleep`` before step *nap_at*; step
        *fail_at* raises the first time each process runs it (-1: none of either)."""
        total = 0
        for i in range(n):
            if i == nap_at:
                await step.sleep("nap", NAP)
            fn = self.work if i % 2 == 0 else self.work_async
            got = await step.do(f"s{i}", fn, key, i, i == fail_at, step.id, retry=RETRY)
            total += got["value"]
        return total

    def _begin(self, step_id: str, fail: bool) -> tuple[int, bool]:
        Child.executions += 1
        failing = fail and step_id not in Child.failed
        if failing:
            Child.failed.add(step_id)
        line = f"{step_id} {Child.cycle}.{Child.executions}{' fail' if failing else ''}\n"
        os.write(Child.log_fd, line.encode())
        return Child.executions, failing

    def _write(self, step_id: str, n: int, value: int, failing: bool) -> dict:
        mark = f"{Child.cycle}.{n}"
        self.sql("INSERT INTO did VALUES (?, ?, ?)", step_id, mark, value)
        self.set_state({"steps": self.state["steps"] + 1, "total": self.state["total"] + value})
        if Child.mode == "inside" and n == Child.k:
            pause(b"i", f"inside {step_id} {mark}")
        if failing:
            raise PlannedFailure(f"{step_id} fails once in each process")
        return {"value": value, "mark": mark}

    def work(self, key: int, i: int, fail: bool, step_id: str) -> dict:
        n, failing = self._begin(step_id, fail)
        return self._write(step_id, n, value_of(key, i), failing)

    async def work_async(self, key: int, i: int, fail: bool, step_id: str) -> dict:
        n, failing = self._begin(step_id, fail)
        await asyncio.sleep(0)  # (really suspends: other agents' steps run meanwhile)
        result = self._write(step_id, n, value_of(key, i), failing)
        await asyncio.sleep(0)
        return result


def unfinished(rt: ab.Runtime) -> set[str]:
    """Every run not ended yet (``rt.workflows()`` imports pandas: only ``finish`` uses it)."""
    frame = rt.workflows()
    if frame.empty:
        return set()
    return set(frame.id[~frame.status.isin(TERMINAL)])


async def run(folder: str, seed: int, known: list[list[str]]) -> None:
    rng = random.Random(seed)
    rt = ab.Runtime(folder)
    refs = [rt.get(Flow, name) for name in AGENTS]
    ended: set[str] = set()
    changed = asyncio.Event()

    def on_event(event: dict) -> None:
        kind, payload = event["type"], event["payload"]
        if kind == "workflow:step" and payload.get("status") == "completed":
            Child.completions += 1
            if Child.mode == "between" and Child.completions == Child.k:
                pause(b"b", f"between {payload['run']}:{payload['seq']}")
        elif kind == "workflow:complete":
            ended.add(payload["run"])
            say(f"done {payload['run']}")
            changed.set()
        elif kind in ("workflow:fail", "workflow:cancel"):
            ended.add(payload["run"])
            say(f"wrong {kind} {payload['run']} {payload.get('error')}".replace("\n", " "))
            changed.set()

    rt.events.subscribe(on_event, ["workflow:step", "workflow:complete", "workflow:fail",
                                   "workflow:cancel"])
    going = set()
    for name, run_id in known:
        try:
            status = rt.get(Flow, name).workflow(run_id).status
        except ab.UsageError:  # (the parent counts it as lost)
            say(f"wrong acknowledged run {run_id} of {name} is missing")
            continue
        if status not in TERMINAL:
            going.add(run_id)
        elif status == "completed":  # (its process died before it said so)
            say(f"done {run_id}")
        else:
            say(f"wrong {run_id} ended {status}")
    while True:
        going -= ended
        while len(going) < IN_FLIGHT:
            ref = rng.choice(refs)
            key, n = rng.randrange(1_000_000), rng.randint(2, 6)
            nap_at = rng.choice([-1, -1, rng.randrange(n)])
            fail_at = rng.choice([-1, -1, -1, rng.randrange(n)])
            started = await ref.job(key, n, nap_at, fail_at)
            going.add(started.id)
            say(f"start {ref.name} {started.id} {key} {n} {nap_at} {fail_at}")
        changed.clear()
        await changed.wait()


async def finish(folder: str) -> None:
    rt = ab.Runtime(folder)
    changed = asyncio.Event()
    rt.events.subscribe(lambda _e: changed.set(), ["workflow:complete", "workflow:fail"])
    deadline = time.monotonic() + 60
    while (going := unfinished(rt)) and time.monotonic() < deadline:
        changed.clear()
        try:  # (an event, or a look again now and then)
            await asyncio.wait_for(changed.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    if going:
        say(f"wrong still unfinished after 60 s: {sorted(going)}")
    dump: dict = {"runs": [], "agents": {}}
    for name in AGENTS:
        ref = rt.get(Flow, name)
        for row in ref.workflows().itertuples():
            steps = ref.workflow(row.id).steps()
            dump["runs"].append({
                "agent": name, "id": row.id, "args": row.args, "status": row.status,
                "result": row.result, "error": row.error,
                "steps": [{"seq": int(s.seq), "step": s.step, "kind": s.kind,
                           "status": s.status, "result": s.result}
                          for s in steps.itertuples()]})
        did = ref.sql("SELECT step, mark, value FROM did ORDER BY rowid")
        dump["agents"][name] = {"state": dict(ref.state),
                                "did": did.values.tolist() if len(did) else []}
    await rt.aclose()
    say("dump " + json.dumps(dump, default=int))


def main() -> None:
    folder, cycle, seed, signal_fd, log, mode, k, going = sys.argv[1:9]
    Child.cycle, Child.mode, Child.k = int(cycle), mode, int(k)
    Child.signal_fd = int(signal_fd)
    Child.log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if mode == "finish":
        asyncio.run(finish(folder))
        return
    if mode == "random":
        os.write(Child.signal_fd, b"r")
    with open(going) as f:
        known = json.load(f)
    asyncio.run(run(folder, int(seed), known))


if __name__ == "__main__":
    main()
