"""Durable workflows (issue 19): steps through one agent, a step's overhead, recovery.

``workflow_steps``
    ``wf_runs`` runs of a workflow of ``wf_steps`` ``step.do`` steps through one agent, one
    run after another (``run = await ref.counted(n)``, ``await run.result()``) on a file
    runtime (``durability="normal"``); each step's function bumps ``self.state`` (its write
    commits with the step's journal record). Steps per second. Peer: DBOS Transact 3.4 on
    a SQLite system database, the same runs of a workflow whose steps each checkpoint the
    counter's next value - nothing beyond the step's own checkpoint, which is its durable
    write (``tests/bench/peers/dbos_peer.py``). Twice: DBOS as shipped (its own SQLite
    engine: a rollback journal with ``synchronous=FULL``; the ~400 steps/s the issue
    measured), target at least 10x; and ``workflow_steps_same_durability``, DBOS on WAL with
    ``synchronous=NORMAL`` like agentbook's ``durability="normal"`` (no target: the
    stricter comparison, reported beside it).

``workflow_step_overhead``
    The same runs against ``wf_runs * wf_steps`` awaited ``@ab.callable`` calls doing the
    same write, on the same agent: microseconds per step (a run's start and end included,
    spread over its steps) and per call; ratio step / call. Target: at most 1.5x.

``workflow_recovery_s`` / ``workflow_recovery_twice``
    A child process (``sys.executable``) starts ``wf_recovery_runs`` runs spread over
    ``wf_recovery_agents`` agents, each ``wf_steps`` do-steps with a gate half-way (a
    ``step.wait_for_event("go")``); each step writes a marker row keyed by ``step.id`` to a
    SQLite file of its own (outside the runtime: the outside world) and bumps the state.
    Once every run waits at its gate, the child sends each run its event and SIGKILLs
    itself when the commit that took the last one is announced: every run is half done
    and runnable (its next turn queued: no sleep, no wait left). The bench then opens
    ``ab.Runtime`` on the same folder and times until every unfinished run completed (the
    restart included, the process's start and imports not; one agent's runs take turns).
    The child reports each step's commit (its ``workflow:step`` event, delivered after the
    commit), so a marker key written twice is told apart: a step that had committed and
    ran again counts in ``workflow_recovery_twice`` (target 0); a step the kill interrupted
    before its commit runs again by design (at least once outside) and is only counted in
    the note. Median seconds over ``wf_recovery_rounds`` rounds; the duplicates summed.

The DBOS figure is skipped with the reason when DBOS is not installed
(``pip install 'agentbook[bench]'``).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import agentbook as ab

from .report import Result, Target
from .timing import Sizes, check, interleave

__all__ = ["NAMES", "BenchFlow", "bench_recovery", "bench_step_overhead", "bench_steps",
           "recovery_child"]

NAMES = {
    "workflow_steps": ("workflow_steps", "workflow_steps_same_durability"),
    "workflow_step_overhead": ("workflow_step_overhead",),
    "workflow_recovery": ("workflow_recovery_s", "workflow_recovery_twice"),
}
#: Real seconds the child may take to get half-way, and the restart to finish every run.
_TIMEOUT = 300.0

#: Marker files (the outside world of the recovery's steps), one connection per path.
_MARKERS: dict[str, Any] = {}


def _markers(path: str) -> Any:
    conn = _MARKERS.get(path)
    if conn is None:
        import apsw

        conn = apsw.Connection(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        # no unique key: a step that ran twice leaves two rows
        conn.execute("CREATE TABLE IF NOT EXISTS ran(step TEXT NOT NULL, pid INTEGER NOT NULL)")
        _MARKERS[path] = conn
    return conn


def _close_markers(path: str) -> None:
    conn = _MARKERS.pop(path, None)
    if conn is not None:
        conn.close()


class BenchFlow(ab.Agent):
    """The benchmark's workflow agent: every step and every call bumps the counter."""

    initial_state = {"n": 0}

    def bump(self) -> int:
        """The tiny write of a step or a call: the counter plus one (a new version)."""
        self.set_state({"n": self.state["n"] + 1})
        return int(self.state["n"])

    @ab.callable
    async def inc(self) -> int:
        """The plain callable doing a step's write."""
        return self.bump()

    @ab.workflow
    async def counted(self, step: ab.Step, steps: int) -> int:
        """*steps* steps, each bumping the counter; returns *steps*."""
        for i in range(steps):
            await step.do(f"bump {i}", self.bump)
        return steps

    def mark(self, path: str, step_id: str) -> int:
        """A recovery step: a marker row in the file at *path* (committed at once, outside
        the runtime), then the counter."""
        _markers(path).execute("INSERT INTO ran(step, pid) VALUES (?, ?)",
                               (step_id, os.getpid()))
        return self.bump()

    @ab.workflow
    async def marked(self, step: ab.Step, steps: int, path: str) -> int:
        """*steps* steps, each marking its own ``step.id`` at *path*, with a wait for the
        event ``"go"`` half-way; returns *steps*."""
        for i in range(steps):
            if i == steps // 2:
                await step.wait_for_event("go")
            await step.do(f"mark {i}", self.mark, path, step.id)
        return steps


