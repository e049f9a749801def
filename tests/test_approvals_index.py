"""The approval index agrees with the agents' stores; guarded methods; replays; bad ids.

The crash windows themselves (a real process killed before or after a commit) are in
``tests/reliability/test_crash_points.py``; here the index is damaged by hand the way
those crashes leave it, and a new runtime must put it right.
"""

from __future__ import annotations

import asyncio
import os

import apsw
import pytest

import agentbook as ab

from .waiting import eventually


class Hold:
    """Keeps a handler suspended at one point until the test lets it go on."""

    def __init__(self) -> None:
        self.reached, self.released = asyncio.Event(), asyncio.Event()

    async def here(self) -> None:
        self.reached.set()
        await self.released.wait()


HOLDS: dict[str, Hold] = {}  # orders whose ask() waits after writing its request


class CashTill(ab.Agent):
    initial_state = {"paid": []}

    @ab.callable
    async def ask(self, order: str) -> str:
        approval = await self.request_approval("pay", {"order": order}, summary=f"pay {order}")
        if order in HOLDS:
            await HOLDS[order].here()  # the request is written, not yet committed
        return approval.id

    async def pay(self, order: str) -> str:
        self.set_state({"paid": [*self.state["paid"], order]})
        return f"paid {order}"

    @ab.callable
    async def pay_self(self, order: str) -> None:
        self.ref(CashTill, self.name).send("pay", order)


class Thief(ab.Agent):
    @ab.callable
    async def steal(self, till: str) -> str:
        return await self.ref(CashTill, till).call("pay", "stolen")


def _index(folder) -> apsw.Connection:
    return apsw.Connection(os.path.join(folder, "catalog.db"))


async def test_a_phantom_and_a_stale_row_are_put_right_by_the_next_runtime(tmp_path, clock):
    folder = tmp_path / "store"
    rt = ab.Runtime(folder, clock=clock)
    till = rt.get(CashTill, "t")
    decided = await till.ask("o1")
    waiting = await till.ask("o2")
    assert await rt.approvals.approve(decided, by="ops") == "paid o1"
    await rt.aclose()
    # What crashes leave: a request indexed but never committed, a decision committed but
    # not indexed.
    conn = _index(folder)
    conn.execute("INSERT INTO approvals SELECT 'ap-phantom', class, name, method, args, kwargs,"
                 " summary, side_effects, created, expires, 'pending', NULL, NULL, NULL"
                 " FROM approvals WHERE id = ?", (waiting,))
    conn.execute("UPDATE approvals SET status = 'pending', decided_by = NULL, decided_at = NULL"
                 " WHERE id = ?", (decided,))
    conn.close()

    rt = ab.Runtime(folder, clock=clock)
    try:
        assert {a.id: a.status for a in rt.approvals.list(None)} == {
            decided: "approved", waiting: "pending"}
        assert rt.approvals.get(decided).decided_by == "ops"
        with pytest.raises(ab.ApprovalNotFoundError):
            rt.approvals.get("ap-phantom")
        assert set(rt.sql("SELECT id FROM approvals").id) == {decided, waiting}
    finally:
        await rt.aclose()


async def test_a_request_on_its_way_to_its_commit_is_left_alone(tmp_path, clock):
    folder = tmp_path / "store"
    rt = ab.Runtime(folder, clock=clock)
    await rt.get(CashTill, "t").ask("o0")
    await rt.aclose()
    rt = ab.Runtime(folder, clock=clock)  # its first look at the index comes mid-request
    hold = HOLDS["o1"] = Hold()
    try:
        asking = asyncio.ensure_future(rt.get(CashTill, "t").ask("o1"))
        await eventually(hold.reached.is_set, what="ask('o1') wrote its request")
        assert len(rt.approvals.list()) == 2  # the store is being written: not a phantom
        hold.released.set()
        approval_id = await asking
        assert rt.approvals.get(approval_id).status == "pending"
        assert len(rt.approvals.list()) == 2
    finally:
        hold.released.set()
        del HOLDS["o1"]
        await rt.aclose()


async def test_a_lost_catalog_gets_its_approvals_back_from_the_stores(tmp_path, clock):
    folder = tmp_path / "store"
    rt = ab.Runtime(folder, clock=clock)
    till = rt.get(CashTill, "t")
    first, second = await till.ask("o1"), await till.ask("o2")
    await rt.approvals.reject(first, "no", by="ops")
    await rt.aclose()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(folder / f"catalog.db{suffix}"):
            os.remove(folder / f"catalog.db{suffix}")
    rt = ab.Runtime(folder, clock=clock)
    try:
        got = {a.id: (a.status, a.reason) for a in rt.approvals.list(None)}
        assert got == {first: ("rejected", "no"), second: ("pending", None)}
        assert await rt.approvals.approve(second, by="ops") == "paid o2"
    finally:
        await rt.aclose()


async def test_another_agent_cannot_call_a_guarded_method_even_after_a_restart(tmp_path, clock):
    folder = tmp_path / "store"
    rt = ab.Runtime(folder, clock=clock)
    assert await rt.get(Thief, "m").steal("t") == "paid stolen"  # nothing guards it yet
    await rt.get(CashTill, "t").ask("o1")
    with pytest.raises(ab.NotCallableError, match="request_approval"):
        await rt.get(Thief, "m").steal("t")
    await rt.get(CashTill, "t").pay_self("own")  # the agent itself may
    await rt.settle()  # (the pay it sent itself has run)
    await rt.aclose()
    rt = ab.Runtime(folder, clock=clock)  # (guards are per runtime: only the catalog remembers)
    try:
        with pytest.raises(ab.NotCallableError):
            await rt.get(Thief, "m").steal("t")
        assert rt.get(CashTill, "t").state == {"paid": ["stolen", "own"]}
    finally:
        await rt.aclose()


async def test_a_replay_asks_nobody_and_runs_no_approved_action(rt):
    till = rt.get(CashTill, "r")
    approval_id = await till.ask("o1")
    await rt.approvals.approve(approval_id, by="ops")
    result = await till.replay(1)
    frame = result.frame()
    assert list(frame.method) == ["ask", "pay"]
    assert list(frame.outcome) == ["ok", "skipped"]
    assert result.fork.state == {"paid": []}
    assert [a.id for a in rt.approvals.list("pending")] == []
    replayed = [a for a in rt.approvals.list(None) if a.name == result.fork.name]
    assert [(a.status, a.reason) for a in replayed] == [
        ("cancelled", "replayed on a fork: a replay never asks a person")]
    with pytest.raises(ab.ApprovalDecidedError):
        await rt.approvals.approve(replayed[0].id, by="ops")


@pytest.mark.parametrize("bad", [2**64, -2**63 - 1, 7, True, None, 1.5, b"ap-", "ap-\ud800",
                                 "ap-\x00"])
async def test_an_id_that_is_no_approval_id_is_not_found(rt, bad):
    await rt.get(CashTill, "b").ask("o1")
    with pytest.raises(ab.ApprovalNotFoundError):
        rt.approvals.get(bad)
    with pytest.raises(ab.ApprovalNotFoundError):
        rt.approvals.approve(bad, by="ops")
