"""Closing the stores of hibernated agents off the event loop.

Closing a store is the dear half of a wake: the last connection to a file checkpoints its
WAL into the database (an fsync of each) and deletes it. A runtime on a folder hands the
stores of the agents it hibernates to its :class:`Closer`, whose one thread closes them
(``apsw`` lets go of the GIL meanwhile) and then lets go of their leases: the lease stays
held until the files are written, so one owner per agent holds across processes, and a
hibernated agent leaves no ``-wal`` file behind (the checkpoint happens when the agent goes
idle, not later).

A store that waits here, not yet being closed, is given back when its agent wakes again
(:meth:`Closer.reclaim`): the wake then opens nothing. At most ``limit`` stores wait
(each holds its file descriptors); past that the caller closes its store itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agentstore import AgentStore
    from .lease import Lease

__all__ = ["Closer"]

Key = tuple[str, str]


class Closer:
    """One thread that closes stores (and then releases their leases), oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cv = threading.Condition()
        self._queued: OrderedDict[Key, tuple[AgentStore, Lease | None]] = OrderedDict()
        self._closing: set[Key] = set()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self._queued) + len(self._closing)

    def __contains__(self, key: object) -> bool:
        with self._cv:
            return key in self._queued or key in self._closing

    def close_later(self, key: Key, store: AgentStore, lease: Lease | None) -> bool:
        """Queue *store* (and *lease*, released after it) to be closed; ``False`` if it
        can't wait here (the closer is full or stopped): the caller closes it now."""
        with self._cv:
            if (self._stopped or len(self._queued) + len(self._closing) >= self.limit
                    or key in self._queued or key in self._closing):
                return False
            self._queued[key] = (store, lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agentbook-closer",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return True

    def reclaim(self, key: Key) -> tuple[AgentStore, Lease | None] | None:
        """Take back *key*'s store and lease if they wait here, not yet being closed."""
        if not self._queued:
            return None
        with self._cv:
            return self._queued.pop(key, None)

    def wait(self, key: Key | None = None) -> None:
        """Wait until *key*'s store (``None``: every store handed over) is closed."""
        with self._cv:
            if key is None:
                while self._queued or self._closing:
                    self._cv.wait()
            else:
                while key in self._queued or key in self._closing:
                    self._cv.wait()

    def stop(self) -> None:
        """Close what waits, then end the thread (nothing more is taken)."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self.wait()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queued:
                    if self._stopped:
                        self._thread = None
                        return
                    self._cv.wait()
                key, (store, lease) = self._queued.popitem(last=False)
                self._closing.add(key)
            try:
                store.close()
            finally:
                try:
                    if lease is not None:
                        lease.release()
                finally:
                    with self._cv:
                        self._closing.discard(key)
                        self._cv.notify_all()
