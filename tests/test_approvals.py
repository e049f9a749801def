"""Approvals: durable, bound to the exact action, decided once, never revived."""

from __future__ import annotations

import asyncio

import pytest

import agentbook as ab


class Desk(ab.Agent):
    initial_state = {"refunded": []}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS refunds(order_id TEXT PRIMARY KEY, amount REAL)")

    @ab.callable
    async def refund(self, order_id: str, amount: float, expires_in: float | None = 3600,
                     approvers: list | None = None) -> str:
        approval = await self.request_approval(
            "issue_refund", {"order_id": order_id, "amount": amount},
            summary=f"Refund {amount} for order {order_id}",
            side_effects=["charges the card back"], expires_in=expires_in, approvers=approvers)
        return approval.id

    @ab.callable
    async def propose_then_fail(self) -> None:
        await self.request_approval("issue_refund", {"order_id": "x", "amount": 1.0},
                                    summary="never committed")
        raise RuntimeError("changed my mind")

    @ab.callable
    async def forge(self, approval_id: str):
        return self.sql("UPDATE _ab_approvals SET status = 'approved' WHERE id = ?", approval_id)

    @ab.callable
    async def bad_request(self, kind: str):
        if kind == "unknown":
            await self.request_approval("nope", {}, summary="x")
        elif kind == "private":
            await self.request_approval("_secret", {}, summary="x")
        elif kind == "args":
            await self.request_approval("issue_refund", {"order": 1}, summary="x")
        elif kind == "json":
            await self.request_approval("issue_refund", {"order_id": {1}, "amount": 1},
                                        summary="x")
        elif kind == "summary":
            await self.request_approval("issue_refund", {"order_id": "a", "amount": 1},
                                        summary="")

    async def issue_refund(self, order_id: str, amount: float) -> str:
        if amount > 1000:
            raise ValueError("the bank refused")
        self.sql("INSERT INTO refunds VALUES (?, ?)", order_id, amount)
        self.set_state({"refunded": [*self.state["refunded"], order_id]})
        return f"refunded {order_id}"

    def _secret(self):
        pass


async def test_request_returns_at_once_and_approving_runs_the_exact_action_once(rt):
    desk = rt.get(Desk, "d")
    approval_id = await desk.refund("o1", 20.0)
    pending = rt.approvals.pending()
    assert list(pending.id) == [approval_id]
    row = pending.iloc[0]
    assert row.summary == "Refund 20.0 for order o1" and row.side_effects == ["charges the card back"]
    assert row.kwargs == {"order_id": "o1", "amount": 20.0} and row.time_left_s == 3600
    assert desk.state == {"refunded": []}
    result = await rt.approvals.approve(approval_id, by="ada")
    assert result == "refunded o1"
    assert desk.state == {"refunded": ["o1"]}
    assert desk.sql("SELECT * FROM refunds").to_dict("records") == [{"order_id": "o1", "amount": 20.0}]
    assert rt.approvals.pending().empty
    decided = rt.approvals.get(approval_id)
    assert decided.status == "approved" and decided.decided_by == "ada"
    top = desk.history(limit=1).iloc[0]
    assert top.method == "issue_refund" and top.source == f"approval:{approval_id}"
    assert top.kwargs == {"order_id": "o1", "amount": 20.0}
    with pytest.raises(ab.ApprovalDecidedError, match="already approved by ada"):
        rt.approvals.approve(approval_id)
    with pytest.raises(ab.ApprovalDecidedError):
        rt.approvals.reject(approval_id)
    assert desk.state == {"refunded": ["o1"]}


