"""Durable approvals: request -> approve -> the approved method committed.

``approval_round_trip``
    ``await ref.propose(1)`` (a handler calling ``self.request_approval("refund", ...)``)
    then ``await rt.approvals.approve(id)``, which returns once ``refund`` ran and its
    commit is durable; on a file runtime, ``durability="normal"``. Median milliseconds of a
    round trip. Floor: the same done by hand on raw SQLite in three commits
    (:class:`~agentbook.bench.floors.HandApproval`). Target: at most 1 ms.

``approval_vs_langgraph``
    The same round trips per second against LangGraph's ``interrupt()`` +
    ``Command(resume=True)`` on SqliteSaver (WAL, NORMAL). Target: at least 5x.

All three sides run interleaved in one run, each round a batch of round trips.
"""

from __future__ import annotations

import os
import statistics
import time

import agentbook as ab

from .floors import HandApproval
from .report import Result, Target
from .timing import Side, Sizes, check, interleave_many

__all__ = ["BenchRefunds", "bench_approvals"]


class BenchRefunds(ab.Agent):
    """Proposes refunds; a person approves them; only then ``refund`` runs."""

    initial_state = {"n": 0}

    @ab.callable
    async def propose(self, amount: int) -> str:
        """Ask for approval of ``refund(amount)``; returns the approval's id."""
        approval = await self.request_approval("refund", {"amount": amount},
                                               summary=f"refund {amount}")
        return approval.id

    async def refund(self, amount: int) -> int:
        """The approved action (not callable: only an approval runs it)."""
        self.set_state({"n": self.state["n"] + amount})
        return self.state["n"]


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


async def bench_approvals(sz: Sizes, folder: str) -> list[Result]:
    """The approval round trip against the hand-written floor and LangGraph."""
    from .peers import load_peer

    n, lg_n = sz.approval_n, sz.approval_lg_n
    rt = ab.Runtime(os.path.join(folder, "approvals"), durability="normal")
    hand = HandApproval(os.path.join(folder, "approvals-floor.db"))
    peer_mod = load_peer("langgraph")
    peer = None if isinstance(peer_mod, str) else peer_mod.ApprovalPeer(
        os.path.join(folder, "langgraph-approvals.db"))
    approvals = rt.approvals
    try:
        ref = rt.get(BenchRefunds, "one")

        async def mine() -> float:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                approval_id = await ref.propose(1)
                await approvals.approve(approval_id, by="bench")
                times.append(time.perf_counter() - t0)
            return _median_ms(times)

        def timed(fn: object, count: int) -> float:
            times = []
            for _ in range(count):
                t0 = time.perf_counter()
                fn()  # type: ignore[operator]
                times.append(time.perf_counter() - t0)
            return _median_ms(times)

        sides: list[Side] = [mine, lambda: timed(hand.round_trip, n)]
        if peer is not None:
            sides.append(lambda: timed(peer.round_trip, lg_n))
        rounds = await interleave_many(sides, sz.rounds, sz.warmup)
        check(ref.state["n"] == hand.state["n"], "both sides ran every approved refund")
        check(not approvals.list("pending"), "every approval was decided")
    finally:
        await rt.aclose()
        hand.close()
        if peer is not None:
            peer.close()
    results = [Result.from_rounds(
        "approval_round_trip", "ms", [(r[0], r[1]) for r in rounds], Target("value", "<=", 1),
        f"median of {n} round trips/round: propose (request_approval) -> rt.approvals.approve"
        " -> refund committed; file runtime, durability normal; floor: raw SQLite by hand,"
        " 3 commits (request, decision, action)")]
    target = Target("ratio", ">=", 5)
    if peer is None:
        results.append(Result.skip("approval_vs_langgraph", "trips/s", str(peer_mod), target))
    else:
        results.append(Result.from_rounds(
            "approval_vs_langgraph", "trips/s", [(1000 / r[0], 1000 / r[2]) for r in rounds],
            target, f"the same round trips/s (1 / median); peer: LangGraph interrupt() + "
            f"Command(resume=True) on SqliteSaver (WAL, NORMAL), {lg_n} round trips/round"))
    return results
