"""Runtime options: limits are checked when the runtime is made, before anything is
written."""

from __future__ import annotations

import asyncio
import math

import pytest

import agentbook as ab

from .waiting import eventually


@pytest.mark.parametrize(("option", "value"), [
    ("max_open", 0), ("max_batch", -1), ("max_payload_bytes", 1.5), ("max_state_bytes", True),
    ("max_queue", None), ("max_store_bytes", 0), ("hibernate_after", -1),
    ("hibernate_after", math.inf), ("max_query_seconds", 0), ("max_query_seconds", math.nan),
    ("max_query_seconds", "1"),
])
def test_bad_limits_are_refused_before_anything_is_written(tmp_path, option, value):
    with pytest.raises(ab.UsageError, match=option):
        ab.Runtime(tmp_path / "store", **{option: value})
    assert not (tmp_path / "store").exists()


def test_limits_that_may_be_off(tmp_path):
    rt = ab.Runtime(tmp_path / "store", max_store_bytes=None, max_query_seconds=None,
                    hibernate_after=0)
    assert rt.max_query_seconds is None and rt.max_store_bytes is None
    rt.close()


class Lru(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def inc(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


async def test_the_least_recently_used_idle_agents_hibernate_first(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_open=3)
    try:
        for name in ["a", "b", "c"]:
            await rt.get(Lru, name).inc()
        await rt.get(Lru, "a").inc()  # a is now the most recently used
        await rt.get(Lru, "d").inc()  # one too many: b (least recently used) goes
        assert [key[1] for key in rt.open_stores] == ["c", "a", "d"]
        await asyncio.gather(*(rt.get(Lru, name).inc() for name in ["e", "f", "g", "h"]))
        assert len(rt.open_stores) <= 3
        assert [rt.get(Lru, n).state["n"] for n in "abcdefgh"] == [2, 1, 1, 1, 1, 1, 1, 1]
    finally:
        await rt.aclose()


async def test_agents_put_to_sleep_to_make_room_are_checkpointed_later(tmp_path, clock,
                                                                        monkeypatch):
    """Issue 20: an agent evicted past max_open closes without its checkpoint (its -wal
    stays, and a wake appends to it); the closer checkpoints it once idle, and
    rt.hibernate() and rt.close() leave no -wal behind. Its commits survive either way."""
    import os

    from agentbook.store import closer

    monkeypatch.setattr(closer, "IDLE_SECONDS", 3600.0)  # (only when asked, here)
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_open=2)
    wal = rt.path_of(("Lru", "a")) + "-wal"
    for name in ["a", "b", "c"]:  # c makes room: a goes to sleep, checkpoint deferred
        await rt.get(Lru, name).inc()
    rt.closer.wait(("Lru", "a"))
    assert ("Lru", "a") not in rt.open_stores and rt.closer.deferred == 1
    assert os.path.getsize(wal) > 0  # (its commits are in the WAL, not yet in the file)
    await rt.get(Lru, "a").inc()  # the wake takes it back: no checkpoint owed for it
    assert rt.get(Lru, "a").state["n"] == 2
    rt.closer.wait(("Lru", "b"))  # (b went to sleep to make room for a)
    assert rt.closer.deferred == 1
    rt.hibernate()  # every agent asleep, every WAL checkpointed
    assert rt.closer.deferred == 0
    assert not [f for f in os.listdir(os.path.dirname(wal)) if f.endswith(("-wal", "-shm"))]
    for name in ["a", "b", "c", "d"]:
        await rt.get(Lru, name).inc()
    assert rt.closer.deferred >= 1
    await rt.aclose()
    assert not [f for f in os.listdir(os.path.dirname(wal)) if f.endswith(("-wal", "-shm"))]
    with ab.Runtime(tmp_path / "store") as again:
        assert [again.get(Lru, n).state["n"] for n in "abcd"] == [3, 2, 2, 1]


async def test_the_closer_checkpoints_deferred_stores_when_idle(tmp_path, monkeypatch):
    import os

    from agentbook.store import closer

    monkeypatch.setattr(closer, "IDLE_SECONDS", 0.05)
    rt = ab.Runtime(tmp_path / "store", max_open=1)
    try:
        await rt.get(Lru, "a").inc()
        await rt.get(Lru, "b").inc()  # a goes to sleep, its checkpoint deferred
        wal = rt.path_of(("Lru", "a")) + "-wal"
        # (the closer is a thread with an idle timer of its own: real time, ~0.1 s)
        await eventually(lambda: not os.path.exists(wal) and rt.closer.deferred == 0,
                         timeout=20, what="the deferred checkpoint")
        assert rt.get(Lru, "a").state["n"] == 1
    finally:
        await rt.aclose()


class Sleeper(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def later(self, seconds: float) -> None:
        await self.schedule(seconds, "ring")

    @ab.callable
    async def poke(self) -> None:
        """Wake up; nothing scheduled."""

    async def ring(self) -> None:
        self.set_state({"n": self.state["n"] + 1})


async def test_idle_agents_with_a_schedule_due_before_the_next_sweep_stay_awake(tmp_path,
                                                                                 clock):
    """Issue 20: the idle sweep keeps an agent whose schedule comes due before the next
    sweep (its firing would otherwise open its store again at the due instant); the
    others hibernate as before."""
    import time

    rt = ab.Runtime(tmp_path / "s", hibernate_after=30, clock=clock)
    try:
        soon, late, none = (rt.get(Sleeper, n) for n in ("soon", "late", "none"))
        await soon.later(0.3)   # due before the next sweep: stays awake
        await late.later(3600)  # due after it: hibernates
        await none.poke()       # nothing due: hibernates
        for inst in rt.open_stores.values():
            inst.last_used = time.monotonic() - 60  # (idle for longer than hibernate_after)
        rt.sweep()
        awake = {key[1] for key in rt.open_stores}
        assert awake == {"soon"}
        await clock.advance(1)
        assert soon.state["n"] == 1
    finally:
        await rt.aclose()
