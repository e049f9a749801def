"""Schedules, queues, retries and dead letters, on the virtual clock."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone

import pytest

import agentbook as ab
from agentbook.schedule.policy import Retry, ScheduleError

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


class Reminder(ab.Agent):
    initial_state = {"fired": [], "occurrences": []}

    @ab.callable
    async def remind_in(self, when, text: str, retry: int = 3) -> str:
        if isinstance(when, str) and when.startswith("date:"):
            when = datetime.fromisoformat(when[5:])
        sched = await self.schedule(when, "fire", {"text": text}, retry=retry)
        return sched.id

    @ab.callable
    async def every(self, seconds: float, text: str) -> str:
        return (await self.schedule_every(seconds, "fire", {"text": text})).id

    @ab.callable
    async def cron(self, expr: str, text: str, missed: str = "once") -> str:
        return (await self.schedule(expr, "fire", {"text": text}, missed=missed)).id

    @ab.callable
    async def cancel(self, sid: str) -> None:
        await self.cancel_schedule(sid)

    @ab.callable
    async def pending(self) -> list:
        return [s.id for s in self.get_schedules()]

    @ab.callable
    async def bad(self, kind: str):
        if kind == "cron":
            await self.schedule("61 * * * *", "fire")
        elif kind == "cron-fields":
            await self.schedule("every day", "fire")
        elif kind == "negative":
            await self.schedule(-5, "fire")
        elif kind == "past":
            await self.schedule(datetime(2020, 1, 1, tzinfo=timezone.utc), "fire")
        elif kind == "missing":
            await self.schedule(5, "no_such_method")
        elif kind == "private":
            await self.schedule(5, "_hidden")
        elif kind == "framework":
            await self.schedule(5, "set_state")
        elif kind == "payload":
            await self.schedule(5, "fire", {"bad": {1, 2}})
        elif kind == "interval":
            await self.schedule_every(-1, "fire")
        elif kind == "no-payload-param":
            await self.schedule(5, "tick", {"x": 1})

    async def fire(self, payload):
        occ = self.occurrence
        self.set_state({
            "fired": [*self.state["fired"], [payload["text"], self.now()]],
            "occurrences": [*self.state["occurrences"], occ.id],
        })

    async def tick(self):
        pass

    def _hidden(self):
        pass


async def test_a_delayed_schedule_fires_once_at_its_time(rt, clock):
    ref = rt.get(Reminder, "r")
    sid = await ref.remind_in(300, "follow up")
    assert list(ref.schedules().id) == [sid]
    await clock.advance(299)
    assert ref.state["fired"] == []
    await clock.advance(1)
    assert ref.state["fired"] == [["follow up", T0 + 300]]
    await clock.advance(hours=1)
    assert len(ref.state["fired"]) == 1
    assert ref.schedules().empty
    row = ref.history(limit=1).iloc[0]
    assert row.method == "fire" and row.source == f"schedule:{sid}" and row.outcome == "ok"
    assert row.args == [{"text": "follow up"}]


async def test_timedelta_and_datetime_work_and_naive_means_local_time(rt, clock):
    ref = rt.get(Reminder, "dates")
    await ref.remind_in(timedelta(minutes=2).total_seconds(), "td")
    at = datetime.fromtimestamp(T0 + 600, timezone.utc)
    await ref.remind_in("date:" + at.isoformat(), "aware")
    naive_local = datetime.fromtimestamp(T0 + 900)  # local wall time, no tzinfo
    await ref.remind_in("date:" + naive_local.isoformat(), "naive")
    await clock.advance(hours=1)
    assert [f[0] for f in ref.state["fired"]] == ["td", "aware", "naive"]
    assert [f[1] for f in ref.state["fired"]] == [T0 + 120, T0 + 600, T0 + 900]


async def test_cron_fires_on_every_tick_and_intervals_repeat(rt, clock):
    ref = rt.get(Reminder, "c")
    await ref.cron("*/5 * * * *", "cron")
    await ref.every(600, "every")
    await clock.advance(hours=1)
    fired = ref.state["fired"]
    cron_times = [t for text, t in fired if text == "cron"]
    every_times = [t for text, t in fired if text == "every"]
    assert cron_times == [T0 + 300 * i for i in range(1, 13)]
    assert every_times == [T0 + 600 * i for i in range(1, 7)]
    occ = [o for o in ref.state["occurrences"]]
    assert len(set(occ)) == len(occ) == 18


async def test_cancel_removes_a_schedule_and_unknown_ids_are_refused(rt, clock):
    ref = rt.get(Reminder, "cancel")
    keep = await ref.remind_in(60, "keep")
    drop = await ref.remind_in(60, "drop")
    await ref.cancel(drop)
    with pytest.raises(ScheduleError, match="no pending schedule"):
        await ref.cancel("nope")
    assert await ref.pending() == [keep]
    await clock.advance(120)
    assert [f[0] for f in ref.state["fired"]] == ["keep"]


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("cron", "not a valid cron"),
        ("cron-fields", "five-field"),
        ("negative", ">= 0"),
        ("past", "in the past"),
        ("missing", "no method"),
        ("private", "private"),
        ("framework", "framework"),
        ("interval", "positive"),
        ("no-payload-param", "takes no payload"),
    ],
)
async def test_bad_schedules_fail_at_the_call_and_store_nothing(rt, kind, match):
    ref = rt.get(Reminder, "bad")
    await ref.pending()
    version = ref.version
    with pytest.raises(ScheduleError, match=match):
        await ref.bad(kind)
    assert ref.schedules().empty
    assert ref.version == version
    assert await ref.pending() == []


async def test_a_non_json_payload_is_a_type_error_naming_its_path(rt):
    ref = rt.get(Reminder, "payload")
    with pytest.raises(ab.JSONValueError, match=r"payload\['bad'\]"):
        await ref.bad("payload")
    assert ref.schedules().empty


class Worker(ab.Agent):
    initial_state = {"done": [], "attempts": {}}
    flaky_until: dict[str, int] = {}

    @ab.callable
    async def enqueue(self, items: list, attempts: int = 3) -> list:
        return [(await self.queue("work", item, retry=Retry(max_attempts=attempts, base=10,
                                                             jitter=False))).id for item in items]

    async def work(self, item):
        occ = self.occurrence
        attempts = dict(self.state["attempts"])
        attempts[item] = attempts.get(item, 0) + 1
        # this write must be rolled back when the attempt fails
        self.set_state({**self.state, "attempts": attempts})
        if type(self).flaky_until.get(item, 0) >= occ.attempt:
            raise ConnectionError(f"{item} failed on attempt {occ.attempt} ({occ.id})")
        self.set_state({**self.state, "done": [*self.state["done"], [item, occ.id, occ.attempt]]})


async def test_queue_runs_fifo_and_a_failing_item_does_not_block_the_others(rt, clock):
    Worker.flaky_until = {"b": 1}  # b fails its first attempt only
    ref = rt.get(Worker, "w")
    events = []
    rt.events.subscribe(events.append, types=["queue:*"])
    await ref.enqueue(["a", "b", "c"])
    await clock.advance(0)
    done = ref.state["done"]
    assert [d[0] for d in done] == ["a", "c"]
    assert ref.state["attempts"] == {"a": 1, "c": 1}, "the failed attempt's writes remained"
    await clock.advance(10)  # base delay, no jitter
    done = ref.state["done"]
    assert [d[0] for d in done] == ["a", "c", "b"]
    b = done[2]
    assert b[2] == 2 and b[1].endswith(":0")  # second attempt, same occurrence id
    assert [e["type"] for e in events].count("queue:retry") == 1
    hist = ref.history(limit=20)
    # newest first: b (2nd try), c, b (1st try, retry), a, enqueue
    assert list(hist.outcome) == ["ok", "ok", "retry", "ok", "ok"]


async def test_work_that_always_fails_is_dead_lettered_and_can_be_retried_or_dropped(rt, clock):
    Worker.flaky_until = {"x": 99, "y": 99}
    ref = rt.get(Worker, "dl")
    errors = []
    rt.events.subscribe(errors.append, types=["queue:error"])
    await ref.enqueue(["x", "y"], attempts=3)
    await clock.advance(hours=1)
    letters = rt.dead_letters()
    assert sorted(letters.payload) == ["x", "y"]
    assert set(letters.attempts) == {3} and letters.error.str.contains("ConnectionError").all()
    assert len(errors) == 2
    assert ref.schedules().empty
    # delays were 10 s then 20 s (exponential, no jitter)
    retries = ref.history(limit=20, failures=False)
    x_times = sorted(retries[retries.args.astype(str) == "['x']"].ts)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(x_times)] == [10, 20]
    x_id = letters[letters.payload == "x"].id.iloc[0]
    y_id = letters[letters.payload == "y"].id.iloc[0]
    Worker.flaky_until = {}
    await rt.retry_dead_letter(x_id)
    await rt.drop_dead_letter(y_id)
    await clock.advance(1)
    assert [d[0] for d in ref.state["done"]] == ["x"]
    assert rt.dead_letters().empty
    with pytest.raises(ScheduleError):
        await rt.retry_dead_letter(x_id)


def test_backoff_grows_exponentially_with_bounded_deterministic_jitter():
    policy = Retry(max_attempts=10, base=2, max_delay=60)
    delays = [policy.delay(n, "s:0") for n in range(1, 8)]
    assert delays == [policy.delay(n, "s:0") for n in range(1, 8)]  # deterministic
    for n, d in enumerate(delays, start=1):
        full = min(60, 2 * 2 ** (n - 1))
        assert full / 2 <= d <= full
    assert Retry(jitter=False, base=1).delay(3, "k") == 4


async def test_schedule_events_use_cloudflare_names(rt, clock):
    got = []
    rt.events.subscribe(got.append, types=["schedule:*"])
    ref = rt.get(Reminder, "ev")
    sid = await ref.remind_in(5, "one")
    other = await ref.remind_in(50, "two")
    await ref.cancel(other)
    await clock.advance(10)
    assert [e["type"] for e in got] == ["schedule:create", "schedule:create", "schedule:cancel",
                                        "schedule:execute"]
    assert got[-1]["payload"]["id"] == sid and got[-1]["payload"]["occurrence"] == f"{sid}:0"


async def test_many_hibernated_agents_are_woken_on_time(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "many", clock=clock, max_open=50)
    n = 200
    for i in range(n):
        await rt.get(Reminder, f"a{i}").remind_in(60 + i % 7, f"t{i}")
    rt.hibernate()
    assert len(rt.open_stores) == 0
    await clock.advance(30)
    assert rt.get(Reminder, "a0").state["fired"] == []
    await clock.advance(60)
    for i in range(0, n, 13):
        fired = rt.get(Reminder, f"a{i}").state["fired"]
        assert fired == [[f"t{i}", T0 + 60 + i % 7]]
    assert len(rt.open_stores) <= 50
    await rt.aclose()


@pytest.mark.slow
async def test_ten_thousand_agents_with_schedules_hibernate_and_wake_on_time(clock):
    rt = ab.Runtime(":memory:", clock=clock, max_open=256)
    n = 10_000
    for i in range(n):
        await rt.get(Reminder, f"a{i}").remind_in(3600 + (i % 60), "wake")
    assert len(rt.open_stores) <= 256
    await clock.advance(hours=2)
    late = 0
    for i in range(0, n, 97):
        fired = rt.get(Reminder, f"a{i}").state["fired"]
        assert len(fired) == 1
        late += fired[0][1] != T0 + 3600 + (i % 60)
    assert late == 0
    await rt.aclose()


async def test_real_clock_schedules_fire_without_advancing(tmp_path):
    rt = ab.Runtime(tmp_path / "real")
    done = asyncio.Event()
    rt.events.subscribe(lambda e: done.set(), types=["schedule:execute"])
    ref = rt.get(Reminder, "real")
    await ref.remind_in(0.05, "soon")
    await asyncio.wait_for(done.wait(), timeout=5)
    assert [f[0] for f in ref.state["fired"]] == ["soon"]
    await rt.aclose()
