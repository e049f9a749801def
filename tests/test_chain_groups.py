"""The hash chain with one link per flushed group of history rows (issue 20): a burst's
batch is one link on its last row (``"<sha256>/<k>"``), the rows before it have none; a
message alone is a group of one. Everything verifies, stores with the older per-row links
included, and a change anywhere in a group is found (named by the group's first version)."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest

import agentbook as ab
from agentbook.store.chain import chain_hash, link_rows, verify_chain
from agentbook.store.history import HistoryRow


class Burst(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def inc(self, by: int = 1) -> int:
        if by < 0:
            raise ValueError("no negative steps")
        self.set_state({"n": self.state["n"] + by})
        return self.state["n"]


async def _burst(tmp_path: Path, sends: int = 20) -> tuple[ab.Runtime, ab.AgentRef, Path]:
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Burst, "b")
    await ref.inc()  # version 1 (alone: a per-row link)
    for i in range(sends):
        ref.send("inc", -1 if i == 7 else 1)  # one of them fails on its own
    await ref.inc()
    return rt, ref, Path(rt.path_of(ref._ab_key))


def _chains(path: Path) -> list[tuple[int, str | None]]:
    conn = apsw.Connection(str(path))
    try:
        return [(v, c) for v, c in conn.execute(
            "SELECT version, chain FROM _ab_history ORDER BY version")]
    finally:
        conn.close()


def _verify(path: Path) -> int | None:
    conn = apsw.Connection(str(path))
    try:
        return verify_chain(conn)
    finally:
        conn.close()


async def test_a_burst_is_one_link_and_verifies(tmp_path: Path) -> None:
    rt, ref, path = await _burst(tmp_path)
    assert ref.state["n"] == 1 + 19 + 1, "the failed message stood alone; the others stand"
    chains = _chains(path)
    assert [v for v, _ in chains] == list(range(1, 22)), "no row of the failed message"
    assert chains[0][1] is not None and chains[0][1].endswith("/1")
    assert all(c is None for _, c in chains[1:-1])
    assert chains[-1][1] is not None and chains[-1][1].endswith("/20")
    assert ref.verify() == {"ok": True, "quick_check": "ok", "first_bad_version": None}
    await ref.inc()  # alone again: a group of one
    assert _chains(path)[-1][1].endswith("/1")
    assert ref.verify()["ok"]
    await rt.aclose()


@pytest.mark.parametrize(("damage", "sql", "want"), [
    ("a row's state", "UPDATE _ab_history SET state = '{\"n\":99}' WHERE version = 9", 2),
    ("a row taken out", "DELETE FROM _ab_history WHERE version = 12", 2),
    ("the link's count", "UPDATE _ab_history SET chain = replace(chain, '/20', '/19')"
                         " WHERE version = 21", 2),
    ("the link's hash", "UPDATE _ab_history SET chain = CASE WHEN chain LIKE 'f%' THEN 'e'"
                        " ELSE 'f' END || substr(chain, 2) WHERE version = 21", 2),
])
async def test_a_change_inside_a_group_is_found(tmp_path: Path, damage: str, sql: str,
                                                want: int) -> None:
    rt, _ref, path = await _burst(tmp_path)
    await rt.aclose()
    conn = apsw.Connection(str(path))
    conn.execute(sql)
    conn.close()
    assert _verify(path) == want, f"{damage}: named by the group's first version"


async def test_pruning_inside_a_group_still_verifies(tmp_path: Path) -> None:
    rt, ref, _path = await _burst(tmp_path)
    assert await ref.prune(before=10) == 9
    assert ref.verify()["ok"]
    await rt.aclose()


def _old_store(tmp_path: Path, unchained: int) -> apsw.Connection:
    """A history written the way stores always were: one link per row, after *unchained*
    rows from before the chain existed."""
    conn = apsw.Connection(str(tmp_path / "old.db"))
    conn.execute("CREATE TABLE _ab_meta(key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(f"CREATE TABLE _ab_history({', '.join(HistoryRow._fields)}, chain TEXT)")
    prev = ""
    for v in range(1, 11):
        row = HistoryRow(v, float(v), "inc", "[]", None, "cell", 0.5, "ok", result=str(v),
                         state=f'{{"n":{v}}}')
        link = None if v <= unchained else chain_hash(prev, row)
        prev = link or ""
        conn.execute(f"INSERT INTO _ab_history VALUES ({', '.join('?' * 17)})", (*row, link))
    return conn


def test_stores_written_before_group_links_verify(tmp_path: Path) -> None:
    for unchained in (0, 3):
        conn = _old_store(tmp_path, unchained)
        assert verify_chain(conn) is None
        conn.execute("UPDATE _ab_history SET args = '[1]' WHERE version = 6")
        assert verify_chain(conn) == 6
        conn.close()
        (tmp_path / "old.db").unlink()


def test_a_link_hashes_the_values_not_their_types() -> None:
    class Name(str):
        pass

    row = (1, 2.5, "inc", "[]", None, "cell", 0.1, "ok", None, "1", '{"n":1}', b"\x00",
           None, None, None, None)
    link = link_rows("abc", [row, row])
    assert link.endswith("/2") and len(link) == 64 + 2
    assert link_rows("abc", [row, (1, 2.5, Name("inc"), *row[3:])]) == link
    assert link_rows("abd", [row, row]) != link
    assert link_rows("abc", [row, (*row[:1], 2.50001, *row[2:])]) != link


class HalfDone(ab.Agent):
    """Each message changes the state first; a negative step then raises."""

    initial_state = {"n": 0, "log": []}

    @ab.callable
    async def step(self, by: int) -> int:
        self.set_state({"n": self.state["n"] + by, "log": [*self.state["log"], by]})
        if by < 0:
            raise ValueError(f"no negative steps ({by})")
        return self.state["n"]


async def test_a_failing_message_in_a_burst_of_sends_stands_alone(tmp_path: Path) -> None:
    """The burst's fast path (no savepoint for a handler that writes no SQL, one link per
    batch) still undoes a failed message alone: its state change is gone, its error is on
    record, every other message of the batch committed, and the chain verifies."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(HalfDone, "h")
    await ref.step(1)
    steps = [2, 3, -5, 4, -6, 5]
    for by in steps:
        ref.send("step", by)
    assert await ref.step(10) == 1 + 2 + 3 + 4 + 5 + 10
    assert ref.state == {"n": 25, "log": [1, 2, 3, 4, 5, 10]}, "the failed changes are undone"
    assert ref.version == 6, "one version per message that worked"
    history = ref.history(limit=20)
    failed = history[history.outcome == "error"]
    assert sorted(failed.error.str.contains("no negative steps").tolist()) == [True, True]
    assert sorted(a[0] for a in failed.args) == [-6, -5]
    chains = _chains(Path(rt.path_of(ref._ab_key)))
    assert [v for v, _ in chains] == list(range(1, 7)), "no row of a failed message"
    assert chains[-1][1] is not None and chains[-1][1].endswith("/5"), "the batch: one link"
    assert ref.verify()["ok"]
    await rt.aclose()


