"""The capstone: a support desk for 1 000 simulated customers over a simulated week.

Customers raise issues at their own (deterministic) times; the desk opens tickets,
schedules a follow-up for each, and asks a person to approve refunds above a limit; a
supervisor decides the pending approvals each evening. Halfway through the week we fork
the desk and replay the rest of the week with a more generous refund policy - "what if?"
- and compare. Everything runs offline on the virtual clock, in seconds, and the week is
analysed with DuckDB and plotted.

``agentbook demo`` runs it in a terminal (:func:`agentbook.cli.demo.run_week`, with its
progress bar and report); ``notebooks/10_capstone.ipynb`` runs it step by
step, with the two agent classes written out in its cells (``tests/test_capstone.py`` keeps
them the same as :func:`build_agents`'s).
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["DAY", "QUESTIONS", "build_agents", "chance", "refund_policy", "simulate", "what_if"]

DAY = 86400.0


def chance(*parts: Any) -> float:
    """A number in [0, 1) that looks random but is the same for the same arguments, so the
    simulated week is the same on every run: ``chance("c0042", 3) < 0.35``."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def refund_policy(amount: float, limit: float) -> str:
    """The desk's rule: refund up to the limit itself, ask a person above it."""
    return "refund" if amount <= limit else "ask"


def build_agents() -> tuple[type, type]:
    """The capstone's two agent classes (defined on demand; nothing registers on import)."""
    import agentbook as ab

    class Customer(ab.Agent):
        """A customer who raises issues now and then."""

        initial_state = {"issues": 0, "refunds": 0.0}

        @ab.callable
        async def plan_week(self, days: int) -> int:
            count = 0
            for day in range(days):
                if chance(self.name, day) < 0.35:  # about one issue every three days
                    at = day * DAY + (8 + 10 * chance(self.name, day, "h")) * 3600
                    await self.schedule(at, "raise_issue", {"day": day})
                    count += 1
            return count

        async def raise_issue(self, payload: dict) -> None:
            amount = round(5 + 195 * chance(self.name, payload["day"], "amount"), 2)
            self.set_state({**self.state, "issues": self.state["issues"] + 1})
            self.ref(Desk, "desk").send("open_ticket", self.name, amount)

        async def refunded(self, amount: float) -> None:
            self.set_state({**self.state, "refunds": round(self.state["refunds"] + amount, 2)})

    class Desk(ab.Agent):
        """The support desk: tickets, follow-ups, refunds that need approval."""

        initial_state = {"open": 0, "closed": 0, "refunded": 0.0, "limit": 50.0}

        async def on_start(self) -> None:
            self.sql("CREATE TABLE IF NOT EXISTS tickets(id INTEGER PRIMARY KEY,"
                     " customer TEXT, amount REAL, opened REAL, status TEXT,"
                     " followed_up INTEGER NOT NULL DEFAULT 0)")

        async def open_ticket(self, customer: str, amount: float) -> int:
            policy = await self.effect("policy", refund_policy, amount, self.state["limit"])
            row = self.sql("INSERT INTO tickets(customer, amount, opened, status)"
                           " VALUES (?, ?, ?, 'open') RETURNING id",
                           customer, amount, self.now())[0]
            self.set_state({**self.state, "open": self.state["open"] + 1})
            if policy == "refund":
                await self.issue_refund(row["id"], customer, amount)
            else:
                await self.request_approval(
                    "issue_refund", {"ticket": row["id"], "customer": customer,
                                     "amount": amount},
                    summary=f"Refund {amount:.2f} to {customer}", expires_in=2 * DAY,
                    side_effects=["charges the card back"])
            await self.schedule(3600, "follow_up", {"ticket": row["id"]})
            return row["id"]

        async def issue_refund(self, ticket: int, customer: str, amount: float) -> None:
            done = self.sql("UPDATE tickets SET status = 'refunded' WHERE id = ? AND status = 'open'"
                            " RETURNING id", ticket)
            if not done:  # idempotent: a ticket is refunded once
                return
            s = self.state
            self.set_state({**s, "open": s["open"] - 1, "closed": s["closed"] + 1,
                            "refunded": round(s["refunded"] + amount, 2)})
            self.ref(Customer, customer).send("refunded", amount)

        async def follow_up(self, payload: dict) -> None:
            self.sql("UPDATE tickets SET followed_up = 1 WHERE id = ?", payload["ticket"])

        @ab.callable
        async def set_limit(self, limit: float) -> None:
            self.set_state({**self.state, "limit": limit})

    return Customer, Desk


async def simulate(rt: Any, customers: int = 1000, days: int = 7,
                   progress: Any = None) -> dict[str, Any]:
    """Run the week on *rt* (whose clock must be an ``ab.VirtualClock``); *progress*, if
    given, is called as ``progress(fraction, what)`` as the week goes."""
    customer_cls, desk_cls = build_agents()
    clock = rt.clock
    desk = rt.get(desk_cls, "desk")
    await desk.set_limit(50.0)
    start = clock.now()
    for i in range(customers):
        await rt.get(customer_cls, f"c{i:04d}").plan_week(days)
        if progress and i % 50 == 0:
            progress(i / customers * 0.2, "customers planned their week")
    fork_version = None
    for day in range(days):
        await clock.advance(DAY - 3600)
        for approval in rt.approvals.list("pending"):  # the supervisor, each evening
            if approval.kwargs["amount"] <= 150:
                await rt.approvals.approve(approval.id, by="supervisor")
            else:
                await rt.approvals.reject(approval.id, "over the evening limit", by="supervisor")
        await clock.advance(3600)
        if day == days // 2 - 1:
            fork_version = desk.version
        if progress:
            progress(0.2 + 0.7 * (day + 1) / days, f"day {day + 1} of {days} simulated")
    figures = {"simulated_days": days, "customers": customers,
               "wall_clock_week_s": None, "desk": dict(desk.state), "fork_version": fork_version,
               "started": start}
    return figures


async def what_if(rt: Any, fork_version: int) -> Any:
    """Replay the second half of the week on a fork with a generous refund policy."""
    desk = rt.get("Desk", "desk")
    return await desk.replay(fork_version + 1, on="desk-generous",
                             overrides={"policy": lambda amount, limit: "refund"})


QUESTIONS = {
    "tickets per day": """
        SELECT date_trunc('day', ts) AS day, count(*) AS tickets
        FROM history WHERE agent = 'Desk' AND name = 'desk' AND method = 'open_ticket'
        GROUP BY ALL ORDER BY day""",
    "slowest handlers (p99 ms)": """
        SELECT agent, method, count(*) AS runs,
               round(quantile_cont(duration_ms, 0.5), 3) AS p50_ms,
               round(quantile_cont(duration_ms, 0.99), 3) AS p99_ms
        FROM history WHERE outcome = 'ok' GROUP BY ALL ORDER BY p99_ms DESC LIMIT 5""",
    "how late did scheduled work run": """
        SELECT agent, method, count(*) AS runs, max(lateness_s) AS worst_s
        FROM history WHERE due IS NOT NULL AND source NOT LIKE 'replay:%'
        GROUP BY ALL ORDER BY runs DESC""",
    "approvals": """
        SELECT status, decided_by, count(*) AS n, round(sum(CAST(json_extract(kwargs,
               '$.amount') AS DOUBLE)), 2) AS amount
        FROM approvals GROUP BY ALL ORDER BY n DESC""",
}
