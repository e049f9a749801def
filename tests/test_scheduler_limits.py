"""The bounds of delays and intervals, and the cached cron parsing, on the virtual clock."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import agentbook as ab
from agentbook.schedule.policy import (
    MAX_SECONDS,
    MIN_INTERVAL,
    ScheduleError,
    check_interval,
    next_after_run,
    next_cron,
    resolve_when,
    takes_payload,
)


class Ticker(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def after(self, seconds: float) -> str:
        return (await self.schedule(seconds, "tick")).id

    @ab.callable
    async def every(self, seconds: float) -> str:
        return (await self.schedule_every(seconds, "tick")).id

    async def tick(self) -> None:
        self.set_state({"n": self.state["n"] + 1})


@pytest.mark.parametrize("delay", [1e20, 10**400, MAX_SECONDS * 1.01])
def test_a_delay_past_the_maximum_is_a_schedule_error(delay: float) -> None:
    with pytest.raises(ScheduleError, match="too long: the most is 31557600000"):
        resolve_when(delay, 1.7e9, None)


@pytest.mark.parametrize("interval", [1e-300, 0.0009, 1e20, 10**400, timedelta.max])
def test_an_interval_out_of_bounds_is_a_schedule_error(interval: object) -> None:
    with pytest.raises(ScheduleError, match="too (short|long)"):
        check_interval(interval)


def test_the_bounds_themselves_are_accepted() -> None:
    assert check_interval(MIN_INTERVAL) == MIN_INTERVAL
    assert check_interval(timedelta(days=365)) == 365 * 86400.0
    assert resolve_when(MAX_SECONDS, 1.7e9, None) == ("delayed", 1.7e9 + MAX_SECONDS, None)


async def test_a_bad_delay_or_interval_writes_nothing(rt: ab.Runtime) -> None:
    ref = rt.get(Ticker, "t")
    for call in (lambda: ref.after(1e20), lambda: ref.every(1e20), lambda: ref.every(1e-300)):
        with pytest.raises(ScheduleError):
            await call()
    assert ref.version == 0 and ref.schedules().empty


async def test_a_one_millisecond_interval_moves_the_clock(rt: ab.Runtime,
                                                          clock: ab.VirtualClock) -> None:
    ref = rt.get(Ticker, "t")
    await ref.every(MIN_INTERVAL)
    await clock.advance(seconds=0.01)
    assert 9 <= ref.state["n"] <= 11


def test_an_interval_that_would_pass_the_year_9999_ends() -> None:
    end = datetime(9999, 12, 30, tzinfo=timezone.utc).timestamp()
    assert next_after_run("interval", end, end, None, 7 * 86400.0, None, "once") is None


def test_cached_cron_parsing_gives_the_same_ticks_as_a_fresh_croniter() -> None:
    rng = random.Random(7)
    exprs = ["*/5 * * * *", "0 2 * * *", "30 1 * * 0", "0 */3 * * 1-5", "15 2 * 3,11 *",
             "0 0 L * *"]
    zones = [None, "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]
    for _ in range(500):
        expr, tz = rng.choice(exprs), rng.choice(zones)
        after = rng.uniform(1.6e9, 1.9e9)
        zone = timezone.utc if tz is None else ZoneInfo(tz)
        fresh = croniter(expr, datetime.fromtimestamp(after, zone)).get_next(float)
        assert next_cron(expr, after, tz) == fresh, (expr, tz, after)


@pytest.mark.parametrize("expr", ["61 * * * *", "every day", "* * * * * *"])
def test_a_bad_cron_string_stays_an_error_every_time(expr: str) -> None:
    for _ in range(2):  # a failed parse is not cached
        with pytest.raises(ScheduleError):
            next_cron(expr, 1.7e9, None)


def test_a_time_zone_that_is_not_a_name_is_a_schedule_error() -> None:
    with pytest.raises(ScheduleError, match="time zone name"):
        next_cron("0 * * * *", 1.7e9, ["Europe/Paris"])  # type: ignore[arg-type]


def test_takes_payload_is_cached_per_function() -> None:
    def with_payload(self, payload): ...

    def without(self): ...

    assert takes_payload(with_payload) and not takes_payload(without)
    hits = takes_payload.cache_info().hits
    assert takes_payload(with_payload)
    assert takes_payload.cache_info().hits == hits + 1
