"""Schedules, queues and retries: durable rows in each agent's own store.

A schedule is a row in the agent's ``_ab_schedules`` table, written in the same
transaction as the handler that created it. When it is due, the runtime's timer wakes the
agent (hibernated or not) and the callback runs as an ordinary handler whose commit also
advances (or deletes) the schedule row, so each occurrence's effects commit exactly once.
The callback can read ``self.occurrence.id``: stable across retries of one occurrence, for
idempotent calls to the outside world.

Failure policy: the occurrence is retried with exponential backoff and deterministic
jitter (:class:`Retry`), each failed attempt recorded as a version with outcome
``"retry"``; after the last attempt it goes to the agent's dead-letter list (outcome
``"dead"``), which ``rt.dead_letters()`` lists and ``rt.retry_dead_letter`` /
``rt.drop_dead_letter`` act on. Other schedules are never held up by a failing one.

Missed recurring ticks (the process was down, or the clock jumped): by default a cron or
interval schedule runs **once** for everything it missed and then re-arms at its next tick
after now (``missed="once"``); ``missed="skip"`` runs nothing for missed ticks;
``missed="all"`` runs every missed tick in order. One-shot schedules that became overdue
fire once.

Schedules are idempotent (SPEC §2.11): a schedule's :func:`identity` is its callback, kind,
timing as asked (a delay's seconds, a date, a cron string and zone, an interval) and payload.
Making a schedule whose identity is already pending returns the pending one, unless
``idempotent=False``; ``key=`` names a schedule, and the same key with another identity
replaces it. Queued work is never idempotent: two ``queue()`` calls are two jobs.

Cron strings have five fields and are evaluated in UTC unless ``tz=`` names a zone.
Delays and intervals are at most :data:`MAX_SECONDS` (1 000 years); intervals are at
least :data:`MIN_INTERVAL` (1 ms), so every occurrence moves the clock forward.
"""

from __future__ import annotations

import hashlib
import inspect
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..errors import ScheduleError
from ..methods import FRAMEWORK_NAMES, method_info
from ..store import schedules as rows
from ..store.schedules import ROW_SQL, ScheduleRow  # ROW_SQL: for callers of the old name

if TYPE_CHECKING:
    import apsw

    from ..store import AgentStore

__all__ = ["ROW_SQL", "Occurrence", "Retry", "Schedule", "ScheduleError"]

