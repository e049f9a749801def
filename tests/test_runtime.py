"""Runtime options: limits are checked when the runtime is made, before anything is
written."""

from __future__ import annotations

import asyncio
import math

import pytest

import agentbook as ab


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
