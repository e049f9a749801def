"""Group 4: a handler that writes everything and then fails leaves the store exactly as
it was; the caller gets the error; the next message works.

``RelAtom.everything`` writes every kind of thing a handler can write - the state, rows
(insert, update, delete, a new table, a dropped table, an altered table), key-value data,
schedules (one-shot, interval, queued, a cancelled one), a message to another agent, a
broadcast, a custom event, an approval request, a secret - and then fails in one of many
ways: an exception of its own, a constraint, a non-JSON state, a state over the limit, a
refused state, a bad cron, a bad approval, a full store (``max_store_bytes``, which is
SQLite's ``max_page_count``), or an exception after it really suspended.

After each, compared with a copy taken before: the store file's bytes (checkpointed into
the main file) and a full logical dump (every table's rows, the schema); the inbox, the
other agent, the event stream and the clock (nothing scheduled runs later) show no trace;
only the failure journal does (and an ``approval:cancel`` event telling an open inbox to
drop the request that was indexed before the commit and rolled back).

Each case runs on an agent that is awake (the file must be byte-for-byte the same) and on
one the failing message wakes: then ``on_start``'s (empty) transaction still commits,
which moves SQLite's file change counter (header bytes 24-27 and 92-95) and nothing else -
every page's content stays the same.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import apsw
import pytest

import agentbook as ab

from . import storeutil

CAP = 256 * 1024  # max_store_bytes for the runtimes here


class PlannedError(Exception):
    """What ``everything(how="raise")`` raises."""


class RelAtomPeer(ab.Agent):
    initial_state = {"notes": []}

    async def note(self, text: str) -> None:
        self.set_state({"notes": [*self.state["notes"], text]})


class RelAtom(ab.Agent):
    initial_state = {"n": 0}
    calls: list[str] = []

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT CHECK (v != 'bad'))")
        self.sql("CREATE TABLE IF NOT EXISTS spare(id INTEGER PRIMARY KEY, v TEXT)")

    def validate_state_change(self, state, source) -> None:
        if state.get("refuse"):
            raise ValueError("refused on purpose")

    @ab.callable
    async def seed(self) -> None:
        self.sql("INSERT INTO items(v) VALUES ('one'), ('two')")
        self.sql("INSERT INTO spare(v) VALUES ('keep')")
        self.kv["seeded"] = True
        self.kv["cancel_me"] = (await self.schedule(3600, "cb", "seeded")).id
        self.secrets["old"] = ab.Secret("sk-old", "old")
        await self.request_approval("cb", ["approve me"], summary="seeded approval")
        self.set_state({"n": 1})

    @ab.callable
    async def ok(self, v: str) -> int:
        self.sql("INSERT INTO items(v) VALUES (?)", v)
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def big(self, size: int) -> None:
        self.sql("INSERT INTO items(v) VALUES (hex(zeroblob(?)))", size // 2)

    @ab.callable
    async def everything(self, how: str) -> None:
        self.set_state({"n": self.state["n"] + 100, "extra": "x"})
        self.sql("INSERT INTO items(v) VALUES ('new')")
        self.sql("UPDATE items SET v = 'changed' WHERE id = 1")
        self.sql("DELETE FROM items WHERE id = 2")
        self.sql("CREATE TABLE fresh(x)")
        self.sql("INSERT INTO fresh VALUES (1), (2)")
        self.sql("DROP TABLE spare")
        self.sql("ALTER TABLE items ADD COLUMN extra TEXT")
        self.kv["k"] = {"a": [1, 2]}
        del self.kv["seeded"]
        await self.schedule(60, "cb", "later")
        await self.schedule_every(30, "cb", "every")
        await self.queue("cb", "queued")
        await self.cancel_schedule(self.kv["cancel_me"])
        self.ref(RelAtomPeer, "peer").send("note", "from atom")
        self.broadcast({"hello": "world"})
        self.emit("atom:custom", x=1)
        await self.request_approval("cb", ["new approval"], summary="never committed")
        self.secrets["api"] = ab.Secret("sk-new", "api")
        del self.secrets["old"]
        await self._fail(how)

    async def _fail(self, how: str) -> None:
        if how == "raise":
            raise PlannedError("fails on purpose")
        if how == "sql":
            self.sql("INSERT INTO items(v) VALUES ('bad')")
        elif how == "json":
            self.set_state({"s": {1, 2}})
        elif how == "limit":
            self.set_state({"blob": "x" * CAP})  # over max_state_bytes: refused at return
        elif how == "rejected":
            self.set_state({"refuse": True})
        elif how == "cron":
            await self.schedule("61 * * * *", "cb")
        elif how == "approval":
            await self.request_approval("_nope", [], summary="x")
        elif how == "full":
            self.sql("INSERT INTO items(v) VALUES (hex(zeroblob(?)))", CAP)
        elif how == "suspend":
            await asyncio.sleep(0)
            raise PlannedError("fails after suspending")

    async def cb(self, payload=None) -> None:
        type(self).calls.append(str(payload))


CASES = {
    "raise": PlannedError, "sql": ab.SQLError, "json": ab.JSONValueError, "limit": ab.LimitError,
    "rejected": ab.StateRejectedError, "cron": ab.ScheduleError, "approval": ab.UsageError,
    "full": ab.StoreFullError, "suspend": PlannedError,
}


async def _seeded(tmp_path: Path) -> tuple[ab.Runtime, ab.VirtualClock, ab.AgentRef, Path]:
    clock = ab.VirtualClock()
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_store_bytes=CAP, max_state_bytes=CAP // 2)
    ref = rt.get(RelAtom, "a")
    await ref.seed()
    rt.hibernate()
    return rt, clock, ref, Path(rt.path_of(ref._ab_key))


def _snapshot(rt: ab.Runtime, path: Path, awake: bool = False) -> tuple[bytes, dict]:
    """The main file's bytes with everything committed checkpointed into it, and a dump."""
    if awake:  # checkpoint from a second connection; the agent keeps its store open
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    else:
        rt.hibernate()  # closes the store: the WAL is checkpointed into the main file
        assert not Path(f"{path}-wal").exists()
    return path.read_bytes(), storeutil.dump(path)


