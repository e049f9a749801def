"""The mailbox's batches: messages waiting together share one transaction, and each one's
writes stand or fall on their own (the savepoint of a message opens at its first write)."""

from __future__ import annotations

import asyncio

import pytest

import agentbook as ab


class Batched(ab.Agent):
    initial_state = {"n": 0, "log": []}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS rows(tag TEXT)")

    @ab.callable
    async def step(self, tag: str, how: str) -> str:
        """*how*: ``state`` (state only), ``sql``, ``kv``, ``schedule``, each optionally
        followed by ``-fail`` (raise after writing), or ``fail`` (raise, writing nothing)."""
        kind, _, fails = how.partition("-")
        if kind == "fail":
            raise ValueError(f"{tag} failed before writing")
        self.set_state({"n": self.state["n"] + 1, "log": [*self.state["log"], tag]})
        if kind == "sql":
            self.sql("INSERT INTO rows(tag) VALUES (?)", tag)
        elif kind == "kv":
            self.kv[tag] = True
        elif kind == "schedule":
            await self.schedule(3600, "noop", tag)
        if fails:
            raise ValueError(f"{tag} failed after writing")
        return tag

    @ab.callable
    async def noop(self, tag: str) -> None:
        pass

    @ab.callable
    async def tables(self) -> dict:
        return {"rows": [r["tag"] for r in self.sql("SELECT tag FROM rows ORDER BY rowid")],
                "kv": sorted(self.kv), "schedules": [s.payload for s in self.get_schedules()]}


PLAN = [("a", "state"), ("b", "sql-fail"), ("c", "sql"), ("d", "fail"), ("e", "kv-fail"),
        ("f", "kv"), ("g", "schedule-fail"), ("h", "schedule"), ("i", "state-fail"),
        ("j", "state")]


@pytest.mark.parametrize("where", ["files", ":memory:"])
async def test_each_message_of_a_batch_stands_or_falls_on_its_own(where, tmp_path, clock):
    rt = ab.Runtime(tmp_path / "store" if where == "files" else where, clock=clock)
    try:
        await _run_the_plan(rt)
    finally:
        await rt.aclose()


async def _run_the_plan(rt: ab.Runtime) -> None:
    ref = rt.get(Batched, "b")
    await ref.tables()  # started: the next messages share one batch
    version = ref.version
    calls = [ref.step(tag, how) for tag, how in PLAN]  # queued before any runs
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [tag for (tag, how), r in zip(PLAN, results, strict=True) if r == tag]
    assert ok == ["a", "c", "f", "h", "j"]
    assert all(isinstance(r, ValueError) for r in results if r not in ok)
    assert ref.state == {"n": 5, "log": ["a", "c", "f", "h", "j"]}
    assert await ref.tables() == {"rows": ["c"], "kv": ["f"], "schedules": ["h"]}
    history = ref.history(limit=20)
    steps = history[history.method == "step"]
    assert sorted(steps.outcome) == ["error"] * 5 + ["ok"] * 5  # failures are listed too
    assert ref.version == version + 5 + 1  # versions: the five that worked + tables()
    assert ref.verify()["ok"]


