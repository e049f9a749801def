import asyncio

import agentbook as ab
from agentbook.events import EventBus


def test_nobody_listening_means_inactive_and_nothing_delivered():
    bus = EventBus()
    assert bus.active is False
    bus.emit("rpc", "A", "a", {}, 1.0)  # no error, no record


def test_wildcard_types_and_unsubscribe():
    bus = EventBus()
    got = []
    unsubscribe = bus.subscribe(got.append, types=["schedule:*"])
    assert bus.active
    bus.emit("schedule:create", "A", "a", {"id": 1}, 1.5)
    bus.emit("rpc", "A", "a", {}, 1.5)
    assert [e["type"] for e in got] == ["schedule:create"]
    assert got[0] == {"type": "schedule:create", "agent": "A", "name": "a",
                      "payload": {"id": 1}, "timestamp": 1500}
    unsubscribe()
    assert bus.active is False
    bus.emit("schedule:execute", "A", "a", {}, 2.0)
    assert len(got) == 1
    unsubscribe()  # twice is harmless


def test_agent_filter_by_name_class_or_tuple():
    bus = EventBus()
    by_name, by_class, by_key = [], [], []
    bus.subscribe(by_name.append, agent="a")
    bus.subscribe(by_class.append, agent="B")
    bus.subscribe(by_key.append, agent=("A", "b"))
    bus.emit("x", "A", "a", {}, 0)
    bus.emit("x", "B", "z", {}, 0)
    bus.emit("x", "A", "b", {}, 0)
    assert len(by_name) == 1 and len(by_class) == 1 and len(by_key) == 1


def test_a_failing_subscriber_does_not_stop_others(caplog):
    bus = EventBus()
    got = []

    def bad(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(bad)
    bus.subscribe(got.append)
    bus.emit("x", None, None, {}, 0)
    assert len(got) == 1
    assert "subscriber" in caplog.text


def test_disabled_bus_never_becomes_active():
    bus = EventBus(enabled=False)
    bus.subscribe(lambda e: None)
    assert bus.active is False


class Pinger(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def ping(self):
        self.set_state({"n": self.state["n"] + 1})
        self.emit("custom:ping", n=self.state["n"])


class Failer(ab.Agent):
    @ab.callable
    async def fail(self):
        self.emit("custom:never")
        raise ValueError("no")


async def test_runtime_events_follow_the_commit(mem_rt):
    got = []
    mem_rt.events.subscribe(got.append)
    ref = mem_rt.get(Pinger, "p")
    await ref.ping()
    types = [e["type"] for e in got]
    assert "agent:start" in types
    assert types[-3:] == ["rpc", "state:update", "custom:ping"]
    assert got[-1]["payload"] == {"n": 1}
    assert got[-2]["payload"]["state"] == {"n": 1}


async def test_events_of_a_failed_handler_never_leave(mem_rt):
    got = []
    mem_rt.events.subscribe(got.append, types=["custom:*", "rpc:error"])
    ref = mem_rt.get(Failer, "f")
    try:
        await ref.fail()
    except ValueError:
        pass
    assert [e["type"] for e in got] == ["rpc:error"]
    assert got[0]["payload"]["error"] == "no"


async def test_async_subscribers_are_run(mem_rt):
    got = []

    async def sub(event):
        got.append(event["type"])

    mem_rt.events.subscribe(sub, types="rpc")
    await mem_rt.get(Pinger, "q").ping()
    await asyncio.sleep(0)
    assert got == ["rpc"]
