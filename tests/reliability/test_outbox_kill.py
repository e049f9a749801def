"""The outbox kill group (TESTING.md, "Kill right after an acknowledged send"; issue 18).

A child process opens ``ab.Runtime(folder)`` and calls ``Hub.transfer(i)`` a few times; each
transfer sends ``Ledger.record(i)`` from the handler and returns ``"committed"``. The child
prints each acknowledgement and SIGKILLs itself right after the last one - at once, or
after a few turns of the event loop, so the kill lands before the ledger ran the message,
after it committed but before the hub's row was deleted, or after both. The next child
reopens the folder (the timer index wakes the hub, which delivers what its outbox still
holds before anything new). At the end a last process settles and reads the ledger:

* every acknowledged transfer is recorded exactly once (0 lost, 0 duplicated);
* nothing is recorded that was never sent;
* the hub's outbox is empty and the ledger's memory of seen messages is small.

Figures: ``outbox_kill`` (cycles, acknowledged, lost, duplicated, left in the outbox).
Set ``AGENTBOOK_CRASH_SEED`` to replay a run with the same random choices.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import apsw

CYCLES = 120
BUDGET = 50.0  # seconds: stop starting cycles after this (the group stays bounded)

CHILD = textwrap.dedent('''
    import asyncio, json, os, signal, sys
    import agentbook as ab

    class KillLedger(ab.Agent):
        async def on_start(self):
            self.sql("CREATE TABLE IF NOT EXISTS got(id INTEGER)")

        async def record(self, i):
            self.sql("INSERT INTO got VALUES (?)", i)

    class KillHub(ab.Agent):
        initial_state = {"sent": 0}

        @ab.callable
        async def transfer(self, i):
            self.ref(KillLedger, "ledger").send("record", i)
            self.set_state({"sent": self.state["sent"] + 1})
            return "committed"

    async def main():
        folder, plan = sys.argv[1], json.loads(sys.argv[2])
        rt = ab.Runtime(folder)
        if plan == "check":
            await rt.settle()
            got = rt.get(KillLedger, "ledger").sql("SELECT id FROM got")["id"].tolist()
            print(json.dumps(got), flush=True)
            await rt.aclose()
            return
        hub = rt.get(KillHub, "hub")
        ids, turns = plan
        for i in ids:
            print("ack", i, await hub.transfer(i), flush=True)
        for _ in range(turns):   # 0: killed before the ledger ran anything
            await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
''')


def _run(script, folder, plan) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), str(folder), json.dumps(plan)],
                          capture_output=True, text=True, timeout=60)


def test_kill_right_after_an_acknowledged_send(tmp_path, figure):
    seed = int(os.environ.get("AGENTBOOK_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    script = tmp_path / "outbox_kill_child.py"
    script.write_text(CHILD)
    folder = tmp_path / "rt"
    acknowledged: list[int] = []
    sent = 0
    cycles = 0
    t0 = time.monotonic()
    while cycles < CYCLES and time.monotonic() - t0 < BUDGET:
        ids = list(range(sent, sent + rng.randint(1, 4)))
        sent += len(ids)
        done = _run(script, folder, [ids, rng.choice([0, 0, 1, 2, 3, 5, 8, 20])])
        assert done.returncode == -9, (seed, done.stderr[-2000:])
        for line in done.stdout.splitlines():
            word, i, result = line.split()
            assert word == "ack" and result == "committed", (seed, line)
            acknowledged.append(int(i))
        cycles += 1
    check = _run(script, folder, "check")
    assert check.returncode == 0, (seed, check.stderr[-2000:])
    got = collections.Counter(json.loads(check.stdout))
    lost = [i for i in acknowledged if got[i] == 0]
    duplicated = [i for i, n in got.items() if n > 1]
    never_sent = [i for i in got if not 0 <= i < sent]
    hub = apsw.Connection(str(folder / "agents" / "KillHub" / "hub.db"),
                          flags=apsw.SQLITE_OPEN_READONLY)
    try:
        left = hub.execute("SELECT count(*) FROM _ab_outbox").fetchall()[0][0]
    except apsw.SQLError:  # (a store from before the outbox)
        left = -1
    hub.close()
    ledger = apsw.Connection(str(folder / "agents" / "KillLedger" / "ledger.db"),
                             flags=apsw.SQLITE_OPEN_READONLY)
    try:
        seen = ledger.execute("SELECT count(*) FROM _ab_inbox_seen").fetchall()[0][0]
    except apsw.SQLError:
        seen = -1
    check_ok = ledger.execute("PRAGMA quick_check").fetchall()[0][0]
    ledger.close()
    seconds = time.monotonic() - t0
    figure("outbox_kill", cycles=cycles, acknowledged=len(acknowledged), lost=len(lost),
           duplicated=len(duplicated), never_sent=len(never_sent), left_in_outbox=left,
           seen_kept=seen, seconds=round(seconds, 1), seed=seed)
    print(f"\noutbox kill group: {cycles} cycles, {len(acknowledged)} acknowledged sends: "
          f"{len(lost)} lost, {len(duplicated)} duplicated, {len(never_sent)} never sent, "
          f"{left} left in the outbox, {seen} seen ids kept, {seconds:.1f} s (seed {seed})")
    assert cycles >= 50, (seed, cycles)
    assert lost == [] and duplicated == [] and never_sent == [], (seed, lost, duplicated)
    assert left == 0 and check_ok == "ok"
    assert seen <= 8, seen
