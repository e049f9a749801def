"""The mailbox of one awake agent: the input gate, the commit and the output gate.

Messages to an agent queue in its :class:`Instance`. One task drains the queue (and
exists only while there is something to drain), so handlers of an agent run strictly
one after another. Messages already waiting when a drain starts share one SQLite
transaction, each inside its own savepoint, the way Durable Objects coalesce writes:

    BEGIN
      SAVEPOINT  handler 1 -> its history row  RELEASE       (or ROLLBACK TO on error)
      SAVEPOINT  handler 2 -> its history row  RELEASE
    COMMIT                                  <- durable here
    results, sends, broadcasts and events leave            <- the output gate

A handler that actually suspends (awaits real I/O) ends its batch, and methods known to
suspend start a batch of their own, so a quick call never waits behind a slow one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..envelope import TICK, Envelope
from ..errors import (
    AgentStartError,
    IncompatibleStateError,
    NotInHandlerError,
    OwnedElsewhereError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
)
from ..faults import crash_point
from ..schedule import firing
from ..store import AgentStore, health, lease
from ..store import mcp as mcp_registrations
from ..store import outbox as outboxes
from ..workflow import engine as workflow_engine
from .handler import (
    QUIET,
    HandlerContext,
    Outcome,
    current_chain,
    cut_version,
    enter_batch,
    leave_batch,
    record_failure,
    run_start,
    runs_start,
    start_message,
    translate,
)
from .outputgate import OutputGate, acknowledge, tag_of

if TYPE_CHECKING:
    from .agent import Agent
    from .runtime import Runtime

__all__ = ["Instance", "current_chain"]

Key = tuple[str, str]
_FATAL = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)
_TURN = workflow_engine.CONTINUE
#: How long workflow turns may keep adding to one batch (the event loop waits meanwhile).
_TURNS_SECONDS = 0.02
#: How long due schedules of one agent may keep adding to one batch: a storm of firings
#: then lets an unrelated awaited call in between batches (issue 20), at the cost of a
#: commit per ~ms of firings instead of one per tick.
_FIRINGS_SECONDS = 0.001


class Instance:
    """An awake agent: its object, its open store, its mailbox."""

    __slots__ = ("agent", "alone", "cls", "committed", "ctx", "fresh", "gate", "key", "last_used",
                 "ownership", "queue", "runtime", "spare", "started", "state", "state_json",
                 "store", "task", "version", "workflows")

    def __init__(self, runtime: Runtime, key: Key, cls: type[Agent] | None) -> None:
        self.runtime = runtime
        self.key = key
        #: The call chain of a handler no other agent awaits: ``(key,)``, made once.
        self.alone = (key,)
        self.cls = cls
        self.agent: Agent | None = None
        self.store: AgentStore | None = None
        #: This process's lease on the agent (held while the store is open; see
        #: agentbook.store.lease): one owner per agent across processes.
        self.ownership: lease.Lease | None = None
        self.queue: deque[Envelope] = deque()
        self.task: asyncio.Task | None = None
        self.ctx: HandlerContext | None = None
        #: A handler context no one holds, for the next message (see
        #: ``handler.start_message``: a quiet message's, set as new again).
        self.spare: HandlerContext | None = None
        self.started: type | None = None
        self.fresh = False
        self.version = 0
        self.state: Any = None
        self.state_json = ""
        #: (version, state, state_json) as of the last commit.
        self.committed: tuple[int, Any, str] = (0, None, "")
        self.last_used = time.monotonic()
        #: What leaves after each commit (results, messages, approvals, events).
        self.gate = OutputGate(self)
        #: The workflow runs whose code is live between turns (``None`` until the agent's
        #: first batch looks at its runs: see agentbook.workflow.engine).
        self.workflows: workflow_engine.Runs | None = None

    def cut_version(self, ctx: HandlerContext, method: str, args: str) -> None:
        """End the running handler's version here; what it does next is the next version
        (a workflow turn running several steps: see ``handler.cut_version``)."""
        cut_version(self, ctx, method, args)

    def require_ctx(self, what: str) -> HandlerContext:
        """The running handler's context, or a helpful error."""
        ctx = self.ctx
        if ctx is None:
            raise NotInHandlerError(
                f"{what}() works only inside one of the agent's handlers; from a cell, call "
                "an @ab.callable method that does it"
            )
        return ctx

    @property
    def busy(self) -> bool:
        """Whether a drain is running or messages wait."""
        return self.task is not None or bool(self.queue)

    # -- opening ------------------------------------------------------------------------
    def open(self) -> None:
        """Open the store and load the committed state (a new agent if there is none)."""
        if self.store is not None:
            return
        rt = self.runtime
        if not rt.lease.holds(self.key):
            from ..errors import StoreError

            raise StoreError(f"{self.key[0]}({self.key[1]!r}) belongs to a shard another host"
                             " holds; the message was not run here")
        held = rt.catalog.quarantined(*self.key)
        if held is not None:
            raise health.refused(self.key, held)
        store = None
        # Hibernated a moment ago and not closed yet (agentbook.store.closer): the same
        # open store and lease, its checks passed already; else wait for its close.
        reclaimed = rt.closer.reclaim(self.key) if self.ownership is None else None
        if reclaimed is None and self.key in rt.closer:
            rt.closer.wait(self.key)
        try:
            if reclaimed is not None:
                store, self.ownership = reclaimed
            else:
                if not rt.memory and self.ownership is None:  # (a private folder needs none)
                    self.ownership = lease.take(rt.catalog.lock_path(*self.key),
                                                f"{self.key[0]}({self.key[1]!r})")
                store = AgentStore(rt.path_of(self.key), rt.durability)
                store.set_size_cap(rt.max_store_bytes)
            store.query_seconds = rt.max_query_seconds
            store.events_retention = rt.events_retention
            rt.lease.opened(self.key, store)  # (a Ray host's replica follows its untracked rows)
            loaded = store.load_state()
            if loaded is None:
                self.fresh = True
                initial = self.cls.initial_state if self.cls is not None else {}
                self.version, self.state = 0, initial
                self.state_json = jsonvalue.dumps(initial)
            else:
                self.fresh = False
                if reclaimed is None:
                    self._check_identity(store)
                self.version, self.state_json = loaded
                self.state = jsonvalue.loads(self.state_json)
            due = None if self.fresh else firing.next_due(store)
        except BaseException as exc:
            if store is not None:
                store.close()
            # A store that could not be made (a full disk): its lock file goes too.
            self._release(remove=store is None and not os.path.exists(rt.path_of(self.key)))
            err = translate(exc, store)
            if isinstance(err, StoreCorruptError):
                raise health.quarantine(rt, self.key, err) from None
            raise
        self.store = store
        self.committed = (self.version, self.state, self.state_json)
        rt.mark_opened(self)
        if due is not None:
            rt.timers.set(self.key, due)
        if not self.fresh and mcp_registrations.has_servers(store):
            from ..mcp.agentside import wake

            wake(self)  # reconnect its MCP servers in the background (never waits or raises)

    async def open_waiting(self) -> None:
        """:meth:`open`, waiting up to ``owner_wait`` seconds (polling, the event loop runs
        on) while another process runs the agent; then its ``OwnedElsewhereError``."""
        if self.store is not None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.runtime.owner_wait
        pause = 0.002
        while True:
            try:
                self.open()
                return
            except OwnedElsewhereError as exc:
                now = loop.time()
                if now >= deadline or self.runtime.closed:
                    if any(env.method == TICK for env in self.queue):
                        self.runtime.timers.retry_later(self.key)  # (its owner runs them)
                    raise lease.owned_elsewhere(f"{self.key[0]}({self.key[1]!r})", exc.owner,
                                                now - started) from None
                await asyncio.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 0.05)

    def _check_identity(self, store: AgentStore) -> None:
        """The store must be this agent's: on a case-insensitive file system another name's
        file could answer to this one's path. A mismatch is refused, never merged."""
        meta = store.meta()
        found = (meta.get("class"), meta.get("name"))
        if found[1] is not None and found != self.key:
            raise StoreMismatchError(
                f"the file {store.path} holds the store of {found[0]}({found[1]!r}), not of "
                f"{self.key[0]}({self.key[1]!r}) (names that differ only in case share a file "
                "on macOS and Windows when an older agentbook made it); nothing was written: "
                "rename or move that file (agentbook doctor shows where each agent is)")

    def _release(self, remove: bool = False) -> None:
        if self.ownership is not None:
            self.ownership.release(remove)
            self.ownership = None

    def close(self, later: bool = False, checkpoint: bool = True) -> None:
        """Hibernate: drop the agent object, close the store and let go of the lease.
        *later*: the runtime's closer thread closes the store, then lets go of the lease
        (see agentbook.store.closer), unless it is full; *checkpoint* ``False``: it
        checkpoints the WAL later (an agent put to sleep to make room)."""
        if self.workflows is not None:  # (their code stops; a wake replays their journals)
            self.workflows.drop()
            self.workflows = None
        store, self.store = self.store, None
        if store is not None:
            if later and store.broken is None \
                    and self.runtime.closer.close_later(self.key, store, self.ownership,
                                                        checkpoint):
                self.ownership = None
            else:
                store.close()
        self._release()
        self.agent = None
        self.started = None

    # -- draining -----------------------------------------------------------------------
    async def drain(self) -> None:
        """Run every queued message, batch by batch."""
        try:
            while self.queue and not self.runtime.closed:
                try:
                    if self.queue[0].op is not None:
                        await self._run_op(self.queue.popleft())
                    else:
                        await self._batch()
                        if self.queue:  # (let the event loop run between batches: a
                            nxt = self.queue[0]  # workflow's turns never starve it)
                            if nxt.sched is not None or nxt.method == TICK:
                                await self.runtime.pace()  # (a storm's firings take turns)
                            else:
                                await asyncio.sleep(0)
                except Exception as exc:  # never leave a caller waiting on a dead mailbox
                    import logging

                    logging.getLogger("agentbook").exception("mailbox of %s failed", self.key)
                    self.fail_queue(exc)
        finally:
            self.task = None
            self.last_used = time.monotonic()
            self.runtime.mark_idle(self)

    async def _run_op(self, env: Envelope) -> None:
        assert env.op is not None  # (drain runs only envelopes that carry an op here)
        try:
            result = await env.op(self)
        except BaseException as exc:
            if env.future is not None and not env.future.done():
                env.future.set_exception(exc)
            if isinstance(exc, _FATAL):
                raise
        else:
            if env.future is not None and not env.future.done():
                env.future.set_result(result)

    def _current_class(self) -> type[Agent]:
        cls = self.runtime.class_for(self.key[0]) or self.cls
        if cls is None:
            raise AgentStartError(
                f"no agent class named {self.key[0]!r} is defined in this process; run the "
                "cell (or import the module) that defines it"
            )
        return cls

    def fail_queue(self, exc: BaseException) -> None:
        """Fail every queued message with *exc* (ticks are dropped: rows stay due)."""
        failed = list(self.queue)
        self.queue.clear()
        now = self.runtime.clock.now()
        for env in failed:
            if env.method != TICK:
                self.gate.deliver_failure(env, exc, 0.0, now)

    async def _batch(self) -> None:
        rt = self.runtime
        try:
            cls = self._current_class()
            await self.open_waiting()
            if cls is not self.started:
                self._check_compatible(cls)
            if self.gate.opened is not self.store and self.store is not None:
                self.gate.wake(self.store, self.fresh)  # what an earlier life left to send
            if (self.workflows is None or not self.workflows.checked) and not self.fresh \
                    and not (self.queue and self.queue[0].replay is not None):
                workflow_engine.recover(self)  # runs an earlier life left going
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            err = translate(exc, self.store)
            if (self.cls is None and rt.class_for(self.key[0]) is None
                    and any(env.method == TICK for env in self.queue)):
                # due, but its class is not defined in this process yet (a kernel whose
                # cell defining it has not run, a Ray host that took the agent over before
                # the driver sent it the class): look again after a pause
                rt.timers.retry_later(self.key)
            self.fail_queue(err)
            if self.store is not None and rt.should_drop(err):
                rt.hibernate_one(self, later=False)
            return
        store = self.store
        assert store is not None
        done: list[Outcome] = []
        taken: list[Envelope] = []
        started: HandlerContext | None = None
        scheduled = False
        #: ``(due,)``: the next due time as the last firing's statement read it (no look-up).
        known: tuple[float | None] | None = None
        awaited = False
        began = time.perf_counter()
        sent: list | None = None
        dups: list = []
        scope = None
        try:
            store.begin()
            if self.fresh:
                store.set_meta({"class": self.key[0], "name": self.key[1],
                                "created": repr(rt.clock.now()), "initial_state": self.state_json})
                store.write_state(0, self.state_json)
            if cls is not self.started:
                started = await run_start(self, cls)
            suspends = cls.__dict__.get("_ab_suspends")
            scope = enter_batch(self)  # (what the batch's handlers share, until the loop ends)
            while self.queue and len(taken) < rt.max_batch:
                env = self.queue[0]
                if env.op is not None:
                    break
                if env.method == TICK:
                    self.queue.popleft()
                    scheduled = True
                    firing.expand_due(self)
                    continue
                if taken and suspends is not None and env.method in suspends:
                    break
                if env.method == _TURN and taken and (
                        awaited or time.perf_counter() - began > _TURNS_SECONDS):
                    break  # (workflow turns never hold back a reply someone awaits, nor
                    #        the event loop for long: the drain yields between batches)
                if env.sched is not None and taken and \
                        time.perf_counter() - began > _FIRINGS_SECONDS:
                    break  # (the rest are queued already: the next batch runs them)
                if env.extras is not None:
                    tag = tag_of(env)
                    if tag is not None and outboxes.seen(store, tag[0], tag[1]):
                        self.queue.popleft()  # delivered again after a restart: ran already
                        dups.append((tag[3], tag[1]))
                        continue
                self.queue.popleft()
                awaited = awaited or env.future is not None
                # A lone message needs no savepoint: if it fails, the whole (otherwise
                # empty) transaction is rolled back instead (a firing's failure is then
                # recorded in a new one: undo_lone). Saves two statements. (Also the first
                # after a wake, unless an on_start of the class's own ran in the batch.)
                lone = (not taken and not self.queue and not self.fresh
                        and (started is None or not runs_start(cls))
                        and env.approval is None and env.replay is None)
                taken.append(env)
                outcome = start_message(self, env, cls, lone)  # (most finish at once)
                if not isinstance(outcome, Outcome):
                    outcome = await outcome
                if outcome is not QUIET:  # (else nothing of it is needed after the commit)
                    done.append(outcome)
                if not store.conn.in_transaction and self.lost(outcome, lone):
                    # (none of the batch is committed, so none of it may be acknowledged)
                    raise outcome.value if not outcome.ok else store.lost_error()
                if outcome.ctx.sched_dirty or env.sched is not None:
                    scheduled = True
                    # (the next due time as the firing's own statement read it holds until
                    # another message touches schedules: each that does says so)
                    known = outcome.ctx.due_after if outcome.ok else None
                if (lone and not outcome.ok) or outcome.ctx.suspended:
                    break
            leave_batch(scope)
            scope = None
            if store.broken is not None:  # it went read-only or was found damaged
                raise store.broken
            due = None if not scheduled else (
                known[0] if known is not None else firing.schedule_due(store))
            if self.fresh and store.conn.in_transaction:
                rt.created(self)  # before the commit: the catalog is a superset of the stores
            if store.conn.in_transaction:
                if scheduled:
                    rt.timers.index_before_commit(self.key, due)
                sent = self._stamp(started, done)
                if sent:  # messages to other agents commit with the batch (SPEC 2.3)
                    outboxes.write(store, [row for _k, _e, row in sent])
                    rt.timers.index_before_commit(self.key, sent[0][2][1])  # found on restart
                if self.version != self.committed[0] or self.fresh:
                    store.write_state(self.version, self.state_json)
                rt.lease.fence(self.key)  # a Ray host whose lease ran out commits nothing
                crash_point("before-commit")
                store.commit()
        except BaseException as exc:
            # Start failure, commit failure or cancellation: the whole batch is undone.
            if scope is not None:  # (a handler raised what ends the batch)
                leave_batch(scope)
            try:
                store.rollback()
            except Exception:
                pass
            self.version, self.state, self.state_json = self.committed
            if started is not None:
                self.started = None
            if isinstance(exc, _FATAL):
                self.queue.extendleft(reversed([e for e in taken if e.sched is None]))
                raise
            err = translate(exc, store)
            if store.broken is not None:  # close it (no more writes go in); quarantine damage
                err = health.retire(self, store.broken)
            for outcome in done:
                for kind, data in outcome.ctx.approvals:
                    if kind == "request":
                        rt.approvals.forget(data[0])
            if isinstance(exc, AgentStartError):
                self.fail_queue(err)
            now = rt.clock.now()
            for env in taken:
                if env.sched is None:
                    self.gate.deliver_failure(env, err, 0.0, now)
            lost = [e for e in taken if e.sched is not None]
            hold = None
            if lost and self.store is not None and isinstance(err, StoreError) \
                    and not self._count_lost_attempts(lost, err):
                hold = firing.hold_unrecorded(self, lost, err)  # not again at once, forever
            if hold is not None:
                rt.timers.set(self.key, hold)
            elif scheduled and self.store is not None:
                rt.timers.set(self.key, firing.schedule_due(store))
            if self.workflows is not None and workflow_engine.forget(self):
                # workflow runs moved in the batch: they go on from their journals, looked
                # at again a moment later (not at once: the failure may last)
                again = rt.clock.now() + 1.0
                current = rt.timers.next_due(self.key)
                if current is None or again < current:
                    rt.timers.set(self.key, again)
            if self.store is not None and rt.should_drop(err):
                rt.hibernate_one(self, later=False)
            return
        # Durable from here on: the output gate opens.
        crash_point("after-commit-before-reply")
        self.committed = (self.version, self.state, self.state_json)
        if rt.built_analytics is not None:  # only a projection that exists needs to know
            rt.dirty.add(self.key)
        self.fresh = False
        if scheduled:
            firing.recorded(self)
            rt.timers.set(self.key, due)
            if not taken:  # a tick found nothing due (a stale index entry)
                rt.timers.index_exact([(self.key, firing.next_due(store))])
        if sent:
            self.gate.release(sent)
        if started is not None:
            self.gate.deliver_start(started)
        for outcome in done:
            if outcome.env.extras is not None:
                tag = tag_of(outcome.env)
                if tag is not None:  # run (or failed in its handler): done with it
                    dups.append((tag[3], tag[1]))
            if outcome.ok:
                self.gate.deliver_success(outcome)
            elif outcome.recorded is not None and outcome.env.sched is not None:
                rt.scheduled_failure(self.key, outcome)
            else:
                if outcome.recorded is not None:  # an approved method failed: consumed
                    rt.approvals.after_commit(self.key, "failed", outcome.recorded[1])
                self.gate.deliver_failure(outcome.env, outcome.value, outcome.duration, outcome.ts,
                                      outcome.version)
        if dups:
            acknowledge(rt, dups)
        self.gate.flush_acks()
        if self.workflows is not None and not self.workflows.checked:
            workflow_engine.recover(self)  # (a rewind let the live runs go)

    # -- a lone message: the whole transaction, with no savepoint (see _batch) ----------
    @staticmethod
    def records_anew(env: Envelope) -> bool:
        """Whether a lone message that failed has its failure recorded in a transaction
        of its own (:meth:`undo_lone`): a firing's (its retry or dead letter) is."""
        return env.sched is not None

    def undo_lone(self, env: Envelope) -> None:
        """A lone message failed: roll its whole transaction back, and begin the new one
        a firing's failure is recorded in (:meth:`records_anew`) - unless SQLite had
        rolled the batch back itself (a full disk, an I/O error): then nothing is
        recorded, :meth:`lost` says so, and the occurrence's attempt is counted as lost."""
        store = self.store
        assert store is not None
        alive = store.conn.in_transaction
        try:
            store.rollback()
        except Exception:
            pass
        if alive and self.records_anew(env):
            store.begin()

    def lost(self, outcome: Outcome, lone: bool) -> bool:
        """The store is out of its transaction after *outcome*'s message: whether that is
        SQLite having rolled the batch back (a full disk, an I/O error), even if the
        handler caught the error, so nothing of the batch is committed. A lone message
        that failed ends its transaction itself (:meth:`undo_lone`): only one whose
        failure is recorded anew must still have one."""
        return not (lone and not outcome.ok and not self.records_anew(outcome.env))

    def _stamp(self, started: HandlerContext | None, done: list[Outcome]) -> list | None:
        """The messages the batch's committing handlers sent, numbered (or ``None``)."""
        ctxs = [o.ctx for o in done if o.ok and o.ctx.lists and o.ctx.outbox]
        if started is not None and started.outbox:
            ctxs.insert(0, started)
        return self.gate.stamp(ctxs) if ctxs else None

    def _count_lost_attempts(self, envs: list[Envelope], err: BaseException) -> bool:
        """Scheduled runs of a batch that the store lost (a full disk, an I/O error) still
        count as failed attempts, recorded in a transaction of their own, so their retry
        policy applies - backoff, then the dead-letter list - instead of firing again at
        once. If even that can't be written, they stay due as they were and this returns
        ``False`` (the mailbox then holds them back in memory: ``firing.hold_unrecorded``)."""
        rt, store = self.runtime, self.store
        assert store is not None
        recorded = []
        try:
            store.begin()
            ts = rt.clock.now()
            for env in envs:
                recorded.append((env, record_failure(self, env, err, ts, 0.0), self.version))
            rt.timers.index_before_commit(self.key, firing.next_due(store))
            store.write_state(self.version, self.state_json)
            store.commit()
        except Exception:
            try:
                store.rollback()
            except Exception:
                pass
            self.version, self.state, self.state_json = self.committed
            return False
        self.committed = (self.version, self.state, self.state_json)
        firing.recorded(self)
        if rt.built_analytics is not None:
            rt.dirty.add(self.key)
        for env, what, version in recorded:
            rt.scheduled_failure(self.key, Outcome(env, False, err, HandlerContext(env.source), ts,
                                                   0.0, version, what))
        return True

    def _check_compatible(self, cls: type[Agent]) -> None:
        if self.fresh:
            return
        if _kind(cls.initial_state) != _kind(self.state) and (
            isinstance(cls.initial_state, (dict, list)) or isinstance(self.state, (dict, list))
        ):
            raise IncompatibleStateError(
                f"{cls.__name__}.initial_state is a {_kind(cls.initial_state)} but the stored "
                f"state of {self.key[1]!r} is a {_kind(self.state)}; keep the same shape, or "
                "use a new class name for the new design"
            )


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    return type(value).__name__
