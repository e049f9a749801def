"""Messages a handler sends commit with it (SPEC 2.3) and arrive exactly once (2.9).

``ref.send`` from a handler writes a row of the sender's ``_ab_outbox`` in the handler's
transaction; the output gate delivers it after the commit; the receiver remembers its
number with the handler it ran and skips it if it comes again; its commit deletes the row.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import apsw
import pytest

import agentbook as ab
from agentbook.core import outputgate
from agentbook.store import open_reader

CHILD = textwrap.dedent('''
    import asyncio, json, os, signal, sys
    import agentbook as ab

    class OutLedger(ab.Agent):
        async def on_start(self):
            self.sql("CREATE TABLE IF NOT EXISTS got(id INTEGER)")

        async def record(self, i):
            self.sql("INSERT INTO got VALUES (?)", i)

    class OutHub(ab.Agent):
        @ab.callable
        async def transfer(self, i):
            self.ref(OutLedger, "ledger").send("record", i)
            return "committed"

    async def main():
        folder, mode = sys.argv[1], sys.argv[2]
        rt = ab.Runtime(folder)
        if mode == "check":
            await rt.settle()
            ledger = rt.get(OutLedger, "ledger")
            print(json.dumps(sorted(ledger.sql("SELECT id FROM got")["id"].tolist())), flush=True)
            await rt.aclose()
            return
        hub = rt.get(OutHub, "hub")
        for i in json.loads(mode):
            print("ack", i, await hub.transfer(i), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)   # right after the acknowledgement

    asyncio.run(main())
''')


def _child(tmp_path, folder, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "outbox_child.py"
    script.write_text(CHILD)
    return subprocess.run([sys.executable, str(script), str(folder), mode], capture_output=True,
                          text=True, timeout=60, cwd=os.getcwd())


def test_a_send_acknowledged_just_before_a_kill_arrives_after_the_restart(tmp_path):
    folder = tmp_path / "rt"
    done = _child(tmp_path, folder, "[1, 2, 3]")
    assert done.returncode == -9, done.stderr
    assert done.stdout.split("\n")[:3] == ["ack 1 committed", "ack 2 committed",
                                           "ack 3 committed"]
    check = _child(tmp_path, folder, "check")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == [1, 2, 3]
    hub = open_reader(str(folder / "agents" / "OutHub" / "hub.db"))
    assert hub.execute("SELECT count(*) FROM _ab_outbox").fetchall() == [(0,)]


class Ledger(ab.Agent):
    initial_state = {"got": []}

    @ab.callable
    async def record(self, i):
        self.set_state({"got": [*self.state["got"], i]})


class Hub(ab.Agent):
    initial_state = {"sent": 0}

    async def on_start(self):
        self.ref(Ledger, "boot").send("record", "hello")

    @ab.callable
    async def transfer(self, i, fail=False):
        self.ref(Ledger, "ledger").send("record", i)
        self.set_state({"sent": self.state["sent"] + 1})
        if fail:
            raise ValueError("no")
        return "committed"

    @ab.callable
    async def quiet(self):
        self.set_state({"sent": self.state["sent"]})

    @ab.callable
    async def ask(self, i):
        return await self.ref(Ledger, "ledger").call("record", i)


def _outbox(rt, key) -> list:
    conn = open_reader(rt.path_of(key))
    try:
        return conn.execute("SELECT seq, class, name, method, args FROM _ab_outbox").fetchall()
    finally:
        conn.close()


def _seen(rt, key) -> list:
    conn = open_reader(rt.path_of(key))
    try:
        return conn.execute("SELECT sender, seq FROM _ab_inbox_seen").fetchall()
    finally:
        conn.close()


async def test_sends_arrive_once_and_leave_nothing_behind(tmp_path):
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    hub = rt.get(Hub, "hub")
    for i in range(20):
        assert await hub.transfer(i) == "committed"
    await rt.settle()
    assert rt.get(Ledger, "ledger").state["got"] == list(range(20))
    assert _outbox(rt, ("Hub", "hub")) == []
    assert len(_seen(rt, ("Ledger", "ledger"))) <= 2  # forgotten below the low-water mark
    await rt.aclose()


async def test_on_start_sends_are_delivered_too(tmp_path):
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    await rt.get(Hub, "hub").quiet()
    await rt.settle()
    assert rt.get(Ledger, "boot").state["got"] == ["hello"]
    await rt.aclose()


async def test_a_failed_handler_sends_nothing(tmp_path):
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    hub = rt.get(Hub, "hub")
    await hub.transfer(1)
    with pytest.raises(ValueError):
        await hub.transfer(2, fail=True)
    await rt.settle()
    assert rt.get(Ledger, "ledger").state["got"] == [1]
    assert _outbox(rt, ("Hub", "hub")) == []
    await rt.aclose()


async def test_unacknowledged_rows_are_delivered_again_at_start_and_skipped_once_seen(
        tmp_path, monkeypatch):
    """The window between the receiver's commit and the sender's delete: the rows stay,
    the next runtime delivers them again, the receiver skips what it ran."""
    folder = tmp_path / "rt"
    rt = ab.Runtime(folder, clock=ab.VirtualClock())
    hub = rt.get(Hub, "hub")
    with monkeypatch.context() as patch:
        patch.setattr("agentbook.core.mailbox.acknowledge", lambda rt, acks: None)
        for i in range(5):
            await hub.transfer(i)
        await rt.settle()
        assert len(_outbox(rt, ("Hub", "hub"))) == 5 + 1  # (and on_start's)
    await rt.aclose()

    rt = ab.Runtime(folder, clock=ab.VirtualClock())
    await rt.settle()  # the timer index wakes the hub; its first batch delivers them
    assert rt.get(Ledger, "ledger").state["got"] == list(range(5))
    # the first life's on_start message once, and the one on_start sent at this wake
    assert rt.get(Ledger, "boot").state["got"] == ["hello", "hello"]
    assert _outbox(rt, ("Hub", "hub")) == []
    # and then new messages still go through (numbers keep growing)
    await rt.get(Hub, "hub").transfer(5)
    await rt.settle()
    assert rt.get(Ledger, "ledger").state["got"] == list(range(6))
    await rt.aclose()


async def test_a_sender_woken_again_delivers_what_it_still_holds_first(tmp_path, monkeypatch):
    """Hibernating between the commit and the acknowledgement: the row is delivered again
    at the next wake, before anything new, and runs once."""
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    hub = rt.get(Hub, "hub")
    await hub.quiet()
    await rt.settle()
    with monkeypatch.context() as patch:
        patch.setattr("agentbook.core.mailbox.acknowledge", lambda rt, acks: None)
        await hub.transfer(1)
        await rt.settle()
    rt.hibernate()
    await hub.transfer(2)
    await rt.settle()
    assert rt.get(Ledger, "ledger").state["got"] == [1, 2]
    assert _outbox(rt, ("Hub", "hub")) == []
    await rt.aclose()


async def test_a_handler_that_sends_nothing_writes_no_outbox_row_or_index_entry(tmp_path):
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    ref = rt.get(Ledger, "solo")
    ref.send("record", 1)   # from a cell: straight into the mailbox, as before
    await rt.settle()
    assert ref.state["got"] == [1]
    assert rt.catalog.timers() == []
    assert outputgate._senders.get(rt) is None
    await rt.aclose()


async def test_rewind_and_fork_never_send_again(tmp_path):
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    hub = rt.get(Hub, "hub")
    await hub.transfer(1)
    await hub.transfer(2)
    await rt.settle()
    await hub.rewind(1)
    fork = await hub.fork("hub-fork")
    await rt.settle()
    assert rt.get(Ledger, "ledger").state["got"] == [1, 2]
    assert _outbox(rt, fork._ab_key) == []
    await rt.aclose()


async def test_an_awaited_call_is_committed_by_the_callee_before_the_caller_gets_it(tmp_path):
    """Awaited calls do not go through the outbox (the handler needs the answer before it
    can commit): the callee's commit comes first, so an acknowledged caller never loses
    one."""
    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    hub = rt.get(Hub, "hub")
    await hub.ask(7)
    conn = apsw.Connection(rt.path_of(("Ledger", "ledger")), flags=apsw.SQLITE_OPEN_READONLY)
    assert json.loads(conn.execute("SELECT state FROM _ab_state").fetchall()[0][0]) == {"got": [7]}
    conn.close()
    assert _outbox(rt, ("Hub", "hub")) == []
    await rt.aclose()


async def test_a_message_to_itself(tmp_path):
    class Selfish(ab.Agent):
        initial_state = {"n": 0}

        @ab.callable
        async def kick(self):
            self.ref(Selfish, self.name).send("bump")

        async def bump(self):
            self.set_state({"n": self.state["n"] + 1})

    rt = ab.Runtime(tmp_path / "rt", clock=ab.VirtualClock())
    ref = rt.get(Selfish, "me")
    await asyncio.gather(*(ref.kick() for _ in range(3)))
    await rt.settle()
    assert ref.state["n"] == 3
    assert _outbox(rt, ref._ab_key) == []
    await rt.aclose()


# -- a schedule whose failure can't be recorded (issue 18) ------------------------------
RUNS = {"n": 0}


class Filler(ab.Agent):
    @ab.callable
    async def setup(self):
        self.sql("CREATE TABLE IF NOT EXISTS junk(x)")
        await self.schedule_every(1, "tick")

    @ab.callable
    async def fill(self, size):
        self.sql("INSERT INTO junk VALUES (zeroblob(?))", size)

    async def tick(self):
        RUNS["n"] += 1
        self.sql("INSERT INTO junk VALUES (zeroblob(4000))")


async def test_a_schedule_whose_failure_cant_be_recorded_backs_off_and_says_so(tmp_path, caplog):
    clock = ab.VirtualClock()
    rt = ab.Runtime(tmp_path / "rt", clock=clock, max_store_bytes=64 * 1024)
    ref = rt.get(Filler, "full")
    await ref.setup()
    for size in (8000, 4000, 2000, 1000, 500, 250, 120, 60, 30, 10, 1):
        for _ in range(200):  # fill the store to its last byte
            try:
                await ref.fill(size)
            except ab.StoreFullError:
                break
    events = []
    rt.events.subscribe(events.append, types=["schedule:error"])
    RUNS["n"] = 0
    with caplog.at_level("WARNING", logger="agentbook"):
        await asyncio.wait_for(clock.advance(60), 30)
    # before: re-run at once, ~1 000 times a second of real time, forever, silently
    assert 1 <= RUNS["n"] <= 12, RUNS["n"]
    unrecorded = [r for r in caplog.records if "could not be recorded" in r.getMessage()]
    assert len(unrecorded) == 1
    assert events and all(e["payload"]["reason"] == "unrecorded" for e in events)
    assert len(events) == RUNS["n"]
    await rt.aclose()