class Sink(ab.Agent):
    initial_state = {"got": []}

    @ab.callable
    async def take(self, i: int) -> None:
        self.set_state({"got": [*self.state["got"], i]})


class Mixed(ab.Agent):
    """Handlers of one burst that use what a handler context keeps for after the commit
    (a send, an event, an effect) beside handlers that use none of it."""

    initial_state = {"n": 0}

    @ab.callable
    async def step(self, i: int) -> int:
        if i % 4 == 0:
            self.ref(Sink, "sink").send("take", i)
        elif i % 4 == 1:
            self.emit("step:odd", i=i)
        elif i % 4 == 2:
            await self.effect("roll", lambda: i * 10)
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def poke(self) -> None:
        self.set_state({"n": self.state["n"] + 1000})
        self.state["n"] = 0  # the state is read-only: this raises after set_state


async def test_a_burst_mixing_sends_events_and_effects_keeps_each(tmp_path: Path) -> None:
    """A handler context makes its lists of sends, events and effects on first use: in a
    burst where some handlers use them and the others don't, every send arrives once,
    every event and effect is on record with its own version, and the chain verifies."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Mixed, "m")
    await ref.step(3)
    for i in range(40):
        ref.send("step", i)
    assert await ref.step(3) == 42
    await rt.settle()
    assert sorted(rt.get(Sink, "sink").state["got"]) == list(range(0, 40, 4))
    history = ref.history(limit=100).set_index("version")
    events = rt.sql("SELECT type, payload, version FROM events WHERE name = 'm'"
                    " AND type = 'step:odd'")
    assert sorted(events.version.tolist()) == [2 + i for i in range(1, 40, 4)], \
        "each event with the version of the message that emitted it"
    conn = apsw.Connection(str(rt.path_of(ref._ab_key)))
    try:
        effects = list(conn.execute(
            "SELECT version, effects FROM _ab_history WHERE effects IS NOT NULL"))
    finally:
        conn.close()
    assert [v for v, _ in effects] == [2 + i for i in range(2, 40, 4)]
    assert [json.loads(e) for _, e in effects[:2]] == [[["roll", 20]], [["roll", 60]]]
    assert (history.outcome == "ok").all()
    assert ref.verify()["ok"]
    await rt.aclose()


async def test_a_handler_that_changes_the_read_only_state_in_place_is_undone(
        tmp_path: Path) -> None:
    """set_state, then an in-place change of the (read-only) state: the change raises, and
    the message is undone alone - its set_state too - in the middle of a burst."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Mixed, "p")
    await ref.step(3)
    ref.send("step", 3)
    ref.send("poke")
    ref.send("step", 3)
    assert await ref.step(3) == 4
    assert ref.state == {"n": 4}, "poke's set_state is undone with it"
    history = ref.history(limit=10)
    failed = history[history.outcome == "error"]
    assert failed.method.tolist() == ["poke"] and failed.error.str.contains("read-only").all()
    assert ref.verify()["ok"]
    await rt.aclose()