class Filler(ab.Agent):
    initial_state = {"notes": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS blobs(v BLOB)")

    @ab.callable
    async def note(self, text: str) -> int:
        """Changes the state only: its history row (with *text*) waits for the commit."""
        self.set_state({"notes": self.state["notes"] + 1})
        return self.state["notes"]

    @ab.callable
    async def stuff(self, size: int) -> str:
        """Writes *size* bytes and swallows the store's error: the handler "succeeds"."""
        try:
            self.sql("INSERT INTO blobs(v) VALUES (zeroblob(?))", size)
        except ab.StoreError as exc:
            return f"caught {type(exc).__name__}"
        return "stored"

    @ab.callable
    async def count(self) -> int:
        return self.sql("SELECT count(*) AS n FROM blobs")[0]["n"]


@pytest.mark.parametrize("full_at", ["earlier rows", "own write"])
async def test_a_full_store_fails_the_whole_batch_even_when_a_handler_swallows_it(
        tmp_path, clock, full_at):
    """The rows of earlier messages in a batch go in just before a later message writes;
    if the store is full right then (or at that message's own write), none of the batch
    may be acknowledged, even though the writing handler caught the error and returned."""
    cap = 256 * 1024
    note = cap // 2 if full_at == "earlier rows" else cap // 3
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_store_bytes=cap)
    try:
        ref = rt.get(Filler, "f")
        await ref.count()
        before = (ref.version, ref.state)
        results = await asyncio.gather(ref.note("x" * note), ref.note("y" * note),
                                       ref.stuff(cap // 2), return_exceptions=True)
        acknowledged = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(r, ab.StoreFullError) for r in refused), results
        assert acknowledged == [] and (ref.version, ref.state) == before  # nothing was kept
        assert await ref.note("after") == ref.state["notes"]  # the agent works on
        assert ref.verify()["ok"]
    finally:
        await rt.aclose()


class Stubborn(ab.Agent):
    initial_state = {}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS blobs(v BLOB)")
        self.sql("CREATE TABLE IF NOT EXISTS log(t TEXT)")

    @ab.callable
    async def stuff_then_log(self, size: int) -> str:
        """Swallows the full store's error and writes on: none of it may stay."""
        try:
            self.sql("INSERT INTO blobs(v) VALUES (zeroblob(?))", size)
        except ab.StoreFullError:
            try:
                self.sql("INSERT INTO log(t) VALUES ('after the error')")
            except ab.StoreError:
                pass
            try:
                self.kv["after"] = True
            except ab.StoreError:
                pass
            return "caught"
        return "stored"

    @ab.callable
    async def arm(self, size: int) -> None:
        await self.schedule(0, "fill", size, retry=2)

    async def fill(self, size: int) -> None:
        self.sql("INSERT INTO blobs(v) VALUES (zeroblob(?))", size)

    @ab.callable
    async def leftovers(self) -> dict:
        return {"log": self.sql("SELECT count(*) AS n FROM log")[0]["n"], "kv": list(self.kv),
                "schedules": len(self.get_schedules())}


async def test_nothing_written_after_the_store_lost_the_batch_is_kept(tmp_path, clock):
    cap = 256 * 1024
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_store_bytes=cap)
    try:
        ref = rt.get(Stubborn, "s")
        version = (await ref.leftovers(), ref.version)[1]
        for calls in ([ref.stuff_then_log(cap)], [ref.leftovers(), ref.stuff_then_log(cap)]):
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, ab.StoreFullError) for r in results), results
        assert await ref.leftovers() == {"log": 0, "kv": [], "schedules": 0}
        assert ref.version == version + 1 and ref.verify()["ok"]
    finally:
        await rt.aclose()


async def test_a_scheduled_run_that_fills_the_store_retries_then_is_dead_lettered(tmp_path, clock):
    """Its lost attempts count (in a transaction of their own): it backs off, then goes to
    the dead letters, instead of firing again at once, forever."""
    cap = 256 * 1024
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_store_bytes=cap)
    try:
        ref = rt.get(Stubborn, "t")
        await ref.arm(cap)
        await clock.advance(600)
        letters = rt.dead_letters()
        assert letters.callback.tolist() == ["fill"] and letters.attempts.tolist() == [2]
        assert "StoreFullError" in letters.error[0]
        assert (await ref.leftovers())["schedules"] == 0
        history = ref.history(limit=10)
        assert history[history.method == "fill"].outcome.tolist() == ["dead", "retry"]
        assert ref.verify()["ok"]
    finally:
        await rt.aclose()


#: What ran, in order (Storm's rings and Probe's calls).
_ORDER: list[str] = []


