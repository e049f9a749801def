"""File descriptors: how many agent stores one process can keep open.

An awake agent holds a few descriptors: its writer connection (the ``.db`` file, its
``-wal`` and ``-shm``), the reader that serves reads from outside (``.db`` and ``-wal``
again) and its lease file: :data:`PER_STORE`. A runtime's ``max_open`` stores therefore need
``PER_STORE * max_open`` descriptors besides what the rest of the process uses (Python,
the kernel's sockets, DuckDB, a server's connections: :func:`reserve`).

:func:`raise_soft_limit` lifts the process's soft limit toward its hard one, once, as
servers do (the soft limit is often 1 024, and 256 on macOS; the hard one is far higher);
:func:`fit_max_open` sizes ``max_open`` from what is then available; :func:`exhausted`
tells a failed open caused by running out of descriptors from other failures, and
:func:`exhausted_error` is the typed error that says what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

from ..errors import LimitError

__all__ = ["DEFAULT_MAX_OPEN", "PER_STORE", "exhausted", "exhausted_error", "fit_max_open",
           "limits", "raise_soft_limit", "reserve"]

log = logging.getLogger("agentbook")

#: Descriptors one open store may hold: writer (.db, -wal, -shm), reader (.db, -wal), lease.
PER_STORE = 6
#: ``max_open`` when there are descriptors enough (the runtime's default before sizing).
#: Issue 20: 1 024, so that a thousand agents due at one instant are all awake already
#: (opening ~750 stores at the due instant costs ~1.5 s on a shared disk). An awake agent
#: costs ~55 KB of memory and 4-6 descriptors; ``hibernate_after`` still puts idle ones
#: to sleep, and :func:`raise_soft_limit` makes room for them where the hard limit allows
#: (Linux's usual soft limit of 1 024 is raised, macOS's 256 too, to 10 240 at most).
DEFAULT_MAX_OPEN = 1024
#: The smallest ``max_open`` chosen by sizing (a runtime needs a few stores open at once).
_MIN_OPEN = 4
#: How far the soft limit is raised at most (past this, code that still uses ``select()``
#: elsewhere in the process would meet descriptors it can't take, and nothing here needs
#: more).
_RAISE_TO = 1 << 16

_raised = False


def limits() -> tuple[int | None, int | None]:
    """``(soft, hard)`` limits on open files (``None``: unlimited, or unknown here)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: the C runtime's limit is per handle
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    return (None if soft == unlimited else soft), (None if hard == unlimited else hard)


def raise_soft_limit() -> int | None:
    """Raise the soft limit on open files toward the hard one (once per process, as servers
    do); returns the soft limit then in force (``None``: unlimited or unknown)."""
    global _raised
    soft, hard = limits()
    if _raised or soft is None:
        return soft
    _raised = True
    target = _RAISE_TO if hard is None else min(hard, _RAISE_TO)
    if sys.platform == "darwin":  # macOS refuses more than OPEN_MAX for the soft limit
        target = min(target, 10_240)
    if target <= soft:
        return soft
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
    except (OSError, ValueError):
        return soft
    log.info("agentbook: raised this process's soft limit on open files (ulimit -n) from %d "
             "to %d (its hard limit allows it), to keep more agent stores open", soft, target)
    return target


def reserve(soft: int) -> int:
    """Descriptors left to the rest of the process (a quarter, at least 48)."""
    return max(48, soft // 4)


def fit_max_open(requested: int | None) -> int:
    """The ``max_open`` a runtime uses: *requested* as given if the descriptors fit it
    (clamped, with a warning in the log, if not); ``None`` chooses one (at most
    :data:`DEFAULT_MAX_OPEN`, fewer under a low limit). Anything else (not a positive
    int) is returned as it is, for the runtime's own check to refuse."""
    soft = raise_soft_limit()
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)
                                  or requested < 1):
        return requested
    fits = None if soft is None else max(_MIN_OPEN, (soft - reserve(soft)) // PER_STORE)
    if requested is None:
        return DEFAULT_MAX_OPEN if fits is None else min(DEFAULT_MAX_OPEN, fits)
    if fits is not None and requested > fits:
        log.warning("agentbook: max_open=%d needs about %d open files, but this process may "
                    "open %d (ulimit -n): using max_open=%d; raise the limit (ulimit -n) to "
                    "keep more agents awake at once", requested, requested * PER_STORE, soft, fits)
        return fits
    return requested


def exhausted() -> bool:
    """Whether this process has run out of file descriptors right now."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


def exhausted_error(path: str = "") -> LimitError:
    """The typed error of an open that failed because descriptors ran out."""
    soft, _hard = limits()
    where = f" ({path})" if path else ""
    limit = f" (ulimit -n is {soft})" if soft is not None else ""
    return LimitError(
        f"out of file descriptors: this process may open no more files{limit}{where}. "
        f"Each awake agent holds about {PER_STORE}: lower ab.Runtime(max_open=...), close "
        "idle connections or runtimes, or raise the limit (ulimit -n) before starting Python")
