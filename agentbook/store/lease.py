"""One owner per agent across processes: a lease on the agent's store.

The lease is an advisory lock (``flock``) on a small file next to the store,
``<store>.lock``, held while the agent is awake in a process and released when it
hibernates or its runtime closes. The OS releases it when the process dies (a killed
kernel never blocks anyone), and it is held per open file, so two runtimes of one process
on one folder exclude each other too. The holder writes who it is into the file
(``{"pid", "host", "since"}``), so the one that waits can say whom it waited for.

Protocol: take the lock on the opened file, then check that the path still names that
very file (a deletion - the agent destroyed, or an older agentbook letting go - removes
the file before it unlocks, so a waiter may have locked a removed file: it starts over).
Only the holder writes the store's files, so a store is created under its lease.

Letting go empties the file (``ftruncate``) and unlocks it; the file stays, so the next
wake opens an existing file instead of creating one, and no hibernation removes one
(issue 20: creating and removing the file cost ~0.4 ms of a wake and a hibernation on
a journaling file system; an empty file takes no data block). Only the deletion of the
agent removes it (:meth:`Lease.release` with ``remove=True``).

One ``flock`` per wake, one ``ftruncate`` per hibernation: nothing here runs per message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from ..errors import OwnedElsewhereError
from . import health

__all__ = ["Lease", "is_free", "owned_elsewhere", "owner_of", "take"]

_HOST = socket.gethostname()
_WINDOWS = sys.platform == "win32"

if sys.platform == "win32":  # pragma: no cover - msvcrt's byte-range lock
    import msvcrt

    _LOCK_OFFSET = 1 << 20  # the locked byte, past the owner record (which stays readable)

    def _try_lock(fd: int) -> bool:
        """Take the lock on *fd* without waiting; whether it was free."""
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _write_owner(fd: int, data: bytes) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        """Take the lock on *fd* without waiting; whether it was free."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _write_owner(fd: int, data: bytes) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _same_file(fd: int, path: str) -> bool:
    """Whether *path* still names the file open as *fd* (a holder letting go removes it)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_ino, named.st_dev) == (mine.st_ino, mine.st_dev)


class Lease:
    """A held lease: release it (or close the runtime) to let another process run the
    agent."""

    __slots__ = ("fd", "owner", "path")

    def __init__(self, path: str, fd: int, owner: dict[str, Any]) -> None:
        self.path, self.fd, self.owner = path, fd, owner

    def release(self, remove: bool = False) -> None:
        """Let go: empty the lock file (its owner record is stale now), then unlock; with
        *remove* (the agent is being deleted), remove the file first (see the module
        docstring)."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            if remove and not _WINDOWS:  # (Windows can't remove an open file: it stays)
                os.unlink(self.path)
            else:
                os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # (closing the file unlocks it)

    def __del__(self) -> None:  # a runtime dropped without close() lets go too
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<Lease {self.path} {'held' if self.fd >= 0 else 'released'}>"


def take(path: str, what: str) -> Lease:
    """Take the lease at *path* (a lock file) now, or raise :class:`OwnedElsewhereError`
    naming its holder. *what* names the agent in that message."""
    folder = os.path.dirname(path)
    store = path.removesuffix(".lock")
    for _ in range(100):  # (each round loses only to a holder letting go right then)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise health.os_error(exc, store) from None
            continue
        except OSError as exc:  # a read-only folder (or full disk): the store can't be written
            raise health.os_error(exc, store) from None
        try:
            if not _try_lock(fd):
                raise owned_elsewhere(what, owner_of(path), 0.0)
            if not _WINDOWS and not _same_file(fd, path):
                os.close(fd)
                continue
            owner = {"pid": os.getpid(), "host": _HOST, "since": time.time()}
            try:
                _write_owner(fd, json.dumps(owner).encode())
            except OSError:  # a full disk: the lock holds all the same (its owner unnamed)
                pass
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        return Lease(path, fd, owner)
    raise owned_elsewhere(what, owner_of(path), 0.0)


def is_free(path: str) -> bool:
    """Whether nobody holds the lease at *path* now (without keeping it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)


def owner_of(path: str) -> dict[str, Any]:
    """What the holder wrote into the lock file (``{}`` if it can't be read)."""
    for _ in range(3):  # (the holder may be writing it right now)
        try:
            with open(path, "rb") as fh:
                data = fh.read(4096)
            owner = json.loads(data)
            if isinstance(owner, dict):
                return owner
        except (OSError, ValueError):
            pass
    return {}


def owned_elsewhere(what: str, owner: dict[str, Any], waited: float) -> OwnedElsewhereError:
    """The error of a message to *what* while another process holds its lease."""
    pid, host, since = owner.get("pid"), owner.get("host"), owner.get("since")
    if pid == os.getpid() and host == _HOST:
        who = f"another ab.Runtime of this process (pid {pid}) on the same folder"
        todo = "use that runtime, or close it (rt.close())"
    else:
        who = "another process" if pid is None else f"process {pid}"
        if host:
            who += f" on {host}"
        todo = ("send the call from that process, or let the agent go there (rt.hibernate() "
                "or rt.close() in it; a process that dies lets go at once)")
    if isinstance(since, (int, float)):
        who += f" (since {time.strftime('%H:%M:%S', time.localtime(since))})"
    wait = f" after waiting {waited:g} s" if waited else ""
    return OwnedElsewhereError(
        f"{what} is running in {who}; it was not run here{wait}: {todo}, or raise "
        "ab.Runtime(owner_wait=...). Reads (ref.state, ref.sql, ref.history) work from here.",
        owner)