MISSED_POLICIES = ("once", "skip", "all")
#: The longest delay or interval, in seconds: 1 000 years.
MAX_SECONDS = 1000 * 365.25 * 86400
#: The shortest interval, in seconds: 1 ms.
MIN_INTERVAL = 0.001
#: The latest due time a schedule can have (epoch seconds): the end of the year 9999.
MAX_DUE = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class Retry:
    """How a failing scheduled or queued callback is retried.

    Attributes:
        max_attempts: Attempts in all, the first included (1 = never retry).
        base: Delay before the first retry, in seconds; doubles each attempt.
        max_delay: Upper bound of one delay, in seconds.
        jitter: Spread delays between 50 % and 100 % of the backoff (deterministic per
            occurrence and attempt, so replays repeat).
    """

    max_attempts: int = 3
    base: float = 1.0
    max_delay: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base < 0 or self.max_delay < 0:
            raise ScheduleError("Retry needs max_attempts >= 1 and non-negative delays")

    def delay(self, attempt: int, key: str) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based)."""
        backoff = min(self.max_delay, self.base * (2 ** (attempt - 1)))
        if not self.jitter:
            return backoff
        digest = hashlib.blake2b(f"{key}:{attempt}".encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        return backoff * (0.5 + 0.5 * fraction)

    def to_json(self) -> str:
        return jsonvalue.dumps([self.max_attempts, self.base, self.max_delay, self.jitter])

    @classmethod
    def from_json(cls, text: str | None) -> Retry:
        if not text:
            return cls()
        a, b, m, j = jsonvalue.loads(text)
        return cls(a, b, m, j)

    @classmethod
    def coerce(cls, value: Retry | dict | int | None) -> Retry:
        if value is None:
            return cls()
        if isinstance(value, Retry):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_attempts=value)
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as exc:
                raise ScheduleError(f"bad retry options {value!r}: {exc}") from None
        raise ScheduleError(f"retry must be an ab.Retry, a dict or an int, not {value!r}")


@dataclass(frozen=True)
class Schedule:
    """A pending schedule (as returned by ``schedule``, ``get_schedules``).

    ``type`` is ``"delayed"``, ``"scheduled"`` (a date), ``"cron"``, ``"interval"`` or
    ``"queue"``; ``time`` is when it is next due.
    """

    id: str
    callback: str
    payload: Any
    type: str
    time: datetime
    cron: str | None = None
    interval: float | None = None
    attempt: int = 0
    occurrence: int = 0
    missed: str = "once"
    retry: Retry = field(default_factory=Retry)
    last_error: str | None = None

    @property
    def due(self) -> float:
        """Epoch seconds of :attr:`time`."""
        return self.time.timestamp()


@dataclass(frozen=True)
class Occurrence:
    """The scheduled occurrence a handler is running for (``self.occurrence``).

    Attributes:
        id: ``"<schedule id>:<n>"``, the same for every retry of this occurrence.
        schedule_id: The schedule's id.
        attempt: 1 for the first try, 2 for the first retry...
        due: When this occurrence was due (epoch seconds).
        type: The schedule's type.
    """

    id: str
    schedule_id: str
    attempt: int
    due: float
    type: str


def row_to_schedule(row: ScheduleRow) -> Schedule:
    """A :class:`Schedule` from a stored :class:`~agentbook.store.schedules.ScheduleRow`."""
    return Schedule(row.id, row.callback, jsonvalue.loads(row.payload), row.type,
                    datetime.fromtimestamp(row.due, timezone.utc), row.cron, row.interval,
                    row.attempt, row.occurrence, row.missed, Retry.from_json(row.retry),
                    row.last_error)


def new_id() -> str:
    """A short random schedule id."""
    return secrets.token_hex(6)


def resolve_when(when: Any, now: float, tz: str | None) -> tuple[str, float, str | None]:
    """``(type, due, cron)`` for a ``when`` given to ``schedule``.

    Raises:
        ScheduleError: negative delays, dates in the past, bad cron strings.
    """
    if isinstance(when, bool):
        raise ScheduleError("when must be seconds, a timedelta, a datetime or a cron string")
    if isinstance(when, (int, float)):
        if when != when or when < 0 or when == float("inf"):
            raise ScheduleError(f"a delay must be a finite number of seconds >= 0, not {when!r}")
        if when > MAX_SECONDS:
            raise ScheduleError(f"a delay of {_short(when)} seconds is too long: the most is "
                                f"{MAX_SECONDS:.0f} (1 000 years); pick a nearer time")
        return "delayed", now + float(when), None
    if isinstance(when, timedelta):
        return resolve_when(when.total_seconds(), now, tz)
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.astimezone()  # naive means the machine's local time
        due = when.timestamp()
        if due < now - 1e-6:
            raise ScheduleError(
                f"{when.isoformat()} is in the past (now is "
                f"{datetime.fromtimestamp(now, timezone.utc).isoformat()}); pick a later time "
                "or a delay in seconds"
            )
        return "scheduled", due, None
    if isinstance(when, str):
        return "cron", next_cron(when, now, tz), when.strip()
    raise ScheduleError(
        f"when must be seconds, a timedelta, a datetime or a cron string, not {type(when).__name__}"
    )


def check_interval(seconds: Any) -> float:
    """The interval of ``schedule_every`` in seconds, checked.

    Raises:
        ScheduleError: not a number, not finite, shorter than :data:`MIN_INTERVAL` or
            longer than :data:`MAX_SECONDS`.
    """
    interval = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
            or not interval > 0 or interval == float("inf"):
        raise ScheduleError(f"an interval must be a positive number of seconds, not {_short(seconds)}")
    if interval < MIN_INTERVAL:
        raise ScheduleError(f"an interval of {interval!r} seconds is too short: the least is "
                            f"{MIN_INTERVAL} (1 ms)")
    if interval > MAX_SECONDS:
        raise ScheduleError(f"an interval of {_short(interval)} seconds is too long: the most "
                            f"is {MAX_SECONDS:.0f} (1 000 years)")
    return float(interval)


def _short(value: Any) -> str:
    """``repr`` of a number, cut short (an int can have thousands of digits)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}~10**{int(value.bit_length() * 0.30103)}"
    return repr(value)


