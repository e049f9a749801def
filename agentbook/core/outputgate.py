"""The output gate of an awake agent: what leaves once a batch's commit is durable -
results to callers, messages to other agents, approvals to the inbox, events and
broadcasts - and how a failure is reported.

Each mailbox (:class:`~agentbook.core.mailbox.Instance`) owns one gate. The mailbox calls it
only after ``COMMIT`` returned (or for work that never committed, to report the failure),
so nothing a handler did is seen outside before it is durable (SPEC 2.4).

Messages to other agents go through the sender's durable outbox (:mod:`agentbook.store.outbox`):
:meth:`OutputGate.stamp` numbers them and the mailbox writes them with the batch's commit,
:meth:`OutputGate.release` delivers them after it, each tagged with its sender and number
(``env.extras[OUTBOX]``); the receiver skips a number it has seen, remembers it with the
handler it ran, and after its own commit :meth:`OutputGate.acknowledge` deletes the rows.
What is still in the outbox when the sender's store opens again is delivered first
(:meth:`OutputGate.wake`). Awaited calls (``await ref.method()`` from a handler) do not go
through the outbox: their answer is needed before the handler can commit, and the callee
commits their effect before answering, so an acknowledged caller never loses one."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ..envelope import Envelope
from ..store import outbox

if TYPE_CHECKING:
    from ..store import AgentStore
    from .handler import HandlerContext, Outcome
    from .mailbox import Instance
    from .runtime import Runtime

Key = tuple[str, str]

#: The key in ``Envelope.extras`` of a message from an outbox:
#: ``(sender "Class/name", seq, sender's low-water mark, sender key)``.
OUTBOX = "_ab_outbox"


class _Sender:
    """What a runtime remembers of one sender's outbox across its hibernations: the last
    number it gave, and numbers acknowledged while its store was busy or closed."""

    __slots__ = ("acked", "last")

    def __init__(self) -> None:
        self.last = 0
        self.acked: list[int] = []


#: Per runtime, per sender (made on the first send; a runtime that sends nothing has none).
_senders: weakref.WeakKeyDictionary[Runtime, dict[Key, _Sender]] = weakref.WeakKeyDictionary()
#: Whether any sender was ever seen (so a process that never sends skips every look-up).
_ANY = [False]


def _sender(rt: Runtime, key: Key) -> _Sender:
    table = _senders.get(rt)
    if table is None:
        table = _senders[rt] = {}
        _ANY[0] = True
    found = table.get(key)
    if found is None:
        found = table[key] = _Sender()
    return found


class OutputGate:
    """Delivery after the commit, for one mailbox."""

    __slots__ = ("mailbox", "opened")

    def __init__(self, mailbox: Instance) -> None:
        self.mailbox = mailbox
        #: The store whose leftover outbox rows were delivered (see :meth:`wake`).
        self.opened: AgentStore | None = None

    @property
    def key(self) -> Key:
        return self.mailbox.key

    def deliver_start(self, ctx: HandlerContext) -> None:
        """``on_start`` committed: announce it, and let out what it did."""
        rt = self.mailbox.runtime
        if rt.events.active:
            rt.emit_event("agent:start", self.key, {"version": self.mailbox.version})
        self.flush(ctx)

    def quiet(self, outcome: Outcome) -> bool:
        """Whether *outcome* leaves nothing after the commit: a plain message that worked,
        that nobody awaits, that sent, announced and asked for nothing, while nobody listens
        live (a subscriber gets the live events of the messages that run after it subscribed,
        as ``Agent.emit`` decides when it is called). The mailbox keeps only the others until
        the commit: a burst's outcomes and handler contexts are then gone at once, instead
        of being kept for the garbage collector to look at (issue 20)."""
        env, ctx = outcome.env, outcome.ctx
        return (outcome.ok and env.future is None and env.extras is None and env.sched is None
                and env.approval is None and env.replay is None and not ctx.lists
                and not ctx.destroy and not self.mailbox.runtime.events.live)

    def deliver_success(self, outcome: Outcome) -> None:
        """A handler's work committed: its result, outbox, approvals and events leave."""
        rt = self.mailbox.runtime
        env, ctx = outcome.env, outcome.ctx
        fut = env.future
        if fut is not None and not fut.done():
            fut.set_result(outcome.value)
        elif not ((ctx.lists and (ctx.approvals or ctx.events)) or ctx.destroy or rt.events.live):
            return  # (a sent message that only changed state: nothing leaves, nothing to tell)
        for kind, data in ctx.approvals:
            rt.approvals.after_commit(self.key, kind, data)
        if rt.events.live:  # (after the commit nothing more goes on record: only live)
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

    # -- the durable outbox -------------------------------------------------------------
    def stamp(self, ctxs: list[HandlerContext]) -> list[tuple[Key, Envelope, tuple]]:
        """Number the messages the committing handlers (*ctxs*) sent; returns
        ``(receiver, envelope, outbox row)`` for each, for the mailbox to write before
        its commit and to :meth:`release` after it."""
        mailbox = self.mailbox
        rt = mailbox.runtime
        state = _sender(rt, mailbox.key)
        now = rt.clock.now()
        last = state.last
        out = []
        for ctx in ctxs:
            for key, env in ctx.outbox:
                last = outbox.next_seq(last)
                out.append((key, env, (last, now, key[0], key[1], env.method, env.args_json,
                                       env.kwargs_json, env.source)))
        state.last = last
        return out

    def release(self, sent: list[tuple[Key, Envelope, tuple]]) -> None:
        """The outbox rows of *sent* committed: deliver them (:meth:`stamp`)."""
        mailbox = self.mailbox
        store = mailbox.store
        assert store is not None
        try:
            low = outbox.low_water(store)
        except Exception:  # (can't read it: the receivers then forget nothing this time)
            low = None
        self._deliver([(key, env, row[0]) for key, env, row in sent], low)

    def _deliver(self, items: list[tuple[Key, Envelope, int]], low: int | None) -> None:
        mailbox = self.mailbox
        rt = mailbox.runtime
        me = mailbox.key
        sender = f"{me[0]}/{me[1]}"
        away = []
        for key, env, seq in items:
            if rt.router is not None and not rt.owns(key):
                # handed to the host that owns it: its transport's word acknowledges it, and
                # the envelope crosses as it was sent (no outbox tag rides along)
                away.append((me, seq))
            else:
                extras = dict(env.extras) if env.extras else {}
                extras[OUTBOX] = (sender, seq, low, me)
                env.extras = extras
            rt.enqueue(key, env)
        if away:
            acknowledge(rt, away)

    def wake(self, store: AgentStore, fresh: bool) -> None:
        """The first batch of a newly opened store: deliver what its outbox still holds
        (a restart, or a hibernation before the acknowledgement), oldest first, before
        anything new leaves. Outside any transaction."""
        self.opened = store
        if fresh:
            return
        mailbox = self.mailbox
        rt = mailbox.runtime
        table = _senders.get(rt)
        state = table.get(mailbox.key) if table is not None else None
        if state is not None and state.acked:
            _delete(rt, mailbox.key, store, state)
        rows = outbox.pending(store)
        if not rows:
            return
        state = _sender(rt, mailbox.key)
        state.last = max(state.last, rows[-1].seq)
        items = []
        for row in rows:
            env = Envelope.forwarded(row.method, row.args, row.kwargs, source=row.source)
            items.append(((row.cls, row.name), env, row.seq))
        self._deliver(items, rows[0].seq)

    def flush_acks(self) -> None:
        """Delete the rows acknowledged while this agent's store was busy (after a batch)."""
        if not _ANY[0]:
            return
        table = _senders.get(self.mailbox.runtime)
        if table is None:
            return
        state = table.get(self.mailbox.key)
        store = self.mailbox.store
        if state is not None and state.acked and store is not None \
                and not store.conn.in_transaction:
            _delete(self.mailbox.runtime, self.mailbox.key, store, state)


def tag_of(env: Envelope) -> Any:
    """The outbox tag of a message (``None``: it did not come from an outbox)."""
    extras = env.extras
    return None if extras is None else extras.get(OUTBOX)


def acknowledge(rt: Runtime, acks: list[tuple[Key, int]]) -> None:
    """Receivers committed (or were done with) these ``(sender, seq)`` messages: delete
    their outbox rows now where the sender's store is open and idle, else at its next
    batch (or its next wake)."""
    touched = []
    for key, seq in acks:
        state = _sender(rt, key)
        state.acked.append(seq)
        touched.append((key, state))
    for key, state in touched:
        if not state.acked:
            continue
        inst = rt.instances.get(key)
        store = inst.store if inst is not None else None
        if store is not None and not store.conn.in_transaction:
            _delete(rt, key, store, state)


def _delete(rt: Runtime, key: Key, store: AgentStore, state: _Sender) -> None:
    seqs, state.acked = state.acked, []
    try:
        outbox.delete(store, seqs)
    except Exception:  # (a full disk: the rows stay, are delivered again and skipped)
        state.acked = seqs + state.acked
        return
    rt.lease.written(key)  # (a Ray host ships the deletion to the replica)
