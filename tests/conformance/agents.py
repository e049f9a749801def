"""Tiny agents, one per feature, used by the conformance suite."""

from __future__ import annotations

import asyncio

import agentbook as ab


class ConfCounter(ab.Agent):
    initial_state = {"n": 0}
    starts = 0

    async def on_start(self):
        type(self).starts += 1
        self.sql("CREATE TABLE IF NOT EXISTS hits(id INTEGER PRIMARY KEY, note TEXT)")

    @ab.callable
    async def inc(self, by: int = 1, note: str = "") -> int:
        self.set_state({"n": self.state["n"] + by})
        self.sql("INSERT INTO hits(note) VALUES (?)", note)
        return self.state["n"]

    @ab.callable
    def inc_sync(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def everything_then_raise(self, note: str):
        self.set_state({"n": 1000})
        self.sql("INSERT INTO hits(note) VALUES (?)", note)
        self.kv["poison"] = True
        self.ref(ConfCounter, "other").send("inc", 1, "from-failed")
        self.emit("conf:never")
        raise RuntimeError(f"boom {note}")

    @ab.callable
    async def set_bad_state(self):
        self.set_state({"n": {1, 2}})

    @ab.callable
    async def kv_get(self, key: str):
        return self.kv.get(key)

    @ab.callable
    async def read(self) -> int:
        return self.state["n"]

    async def internal_only(self):
        self.set_state({"n": -1})

    def _private(self):
        return "secret"


class ConfSlow(ab.Agent):
    """A handler that waits on a gate the test opens, to observe one-at-a-time."""

    initial_state = {"running": 0, "max": 0, "done": 0}
    gates: dict[str, asyncio.Event] = {}

    @ab.callable
    async def work(self, gate: str = "") -> int:
        s = self.state
        running = s["running"] + 1
        self.set_state({**s, "running": running, "max": max(s["max"], running)})
        if gate:
            await type(self).gates[gate].wait()
        else:
            await asyncio.sleep(0)
        s = self.state
        self.set_state({**s, "running": s["running"] - 1, "done": s["done"] + 1})
        return s["done"] + 1


class ConfCaller(ab.Agent):
    initial_state = {"got": []}

    @ab.callable
    async def ask(self, target: str) -> int:
        value = await self.ref(ConfCounter, target).inc(1, "asked")
        self.set_state({"got": [*self.state["got"], value]})
        return value

    @ab.callable
    async def ask_back(self, peer: str) -> int:
        return await self.ref(ConfCaller, peer).ask_back(self.name)

    @ab.callable
    async def tell(self, target: str) -> None:
        self.ref(ConfCounter, target).send("inc", 5, "told")
        self.set_state({"got": [*self.state["got"], "told"]})

    @ab.callable
    async def call_private(self, target: str):
        return await self.ref(ConfCounter, target).call("internal_only")


class ConfErrors(ab.Agent):
    initial_state = {"errors": []}

    @ab.callable
    async def fail(self):
        raise ValueError("sent and failed")

    async def on_error(self, error):
        self.set_state({"errors": [*self.state["errors"], f"{type(error).__name__}: {error}"]})


class ConfKV(ab.Agent):
    @ab.callable
    async def put(self, key: str, value) -> None:
        self.kv[key] = value

    @ab.callable
    async def get(self, key: str):
        return self.kv.get(key)

    @ab.callable
    async def keys(self) -> list:
        return list(self.kv)

    @ab.callable
    async def drop(self, key: str) -> None:
        del self.kv[key]


class ConfValidated(ab.Agent):
    initial_state = {"balance": 10}

    def validate_state_change(self, state, source):
        if state["balance"] < 0:
            raise ValueError("balance can't go negative")

    changes: list = []

    def on_state_changed(self, state, source):
        type(self).changes.append((state["balance"], source))

    @ab.callable
    async def spend(self, amount: int) -> int:
        self.set_state({"balance": self.state["balance"] - amount})
        return self.state["balance"]


class ConfBadStart(ab.Agent):
    fail = True

    async def on_start(self):
        if type(self).fail:
            raise OSError("database of the past is gone")

    @ab.callable
    async def hello(self) -> str:
        return "hi"


class ConfDestroy(ab.Agent):
    initial_state = {"alive": True}

    @ab.callable
    async def touch(self) -> int:
        self.set_state({"alive": True, "v": self.version})
        return self.version

    @ab.callable
    async def self_destruct(self) -> None:
        self.destroy()