class Storm(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def arm(self, count: int) -> None:
        for _ in range(count):
            await self.schedule(0, "ring", idempotent=False)

    async def ring(self) -> None:
        _ORDER.append("ring")
        self.set_state({"n": self.state["n"] + 1})


class Probe(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def inc(self) -> int:
        _ORDER.append("probe")
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


@pytest.mark.parametrize("budget", [0.0, 60.0])
async def test_an_awaited_call_goes_in_between_the_batches_of_a_storm(tmp_path, monkeypatch,
                                                                       budget):
    """Issue 20: one agent's due firings fill a batch for about a millisecond
    (_FIRINGS_SECONDS; 0 here: one firing a batch), then its drain yields, so an unrelated
    awaited call waits for one batch, not for every firing; each firing runs once."""
    from agentbook.core import mailbox

    monkeypatch.setattr(mailbox, "_FIRINGS_SECONDS", budget)
    _ORDER.clear()
    async with ab.Runtime(tmp_path / "s") as rt:
        storm, probe = rt.get(Storm, "s"), rt.get(Probe, "p")
        await probe.inc()
        await storm.arm(60)  # (due now: the timer lets the tick in on the next loop turn)
        while "ring" not in _ORDER:
            await asyncio.sleep(0)
        await probe.inc()
        ahead = _ORDER.index("probe", 1) - 1  # (firings that ran before the second call)
        await rt.settle()
        assert storm.state["n"] == 60 and _ORDER.count("ring") == 60
    if budget == 0.0:
        assert ahead <= 2, _ORDER
    else:  # (the whole tick in one batch: the call waits for all of it)
        assert ahead == 60, _ORDER


#: Turns of the event loop a storm may take to get going (about 20 here).
_STORM_TURNS = 10_000


def _rung(agents: list[ab.AgentRef]) -> int:
    return sum(a.state["n"] for a in agents)


async def test_a_storm_of_many_agents_takes_turns_with_an_awaited_call(tmp_path, monkeypatch):
    """Issue 20: when many agents are due at once, their further batches of firings wait
    for their turn (Runtime.pace) instead of each running one batch per turn of the event
    loop, so an unrelated awaited call waits for about one batch, not for one batch of
    every storming agent. One firing a batch and one batch let in a turn here."""
    from agentbook.core import mailbox, runtime

    monkeypatch.setattr(mailbox, "_FIRINGS_SECONDS", 0.0)
    monkeypatch.setattr(runtime, "_MAX_PER_TURN", 1)
    _ORDER.clear()
    async with ab.Runtime(tmp_path / "s") as rt:
        storms = [rt.get(Storm, f"s{i}") for i in range(20)]
        probe = rt.get(Probe, "p")
        await probe.inc()
        await asyncio.gather(*(s.arm(40) for s in storms))
        # (every agent's tick let in, each fired once: all 20 have more firings queued;
        # turns of the event loop counted, so a storm that stalls fails, not hangs)
        for _ in range(_STORM_TURNS):
            if all(rt.instances[s._ab_key].queue and s.state["n"] for s in storms) or \
                    _ORDER.count("ring") >= 800:
                break
            await asyncio.sleep(0)
        else:
            pytest.fail(f"after {_STORM_TURNS} turns of the event loop the storm had rung "
                        f"{_ORDER.count('ring')} of 800 times, and not every agent had fired")
        before = _ORDER.count("ring")
        assert before < 800, "the storm ended before the call: nothing was measured"
        await probe.inc()
        ahead = _ORDER.index("probe", 1) - _ORDER.index("ring")  # (rings before the call ran)
        during = ahead - before
        await rt.settle()
        assert _rung(storms) == 800 and _ORDER.count("ring") == 800
    assert during <= 3, f"{during} firings ran while the call waited (20 agents storming)"


async def test_a_storm_ticks_each_agent_once(tmp_path, monkeypatch):
    """Issue 20: an agent whose due firings are still queued (the rest of its storm) is not
    ticked again after each batch: the batch that runs the last of them sets its timer."""
    from agentbook.core import mailbox
    from agentbook.schedule import firing

    monkeypatch.setattr(mailbox, "_FIRINGS_SECONDS", 0.0)  # (one firing a batch)
    expansions: list[int] = []
    expand = firing.expand_due

    def counting(inst: object) -> int:
        expansions.append(expand(inst))  # type: ignore[arg-type]
        return expansions[-1]

    monkeypatch.setattr(firing, "expand_due", counting)
    async with ab.Runtime(tmp_path / "s") as rt:
        storm = rt.get(Storm, "s")
        await storm.arm(30)
        await rt.settle()
        assert storm.state["n"] == 30
    assert expansions == [30], expansions


class Alarm(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def arm(self) -> None:
        await self.schedule(10, "ring")
        await self.schedule(25, "ring", idempotent=False)  # (still pending after the first)

    @ab.callable
    async def arm_every(self) -> None:
        await self.schedule_every(10, "ring")

    @ab.callable
    async def ping(self) -> int:
        return int(self.state["n"])

    async def ring(self) -> None:
        self.set_state({"n": self.state["n"] + 1})


def _tracing(rt: ab.Runtime, ref: object) -> list[str]:
    """Record the first two words of each statement the agent of *ref* runs from now on."""
    statements: list[str] = []

    def trace(_cursor: object, sql: str, _bindings: object) -> bool:
        statements.append(" ".join(sql.split()[:2]))
        return True

    rt.instances[ref._ab_key].store.conn.exec_trace = trace  # type: ignore[attr-defined]
    return statements


@pytest.mark.parametrize("kind", ["one-shot", "interval"])
async def test_a_firing_of_an_awake_agent_runs_seven_statements(tmp_path, clock, kind):
    """Issue 20: an awake agent's firing is one transaction of seven statements: BEGIN,
    the due rows, the schedule row's delete (a one-shot) or advance (a recurring one),
    which also reads the agent's next due time, the history row, the event on record,
    the state, COMMIT - no savepoint for a lone firing, no schema look-ups for
    agentbook's own rows, no next-due look-up of its own. (The hand-written floor runs
    six.) The next due time that one statement read is the one the timer keeps: the
    agent's other schedule still fires, when it is due."""
    async with ab.Runtime(tmp_path / "s", clock=clock) as rt:
        alarm = rt.get(Alarm, "a")
        armed = clock.now()
        await (alarm.arm() if kind == "one-shot" else alarm.arm_every())
        await alarm.ping()  # (awake, as in lateness_awake: its wake's one-time look-ups done)
        statements = _tracing(rt, alarm)
        await clock.advance(10)
        await rt.settle()
        rt.instances[alarm._ab_key].store.conn.exec_trace = None
        assert alarm.state["n"] == 1
        assert alarm.history(limit=1).method.tolist() == ["ring"]
        assert len(alarm.schedules()) == 1
        assert rt.timers.next_due(alarm._ab_key) == pytest.approx(
            armed + (25 if kind == "one-shot" else 20))
        await clock.advance(15)
        await rt.settle()
        assert alarm.state["n"] == 2  # (fired by the timer the firing's statement set)
    assert len(statements) == 7, statements
    assert not any(s.startswith(("SAVEPOINT", "RELEASE", "PRAGMA")) for s in statements)
    assert sum(s.startswith("SELECT") for s in statements) == 1, statements  # (the due rows)


class Started(ab.Agent):
    """An agent whose on_start writes a version at each wake (a lone message after it
    would roll that back with itself: it keeps its savepoint)."""

    initial_state = {"n": 0, "starts": 0}

    async def on_start(self) -> None:
        self.set_state({**self.state, "starts": self.state["starts"] + 1})

    @ab.callable
    async def arm(self) -> None:
        await self.schedule(10, "ring", retry=ab.Retry(max_attempts=2, base=1.0, jitter=0))

    async def ring(self) -> None:
        self.set_state({**self.state, "n": self.state["n"] + 1})
        raise ValueError("the ring failed")


@pytest.mark.parametrize("cls", [Alarm, Started])
async def test_the_first_firing_after_a_wake_runs_lone_unless_on_start_ran(tmp_path, clock, cls):
    """Issue 20: an agent woken by its firing (the cron day: every firing wakes its agent)
    runs it with no savepoint when its class has no on_start of its own; a class whose
    on_start ran in the batch keeps the savepoint, so a firing that fails takes back its
    own writes only: on_start's version stays, the retry is recorded once."""
    import apsw

    statements: list[str] = []
    tracing = [False]

    def hook(conn: apsw.Connection) -> None:
        conn.exec_trace = lambda _c, sql, _b: (  # type: ignore[assignment]
            tracing[0] and statements.append(" ".join(sql.split()[:2]))) or True

    apsw.connection_hooks.append(hook)
    try:
        async with ab.Runtime(tmp_path / "s", clock=clock) as rt:
            agent = rt.get(cls, "a")
            await agent.arm()
            rt.hibernate()
            assert agent._ab_key not in rt.open_stores
            tracing[0] = True
            await clock.advance(10)
            await rt.settle()
            tracing[0] = False
            if cls is Alarm:
                assert agent.state["n"] == 1
                assert agent.history(limit=1).outcome.tolist() == ["ok"]
            else:
                assert agent.state == {"n": 0, "starts": 2}  # (the wake's on_start kept)
                assert agent.history(limit=2).method.tolist() == ["ring", "on_start"]
                assert agent.history(limit=1).outcome.tolist() == ["retry"]
                assert agent.schedules().attempt.tolist() == [1]
            assert agent.verify()["ok"]
    finally:
        apsw.connection_hooks.remove(hook)
    savepoints = [s for s in statements if s.startswith(("SAVEPOINT", "RELEASE"))]
    assert (savepoints == []) if cls is Alarm else savepoints, statements


class Rescheduler(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def arm(self) -> None:
        await self.schedule(10, "ring")  # (its row written by hand, its next due read)
        await self.schedule(100, "ring", idempotent=False)

    @ab.callable
    async def soon(self) -> None:
        await self.schedule(5, "ring", idempotent=False)

    async def ring(self) -> None:
        self.set_state({"n": self.state["n"] + 1})


async def test_a_later_message_of_the_batch_that_schedules_makes_the_mailbox_look_again(
        tmp_path, clock, monkeypatch):
    """The next due time a firing's own statement read (issue 20) holds only until another
    message of the batch touches the schedules: here a call queued right behind the tick
    runs in the firing's batch and schedules something sooner, and the timer is set for
    that (not for what the firing read, 90 s later)."""
    from agentbook.envelope import TICK

    async with ab.Runtime(tmp_path / "s", clock=clock) as rt:
        agent = rt.get(Rescheduler, "r")
        await agent.arm()
        enqueue = rt.enqueue
        sent: list[str] = []

        def and_a_call(key: tuple[str, str], env: object) -> None:
            enqueue(key, env)  # type: ignore[arg-type]
            if getattr(env, "method", None) == TICK and not sent:
                sent.append(TICK)
                agent.send("soon")  # (queued behind the tick, before the drain runs)

        monkeypatch.setattr(rt, "enqueue", and_a_call)
        await clock.advance(10)
        await rt.settle()
        assert sent == [TICK]
        assert agent.history(limit=2).method.tolist() == ["soon", "ring"]
        assert agent.state["n"] == 1
        assert rt.timers.next_due(agent._ab_key) == pytest.approx(clock.now() + 5)
        await clock.advance(5)
        await rt.settle()
        assert agent.state["n"] == 2


class Flaky(ab.Agent):
    initial_state = {"n": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS rows(tag TEXT)")

    @ab.callable
    async def arm(self) -> None:
        await self.schedule(10, "ring", retry=ab.Retry(max_attempts=2, base=1.0, jitter=0))

    async def ring(self) -> None:
        self.set_state({"n": self.state["n"] + 1})
        self.sql("INSERT INTO rows(tag) VALUES ('ring')")
        raise ValueError("the ring failed after writing")


async def test_a_lone_firing_that_fails_keeps_none_of_its_writes_and_records_the_retry(
        tmp_path, clock):
    """A firing alone in its batch runs without a savepoint (issue 20): when it fails, the
    whole transaction is rolled back and the failure recorded in a new one - its state
    change and rows gone, the retry (then the dead letter) on record, each exactly once."""
    async with ab.Runtime(tmp_path / "s", clock=clock) as rt:
        flaky = rt.get(Flaky, "f")
        await flaky.arm()
        await clock.advance(10)
        await rt.settle()
        assert flaky.state["n"] == 0
        assert flaky.sql("SELECT count(*) AS n FROM rows").n.tolist() == [0]
        assert flaky.history(limit=1).outcome.tolist() == ["retry"]
        assert flaky.schedules().attempt.tolist() == [1]
        await clock.advance(5)
        await rt.settle()
        assert flaky.history(limit=2).outcome.tolist() == ["dead", "retry"]
        assert flaky.schedules().empty and len(rt.dead_letters()) == 1
        assert flaky.sql("SELECT count(*) AS n FROM rows").n.tolist() == [0]
        assert flaky.verify()["ok"]