class Swapped(ab.Agent):
    @ab.callable
    async def ping(self, n: int) -> int:
        return n


async def test_a_method_replaced_after_a_burst_is_checked_again(tmp_path: Path) -> None:
    """Sends check a method's name and marks once per function: the same method replaced
    on its class (not callable any more, or another signature) is checked again."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Swapped, "s")
    for _ in range(3):
        ref.send("ping", 1)
    assert await ref.ping(2) == 2
    with pytest.raises(ab.BadArgumentsError):
        ref.send("ping", 1, 2)
    with pytest.raises(ab.BadArgumentsError):
        ref.send("ping", m=1)

    async def ping(self: Swapped, n: int, m: int) -> int:  # not @ab.callable
        return n + m

    Swapped.ping = ping  # type: ignore[method-assign]
    try:
        with pytest.raises(ab.NotCallableError):
            ref.send("ping", 1, 2)
    finally:
        del Swapped.ping
    await rt.aclose()


async def test_a_burst_with_a_subscriber_gets_every_message_s_live_events(
        tmp_path: Path) -> None:
    """A burst's messages that leave nothing after the commit are not kept until it,
    unless someone listens live: then each message's rpc and state:update events arrive,
    in version order, with the state after that version. Without a subscriber they are
    still on record (the events view)."""
    rt = ab.Runtime(tmp_path / "store", clock=ab.VirtualClock())
    ref = rt.get(Burst, "live")
    await ref.inc()
    for _ in range(30):  # nobody listens: on record only
        ref.send("inc")
    assert await ref.inc() == 32
    got: list[dict] = []
    rt.events.subscribe(got.append, types=["rpc", "state:update"])
    for _ in range(30):
        ref.send("inc")
    assert await ref.inc() == 63
    rpc = [e["payload"]["version"] for e in got if e["type"] == "rpc"]
    states = [e["payload"]["state"]["n"] for e in got if e["type"] == "state:update"]
    assert rpc == list(range(33, 64)), "one live rpc event per message, none before subscribing"
    assert states == list(range(33, 64)), "each with the state after its own version"
    kept = rt.sql("SELECT version FROM events WHERE name = 'live' AND type = 'state:update'"
                  " ORDER BY version")
    assert kept.version.tolist() == list(range(1, 64))
    assert ref.verify()["ok"]
    await rt.aclose()