def _runs(ref: ab.AgentRef, runs: int, steps: int) -> Any:
    """A side: *runs* workflows of *steps* steps one after another; returns seconds."""

    async def side() -> float:
        t0 = time.perf_counter()
        for _ in range(runs):
            run = await ref.counted(steps)
            check(await run.result() == steps, "the run did every step")
        return time.perf_counter() - t0

    return side


# -- 1. steps per second through one agent vs DBOS ---------------------------------------------
async def bench_steps(sz: Sizes, folder: str) -> list[Result]:
    """Runs of ``wf_steps`` steps through one agent vs the same with DBOS on SQLite."""
    from .peers import load_peer

    target = Target("ratio", ">=", 10)
    peer_mod = load_peer("dbos")
    if isinstance(peer_mod, str):
        return [Result.skip("workflow_steps", "steps/s", peer_mod, target),
                Result.skip("workflow_steps_same_durability", "steps/s", peer_mod, None)]
    runs, steps = sz.wf_runs, sz.wf_steps
    total = runs * steps
    rt = ab.Runtime(os.path.join(folder, "steps"), durability="normal")
    results = []
    try:
        ref = rt.get(BenchFlow, "one")
        mine = _runs(ref, runs, steps)

        async def agentbook_side() -> float:
            return total / await mine()

        for as_shipped in (True, False):  # (one DBOS alive at a time)
            peer = peer_mod.DBOSPeer(os.path.join(folder, f"dbos-{as_shipped}.sqlite"),
                                     as_shipped=as_shipped)
            def peer_side(p: Any = peer) -> Any:
                return asyncio.to_thread(p.run, runs, steps)

            try:
                pairs = await interleave(agentbook_side, peer_side, sz.rounds, sz.warmup)
            finally:
                peer.close()
            results.append(Result.from_rounds(
                "workflow_steps" if as_shipped else "workflow_steps_same_durability",
                "steps/s", pairs, target if as_shipped else None,
                f"{runs} runs/round of {steps} step.do each, one run after another, one "
                "agent, durability normal; peer: DBOS Transact on SQLite "
                + ("as shipped (its own engine: rollback journal, synchronous=FULL), the "
                   "issue's ~400 steps/s" if as_shipped else
                   "on WAL with synchronous=NORMAL, agentbook's durability")
                + ", the same runs, each step's checkpoint its only write"))
        expected = 2 * total * (sz.rounds + int(sz.warmup))
        check(ref.state["n"] == expected, "every step bumped the counter once")
    finally:
        await rt.aclose()
    return results


# -- 2. a step against a plain callable ---------------------------------------------------------
async def bench_step_overhead(sz: Sizes, folder: str) -> list[Result]:
    """Microseconds per ``step.do`` (in runs of ``wf_steps``) vs per awaited callable."""
    runs, steps = sz.wf_runs, sz.wf_steps
    total = runs * steps
    rt = ab.Runtime(os.path.join(folder, "overhead"), durability="normal")
    try:
        ref = rt.get(BenchFlow, "one")
        mine = _runs(ref, runs, steps)

        async def step_side() -> float:
            return await mine() / total * 1e6

        async def call_side() -> float:
            t0 = time.perf_counter()
            for _ in range(total):
                await ref.inc()
            return (time.perf_counter() - t0) / total * 1e6

        pairs = await interleave(step_side, call_side, sz.rounds, sz.warmup)
        expected = 2 * total * (sz.rounds + int(sz.warmup))
        check(ref.state["n"] == expected, "every step and every call bumped the counter once")
    finally:
        await rt.aclose()
    return [Result.from_rounds(
        "workflow_step_overhead", "us", pairs, Target("ratio", "<=", 1.5),
        f"per step, in {runs} runs/round of {steps} step.do one after another (start and "
        f"end included); floor: per awaited @ab.callable doing the same write, {total}/round; "
        "same agent, durability normal")]