def next_cron(expr: str, after: float, tz: str | None) -> float:
    """The first tick of cron *expr* strictly after *after* (epoch seconds)."""
    if tz is not None and not isinstance(tz, str):
        raise ScheduleError(f"tz is a time zone name like 'Europe/Paris', not {tz!r}")
    return _next_tick(expr.strip(), after, tz)


@lru_cache(maxsize=4096)
def _next_tick(expr: str, after: float, tz: str | None) -> float:
    """:func:`next_cron`, remembered: agents that share a cron string fire at the same
    instants and ask for the same next tick."""
    cron, lock = _parsed_cron(expr, tz)
    try:
        start = datetime.fromtimestamp(after, cron.tzinfo)
        with lock:  # the parsed croniter is shared: get_next sets its current time
            return float(cron.get_next(float, start_time=start))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ScheduleError(f"{expr!r} is not a valid cron string: {exc}") from None


@lru_cache(maxsize=512)
def _parsed_cron(expr: str, tz: str | None) -> tuple[Any, threading.Lock]:
    """A parsed croniter for *expr* in zone *tz* (parsing is most of a firing's cost), and
    the lock that guards its state. Bad strings raise, so they are never cached."""
    from croniter import croniter

    if len(expr.split()) != 5:
        raise ScheduleError(
            f"{expr!r} is not a five-field cron string (minute hour day month weekday), "
            "e.g. '*/5 * * * *' or '0 2 * * *'"
        )
    zone = _zone(tz)
    try:
        return croniter(expr, datetime.fromtimestamp(0, zone)), threading.Lock()
    except (ValueError, KeyError, TypeError) as exc:
        raise ScheduleError(f"{expr!r} is not a valid cron string: {exc}") from None


def _zone(tz: str | None) -> Any:
    if tz is None:
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {tz!r}; use a name like 'Europe/Paris'") from None


def next_after_run(type_: str, due: float, now: float, cron: str | None, interval: float | None,
                   tz: str | None, missed: str) -> float | None:
    """When a recurring schedule is next due after an occurrence at *due* ran at *now*."""
    if type_ == "cron":
        assert cron is not None
        if missed == "all":
            return next_cron(cron, due, tz)
        return next_cron(cron, max(due, now), tz)
    if type_ == "interval":
        assert interval is not None
        if missed == "all":
            nxt = due + interval
        else:
            nxt = max(due + interval, now + interval) if now > due + interval else due + interval
        return nxt if nxt <= MAX_DUE else None  # no tick after the year 9999: it ends
    return None


def was_missed(type_: str, due: float, now: float, cron: str | None, interval: float | None,
               tz: str | None) -> bool:
    """Whether a later tick of a recurring schedule had already passed at *now*."""
    if type_ == "cron":
        assert cron is not None
        return next_cron(cron, due, tz) <= now
    if type_ == "interval":
        assert interval is not None
        return due + interval <= now
    return False


