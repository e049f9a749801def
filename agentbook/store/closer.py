"""Closing the stores of hibernated agents off the event loop.

Closing a store is the dear half of a wake: the last connection to a file checkpoints its
WAL into the database (an fsync of each) and deletes it. A runtime on a folder hands the
stores of the agents it hibernates to its :class:`Closer`, whose one thread closes them
(``apsw`` lets go of the GIL meanwhile) and then lets go of their leases: the lease stays
held until the files are written, so one owner per agent holds across processes.

A store that waits here, not yet being closed, is given back when its agent wakes again
(:meth:`Closer.reclaim`): the wake then opens nothing. At most ``limit`` stores wait
(each holds its file descriptors); past that the caller closes its store itself.

Agents put to sleep to make room (more than ``max_open`` awake) are closed *without* their
checkpoint (issue 20, ``checkpoint=False``): such an agent is often woken again soon, and
its next first commit then appends to the WAL it left instead of starting a new one (which
fsyncs the WAL's header on the event loop), while the two fsyncs of a checkpoint stay away
from a storm of firings. Its ``-wal`` and ``-shm`` stay on disk meanwhile; the thread
checkpoints those stores once it has had nothing else to do for :data:`IDLE_SECONDS`
(under the agent's lease, taken without waiting: an agent awake again, here or in another
process, is skipped - its own close checkpoints it), and all of them when the runtime
hibernates everything (:meth:`Closer.wait` with no key) or closes. At most
:data:`MAX_DEFERRED` wait for their checkpoint; past that a close checkpoints at once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import apsw

from ..errors import AgentbookError
from . import lease

if TYPE_CHECKING:
    from .agentstore import AgentStore
    from .lease import Lease

__all__ = ["Closer"]

Key = tuple[str, str]
#: How long the thread must have had nothing to close before it checkpoints the stores
#: closed without one (seconds).
IDLE_SECONDS = 0.5
#: The most stores that wait for their checkpoint at once.
MAX_DEFERRED = 10_000


class Closer:
    """One thread that closes stores (and then releases their leases), oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cv = threading.Condition()
        self._queued: OrderedDict[Key, tuple[AgentStore, Lease | None, bool]] = OrderedDict()
        self._closing: set[Key] = set()
        #: Stores closed without their checkpoint: key -> (store path, lock file path).
        self._deferred: OrderedDict[Key, tuple[str, str]] = OrderedDict()
        #: Checkpoint every deferred store now (a hibernate-all or the runtime's close).
        self._flush = False
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self._queued) + len(self._closing)

    def __contains__(self, key: object) -> bool:
        with self._cv:
            return key in self._queued or key in self._closing

    @property
    def deferred(self) -> int:
        """How many closed stores wait for their checkpoint."""
        return len(self._deferred)

    def close_later(self, key: Key, store: AgentStore, lease: Lease | None,
                    checkpoint: bool = True) -> bool:
        """Queue *store* (and *lease*, released after it) to be closed; ``False`` if it
        can't wait here (the closer is full or stopped): the caller closes it now.
        *checkpoint* ``False``: close it without its checkpoint, done later (see the
        module docstring)."""
        with self._cv:
            if (self._stopped or len(self._queued) + len(self._closing) >= self.limit
                    or key in self._queued or key in self._closing):
                return False
            defer = not checkpoint and lease is not None and len(self._deferred) < MAX_DEFERRED
            self._queued[key] = (store, lease, defer)
            self._start()
            self._cv.notify_all()
        return True

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="agentbook-closer",
                                            daemon=True)
            self._thread.start()

    def reclaim(self, key: Key) -> tuple[AgentStore, Lease | None] | None:
        """Take back *key*'s store and lease if they wait here, not yet being closed (a
        store waiting for its checkpoint needs none any more: the agent is waking)."""
        if not self._queued and not self._deferred:
            return None
        with self._cv:
            self._deferred.pop(key, None)
            entry = self._queued.pop(key, None)
        return None if entry is None else (entry[0], entry[1])

    def forget(self, key: Key) -> None:
        """*key*'s files are being deleted: no checkpoint for it later."""
        if self._deferred:
            with self._cv:
                self._deferred.pop(key, None)

    def wait(self, key: Key | None = None) -> None:
        """Wait until *key*'s store (``None``: every store handed over, and every one
        waiting for its checkpoint) is closed."""
        with self._cv:
            if key is None:
                if self._deferred:
                    self._flush = True
                    self._start()
                    self._cv.notify_all()
                while self._queued or self._closing or (self._deferred and self._thread):
                    self._cv.wait()
                self._flush = False
            else:
                while key in self._queued or key in self._closing:
                    self._cv.wait()

    def stop(self) -> None:
        """Close what waits (checkpointing every store that waits for it), then end the
        thread (nothing more is taken)."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self.wait()

    def _next(self) -> tuple[Key, AgentStore | None, Lease | None, bool, tuple[str, str]] | None:
        """The next work, under the lock: a store to close, or a deferred checkpoint once
        idle (or asked for); ``None`` when the thread should end."""
        while True:
            if self._queued:
                key, (store, lease, defer) = self._queued.popitem(last=False)
                self._closing.add(key)
                return key, store, lease, defer, ("", "")
            if self._deferred and (self._flush or self._stopped):
                key, paths = self._deferred.popitem(last=False)
                self._closing.add(key)
                return key, None, None, False, paths
            if self._stopped:
                self._thread = None
                self._cv.notify_all()
                return None
            if self._deferred:
                if not self._cv.wait(IDLE_SECONDS) and not self._queued and self._deferred:
                    key, paths = self._deferred.popitem(last=False)
                    self._closing.add(key)
                    return key, None, None, False, paths
            else:
                self._cv.wait()

    def _run(self) -> None:
        while True:
            with self._cv:
                work = self._next()
            if work is None:
                return
            key, store, lease, defer, paths = work
            try:
                if store is None:
                    _checkpoint(*paths)
                else:
                    store.close(checkpoint=not defer)
            finally:
                try:
                    if lease is not None:
                        lease.release()
                finally:
                    with self._cv:
                        self._closing.discard(key)
                        if defer and store is not None and lease is not None:
                            self._deferred[key] = (store.path, lease.path)
                        self._cv.notify_all()


def _checkpoint(path: str, lock_path: str) -> None:
    """Checkpoint the store at *path* closed without one, under its lease (skipped if the
    lease is held - the holder's close checkpoints it - or the store is gone)."""
    if not os.path.exists(path + "-wal"):
        return
    try:
        held = lease.take(lock_path, path)
    except AgentbookError:
        return
    try:
        if not os.path.exists(path):
            return
        try:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
            try:  # (a read opens the WAL; the last connection's close then checkpoints
                conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()  # it and
            finally:  # removes it)
                conn.close()
        except apsw.Error:
            pass  # (its next open finds the WAL, as after a killed process)
    finally:
        held.release()
