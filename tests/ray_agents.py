"""Agents for the Ray backend tests (importable by the host processes too)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import agentbook as ab


class RayTally(ab.Agent):
    initial_state = {"n": 0, "pid": 0}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS marks(id TEXT PRIMARY KEY, pid INTEGER)")

    @ab.callable
    async def mark(self, mark_id: str) -> int:
        self.sql("INSERT INTO marks VALUES (?, ?)", mark_id, os.getpid())
        self.set_state({"n": self.state["n"] + 1, "pid": os.getpid()})
        return self.state["n"]

    @ab.callable
    async def slow_mark(self, mark_id: str, seconds: float, started: str = "") -> int:
        """A mark that waits before it writes (a host can be paused meanwhile); it creates
        the file *started* (when given) as it begins to wait, for the test to know."""
        if started:
            Path(started).touch()
        await asyncio.sleep(seconds)
        self.sql("INSERT INTO marks VALUES (?, ?)", mark_id, os.getpid())
        self.set_state({"n": self.state["n"] + 1, "pid": os.getpid()})
        return self.state["n"]

    @ab.callable
    async def mark_later(self, seconds: float, mark_id: str) -> None:
        """Schedule a mark *seconds* from now (durable: it fires once, wherever the agent
        lives then)."""
        await self.schedule(seconds, "scheduled_mark", mark_id)

    async def scheduled_mark(self, mark_id: str) -> None:
        self.sql("INSERT INTO marks VALUES (?, ?)", mark_id, os.getpid())

    @ab.callable
    async def marks(self) -> list:
        """``[[id, pid of the host that wrote it], ...]`` in the order they were written."""
        return [[r["id"], r["pid"]] for r in self.sql("SELECT id, pid FROM marks ORDER BY rowid")]

    @ab.callable
    async def pass_on(self, other: str, mark_id: str) -> None:
        self.ref(RayTally, other).send("mark", mark_id)

    @ab.callable
    async def ask(self, other: str, mark_id: str) -> int:
        return await self.ref(RayTally, other).mark(mark_id)

    @ab.callable
    async def propose(self, amount: int) -> str:
        approval = await self.request_approval("payout", {"amount": amount},
                                               summary=f"pay out {amount}")
        return approval.id

    async def payout(self, amount: int) -> int:
        """Runs only when a person approves it."""
        self.set_state({**self.state, "n": self.state["n"] + amount})
        return self.state["n"]

    @ab.callable
    async def give(self, other: str, mark_id: str, stall_pid: int, amount: int) -> str:
        """Record an event, send *other* a mark (it stalls on the host *stall_pid*, so the
        message stays in this agent's outbox there), and ask a person to pay out."""
        self.emit("giving", to=other, mark=mark_id)
        self.ref(RayTally, other).send("take", mark_id, stall_pid)
        approval = await self.request_approval("payout", {"amount": amount},
                                               summary=f"pay out {amount}")
        return approval.id

    @ab.callable
    async def take(self, mark_id: str, stall_pid: int) -> None:
        """A mark, except on the host *stall_pid*: there it never finishes (nor commits)."""
        if os.getpid() == stall_pid:
            await asyncio.Event().wait()
        self.sql("INSERT INTO marks VALUES (?, ?)", mark_id, os.getpid())

    @ab.callable
    async def steal(self, other: str) -> int:
        return await self.ref(RayTally, other).payout(99)


class RayLedger(ab.Agent):
    """Every kind of thing a read can show: rows, blobs, a schedule, a failure, an
    approval, a workflow run (for the reads-through-owners tests)."""

    initial_state = {"total": 0, "items": []}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS items(id TEXT PRIMARY KEY, qty INTEGER,"
                 " blob BLOB, note)")

    @ab.callable
    async def add(self, item: str, qty: int) -> int:
        self.sql("INSERT INTO items VALUES (?, ?, ?, ?)", item, qty, item.encode() * 2,
                 qty if qty % 2 else f"note {item}")
        self.set_state({"total": self.state["total"] + qty,
                        "items": [*self.state["items"], {"id": item, "qty": qty}]})
        return self.state["total"]

    @ab.callable
    async def remove(self, item: str) -> None:
        self.sql("DELETE FROM items WHERE id = ?", item)

    @ab.callable
    async def fail(self, why: str) -> None:
        self.sql("INSERT INTO items VALUES ('never', 0, NULL, NULL)")
        raise ValueError(why)

    @ab.callable
    async def plan(self, qty: int) -> str:
        found = await self.schedule(3600, "planned", qty)
        return found.id

    async def planned(self, qty: int) -> None:
        await self.add("planned", qty)

    @ab.callable
    async def propose(self, qty: int) -> str:
        approval = await self.request_approval("restock", {"qty": qty},
                                               summary=f"restock {qty}")
        return approval.id

    async def restock(self, qty: int) -> int:
        """Runs only when a person approves it."""
        self.set_state({**self.state, "total": self.state["total"] + qty})
        return self.state["total"]

    @ab.workflow
    async def count(self, step: ab.Step, n: int) -> int:
        for i in range(n):
            await step.do(f"tick {i}", self.tick)
        return self.state["total"]

    def tick(self) -> int:
        self.set_state({**self.state, "total": self.state["total"] + 1})
        return self.state["total"]