def _without_change_counter(data: bytes) -> bytes:
    return data[:24] + data[28:92] + data[96:]


@pytest.mark.parametrize("awake", [True, False], ids=["awake", "waking"])
@pytest.mark.parametrize("how", list(CASES))
async def test_a_handler_that_writes_everything_then_fails_leaves_nothing(
        tmp_path: Path, how: str, awake: bool, figure) -> None:
    RelAtom.calls = []
    rt, clock, ref, path = await _seeded(tmp_path)
    if awake:
        assert ref.state["n"] == 1
        await ref.ok("awake")  # wakes it; the store stays open from here on
    raw, logical = _snapshot(rt, path, awake)
    approvals = rt.approvals.history().to_dict("records")
    events: list[dict] = []
    rt.events.subscribe(events.append)

    with pytest.raises(CASES[how]) as caught:
        await ref.everything(how)
    if how in ("raise", "suspend"):
        assert "fails" in str(caught.value)

    leaks = []
    raw_after, logical_after = _snapshot(rt, path, awake)
    changed = storeutil.diff_tables(logical, logical_after)
    if changed:
        leaks.append(f"tables {changed}")
    same_bytes = raw_after == raw if awake else (
        _without_change_counter(raw_after) == _without_change_counter(raw))
    if not same_bytes:
        leaks.append("the file's bytes")
    if rt.approvals.history().to_dict("records") != approvals:
        leaks.append("the approval inbox")
    kinds = sorted({e["type"] for e in events
                    if not (e["type"] == "approval:cancel"
                            and e["payload"]["status"] == "rolled back")}
                   - {"rpc:error", "agent:start", "agent:hibernate"})
    if kinds:
        leaks.append(f"events {kinds}")
    await clock.advance(120)  # nothing the handler scheduled or sent may run now
    if RelAtom.calls != []:
        leaks.append(f"callbacks ran: {RelAtom.calls}")
    peer = rt.get(RelAtomPeer, "peer")
    if peer.version != 0 or Path(rt.path_of(peer._ab_key)).exists():
        leaks.append("the message to the other agent")
    failures = ref.failures()
    assert list(failures.method) == ["everything"] and CASES[how].__name__ in failures.error[0]
    figure(f"atomic_failure:{how}", cases=1, changed_stores=int(bool(changed) or not same_bytes),
           leaks=len(leaks))
    assert leaks == [], leaks

    # The next valid message works (a full store needs its cap raised first).
    if how == "full":
        rt.max_store_bytes = None
        rt.hibernate()
    n = ref.state["n"]
    assert await ref.ok("after") == n + 1
    assert ref.verify()["ok"]
    await rt.aclose()