# -- 3. recovery after SIGKILL ------------------------------------------------------------------
def recovery_child(folder: str, path: str, agents: int, runs: int, steps: int) -> None:
    """The child of ``workflow_recovery``: starts *runs* ``marked`` runs over *agents*
    agents, waits until all of them wait at their gate, sends each its ``"go"`` event and
    SIGKILLs itself as soon as the last one is taken (its commit delivers the event that
    says so), before any run went on: every run is half done, its next turn queued.

    It writes to stdout one line per started run (``s <run>``), per committed step
    (``c <step id>``), per ended run (``d <run>``) and ``released`` once every event was
    taken, each with a single ``write(2)`` so a SIGKILL never leaves half a line. (Should
    no event say that the events were taken, ``released`` comes when ``send_event``
    returned, and the bench kills the child then.)"""
    out = sys.stdout.fileno()
    waiting: set[str] = set()
    going: set[str] = set()
    gated = asyncio.Event()

    def seen(event: dict[str, Any]) -> None:
        payload = event.get("payload") or {}
        kind = event["type"]
        if kind == "workflow:step" and payload.get("status") == "completed":
            os.write(out, f"c {payload['run']}:{payload['seq']}\n".encode())
        elif kind in ("workflow:complete", "workflow:fail"):
            os.write(out, f"d {payload['run']}\n".encode())
        elif kind == "workflow:wait":
            waiting.add(payload["run"])
            if len(waiting) == runs:
                gated.set()
        elif kind == "workflow:resume" and payload.get("step") == "go":
            going.add(payload["run"])
            if len(going) == runs:
                os.write(out, b"released\n")
                os.kill(os.getpid(), signal.SIGKILL)

    async def main() -> None:
        rt = ab.Runtime(folder, durability="normal")
        rt.events.subscribe(seen, ("workflow:step", "workflow:wait", "workflow:resume",
                                   "workflow:complete", "workflow:fail"))
        refs = [rt.get(BenchFlow, f"a{i}") for i in range(agents)]
        started = await asyncio.gather(*(refs[i % agents].marked(steps, path)
                                         for i in range(runs)))
        for run in started:
            os.write(out, f"s {run.id}\n".encode())
        await asyncio.wait_for(gated.wait(), _TIMEOUT)
        taken = await asyncio.gather(*(run.send_event("go") for run in started))
        os.write(out, b"released\n" if all(taken) else b"refused\n")
        await asyncio.Event().wait()

    asyncio.run(main())


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    return env


