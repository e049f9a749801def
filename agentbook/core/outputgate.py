"""The output gate of an awake agent: what leaves once a batch's commit is durable -
results to callers, messages to other agents, approvals to the inbox, events and
broadcasts - and how a failure is reported. Mixed into
:class:`~agentbook.mailbox.Instance`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..envelope import Envelope
    from .handler import HandlerContext, Outcome
    from .runtime import Runtime

Key = tuple[str, str]


class OutputGate:
    """Delivery after the commit (mixed into :class:`~agentbook.mailbox.Instance`)."""

    __slots__ = ()
    runtime: Runtime
    key: Key
    version: int
    committed: tuple[int, Any, str]

    def _deliver_start(self, ctx: HandlerContext) -> None:
        rt = self.runtime
        if rt.events.active:
            rt.emit_event("agent:start", self.key, {"version": self.version})
        self._flush(ctx)

    def _deliver_success(self, outcome: Outcome) -> None:
        rt = self.runtime
        env, ctx = outcome.env, outcome.ctx
        fut = env.future
        if fut is not None and not fut.done():
            fut.set_result(outcome.value)
        for key, out in ctx.outbox:
            rt.enqueue(key, out)
        for kind, data in ctx.approvals:
            rt.approvals._after_commit(self.key, kind, data)
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
        self._flush(ctx)
        if ctx.destroy:
            rt.destroy_later(self.key)

    def _flush(self, ctx: HandlerContext) -> None:
        rt = self.runtime
        for type_, payload in ctx.events:
            if type_ == "broadcast":
                rt.broadcast_from(self.key, payload["message"], payload["exclude"])
            elif type_ == "connection:send":  # (see agentbook.serve.gate)
                payload[0]._write(payload[1])
            else:
                rt.emit_event(type_, self.key, payload)

    def _deliver_failure(self, env: Envelope, exc: BaseException, duration: float, ts: float,
                         at_version: int | None = None) -> None:
        rt = self.runtime
        rt.catalog.record_failure((
            self.key[0], self.key[1], ts, env.method, env.args_json, env.kwargs_json,
            env.source, duration, f"{type(exc).__name__}: {exc}",
            self.committed[0] if at_version is None else at_version,
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