async def test_in_a_batch_only_the_failing_message_is_undone(tmp_path: Path) -> None:
    rt, _, ref, path = await _seeded(tmp_path)
    before = storeutil.dump(path)
    results = await asyncio.gather(ref.ok("first"), ref.everything("raise"), ref.ok("last"),
                                   return_exceptions=True)
    assert results[0] == 2 and isinstance(results[1], PlannedError) and results[2] == 3
    rt.hibernate()
    after = storeutil.dump(path)
    assert storeutil.diff_tables(before, after) == ["_ab_history", "_ab_state", "items"]
    new_items = sorted(set(after["items"]) - set(before["items"]))
    assert [v for _, v in new_items] == ["first", "last"]
    versions = [r[0] for r in sorted(after["_ab_history"])]
    assert versions == list(range(1, len(versions) + 1))
    await rt.aclose()


async def test_a_full_store_is_left_byte_for_byte_and_recovers_when_the_cap_is_raised(
        tmp_path: Path) -> None:
    rt, _, ref, path = await _seeded(tmp_path)
    raw, logical = _snapshot(rt, path)
    with pytest.raises(ab.StoreFullError, match="size cap"):
        await ref.big(2 * CAP)
    assert _snapshot(rt, path) == (raw, logical)
    assert await ref.ok("small") == 2  # there is room for small writes
    rt.max_store_bytes = 16 * CAP  # the row, and its changeset in the history
    rt.hibernate()  # a store takes its cap when it opens
    await ref.big(2 * CAP)
    assert ref.verify()["ok"] and ref.version == 4
    await rt.aclose()


async def test_raising_the_cap_applies_to_an_awake_agent(tmp_path: Path) -> None:
    rt, _, ref, _ = await _seeded(tmp_path)
    with pytest.raises(ab.StoreFullError):
        await ref.big(2 * CAP)
    rt.max_store_bytes = 16 * CAP
    try:
        await ref.big(2 * CAP)  # "raise the size cap and send the message again"
    finally:
        await rt.aclose()


async def test_a_full_store_in_the_middle_of_a_batch_loses_no_acknowledged_message(
        tmp_path: Path) -> None:
    rt, _, ref, path = await _seeded(tmp_path)
    results = await asyncio.gather(ref.ok("a"), ref.big(2 * CAP), ref.ok("c"),
                                   return_exceptions=True)
    acknowledged = [r for r in results if not isinstance(r, BaseException)]
    await rt.aclose()
    after = storeutil.dump(path)
    versions = [r[0] for r in sorted(after["_ab_history"])]
    problems = []
    if versions != list(range(1, len(versions) + 1)):
        problems.append(f"history versions {versions}")
    if after["_ab_state"][0][1] != versions[-1]:
        problems.append(f"_ab_state is at version {after['_ab_state'][0][1]}")
    stored = [v for _, v in after["items"]]
    for value, result in zip(("a", "c"), (results[0], results[2]), strict=True):
        if not isinstance(result, BaseException) and value not in stored:
            problems.append(f"{value!r} was acknowledged ({result}) but is not stored")
    rt2 = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    try:
        for i in range(2):
            await rt2.get(RelAtom, "a").ok(f"next{i}")
    except ab.AgentbookError as exc:
        problems.append(f"after a restart: {type(exc).__name__}: {exc}")
    finally:
        await rt2.aclose()
    assert acknowledged and problems == []