# -- operations on an agent's store (called from Agent methods inside a handler) ---------
def check_callback(cls: type, callback: Any, payload: Any) -> None:
    """Refuse callbacks that don't exist, are private or framework methods, or can't take
    the payload."""
    if not isinstance(callback, str):
        raise ScheduleError(f"the callback is a method name (a str), not {callback!r}")
    fn, _ = method_info(cls, callback)
    if fn is None:
        raise ScheduleError(f"{cls.__name__} has no method {callback!r} to schedule")
    if callback.startswith("_") or callback in FRAMEWORK_NAMES:
        raise ScheduleError(
            f"{cls.__name__}.{callback} is private or part of the framework; schedule a public "
            "method of your agent"
        )
    if payload is not None and not takes_payload(fn):
        raise ScheduleError(
            f"{cls.__name__}.{callback}() takes no payload; add a parameter or drop the payload"
        )


@lru_cache(maxsize=4096)
def takes_payload(fn: Any) -> bool:
    """Whether method *fn* takes a positional argument after ``self`` (cached per function:
    ``inspect.signature`` is slow)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def check_options(missed: str, due: float) -> None:
    """Refuse a bad ``missed`` policy or a due time past the year 9999.

    Raises:
        ScheduleError: nothing is written.
    """
    if missed not in MISSED_POLICIES:
        raise ScheduleError(f"missed must be one of {MISSED_POLICIES}, not {missed!r}")
    if not due <= MAX_DUE:
        raise ScheduleError(f"a schedule due at epoch {due!r} is past the year 9999, the latest "
                            "a schedule can be due; pick a nearer time")


def identity(type_: str, callback: str, payload: Any, timing: float | str,
             tz: str | None = None) -> str:
    """The identity of a schedule (SPEC §2.11): a digest of its callback, kind, timing and
    (already frozen) payload. Equal payloads give equal digests whatever their key order.

    *timing* is what the user asked for, not when it falls due: the delay in seconds
    (``"delayed"``), the epoch seconds of the date (``"scheduled"``), the cron string with
    its fields separated by single spaces and its zone *tz* (``"cron"``), the interval in
    seconds (``"interval"``). So ``schedule(300, ...)`` made now and a minute later is one
    schedule, and ``schedule_every(30, ...)`` and ``schedule_every(timedelta(seconds=30),
    ...)`` are one schedule. Retry and ``missed`` policies are options, not identity.
    """
    spec = " ".join(timing.split()) if isinstance(timing, str) else float(timing)
    text = jsonvalue.canonical([type_, callback, spec, tz, payload])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def insert(store: AgentStore, type_: str, due: float, callback: str, payload: Any, now: float, *,
           cron: str | None = None, interval: float | None = None, tz: str | None = None,
           retry: Retry | None = None, missed: str = "once", ident: str | None = None,
           key: str | None = None) -> Schedule:
    """Check and write one schedule row (inside the running handler's transaction).

    *ident* is the schedule's :func:`identity` (``None`` for queued work and approval
    expiries, which are never idempotent), *key* the name given with ``key=``.

    Raises:
        ScheduleError: a bad ``missed`` policy, interval or due time; nothing is written.
        JSONValueError: *payload* is not JSON.
    """
    check_options(missed, due)
    if interval is not None:
        interval = check_interval(interval)
    payload = jsonvalue.freeze(payload, "payload")
    retry = retry or Retry()
    sid = new_id()
    rows.insert(store, sid, callback, jsonvalue.dumps(payload), type_, due, cron=cron,
                interval=interval, tz=tz, missed=missed, retry=retry.to_json(), created=now,
                ident=ident, key=key)
    return Schedule(sid, callback, payload, type_, datetime.fromtimestamp(due, timezone.utc),
                    cron, interval, 0, 0, missed, retry, None)


def select(conn: apsw.Connection, type: str | None = None, time_range: tuple | None = None,
           id: str | None = None) -> list[Schedule]:
    """Schedules from a connection, soonest first, filtered by type, due range or id."""
    start, end = time_range if time_range is not None else (None, None)
    found = rows.select(conn, type=type, id=id,
                        start=None if start is None else _epoch(start),
                        end=None if end is None else _epoch(end))
    return [row_to_schedule(r) for r in found]


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.astimezone()).timestamp()
    return float(value)
