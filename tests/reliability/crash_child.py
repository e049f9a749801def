"""The child process of ``tests/reliability/test_crash.py``: runs agents until it is SIGKILLed.

    python crash_child.py FOLDER CYCLE SEED SIGNAL_FD

It opens ``ab.Runtime(FOLDER)`` (durability ``"normal"``) and sends ``Ledger`` agents an
endless random mix of single calls, bursts (``asyncio.gather``, which share one commit
through savepoints), handlers that really suspend half-way, and handlers that write
everything and then fail. It writes one line per event to stdout, each with a single
``write(2)``, so a SIGKILL never leaves half a line:

    send <agent> <id> <parts>      before the call is made
    ack <agent> <id> <n>           after the awaited call returned (after the commit):
                                   n is the agent's count of applied messages
    fail <agent> <id> <Error>      a call that had to fail failed with the expected error
    wrong <agent> <id> <what>      anything else (the parent fails the test)

After ``import agentbook`` it writes one byte to SIGNAL_FD, so the parent can time its
kill from there. Ids carry the cycle number, so they are unique across cycles; ids of
calls that must fail start with ``x``. Only agentbook is imported, to start fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys

import agentbook as ab

#: Agents used in every cycle; each cycle also uses ``n<cycle // 3>``, so a new store is
#: created every third cycle and reopened in the next two (also after a kill mid-creation).
FIXED = ("a", "b", "c", "d")


def chain(digest: str, msg_id: str) -> str:
    """The state's running digest after applying *msg_id* (the parent recomputes it)."""
    return hashlib.sha256(f"{digest}:{msg_id}".encode()).hexdigest()[:16]


class PlannedFailure(Exception):
    """Raised on purpose by ``apply_then_fail``."""


class Ledger(ab.Agent):
    """Applies messages: one ``applied`` row, *parts* ``parts`` rows and a new state each.

    Neither table has a unique key on ``id``: a message applied twice would show up as
    two rows instead of being refused by SQLite.
    """

    initial_state = {"count": 0, "last": None, "digest": ""}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS applied("
                 "seq INTEGER PRIMARY KEY, id TEXT NOT NULL, digest TEXT NOT NULL)")
        self.sql("CREATE TABLE IF NOT EXISTS parts("
                 "id TEXT NOT NULL, part INTEGER NOT NULL CHECK (part >= 0))")

    def _begin(self, msg_id: str) -> tuple[int, str]:
        n = self.state["count"] + 1
        digest = chain(self.state["digest"], msg_id)
        self.sql("INSERT INTO applied(seq, id, digest) VALUES (?, ?, ?)", n, msg_id, digest)
        return n, digest

    def _finish(self, msg_id: str, n: int, digest: str, parts: int) -> int:
        for part in range(parts):
            self.sql("INSERT INTO parts(id, part) VALUES (?, ?)", msg_id, part)
        self.set_state({"count": n, "last": msg_id, "digest": digest})
        return n

    @ab.callable
    async def apply(self, msg_id: str, parts: int = 1) -> int:
        """Apply a message without suspending."""
        n, digest = self._begin(msg_id)
        return self._finish(msg_id, n, digest, parts)

    @ab.callable
    def apply_sync(self, msg_id: str, parts: int = 1) -> int:
        """The same, as a plain ``def`` handler."""
        n, digest = self._begin(msg_id)
        return self._finish(msg_id, n, digest, parts)

    @ab.callable
    async def apply_slow(self, msg_id: str, parts: int = 1) -> int:
        """Write the row, really suspend (the batch ends here), then write the rest."""
        n, digest = self._begin(msg_id)
        await asyncio.sleep(0)
        return self._finish(msg_id, n, digest, parts)

    @ab.callable
    async def apply_then_fail(self, msg_id: str, parts: int = 1, how: str = "raise") -> int:
        """Write every effect of a message, then fail: none of it may remain."""
        n, digest = self._begin(msg_id)
        self._finish(msg_id, n, digest, parts)
        if how == "sql":
            self.sql("INSERT INTO parts(id, part) VALUES (?, ?)", msg_id, -1)  # CHECK fails
        raise PlannedFailure(f"{msg_id} fails on purpose")


EXPECTED_ERROR = {"raise": "PlannedFailure", "sql": "SQLError"}


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def one(ref: ab.AgentRef, method: str, msg_id: str, parts: int, how: str) -> None:
    """Make one call and report its outcome."""
    agent = ref.name
    say(f"send {agent} {msg_id} {parts}")
    try:
        if method == "apply":
            n = await ref.apply(msg_id, parts)  # the attribute form of ref.call
        elif method == "apply_then_fail":
            n = await ref.call(method, msg_id, parts, how=how)
        else:
            n = await ref.call(method, msg_id, parts)
    except Exception as exc:  # every error is reported to the parent
        if method == "apply_then_fail" and type(exc).__name__ == EXPECTED_ERROR[how]:
            say(f"fail {agent} {msg_id} {type(exc).__name__}")
        else:
            say(f"wrong {agent} {msg_id} raised {type(exc).__name__}: {exc}".replace("\n", " "))
        return
    if method == "apply_then_fail":
        say(f"wrong {agent} {msg_id} did not raise")
    else:
        say(f"ack {agent} {msg_id} {n}")


async def main(folder: str, cycle: int, seed: int) -> None:
    rng = random.Random(seed)
    rt = ab.Runtime(folder, durability="normal")
    refs = [rt.get(Ledger, name) for name in (*FIXED, f"n{cycle // 3}")]
    seq = 0

    def pick() -> tuple[ab.AgentRef, str, str, int, str]:
        nonlocal seq
        seq += 1
        ref = rng.choice(refs)
        parts = rng.randint(0, 3)
        roll = rng.random()
        if roll < 0.12:
            return ref, "apply_then_fail", f"x{cycle}.{seq}", parts, rng.choice(("raise", "sql"))
        method = "apply" if roll < 0.6 else "apply_sync" if roll < 0.8 else "apply_slow"
        return ref, method, f"{cycle}.{seq}", parts, ""

    while True:
        if rng.random() < 0.5:
            await one(*pick())
        else:
            await asyncio.gather(*(one(*pick()) for _ in range(rng.randint(2, 10))))


if __name__ == "__main__":
    folder, cycle, seed, signal_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.write(signal_fd, b"i")
    asyncio.run(main(folder, cycle, seed))