class _Killed:
    """What the child had done when it was killed."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.committed: set[str] = set()
        self.ended: set[str] = set()


def _kill_when_released(folder: str, path: str, agents: int, runs: int,
                        steps: int) -> _Killed:
    """Run the child until every run got its event (all half done) and it SIGKILLed
    itself (or kill it then)."""
    code = ("from agentbook.bench.workflows import recovery_child; "
            f"recovery_child({folder!r}, {path!r}, {agents}, {runs}, {steps})")
    seen = _Killed()
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stderr=err, env=_child_env())
        assert child.stdout is not None
        watchdog = threading.Timer(_TIMEOUT, child.kill)
        watchdog.start()
        killed = False
        try:
            for line in child.stdout:
                word, _, rest = line.decode().strip().partition(" ")
                if word == "released" and not killed:
                    child.send_signal(signal.SIGKILL)  # (it does so itself, normally)
                    killed = True
                elif word == "c":
                    seen.committed.add(rest)
                elif word == "s":
                    seen.started.append(rest)
                elif word == "d":
                    seen.ended.add(rest)
            returncode = child.wait()
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
        if not killed or returncode != -signal.SIGKILL:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the recovery child ended with {returncode} before every run "
                               f"was released: {tail}")
    return seen


async def _recover(folder: str, unfinished: set[str]) -> tuple[float, ab.Runtime]:
    """Open a runtime on *folder*; seconds until every run in *unfinished* ended."""
    ended: set[str] = set()

    def seen(event: dict[str, Any]) -> None:
        payload = event.get("payload") or {}
        ended.add(str(payload.get("run")))

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    rt = ab.Runtime(folder, durability="normal")
    rt.events.subscribe(seen, ("workflow:complete", "workflow:fail"))
    deadline = loop.time() + _TIMEOUT
    while not unfinished <= ended:
        if loop.time() > deadline:
            await rt.aclose()
            raise RuntimeError(f"{len(unfinished - ended)} of {len(unfinished)} runs did not "
                               f"end within {_TIMEOUT:.0f} s of the restart")
        await asyncio.sleep(0.002)
    return time.perf_counter() - t0, rt


async def _recovery_round(sz: Sizes, folder: str) -> dict[str, Any]:
    runs, steps, agents = sz.wf_recovery_runs, sz.wf_steps, sz.wf_recovery_agents
    store, path = os.path.join(folder, "store"), os.path.join(folder, "markers.db")
    killed = await asyncio.to_thread(_kill_when_released, store, path, agents, runs, steps)
    check(len(killed.started) == runs, "the child started every run before the kill")
    check(len(killed.committed) >= runs * (steps // 2),
          "the child reported the commits of every step before the gates")
    done_at_kill = Counter(step.rsplit(":", 1)[0] for step in killed.committed)
    unfinished = set(killed.started) - killed.ended
    check(bool(unfinished), "runs were in flight at the kill")
    seconds, rt = await _recover(store, unfinished)
    try:
        frame = rt.workflows()
        check(len(frame) == runs and set(frame.status) == {"completed"},
              f"every run completed after the restart: {Counter(frame.status)}")
        check(all(r == steps for r in frame.result), "every run returned its step count")
        states = [rt.get(BenchFlow, f"a{i}").state["n"] for i in range(agents)]
        check(sum(states) == runs * steps, "every step's write committed exactly once")
    finally:
        await rt.aclose()
    conn = _markers(path)
    try:
        counts = dict(conn.execute("SELECT step, count(*) FROM ran GROUP BY step").fetchall())
    finally:
        _close_markers(path)
    check(len(counts) == runs * steps, "every step ran (left its marker)")
    again = {step for step, n in counts.items() if n > 1}
    twice = again & killed.committed
    return {"seconds": seconds, "twice": len(twice), "interrupted": len(again - twice),
            "unfinished": len(unfinished), "remaining": runs * steps - len(killed.committed),
            "mid_way": sum(1 for r in unfinished if 0 < done_at_kill[r] < steps)}


async def bench_recovery(sz: Sizes, folder: str) -> list[Result]:
    """SIGKILL a process with runs in flight; time until a restart finished them all."""
    rounds = []
    for i in range(sz.wf_recovery_rounds):
        where = os.path.join(folder, f"round-{i}")
        os.makedirs(where)
        rounds.append(await _recovery_round(sz, where))
    seconds = statistics.median(r["seconds"] for r in rounds)
    twice = sum(r["twice"] for r in rounds)
    unfinished = min(r["unfinished"] for r in rounds)
    mid_way = min(r["mid_way"] for r in rounds)
    remaining = statistics.median(r["remaining"] for r in rounds)
    rate = statistics.median(r["remaining"] / r["seconds"] for r in rounds)
    interrupted = [r["interrupted"] for r in rounds]
    where = (f"{sz.wf_recovery_runs} runs of {sz.wf_steps} steps over "
             f"{sz.wf_recovery_agents} agents, SIGKILLed once released from their gate "
             f"half-way ({unfinished} in flight, {mid_way} between steps)")
    return [
        Result(name="workflow_recovery_s", value=seconds, unit="s", floor=None, ratio=None,
               rounds=len(rounds), samples=[(r["seconds"], math.nan) for r in rounds], note=(
                   f"{where}: restart to all ended, {remaining:.0f} steps left "
                   f"({rate:.0f} steps/s); median of {len(rounds)} rounds")),
        Result(name="workflow_recovery_twice", value=float(twice), unit="steps", floor=None,
               ratio=None, target=Target("value", "<=", 0), rounds=len(rounds),
               samples=[(float(r["twice"]), math.nan) for r in rounds], note=(
                   f"committed steps that ran again after the restart (marker keyed by "
                   f"step.id, outside the store), {len(rounds)} rounds; steps interrupted "
                   f"before their commit ran again, as they should: {interrupted}")),
    ]
