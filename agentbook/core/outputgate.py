"""The output gate of an awake agent: what leaves once a batch's commit is durable -
results to callers, messages to other agents, approvals to the inbox, events and
broadcasts - and how a failure is reported.

Each mailbox (:class:`~agentbook.core.mailbox.Instance`) owns one gate. The mailbox calls it
only after ``COMMIT`` returned (or for work that never committed, to report the failure),
so nothing a handler did is seen outside before it is durable (SPEC 2.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..envelope import Envelope
    from .handler import HandlerContext, Outcome
    from .mailbox import Instance

Key = tuple[str, str]


class OutputGate:
    """Delivery after the commit, for one mailbox."""

    __slots__ = ("mailbox",)

    def __init__(self, mailbox: Instance) -> None:
        self.mailbox = mailbox

    @property
    def key(self) -> Key:
        return self.mailbox.key

    def deliver_start(self, ctx: HandlerContext) -> None:
        """``on_start`` committed: announce it, and let out what it did."""
        rt = self.mailbox.runtime
        if rt.events.active:
            rt.emit_event("agent:start", self.key, {"version": self.mailbox.version})
        self.flush(ctx)

    def deliver_success(self, outcome: Outcome) -> None:
        """A handler's work committed: its result, outbox, approvals and events leave."""
        rt = self.mailbox.runtime
        env, ctx = outcome.env, outcome.ctx
        fut = env.future
        if fut is not None and not fut.done():
            fut.set_result(outcome.value)
        for key, out in ctx.outbox:
            rt.enqueue(key, out)
        for kind, data in ctx.approvals:
            rt.approvals.after_commit(self.key, kind, data)
        if rt.events.active:
            if env.sched is not None:
                rt.emit_scheduled("execute", self.key, env, outcome.version)
            else:
                rt.emit_event("rpc", self.key, {"method": env.method, "version": outcome.version,
                                           "source": env.source})
            if ctx.state_changed:
                rt.emit_event("state:update", self.key, {"state": ctx.state_after,
                                                    "source": env.source,
                                                    "version": outcome.version})
        self.flush(ctx)
        if ctx.destroy:
            rt.destroy_later(self.key)

    def flush(self, ctx: HandlerContext) -> None:
        """The committed handler's events, broadcasts and connection sends leave."""
        rt = self.mailbox.runtime
        for type_, payload in ctx.events:
            if type_ == "broadcast":
                rt.broadcast_from(self.key, payload["message"], payload["exclude"])
            elif type_ == "connection:send":  # a held connection write (agentbook.serve.gate)
                payload()
            else:
                rt.emit_event(type_, self.key, payload)

    def deliver_failure(self, env: Envelope, exc: BaseException, duration: float, ts: float,
                        at_version: int | None = None) -> None:
        """*env* failed (nothing of it committed): record it, and tell its caller or
        ``on_error``."""
        rt = self.mailbox.runtime
        rt.catalog.record_failure((
            self.key[0], self.key[1], ts, env.method, env.args_json, env.kwargs_json,
            env.source, duration, f"{type(exc).__name__}: {exc}",
            self.mailbox.committed[0] if at_version is None else at_version,
        ))
        if rt.events.active:
            rt.emit_event("rpc:error", self.key, {"method": env.method, "error": str(exc),
                                             "type": type(exc).__name__})
        fut = env.future
        if fut is not None:
            if not fut.done():
                fut.set_exception(exc)
        elif env.method != "on_error":
            rt.report_error(self.key, env, exc)
