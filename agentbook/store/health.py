"""Store health: what the runtime does when a store can't be used as it is.

* A file-system error while a store is created (a full disk, a read-only folder) becomes
  the typed error of its cause (:func:`os_error`).
* A store file too short to hold SQLite's header (e.g. truncated to nothing) is damage,
  not a new agent: SQLite would silently start it over empty (:func:`check_file`).
* A damaged store - found when it opens or while its agent runs - is closed and moved
  to ``<root>/quarantine/``, recorded in the catalog, and its agent refuses to start
  (and its reads say why) until ``agentbook doctor`` releases it (:func:`quarantine`,
  :func:`refused`, :func:`retire`).
* A store that went read-only is closed, so the next message opens it again once it is
  writable (:func:`retire`).

All of this runs on error paths only: a healthy message costs nothing here.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Any

import apsw

from ..errors import StoreCorruptError, StoreError, StoreFullError, StoreReadOnlyError

if TYPE_CHECKING:
    from ..core.mailbox import Instance

__all__ = ["HEADER_BYTES", "check_file", "confirm_damage", "os_error", "quarantine", "refused",
           "retire"]

#: SQLite's database header: a store file shorter than this is not a database.
HEADER_BYTES = 100

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def full(path: str, detail: str = "") -> StoreFullError:
    """The error of a store that can't grow (a full disk, or its size cap)."""
    where = f" ({path})" if path else ""
    return StoreFullError(f"the store is full{where}: free disk space (or raise the size cap) "
                          f"and send the message again; nothing was written{detail}")


def read_only(path: str, detail: str = "") -> StoreReadOnlyError:
    """The error of a store (or its folder) that can't be written."""
    where = f" ({path})" if path else ""
    return StoreReadOnlyError(f"the store can't be written{where}: make it and its folder "
                              "writable, or open the runtime on another path; nothing was "
                              f"written{detail}")


def os_error(exc: OSError, path: str) -> StoreError:
    """The typed error of a file-system error met while writing the store at *path*."""
    if exc.errno in _FULL:
        return full(path, f" ({exc.strerror or exc})")
    if exc.errno in _READ_ONLY or isinstance(exc, PermissionError):
        return read_only(path, f" ({exc.strerror or exc})")
    return StoreError(f"the store could not be used ({path}): {exc}")


def quick_check(conn: apsw.Connection) -> str:
    """SQLite's ``PRAGMA quick_check`` verdict: ``"ok"``, its findings, or the error that
    stopped it (a damaged page can)."""
    try:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall())
    except apsw.Error as exc:
        return f"{type(exc).__name__}: {exc}"


def check_file(path: str) -> bool:
    """Whether the store at *path* is new (no file yet). A file too short to be a
    database raises :class:`StoreCorruptError`: SQLite would take it for a new, empty one."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return True
    if size < HEADER_BYTES:
        raise StoreCorruptError(
            f"the store file is damaged ({path}): it is {size} bytes long, too short to hold "
            "a database (was it truncated?)")
    return False


def read_only_cause(path: str) -> bool:
    """Whether the store at *path* can't be written (its file or its folder)."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder) and not os.access(folder, os.W_OK):
        return True
    return os.path.exists(path) and not os.access(path, os.W_OK)


def confirm_damage(conn: apsw.Connection) -> bool:
    """Whether SQLite's own check finds the store behind *conn* damaged (a corrupt error
    can also come from a malformed changeset or another connection)."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except (apsw.CorruptError, apsw.NotADBError):
        return True
    except apsw.Error:
        return False
    return [tuple(r) for r in rows] != [("ok",)]


def quarantine(rt: Any, key: tuple[str, str], exc: BaseException) -> StoreCorruptError:
    """Move a damaged (already closed) store aside and record it in the catalog; returns
    the error its callers get."""
    path = rt.path_of(key)
    folder = os.path.join(rt.root, "quarantine")
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = os.path.join(folder, f"{key[0]}.{os.path.basename(path)}.{stamp}")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, moved + suffix)
    rt.catalog.quarantine(key[0], key[1], moved, str(exc), rt.clock.now())
    return StoreCorruptError(
        f"{key[0]}({key[1]!r})'s store is damaged ({exc}); it was moved to {moved} and "
        "the agent won't start until it is restored (agentbook doctor --check-stores)")


def refused(key: tuple[str, str], held: tuple) -> StoreCorruptError:
    """The error of an agent whose store is quarantined (*held*: the catalog's row)."""
    return StoreCorruptError(
        f"{key[0]}({key[1]!r})'s store was found damaged and moved to {held[0]}; it won't "
        "start until the file is restored and `agentbook doctor` releases it")


def retire(inst: Instance, err: BaseException) -> BaseException:
    """The store of *inst* went bad while it ran (``store.broken``): close it so no more
    writes go in; a damaged one is quarantined. Returns the error to deliver."""
    rt = inst.runtime
    rt.hibernate_one(inst, later=False)
    if isinstance(err, StoreCorruptError):
        try:
            return quarantine(rt, inst.key, err)
        except OSError as move:  # the file stays where it is (and stays closed)
            return StoreCorruptError(f"{err}; moving it to quarantine failed: {move}")
    return err