async def test_concurrent_decisions_run_the_action_at_most_once(rt):
    desk = rt.get(Desk, "race")
    approval_id = await desk.refund("o2", 5.0)
    calls = [rt.approvals.approve(approval_id, by=f"p{i}") for i in range(5)]
    calls.append(rt.approvals.reject(approval_id, "no", by="q"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == "refunded o2"
    assert all(isinstance(r, ab.ApprovalDecidedError) for r in results[1:])
    assert desk.state == {"refunded": ["o2"]}
    assert len(desk.sql("SELECT * FROM refunds")) == 1


async def test_rejecting_records_who_and_why_and_never_runs(rt):
    desk = rt.get(Desk, "rej")
    approval_id = await desk.refund("o3", 7.0)
    events = []
    rt.events.subscribe(events.append, types=["approval:*"])
    await rt.approvals.reject(approval_id, "duplicate request", by="grace")
    approval = rt.approvals.get(approval_id)
    assert (approval.status, approval.decided_by, approval.reason) == ("rejected", "grace",
                                                                      "duplicate request")
    assert desk.state == {"refunded": []}
    assert [e["type"] for e in events] == ["approval:reject"]
    with pytest.raises(ab.ApprovalDecidedError, match="already rejected by grace"):
        await rt.approvals.approve(approval_id)
    history = rt.approvals.history()
    assert history.set_index("id").loc[approval_id, "reason"] == "duplicate request"


async def test_expiry_is_recorded_and_an_expired_approval_never_runs(rt, clock):
    desk = rt.get(Desk, "exp")
    approval_id = await desk.refund("o4", 9.0, expires_in=600)
    assert rt.approvals.get(approval_id).time_left == 600
    events = []
    rt.events.subscribe(events.append, types=["approval:expire"])
    await clock.advance(599)
    assert rt.approvals.get(approval_id).status == "pending"
    await clock.advance(1)
    assert rt.approvals.get(approval_id).status == "expired"
    assert [e["payload"]["id"] for e in events] == [approval_id]
    assert rt.approvals.pending().empty
    with pytest.raises(ab.ApprovalDecidedError, match="expired"):
        rt.approvals.approve(approval_id)
    assert desk.state == {"refunded": []}


async def test_a_failing_approved_action_rolls_back_and_is_consumed(rt):
    desk = rt.get(Desk, "fail")
    approval_id = await desk.refund("big", 5000.0)
    with pytest.raises(ValueError, match="bank refused"):
        await rt.approvals.approve(approval_id)
    approval = rt.approvals.get(approval_id)
    assert approval.status == "failed"
    assert desk.sql("SELECT count(*) AS n FROM refunds").n[0] == 0
    assert desk.history(limit=1).outcome[0] == "error"
    with pytest.raises(ab.ApprovalDecidedError):
        rt.approvals.approve(approval_id)


async def test_only_named_approvers_may_decide(rt):
    desk = rt.get(Desk, "who")
    approval_id = await desk.refund("o5", 1.0, approvers=["boss"])
    with pytest.raises(ab.ApprovalForbiddenError, match="boss"):
        await rt.approvals.approve(approval_id, by="intern")
    assert rt.approvals.get(approval_id).status == "pending"
    assert await rt.approvals.approve(approval_id, by="boss") == "refunded o5"


async def test_a_request_in_a_failed_handler_leaves_no_approval(rt):
    desk = rt.get(Desk, "rollback")
    with pytest.raises(RuntimeError):
        await desk.propose_then_fail()
    assert rt.approvals.history().empty


@pytest.mark.parametrize(
    ("kind", "error"),
    [("unknown", ab.UsageError), ("private", ab.UsageError), ("args", ab.BadArgumentsError),
     ("json", ab.JSONValueError), ("summary", ab.UsageError)],
)
async def test_bad_requests_are_typed_errors_and_store_nothing(rt, kind, error):
    desk = rt.get(Desk, "bad")
    with pytest.raises(error):
        await desk.bad_request(kind)
    assert rt.approvals.history().empty


async def test_an_approval_cannot_be_forged_through_the_agents_sql(rt):
    desk = rt.get(Desk, "forger")
    approval_id = await desk.refund("o6", 3.0)
    with pytest.raises(ab.SQLError, match="not allowed"):
        await desk.forge(approval_id)
    assert rt.approvals.get(approval_id).status == "pending"
    assert desk.state == {"refunded": []}


async def test_changed_arguments_are_detected_and_refused(rt):
    desk = rt.get(Desk, "tamper")
    approval_id = await desk.refund("o7", 10.0)
    rt.hibernate()
    import apsw

    conn = apsw.Connection(rt.path_of(desk._ab_key))
    conn.execute("UPDATE _ab_approvals SET kwargs = ? WHERE id = ?",
                 ('{"order_id":"o7","amount":99999.0}', approval_id))
    conn.close()
    with pytest.raises(ab.ApprovalTamperedError):
        await rt.approvals.approve(approval_id)
    assert desk.state == {"refunded": []}


async def test_unknown_ids_are_refused_at_the_call(rt):
    with pytest.raises(ab.ApprovalNotFoundError, match="pending"):
        rt.approvals.approve("ap-nope")
    with pytest.raises(KeyError):
        rt.approvals.get("ap-nope")


async def test_pending_approvals_survive_a_restart_with_the_same_id_and_expiry(tmp_path, clock):
    path = tmp_path / "s"
    rt = ab.Runtime(path, clock=clock)
    approval_id = await rt.get(Desk, "restart").refund("o8", 4.0, expires_in=3600)
    expires = rt.approvals.get(approval_id).expires
    rt.close()  # or the kernel dies: the approval was committed with the handler
    rt2 = ab.Runtime(path, clock=clock)
    desk = rt2.get(Desk, "restart")  # (re-)running the cell that defines and uses the agent
    again = rt2.approvals.get(approval_id)
    assert again.status == "pending" and again.expires == expires
    assert await rt2.approvals.approve(approval_id) == "refunded o8"
    assert desk.state == {"refunded": ["o8"]}
    await rt2.aclose()


async def test_awaiting_an_approval_resolves_when_decided_and_ab_run_refuses_it(rt):
    desk = rt.get(Desk, "wait")
    approval_id = await desk.refund("o9", 2.0)
    approval = rt.approvals.get(approval_id)
    with pytest.raises(ab.WouldBlockError):
        ab.run(approval)
    waiter = asyncio.ensure_future(_await(approval))
    await asyncio.sleep(0)
    assert not waiter.done()
    await rt.approvals.approve(approval_id)
    decided = await waiter
    assert decided.status == "approved"


async def _await(approval):
    return await approval


async def test_tool_output_saying_approve_changes_nothing(rt):
    desk = rt.get(Desk, "words")
    approval_id = await desk.refund("o10", 1.0)
    # a model or tool can only produce text; text is never a decision
    rt.events.subscribe(lambda e: None)
    await desk.call("refund", "approve " + approval_id, 0.0)
    assert rt.approvals.get(approval_id).status == "pending"
    assert desk.state == {"refunded": []}


class Vault(ab.Agent):
    initial_state = {"paid": []}

    @ab.callable
    async def ask(self, to: str, amount: float) -> str:
        return (await self.request_approval("transfer", {"to": to, "amount": amount},
                                            summary=f"pay {amount} to {to}")).id

    @ab.needs_approval
    async def transfer(self, to: str, amount: float) -> None:
        self.set_state({"paid": [*self.state["paid"], [to, amount]]})


class Thief(ab.Agent):
    @ab.callable
    async def steal(self) -> None:
        await self.ref(Vault, "v").call("transfer", "mallory", 1e6)


async def test_a_needs_approval_method_runs_only_when_approved(rt):
    vault, thief = rt.get(Vault, "v"), rt.get(Thief, "t")
    with pytest.raises(ab.NotCallableError, match="only when a person approves"):
        await thief.steal()
    with pytest.raises(ab.NotCallableError):
        vault.call("transfer", "me", 1.0)
    approval_id = await vault.ask("alice", 5.0)
    await rt.approvals.approve(approval_id)
    assert vault.state == {"paid": [["alice", 5.0]]}
    replayed = await vault.replay(1)
    assert replayed.fork.state == {"paid": []}, "a replay must not run the approved action"
