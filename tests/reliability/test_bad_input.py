"""Group 5: bad input across the public API, with hypothesis (over 1 000 examples per run).

Every example hands agentbook something wrong - a value that is not JSON (sets, bytes,
NaN, infinities, cycles, lone surrogates, non-str keys, nesting deeper than 200, objects),
an unknown, private or framework method, a payload or state over its limit, malformed
SQL, a bad cron string or time zone, a bad schedule time, interval, callback, retry or
policy, an unknown approval id, a bad agent name, a version that does not exist - through
calls from outside (``ref.call``, ``ref.send``, ``ref.sql``, ``rt.approvals``, ``rt.get``,
time travel) and through the agent API inside a handler (``set_state``, ``kv``,
``schedule``, ``queue``, ``emit``, ``broadcast``, ``request_approval``, ``effect``,
``sql``, ``secrets``, ``ref(...).send``). After each example:

* the caller got a typed error: an ``ab.AgentbookError`` or a ``TypeError``;
* nothing was written: the agent's version and a dump of its whole store are unchanged
  (a handler that took bad input also wrote a row and the state first: all rolled back);
* the runtime is alive: the next valid message works (and no exception reached the
  event loop's handler).

Handlers that *accept* the bad input raise ``Accepted`` afterwards (so nothing commits
either way) and the test decides whether accepting was right (a random string that
happens to be valid SQL or a valid cron string) or a bug.

Edge cases the random strategies rarely reach (each was a bug once, now fixed) have a test
of their own at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import math
import string
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentbook as ab
from agentbook.methods import FRAMEWORK_NAMES

from . import storeutil

LIMIT = 64 * 1024  # max_payload_bytes and max_state_bytes of the runtime under test
SCALE = 1  # examples per test are multiplied by this (10 in the soak variant)
TYPED = (ab.AgentbookError, TypeError)


class Accepted(Exception):
    """Raised by a handler after it accepted a (possibly) bad input."""


class RelVictim(ab.Agent):
    initial_state = {"n": 0}
    pending: Any = None  # the bad value a handler uses (values that can't travel as args)

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT)")

    @ab.callable
    async def ok(self) -> int:
        self.sql("INSERT INTO items(v) VALUES ('ok')")
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def echo(self, value: Any = None, **more: Any) -> None:
        raise Accepted("echo")

    @ab.callable
    async def use(self, where: str) -> None:
        bad = type(self).pending
        self.sql("INSERT INTO items(v) VALUES ('partial')")  # written first: must roll back
        self.set_state({"n": -1})
        await USES[where](self, bad)
        raise Accepted(where)

    @ab.callable
    async def grow(self, size: int) -> None:
        """Set a state of *size* bytes and return: the limit is checked at the return."""
        self.sql("INSERT INTO items(v) VALUES ('partial')")
        self.set_state({"blob": "x" * size})

    @ab.callable
    async def ask(self) -> str:
        return (await self.request_approval("cb", ["x"], summary="real")).id

    async def cb(self, payload: Any = None) -> None:
        pass


USES: dict[str, Callable[[RelVictim, Any], Any]] = {}


def use(name: str) -> Callable:
    def register(fn: Callable) -> Callable:
        async def run(agent: RelVictim, bad: Any) -> None:
            result = fn(agent, bad)
            if asyncio.iscoroutine(result):
                await result
        USES[name] = run
        return fn
    return register


use("state")(lambda a, bad: a.set_state({"x": bad}))
use("kv")(lambda a, bad: a.kv.__setitem__("x", bad))
use("kv_key")(lambda a, bad: a.kv.__setitem__(bad, 1))
use("payload")(lambda a, bad: a.schedule(60, "cb", bad))
use("every_payload")(lambda a, bad: a.schedule_every(60, "cb", bad))
use("queue_payload")(lambda a, bad: a.queue("cb", bad))
use("emit")(lambda a, bad: a.emit("victim:event", value=bad))
use("broadcast")(lambda a, bad: a.broadcast(bad))
use("approval_args")(lambda a, bad: a.request_approval("cb", [bad], summary="s"))
use("effect")(lambda a, bad: a.effect("k", lambda: bad))
use("send")(lambda a, bad: a.ref(RelVictim, "other").send("echo", bad))
use("when")(lambda a, bad: a.schedule(bad, "cb"))
use("interval")(lambda a, bad: a.schedule_every(bad, "cb"))
use("callback")(lambda a, bad: a.schedule(60, bad))
use("queue_callback")(lambda a, bad: a.queue(bad))
use("retry")(lambda a, bad: a.schedule(60, "cb", retry=bad))
use("missed")(lambda a, bad: a.schedule("0 * * * *", "cb", missed=bad))
use("tz")(lambda a, bad: a.schedule("0 * * * *", "cb", tz=bad))
use("cron")(lambda a, bad: a.schedule(bad, "cb"))
use("cancel")(lambda a, bad: a.cancel_schedule(bad))
use("sql")(lambda a, bad: a.sql(bad))
use("sql_readonly")(lambda a, bad: a.sql(bad, readonly=True))
use("sql_param")(lambda a, bad: a.sql("INSERT INTO items(v) VALUES (?)", bad))
use("secret")(lambda a, bad: a.secrets.__setitem__("k", bad))
use("approval_method")(lambda a, bad: a.request_approval(bad, [], summary="s"))
use("approval_expiry")(lambda a, bad: a.request_approval("cb", [], summary="s", expires_in=bad))


# -- the harness ------------------------------------------------------------------------------
class Harness:
    """One runtime (real files, virtual clock) shared by the examples of one test."""

    def __init__(self, folder: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.timeout = 20.0  # real seconds a call may take before it counts as hung
        self.loop_errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))
        self.clock = ab.VirtualClock()
        self.rt = ab.Runtime(folder, clock=self.clock, max_payload_bytes=LIMIT,
                             max_state_bytes=LIMIT, max_queue=1000)
        self.rt.events.subscribe(lambda event: None)  # someone listens: emit checks values
        self.ref = self.rt.get(RelVictim, "v")
        self.run(self.ref.ok())
        self.path = Path(self.rt.path_of(self.ref._ab_key))
        self.examples = self.untyped = self.partial = self.accepted = 0

    def run(self, awaitable: Any) -> Any:
        async def go() -> Any:
            try:  # a real-time guard: a call that never answers fails the test, not CI
                return await asyncio.wait_for(awaitable, self.timeout)
            except asyncio.TimeoutError:
                raise AssertionError("the call never returned (its future was never set)") from None
        return self.loop.run_until_complete(go())

    def snapshot(self) -> tuple[int, dict, list]:
        return (self.ref.version, storeutil.dump(self.path),
                self.rt.catalog.conn.execute("SELECT * FROM approvals ORDER BY id").fetchall())

    def check(self, attempt: Callable[[], Any], *, may_accept: bool = False,
              store_only: bool = False) -> BaseException | None:
        """Run one bad call; check the error, that nothing was written, that the runtime
        goes on. Returns the error (``None`` if the input was accepted)."""
        before = self.snapshot()
        error: BaseException | None = None
        try:
            result = attempt()
            if inspect.isawaitable(result):  # ref calls outside a loop are deferred awaitables
                self.run(result)
        except Accepted:
            self.accepted += 1
        except TYPED as exc:
            error = exc
        except Exception as exc:
            self.untyped += 1
            raise AssertionError(f"untyped error {type(exc).__name__}: {exc}") from exc
        finally:
            self.examples += 1
        after = self.snapshot()
        if store_only:  # a query that succeeded commits a version, and nothing else
            before, after = _without_history(before), _without_history(after)
        if after != before:
            self.partial += 1
            raise AssertionError(f"something was written: {storeutil.diff_tables(before[1], after[1])}")
        if error is None and not may_accept:
            raise AssertionError("bad input was accepted")
        version = self.ref.version
        assert self.run(self.ref.ok()) == self.ref.state["n"]
        assert self.ref.version == version + 1, "the next valid message did not commit"
        assert self.loop_errors == [], self.loop_errors
        return error

    def close(self) -> None:
        self.run(self.rt.aclose())
        self.loop.close()


def _without_history(snapshot: tuple[int, dict, list]) -> tuple:
    _, dump, approvals = snapshot
    return ({k: v for k, v in dump.items() if k not in ("_ab_history", "_ab_state")}, approvals)


@contextmanager
def harness(tmp_path: Path, figure: Callable[..., None] | None, part: str) -> Iterator[Harness]:
    """A :class:`Harness`; its counts become the ``bad_input`` figure unless *figure* is
    ``None``."""
    h = Harness(tmp_path / "store")
    try:
        yield h
    finally:
        if figure is not None:
            figure(f"bad_input:{part}", examples=h.examples,
                   crashes=len(h.loop_errors) + int(h.rt.closed), partial_writes=h.partial,
                   untyped=h.untyped)
        print(f"bad input ({part}): {h.examples} examples, {h.accepted} accepted as valid, "
              f"{h.untyped} untyped, {h.partial} partial writes")
        h.close()


FAST = settings(max_examples=100, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


# -- strategies -------------------------------------------------------------------------------
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=6)

lone_surrogates = st.tuples(st.text(max_size=4), st.integers(0xD800, 0xDFFF), st.text(max_size=4)).map(
    lambda t: t[0] + chr(t[1]) + t[2])
bad_leaves = st.one_of(
    st.sets(st.integers(), max_size=3), st.frozensets(st.integers(), max_size=2),
    st.binary(max_size=8), st.binary(max_size=8).map(bytearray),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.complex_numbers(max_magnitude=10), st.dates(), st.datetimes(), st.decimals(),
    st.builds(object), st.just(print), st.just(RelVictim), lone_surrogates,
    st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none(), st.tuples(st.integers())),
                    st.integers(), min_size=1, max_size=2),
)  # lone surrogates in dict *keys*: see the edge-case test at the end


def _embed(value: Any, leaf: Any, where: int) -> Any:
    """*value* with *leaf* somewhere inside it."""
    if isinstance(value, list):
        return [*value[:where % (len(value) + 1)], leaf, *value[where % (len(value) + 1):]]
    if isinstance(value, dict):
        if value and where % 2:
            key = sorted(value)[where % len(value)]
            return {**value, key: _embed(value[key], leaf, where // 2)}
        return {**value, f"k{where}": leaf}
    return [value, leaf]


def _cycle(value: Any, as_dict: bool) -> Any:
    box: Any = {"v": value} if as_dict else [value]
    if as_dict:
        box["self"] = box
    else:
        box.append(box)
    return [1, {"inner": box}]


def _deep(depth: int, as_dict: bool) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"d": value} if as_dict else [value]
    return value


not_json = st.one_of(
    st.builds(_embed, json_values, bad_leaves, st.integers(0, 50)),
    st.builds(_cycle, json_values, st.booleans()),
    st.builds(_deep, st.integers(202, 3000), st.booleans()),
)


# -- the tests --------------------------------------------------------------------------------
def test_values_that_are_not_json_are_refused_at_the_call(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "arguments") as h:
        @settings(FAST, max_examples=200 * SCALE)
        @given(value=not_json, how=st.sampled_from(["arg", "kwarg", "send", "nested"]))
        def example(value: Any, how: str) -> None:
            if how == "arg":
                call = lambda: h.ref.call("echo", value)  # noqa: E731
            elif how == "kwarg":
                call = lambda: h.ref.call("echo", extra=value)  # noqa: E731
            elif how == "send":
                call = lambda: h.ref.send("echo", value)  # noqa: E731
            else:
                call = lambda: h.ref.echo([{"a": value}])  # noqa: E731
            error = h.check(call)
            assert isinstance(error, ab.JSONValueError), error

        example()


IN_HANDLER = ["state", "kv", "payload", "every_payload", "queue_payload", "emit", "broadcast",
              "approval_args", "effect", "send"]


def test_values_that_are_not_json_are_refused_inside_handlers(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "handler values") as h:
        @settings(FAST, max_examples=200 * SCALE)
        @given(value=not_json, where=st.sampled_from(IN_HANDLER))
        def example(value: Any, where: str) -> None:
            RelVictim.pending = value
            error = h.check(lambda: h.ref.use(where))
            assert isinstance(error, ab.JSONValueError), error

        example()


callable_names = {"ok", "echo", "use", "ask", "grow"}
method_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(sorted(FRAMEWORK_NAMES | {"cb", "__init__", "__class__", "__dict__",
                                              "_ab_rewind", "_ab_instance", "__approve__",
                                              "__tick__", "on_start", "pending", "mro"})),
    st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12).map(lambda s: "_" + s),
).filter(lambda name: name not in callable_names)


def test_unknown_private_and_framework_methods_are_refused(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "methods") as h:
        @settings(FAST, max_examples=150 * SCALE)
        @given(name=method_names, send=st.booleans(), args=st.lists(json_scalars, max_size=2))
        def example(name: str, send: bool, args: list) -> None:
            call = h.ref.send if send else h.ref.call
            error = h.check(lambda: call(name, *args))
            assert isinstance(error, (ab.UnknownMethodError, ab.NotCallableError, ab.UsageError))

        example()


def test_payloads_and_states_over_their_limits_are_refused(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "limits") as h:
        @settings(FAST, max_examples=60 * SCALE)
        @given(size=st.integers(LIMIT + 1, 3 * LIMIT), where=st.sampled_from(["arg", "kwarg", "state"]))
        def example(size: int, where: str) -> None:
            if where == "arg":
                error = h.check(lambda: h.ref.echo("x" * size))
            elif where == "kwarg":
                error = h.check(lambda: h.ref.call("echo", blob=["y" * size]))
            else:
                error = h.check(lambda: h.ref.grow(size))
            assert isinstance(error, ab.LimitError), error

        example()


sql_statements = [
    "INSERT INTO items(v) VALUES ('a')", "UPDATE items SET v = 'b' WHERE id = 1",
    "DELETE FROM items WHERE id > 1", "CREATE TABLE t2(x INTEGER PRIMARY KEY, y)",
    "SELECT count(*) FROM items", "INSERT INTO items(v) SELECT v FROM items",
    "WITH c(x) AS (SELECT 1) INSERT INTO items(v) SELECT x FROM c",
]
garbage = st.sampled_from(["(", ")", "'", '"', ";", "--", "/*", "FROM", "WHERE", "SELECT",
                           "VALUES", ",", "`", "[", "]", "*"])


@st.composite
def malformed_sql(draw: Any) -> str:
    text = draw(st.sampled_from(sql_statements))
    how = draw(st.sampled_from(["cut", "insert", "append", "random"]))
    if how == "cut":
        return text[:draw(st.integers(1, len(text) - 1))]
    if how == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + " " + draw(garbage) + " " + text[at:]
    if how == "append":
        return text + "; " + draw(st.text(max_size=10))
    return draw(st.text(max_size=40))


def test_malformed_sql_is_a_typed_error_and_writes_nothing(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "sql") as h:
        @settings(FAST, max_examples=200 * SCALE)
        @given(query=malformed_sql(),
               where=st.sampled_from(["sql", "sql_readonly", "outside"]))
        def example(query: str, where: str) -> None:
            if where == "outside":  # ref.sql: a read-only query on the last commit
                h.check(lambda: h.ref.sql(query), may_accept=True)
                return
            RelVictim.pending = query
            h.check(lambda: h.ref.use(where), may_accept=True)

        example()


def test_bad_parameters_secrets_and_keys_are_refused(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "parameters") as h:
        @settings(FAST, max_examples=60 * SCALE)
        @given(value=bad_leaves.filter(lambda v: not isinstance(v, (float, bytes, str))),
               where=st.sampled_from(["sql_param", "secret", "kv_key"]))
        def example(value: Any, where: str) -> None:
            if where == "sql_param" and isinstance(value, bytearray):
                where = "kv_key"  # a blob is a good SQL parameter, but not a JSON value
            RelVictim.pending = value
            h.check(lambda: h.ref.use(where))

        example()


cron_field = st.one_of(st.sampled_from(["*", "*/5", "0", "59", "1-5", "MON", "JAN", "L", "?"]),
                       st.text(alphabet="0123456789*/,-#LW?abc ", min_size=1, max_size=5))
bad_cron = st.one_of(
    st.lists(cron_field, min_size=1, max_size=8).map(" ".join),
    st.text(max_size=20),
    st.sampled_from(["61 * * * *", "* 25 * * *", "* * 32 * *", "* * * 13 *", "* * * * 8",
                     "0 0 30 2 *", "0 0 31 2 *", "*/0 * * * *", "@reboot", "@hourly", "",
                     "* * * * * *", "1,,2 * * * *", "\x00 * * * *"]),
)


def _is_valid_cron(text: str) -> bool:
    from agentbook.schedule.policy import ScheduleError, next_cron

    try:
        next_cron(text, 1_767_225_600.0, None)
        return True
    except ScheduleError:
        return False


def _is_valid_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
        return True
    except Exception:
        return False


def test_bad_cron_strings_and_time_zones_are_refused(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "cron") as h:
        @settings(FAST, max_examples=150 * SCALE)
        @given(value=st.one_of(bad_cron.map(lambda c: ("cron", c)),
                               st.one_of(st.text(max_size=12), st.integers(), st.none(),
                                         st.sampled_from(["Mars/Olympus", "../etc/passwd",
                                                          "UTC\x00", "Europe/"])).map(
                                   lambda z: ("tz", z))))
        def example(value: tuple[str, Any]) -> None:
            where, bad = value
            RelVictim.pending = bad
            valid = where == "cron" and _is_valid_cron(bad)
            if where == "tz" and (bad is None or isinstance(bad, str)):
                valid = bad is None or _is_valid_zone(bad)
            error = h.check(lambda: h.ref.use(where), may_accept=valid)
            assert valid or isinstance(error, (ab.ScheduleError, TypeError))

        example()


now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
bad_times = st.one_of(
    st.floats(max_value=-1e-6), st.integers(max_value=-1),
    st.sampled_from([math.nan, math.inf, -math.inf, True, False, None, b"60", [60], {"s": 60}]),
    st.datetimes(max_value=dt.datetime(2025, 12, 31), timezones=st.just(dt.timezone.utc)),
    st.timedeltas(max_value=dt.timedelta(seconds=-1)),
    st.text(alphabet="abcxyz!? ", min_size=1, max_size=10),
)
bad_intervals = st.one_of(
    st.floats(max_value=0), st.integers(max_value=0),
    st.sampled_from([math.nan, math.inf, True, None, "60", [60]]),
    st.timedeltas(max_value=dt.timedelta(0)),
)
bad_callbacks = st.one_of(st.sampled_from(["", "nope", "_private", "__init__", "set_state", "sql",
                                           "on_start", "_ab_rewind", "schedule"]),
                          st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2))
bad_retries = st.one_of(st.integers(max_value=0), st.floats(),
                        st.sampled_from([{"nope": 1}, {"max_attempts": 0}, {"base": -1},
                                         {"base": "x"}, [3], "3", object()]))
bad_missed = st.one_of(st.text(max_size=6).filter(lambda s: s not in ("once", "skip", "all")),
                       st.none(), st.integers())


def test_bad_schedule_times_intervals_callbacks_and_policies_are_refused(tmp_path: Path,
                                                                         figure) -> None:
    with harness(tmp_path, figure, "schedules") as h:
        @settings(FAST, max_examples=150 * SCALE)
        @given(value=st.one_of(bad_times.map(lambda v: ("when", v)),
                               bad_intervals.map(lambda v: ("interval", v)),
                               bad_callbacks.map(lambda v: ("callback", v)),
                               bad_callbacks.map(lambda v: ("queue_callback", v)),
                               bad_retries.map(lambda v: ("retry", v)),
                               bad_missed.map(lambda v: ("missed", v)),
                               st.text(max_size=12).map(lambda v: ("cancel", v)),
                               st.sampled_from(["_nope", "__init__", "sql", ""]).map(
                                   lambda v: ("approval_method", v)),
                               st.one_of(st.floats(max_value=0), st.text(max_size=3)).map(
                                   lambda v: ("approval_expiry", v))))
        def example(value: tuple[str, Any]) -> None:
            where, bad = value
            RelVictim.pending = bad
            valid = where == "when" and isinstance(bad, str) and _is_valid_cron(bad)
            h.check(lambda: h.ref.use(where), may_accept=valid)

        example()


def test_unknown_approval_ids_names_and_versions_are_refused(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "ids") as h:
        real = h.run(h.ref.ask())
        ids = st.one_of(st.text(max_size=24), st.integers(-2**63, 2**63 - 1), st.none(),
                        st.integers(0, len(real) - 1).map(lambda i: real[:i] + real[i + 1:]),
                        st.just(real.upper()), st.just(real + " "))
        names = st.one_of(st.just(""), st.text(min_size=201, max_size=240),
                          st.text(max_size=8).map(lambda s: s + "/x"),
                          st.text(max_size=8).map(lambda s: s + "\x00"), lone_surrogates,
                          st.integers(), st.none())
        versions = st.one_of(st.integers(min_value=10_000), st.integers(max_value=-10_000),
                             st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4),
                             st.none(),
                             st.lists(st.integers(), max_size=2))

        @settings(FAST, max_examples=120 * SCALE)
        @given(value=st.one_of(ids.map(lambda v: ("approve", v)), ids.map(lambda v: ("reject", v)),
                               ids.map(lambda v: ("get", v)), names.map(lambda v: ("name", v)),
                               versions.map(lambda v: ("at", v)), versions.map(lambda v: ("rewind", v)),
                               versions.map(lambda v: ("fork", v)), versions.map(lambda v: ("diff", v))))
        def example(value: tuple[str, Any]) -> None:
            what, bad = value
            if what == "fork" and bad is None:
                return  # fork(at=None) forks the newest version: not bad input
            calls: dict[str, Callable[[], Any]] = {
                "approve": lambda: h.rt.approvals.approve(bad),
                "reject": lambda: h.rt.approvals.reject(bad, "no"),
                "get": lambda: h.rt.approvals.get(bad),
                "name": lambda: h.rt.get(RelVictim, bad),
                "at": lambda: h.ref.at(bad),
                "rewind": lambda: h.ref.rewind(bad),
                "fork": lambda: h.ref.fork("forked", at=bad),
                "diff": lambda: h.ref.diff(bad),
            }
            h.check(calls[what])
            assert h.rt.approvals.get(real).status == "pending"

        example()


def test_ten_megabyte_payloads_and_full_queues_are_refused_with_default_limits(tmp_path: Path) -> None:
    async def main() -> None:
        rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock(), max_queue=5)
        ref = rt.get(RelVictim, "big")
        await ref.ok()
        before = storeutil.dump(rt.path_of(ref._ab_key))
        ten_mb = "x" * (10 << 20)
        with pytest.raises(ab.LimitError, match="max_payload_bytes"):
            await ref.echo(ten_mb)
        with pytest.raises(ab.LimitError):
            ref.send("echo", {"blob": ten_mb})
        with pytest.raises(ab.LimitError, match="max_state_bytes"):
            await ref.grow(20 << 20)  # over the default max_state_bytes (16 MB)
        sent = []
        with pytest.raises(ab.LimitError, match="max_queue"):
            for _ in range(10):  # nothing runs until this loop yields: the queue fills up
                sent.append(ref.call("ok"))
        assert len(sent) == 5
        assert await asyncio.gather(*sent) == [2, 3, 4, 5, 6]
        assert storeutil.diff_tables(before, storeutil.dump(rt.path_of(ref._ab_key))) == [
            "_ab_history", "_ab_state", "items"]
        await rt.aclose()

    asyncio.run(main())


RANDOM_TESTS = [
    test_values_that_are_not_json_are_refused_at_the_call,
    test_values_that_are_not_json_are_refused_inside_handlers,
    test_unknown_private_and_framework_methods_are_refused,
    test_payloads_and_states_over_their_limits_are_refused,
    test_malformed_sql_is_a_typed_error_and_writes_nothing,
    test_bad_parameters_secrets_and_keys_are_refused,
    test_bad_cron_strings_and_time_zones_are_refused,
    test_bad_schedule_times_intervals_callbacks_and_policies_are_refused,
    test_unknown_approval_ids_names_and_versions_are_refused,
]


@pytest.mark.soak
@pytest.mark.parametrize("test", RANDOM_TESTS, ids=[t.__name__[5:] for t in RANDOM_TESTS])
def test_bad_input_soak(tmp_path: Path, figure, test: Callable, monkeypatch) -> None:
    """Every random test above with ten times the examples (``-m soak``)."""
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 10)
    test(tmp_path, figure)


# -- edge cases (each was a bug the suite found) ----------------------------------------------
def test_delays_too_far_in_the_future_are_a_schedule_error(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "far future") as h:
        for where, bad in (("when", 1e20), ("interval", 1e20), ("when", 10**400)):
            RelVictim.pending = bad
            h.check(lambda where=where: h.ref.use(where))


def test_an_interval_too_small_to_move_the_clock_is_refused(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "tiny interval") as h:
        RelVictim.pending = 1e-300
        h.check(lambda: h.ref.use("interval"))


def test_integers_too_long_for_json_text_are_a_json_value_error(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "huge int") as h:
        h.check(lambda: h.ref.echo(10**5000))


def test_a_lone_surrogate_in_a_key_is_refused_and_never_hangs_the_caller(tmp_path: Path,
                                                                        figure) -> None:
    with harness(tmp_path, figure, "surrogate key") as h:
        h.timeout = 2.0
        h.check(lambda: h.ref.echo({"\ud800": 0}))


@pytest.mark.parametrize("where", ["sql_param", "approval_id"])
def test_an_integer_too_big_for_sqlite_is_an_sql_error(tmp_path: Path, figure, where: str) -> None:
    with harness(tmp_path, figure, "big int param") as h:
        RelVictim.pending = 2**64
        if where == "sql_param":
            h.check(lambda: h.ref.use("sql_param"))
        else:  # rt.approvals.get(2**64): the id is bound into the catalog's query
            h.check(lambda: h.rt.approvals.get(2**64))


@pytest.mark.parametrize("params", [(), (1, 2), ({"a": 1},)], ids=["none", "two", "dict"])
def test_wrong_parameter_bindings_are_an_sql_error(tmp_path: Path, figure, params: tuple) -> None:
    with harness(tmp_path, figure, "bindings") as h:
        error = h.check(lambda: h.ref.sql("SELECT * FROM items WHERE id = ?", *params))
        assert isinstance(error, ab.SQLError), error


@pytest.mark.parametrize("text", ["SELECT 1 \x00", "SELECT '\ud800'"], ids=["nul", "surrogate"])
@pytest.mark.parametrize("where", ["sql", "sql_readonly", "outside"])
def test_sql_text_that_sqlite_cannot_take_is_an_sql_error(tmp_path: Path, figure, where: str,
                                                          text: str) -> None:
    with harness(tmp_path, figure, "sql text") as h:
        RelVictim.pending = text
        call = (lambda: h.ref.sql(text)) if where == "outside" else (lambda: h.ref.use(where))
        error = h.check(call)
        assert isinstance(error, ab.SQLError), error


@pytest.mark.parametrize("version", [math.inf, math.nan])
def test_rewind_to_a_version_that_is_not_a_number_is_a_typed_error(tmp_path: Path, figure,
                                                                   version: float) -> None:
    with harness(tmp_path, figure, "rewind inf") as h:
        error = h.check(lambda: h.ref.rewind(version))
        assert isinstance(error, ab.VersionNotFoundError), error


class _EvilKey:
    def __repr__(self) -> str:
        raise RuntimeError("repr of a key")

    def __hash__(self) -> int:
        return 1


def test_a_key_whose_repr_raises_is_still_a_json_value_error(tmp_path: Path, figure) -> None:
    with harness(tmp_path, figure, "evil key") as h:
        h.check(lambda: h.ref.echo({_EvilKey(): 1}))


def test_emit_checks_its_values_even_when_nobody_listens(tmp_path: Path) -> None:
    """``emit`` of a non-JSON value is refused whether or not anyone subscribes to events:
    the same handler must not commit or fail depending on whether a widget is open."""

    async def main() -> bool:
        rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
        ref = rt.get(RelVictim, "quiet")
        RelVictim.pending = {1, 2}
        try:
            await ref.use("emit")
        except Accepted:
            return False
        except ab.JSONValueError:
            return True
        finally:
            await rt.aclose()
        return False

    assert asyncio.run(main()), "emit accepted a non-JSON value because nobody listened"
