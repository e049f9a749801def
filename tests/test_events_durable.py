"""Events on record (SPEC 2.8): written with the handler's commit, kept by a retention
policy, always in the ``events`` view - also after a restart, without opting in."""

from __future__ import annotations

import json

import pytest

import agentbook as ab


class Shop(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def order(self, k: int = 1) -> int:
        self.emit("order:placed", k=k, key=ab.Secret("sk-never-in-events", "api"))
        self.set_state({"n": self.state["n"] + k})
        return self.state["n"]

    @ab.callable
    async def look(self) -> int:
        return self.state["n"]

    @ab.callable
    async def later(self) -> None:
        await self.schedule(60, "tick")

    async def tick(self) -> None:
        self.set_state({"n": self.state["n"] + 100})

    @ab.callable
    async def broken(self) -> None:
        self.emit("half:written")
        self.set_state({"n": -1})
        await self.schedule(60, "tick")
        raise ValueError("the order failed")


def _events(rt, name="s"):
    return rt.sql("SELECT type, payload, version, seq FROM events WHERE name = ?"
                  " ORDER BY version NULLS LAST, seq NULLS FIRST", name)


def _recorded(rt, name="s"):
    """The events kept in _ab_events (rpc and state:update are history rows seen as events,
    kept as long as history is; retention applies to the others)."""
    return rt.sql("SELECT type, payload, version, seq FROM events WHERE name = ? AND seq IS NOT"
                  " NULL ORDER BY seq", name)


async def test_events_are_in_the_view_after_a_restart_without_opting_in(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "rt", clock=clock)
    shop = rt.get(Shop, "s")
    await shop.order(2)
    await shop.later()
    await clock.advance(61)
    await rt.aclose()

    again = ab.Runtime(tmp_path / "rt", clock=clock)
    try:
        frame = _events(again)
        types = frame.type.tolist()
        for kind in ("rpc", "state:update", "order:placed", "schedule:create",
                     "schedule:execute"):
            assert kind in types, (kind, types)
        placed = json.loads(frame[frame.type == "order:placed"].payload.iloc[0])
        assert placed == {"k": 2, "key": {"$secret": "api"}}
        update = frame[frame.type == "state:update"]
        assert [json.loads(p)["state"] for p in update.payload] == [{"n": 2}, {"n": 102}]
        assert frame.seq.dropna().is_monotonic_increasing  # (rpc/state:update come from history)
        # the versions the events belong to join with the history view
        joined = again.sql("SELECT count(*) AS n FROM events e JOIN history h USING (agent, name,"
                           " version) WHERE e.type = 'state:update'")
        assert joined.n[0] == 2
    finally:
        await again.aclose()


async def test_a_failed_handler_leaves_no_events_but_its_error(mem_rt):
    shop = mem_rt.get(Shop, "s")
    await shop.order(1)
    with pytest.raises(ValueError):
        await shop.broken()
    # in a batch: the failing message's events go, its neighbours' stay
    futures = [shop.order(1), shop.broken(), shop.order(1)]
    for fut in futures:
        try:
            await fut
        except ValueError:
            pass
    frame = _events(mem_rt)
    types = frame.type.tolist()
    assert "half:written" not in types
    assert types.count("order:placed") == 3 and types.count("state:update") == 3
    assert "schedule:create" not in types
    errors = frame[frame.type == "rpc:error"]
    assert len(errors) == 2
    assert json.loads(errors.payload.iloc[0]) == {"method": "broken", "error": "the order failed",
                                                  "type": "ValueError", "source": mem_rt.source}


async def test_retention_keeps_the_newest_events_by_count(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "rt", clock=clock, events_keep=5)
    shop = rt.get(Shop, "s")
    for _ in range(8):
        await shop.order(1)  # order:placed on record each (rpc, state:update: from history)
    assert _recorded(rt).seq.tolist() == list(range(4, 9))
    for _ in range(3):
        await shop.order(1)
    assert _recorded(rt).seq.tolist() == list(range(7, 12))
    assert _events(rt).type.tolist().count("rpc") == 11  # history is not pruned by events_keep
    await rt.aclose()
    again = ab.Runtime(tmp_path / "rt", clock=clock, events_keep=5)
    try:
        assert _recorded(again).seq.tolist() == list(range(7, 12))
    finally:
        await again.aclose()


async def test_retention_by_age(clock):
    rt = ab.Runtime(":memory:", clock=clock, events_keep=None, events_max_age=3600)
    try:
        shop = rt.get(Shop, "s")
        await shop.order(1)
        await clock.advance(1800)
        await shop.order(2)
        assert _recorded(rt).type.tolist() == ["order:placed"] * 2
        await clock.advance(2000)  # the first order is now 3800 s old
        await shop.order(3)
        kept = [json.loads(p)["k"] for p in _recorded(rt).payload]
        assert kept == [2, 3]
    finally:
        await rt.aclose()


async def test_events_keep_zero_keeps_nothing_and_live_delivery_still_works(clock):
    rt = ab.Runtime(":memory:", clock=clock, events_keep=0)
    try:
        seen = []
        stop = rt.events.subscribe(seen.append, types=["order:*", "rpc"])
        await rt.get(Shop, "s").order(1)
        stop()
        await rt.get(Shop, "s").order(1)
        assert [e["type"] for e in seen] == ["rpc", "order:placed"]
        assert _recorded(rt).empty  # (the calls themselves are history: rpc stays in the view)
    finally:
        await rt.aclose()


async def test_live_delivery_is_off_outside_handlers_when_nobody_listens(mem_rt):
    assert not mem_rt.events.active and mem_rt.events.recording
    seen = []
    stop = mem_rt.events.subscribe(seen.append)
    await mem_rt.get(Shop, "s").order(1)
    stop()
    assert not mem_rt.events.active
    live = [e["type"] for e in seen if e["type"] != "agent:start"]
    kept = _events(mem_rt).type.tolist()
    assert sorted(live) == sorted(t for t in kept if t != "agent:start")


def test_capture_events_is_a_harmless_no_op(tmp_path):
    rt = ab.Runtime(tmp_path / "rt")
    try:
        rt.capture_events()
        rt.capture_events(False)
        assert not rt.events.active
    finally:
        rt.close()


def test_bad_retention_options_are_refused(tmp_path):
    with pytest.raises(ab.UsageError, match="events_keep"):
        ab.Runtime(tmp_path / "a", events_keep=-1)
    with pytest.raises(ab.UsageError, match="events_max_age"):
        ab.Runtime(tmp_path / "b", events_max_age=0)
