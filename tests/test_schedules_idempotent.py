"""Schedules are idempotent (SPEC §2.11), and ``rt.settle()`` runs what is due now.

The same callback, kind, timing and payload is one schedule: ``schedule_every`` in
``on_start`` makes one row however often the agent wakes. ``key=`` names a schedule (a
second call with the same key and another timing or payload replaces it),
``idempotent=False`` always adds a row, and ``queue()`` is never idempotent.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import apsw
import pytest

import agentbook as ab
from agentbook.schedule.policy import ScheduleError
from agentbook.store.agentstore import AgentStore
from agentbook.store.schema import MIGRATIONS

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


class Waker(ab.Agent):
    """Schedules its jobs in on_start, as Cloudflare users do."""

    initial_state = {"ticks": 0, "crons": 0}

    async def on_start(self):
        await self.schedule_every(30, "tick")
        await self.schedule("*/5 * * * *", "cron_tick")
        await self.schedule(300, "follow_up", {"ticket": 7})

    @ab.callable
    async def ping(self) -> int:
        return len(self.get_schedules())

    async def tick(self):
        self.set_state({**self.state, "ticks": self.state["ticks"] + 1})

    async def cron_tick(self):
        self.set_state({**self.state, "crons": self.state["crons"] + 1})

    async def follow_up(self, payload):
        pass


class Planner(ab.Agent):
    initial_state = {"ran": []}

    @ab.callable
    async def delay(self, seconds: float, payload=None, **options) -> str:
        return (await self.schedule(seconds, "run", payload, **options)).id

    @ab.callable
    async def on_date(self, epoch: float, payload=None, **options) -> str:
        when = datetime.fromtimestamp(epoch, timezone.utc)
        return (await self.schedule(when, "run", payload, **options)).id

    @ab.callable
    async def cron(self, expr: str, payload=None, **options) -> str:
        return (await self.schedule(expr, "run", payload, **options)).id

    @ab.callable
    async def every(self, seconds: float, payload=None, **options) -> str:
        return (await self.schedule_every(seconds, "run", payload, **options)).id

    @ab.callable
    async def every_td(self, seconds: float, payload=None) -> str:
        return (await self.schedule_every(timedelta(seconds=seconds), "run", payload)).id

    @ab.callable
    async def job(self, payload=None) -> str:
        return (await self.queue("run", payload)).id

    @ab.callable
    async def twice(self, seconds: float) -> list:
        first = await self.schedule(seconds, "run", {"n": 1})
        second = await self.schedule(seconds, "run", {"n": 1})
        return [first.id, second.id]

    @ab.callable
    async def retry_of(self, sid: str) -> int:
        return next(s.retry.max_attempts for s in self.get_schedules() if s.id == sid)

    async def run(self, payload=None):
        self.set_state({"ran": [*self.state["ran"], [payload, self.now() - T0]]})


class Poller(ab.Agent):
    """A one-shot that schedules itself again from its own callback (a polling loop)."""

    initial_state = {"polls": 0}

    @ab.callable
    async def start(self, key: str | None = None) -> None:
        await self.schedule(60, "poll", {"key": key}, key=key)

    async def poll(self, payload):
        self.set_state({"polls": self.state["polls"] + 1})
        await self.schedule(60, "poll", payload, key=payload["key"])


class Ticker(ab.Agent):
    """A recurring job whose callback calls schedule_every again (same or new interval)."""

    initial_state = {"ticks": []}

    @ab.callable
    async def start(self, seconds: float) -> str:
        return (await self.schedule_every(seconds, "tick", key="ticker")).id

    async def tick(self):
        self.set_state({"ticks": [*self.state["ticks"], self.now() - T0]})
        await self.schedule_every(60, "tick", key="ticker")


# -- item 1: on_start schedules do not pile up ---------------------------------------------
async def test_on_start_schedules_make_one_row_however_often_the_agent_wakes(rt, clock):
    ref = rt.get(Waker, "w")
    for _ in range(4):
        assert await ref.ping() == 3
        assert rt.hibernate() == 1
    assert len(ref.schedules()) == 3
    assert sorted(ref.schedules().callback) == ["cron_tick", "follow_up", "tick"]
    await clock.advance(30)
    assert ref.state["ticks"] == 1  # one tick per interval, not one per wake
    await clock.advance(270)
    assert ref.state == {"ticks": 10, "crons": 1}
    assert sorted(ref.schedules().callback) == ["cron_tick", "tick"]  # follow_up ran once


async def test_a_restart_does_not_duplicate_on_start_schedules(tmp_path, clock):
    for _ in range(3):
        rt = ab.Runtime(tmp_path / "store", clock=clock)
        assert await rt.get(Waker, "w").ping() == 3
        await rt.aclose()


async def test_a_refused_duplicate_is_announced_and_returns_the_existing_schedule(rt, clock):
    got = []
    rt.events.subscribe(got.append, types=["schedule:*"])
    ref = rt.get(Planner, "p")
    first = await ref.every(30, {"a": 1, "b": 2})
    again = await ref.every(30, {"b": 2, "a": 1})  # the same payload, keys in another order
    assert again == first
    assert len(ref.schedules()) == 1
    assert [e["type"] for e in got] == ["schedule:create", "schedule:duplicate"]
    assert got[1]["payload"]["id"] == first and got[1]["payload"]["callback"] == "run"
    assert ref.history(limit=1).outcome[0] == "ok"  # a duplicate is no error


async def test_every_kind_compares_its_own_timing(rt, clock):
    ref = rt.get(Planner, "kinds")
    assert await ref.every(30) == await ref.every_td(30)  # 30 s and timedelta(seconds=30)
    assert await ref.every(30) != await ref.every(60)
    assert await ref.cron("*/5 * * * *") == await ref.cron("  */5 *  * * * ")
    assert await ref.cron("*/5 * * * *") != await ref.cron("*/5 * * * *", tz="Europe/Paris")
    assert await ref.cron("*/5 * * * *") != await ref.cron("*/10 * * * *")
    assert await ref.on_date(T0 + 600) == await ref.on_date(T0 + 600)
    assert await ref.on_date(T0 + 600) != await ref.on_date(T0 + 700)
    assert await ref.delay(600) != await ref.on_date(T0 + 600)  # a delay and a date are two kinds
    assert await ref.every(30, {"x": 1}) != await ref.every(30, {"x": 2})
    assert len(ref.schedules()) == 10


async def test_a_delay_is_identified_by_its_seconds_and_keeps_its_first_due_time(rt, clock):
    ref = rt.get(Planner, "delays")
    first = await ref.delay(300, {"ticket": 1})
    await clock.advance(100)
    assert await ref.delay(300, {"ticket": 1}) == first  # made later: still the same schedule
    assert ref.schedules().time[0].timestamp() == T0 + 300  # its due time did not move
    assert await ref.delay(300, {"ticket": 2}) != first
    assert await ref.delay(250, {"ticket": 1}) != first
    await clock.advance(200)
    assert [r for r in ref.state["ran"] if r[0] == {"ticket": 1}] == [[{"ticket": 1}, 300.0]]
    again = await ref.delay(300, {"ticket": 1})  # the first one ran: this is a new schedule
    assert again != first
    assert await ref.twice(50) == [await ref.delay(50, {"n": 1})] * 2


async def test_idempotent_false_always_adds_a_row(rt, clock):
    ref = rt.get(Planner, "many")
    ids = {await ref.every(30, idempotent=False) for _ in range(3)}
    assert len(ids) == 3 and len(ref.schedules()) == 3
    assert await ref.every(30) in ids  # a default call finds one of them


async def test_queue_is_never_idempotent(rt, clock):
    ref = rt.get(Planner, "q")
    assert await ref.job({"n": 1}) != await ref.job({"n": 1})
    await clock.advance(0)
    assert ref.state["ran"] == [[{"n": 1}, 0.0], [{"n": 1}, 0.0]]


async def test_a_new_retry_policy_updates_the_existing_schedule(rt, clock):
    ref = rt.get(Planner, "retry")
    sid = await ref.every(30, retry=2)
    assert await ref.every(30, retry=5) == sid
    assert await ref.retry_of(sid) == 5


# -- key= ---------------------------------------------------------------------------------
async def test_the_same_key_with_the_same_timing_is_one_schedule(rt, clock):
    ref = rt.get(Planner, "k")
    sid = await ref.every(30, key="heartbeat")
    assert await ref.every(30, key="heartbeat") == sid
    assert await ref.every(30) == sid  # an unkeyed call finds it by its identity too
    assert len(ref.schedules()) == 1


async def test_the_same_key_with_new_timing_or_payload_replaces_the_schedule(rt, clock):
    got = []
    rt.events.subscribe(got.append, types=["schedule:*"])
    ref = rt.get(Planner, "r")
    old = await ref.every(30, {"v": 1}, key="job")
    new = await ref.every(60, {"v": 2}, key="job")
    assert new != old
    [row] = ref.schedules().itertuples()
    assert (row.id, row.interval, row.payload) == (new, 60.0, {"v": 2})
    assert row.time.timestamp() == T0 + 60
    newer = await ref.cron("0 * * * *", {"v": 3}, key="job")  # another kind: replaced too
    [row] = ref.schedules().itertuples()
    assert (row.id, row.type, row.cron) == (newer, "cron", "0 * * * *")
    types = [e["type"] for e in got]
    assert types == ["schedule:create", "schedule:cancel", "schedule:create",
                     "schedule:cancel", "schedule:create"]
    assert got[1]["payload"]["id"] == old and got[2]["payload"]["key"] == "job"
    await clock.advance(hours=1)
    assert ref.state["ran"] == [[{"v": 3}, 3600.0]]
    await ref.rewind(ref.version - 2)  # time travel restores the replaced schedule
    assert list(ref.schedules().id) == [new]


async def test_different_keys_are_different_schedules(rt, clock):
    ref = rt.get(Planner, "keys")
    assert await ref.every(30, key="a") != await ref.every(30, key="b")
    assert len(ref.schedules()) == 2


async def test_key_options_are_checked(rt, clock):
    ref = rt.get(Planner, "bad")
    with pytest.raises(ScheduleError, match="idempotent=False"):
        await ref.every(30, key="a", idempotent=False)
    for bad in ("", 5):
        with pytest.raises(ScheduleError, match="key"):
            await ref.every(30, key=bad)
    assert ref.schedules().empty


async def test_a_one_shot_can_schedule_itself_again_from_its_callback(rt, clock):
    plain, keyed = rt.get(Poller, "plain"), rt.get(Poller, "keyed")
    await plain.start()
    await keyed.start("poll")
    await clock.advance(minutes=5)
    assert plain.state["polls"] == 5 and keyed.state["polls"] == 5
    assert len(plain.schedules()) == 1 and len(keyed.schedules()) == 1


async def test_a_recurring_job_can_change_its_own_interval_by_key(rt, clock):
    ref = rt.get(Ticker, "t")
    first = await ref.start(30)
    await clock.advance(30 + 60 + 60)
    assert ref.state["ticks"] == [30.0, 90.0, 150.0]  # then every 60 s, as its callback said
    [row] = ref.schedules().itertuples()
    assert row.id != first and row.interval == 60.0


async def test_an_old_store_gains_the_identity_columns(tmp_path):
    path = str(tmp_path / "old.db")
    conn = apsw.Connection(path)
    for index, (name, sql) in enumerate(MIGRATIONS[:8]):
        with conn:
            conn.execute(sql)
            conn.execute("INSERT INTO _ab_migrations(name, applied) VALUES (?, 0)", (name,))
            conn.execute(f"PRAGMA user_version={index + 1}")
    conn.close()
    store = AgentStore(path)
    columns = {r[1] for r in store.conn.execute("PRAGMA table_info(_ab_schedules)")}
    assert {"ident", "key"} <= columns
    store.close()


# -- item 5: settle runs what is due now ------------------------------------------------
async def test_settle_runs_queued_work_on_a_virtual_clock(rt, clock):
    ref = rt.get(Planner, "settle")
    await ref.job({"n": 1})
    await rt.settle()
    assert ref.state["ran"] == [[{"n": 1}, 0.0]]
    assert ref.schedules().empty


async def test_settle_runs_timers_due_at_the_current_virtual_instant(rt, clock):
    ref = rt.get(Planner, "due")
    await ref.delay(60, {"n": 1})
    await ref.delay(120, {"n": 2})
    clock.set(T0 + 60)  # time moved without firing anything
    await rt.settle()
    assert ref.state["ran"] == [[{"n": 1}, 60.0]]  # what is due ran; the later one waits
    assert len(ref.schedules()) == 1
