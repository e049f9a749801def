"""Blocking forms for scripts (``ab.run``, ``ref.sync``)."""

from __future__ import annotations

import threading

import pytest

import agentbook as ab


class SyncCounter(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def inc(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


def _in_thread(fn):
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_script_without_an_event_loop_can_call_agents(tmp_path):
    def script():
        rt = ab.Runtime(tmp_path / "s")
        ref = rt.get(SyncCounter, "a")
        results = [ab.run(ref.inc()), ref.sync.inc(), ref.sync.call("inc")]
        ref.send("inc")
        results.append(ab.run(ref.inc()))  # the queued send runs first
        rt.close()
        return results

    assert _in_thread(script) == [1, 2, 3, 5]


def test_run_refuses_to_block_on_a_person():
    class Decision:
        _ab_needs_person = True

        def __await__(self):  # pragma: no cover - never awaited
            yield

    with pytest.raises(ab.WouldBlockError, match="click"):
        ab.run(Decision())


async def test_run_inside_a_running_loop_nests(mem_rt):
    ref = mem_rt.get(SyncCounter, "nested")
    assert ref.sync.inc() == 1
    assert await ref.inc() == 2
