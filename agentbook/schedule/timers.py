"""The runtime's one timer: a heap of each agent's next due time.

Every agent with pending schedules has one entry ``(due, key)``; only the earliest entry
holds a clock timer. When it fires, every agent that is due gets a *tick* message, which
wakes it if it hibernates; the agent then runs its due schedules as ordinary handlers.
Entries are replaced lazily (a newer due for the same agent makes older entries stale),
so arming costs ``O(log n)`` and memory is one small tuple per agent with work pending.

The durable side is the catalog's ``timers`` index, kept never later than the truth: a
schedule that moves an agent's next due earlier is indexed *before* the agent's commit,
so a restart (which loads the index) wakes every agent that has something due.

Several processes may share a folder (and so the index), but only the one holding an
agent's lease runs it (:mod:`agentbook.store.lease`). An agent that is due here but
awake in another process is not woken: its entry comes back a little later (backing off
to :data:`RETRY_MAX` seconds), so if that process dies this one takes the schedules over.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING

from ..clock import TimerHandle
from ..store import lease

if TYPE_CHECKING:
    from ..core.runtime import Runtime

__all__ = ["Timers"]

Key = tuple[str, str]
_INF = float("inf")
#: The first and the longest pause before looking again at an agent due here that
#: another process runs (clock seconds).
RETRY_FIRST = 0.5
RETRY_MAX = 10.0


class Timers:
    """Next-due bookkeeping for every agent of one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, float] = {}
        self._indexed: dict[Key, float] = {}
        self._seq = itertools.count()
        self._handle: TimerHandle | None = None
        self._pending_arm = False
        #: Agents another process ran when they came due here: the next pause.
        self._elsewhere: dict[Key, float] = {}

    def load(self) -> None:
        """Load the durable index (at runtime start): the entries of agents this process
        runs (on the Ray backend, a host's own shards; the driver runs none)."""
        for class_name, name, due in self.rt.catalog.timers():
            key = (class_name, name)
            if not self.rt.owns(key):
                continue
            self._indexed[key] = due
            self._set(key, due)
        self.rearm()

    def reload(self) -> None:
        """Forget everything in memory and load the index again."""
        self._heap.clear()
        self._due.clear()
        self._indexed.clear()
        self.load()

    def next_due(self, key: Key) -> float | None:
        """The in-memory next due time of an agent, if any."""
        return self._due.get(key)

    # -- the durable index --------------------------------------------------------------
    def index_before_commit(self, key: Key, due: float | None) -> None:
        """Called before an agent commits schedules whose earliest due is *due*."""
        if due is not None and due < self._indexed.get(key, _INF):
            self.rt.catalog.set_timers([(key[0], key[1], due)])
            self._indexed[key] = due

    def index_exact(self, entries: list[tuple[Key, float | None]]) -> None:
        """Make index entries exact (after a spurious wake, or at close)."""
        rows = []
        for key, due in entries:
            if self._indexed.get(key) != due:
                rows.append((key[0], key[1], due))
                if due is None:
                    self._indexed.pop(key, None)
                else:
                    self._indexed[key] = due
        if rows:
            self.rt.catalog.set_timers(rows)

    # -- the in-memory heap -------------------------------------------------------------
    def set(self, key: Key, due: float | None) -> None:
        """Record an agent's next due time (``None``: nothing pending) and rearm."""
        if self._due.get(key) == due:
            return
        self._set(key, due)
        if due is not None and (self._handle is None or due < self._handle.when):
            self.rearm()

    def _set(self, key: Key, due: float | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))

    def _top(self) -> float | None:
        heap, current = self._heap, self._due
        while heap:
            due, _, key = heap[0]
            if current.get(key) == due:
                return due
            heapq.heappop(heap)
        return None

    def rearm(self) -> None:
        """Point the clock timer at the earliest due entry."""
        top = self._top()
        if self._handle is not None:
            if top is not None and self._handle.when == top and not self._handle.cancelled:
                return
            self._handle.cancel()
            self._handle = None
        if top is None or self.rt.closed:
            return
        try:
            self._handle = self.rt.clock.call_at(top, self._fire)
            self._pending_arm = False
        except RuntimeError:  # no running loop yet (a script): armed at the next message
            self._pending_arm = True

    def arm_if_pending(self) -> None:
        """Arm the timer if it could not be armed without an event loop."""
        if self._pending_arm:
            self.rearm()

    def run_due(self) -> bool:
        """Wake every agent whose next due time has come, now, without waiting for the clock
        timer (``rt.settle()``: on a ``VirtualClock`` the timer fires only when the clock
        advances, yet work due at the current instant - queued work, a schedule whose time
        ``clock.set`` reached - should run). Returns whether any agent was due."""
        top = self._top()
        if top is None or self.rt.closed or top > self.rt.clock.now():
            return False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._fire()
        return True

    def _fire(self) -> None:
        self._handle = None
        rt = self.rt
        if rt.closed:
            return
        now = rt.clock.now()
        heap, current = self._heap, self._due
        due_keys = []
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            if current.get(key) == due:
                del current[key]
                due_keys.append(key)
        if len(due_keys) > 1:  # the awake first: their firings open nothing, and a wake
            awake = rt.open_stores  # (an open) would put one of them to sleep first
            due_keys.sort(key=lambda k: k not in awake)
        for key in due_keys:
            if self._runs_elsewhere(key):
                self.retry_later(key)
            else:
                self._elsewhere.pop(key, None)
                rt.tick(key)
        self.rearm()

    def _runs_elsewhere(self, key: Key) -> bool:
        """Whether another process holds *key*'s lease now (one non-blocking look at its
        lock file; an agent awake here holds its own)."""
        rt = self.rt
        if rt.memory or rt.router is not None:
            return False
        inst = rt.instances.get(key)
        if (inst is not None and inst.store is not None) or key in rt.closer:
            return False  # (awake here, or hibernated a moment ago: its lease closes here)
        return not lease.is_free(rt.catalog.lock_path(*key))

    def retry_later(self, key: Key) -> None:
        """*key* came due while another process runs it: look again after a pause (in
        memory only; the index stays as it is)."""
        pause = self._elsewhere.get(key, RETRY_FIRST)
        self._elsewhere[key] = min(pause * 2, RETRY_MAX)
        due = self.rt.clock.now() + pause
        current = self._due.get(key)
        if current is None or current > due:
            self._set(key, due)
            if self._handle is None or due < self._handle.when:
                self.rearm()

    def close(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def __len__(self) -> int:
        return len(self._due)
