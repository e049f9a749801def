"""Waiting on a condition, with a deadline, instead of sleeping "long enough".

Time inside agentbook tests comes from the virtual clock (``clock.advance``,
``rt.settle()``). What remains is waiting for something real - a Ray host, a kernel's
comm round-trip, a browser, a server process - and that is done by polling a condition
until it holds, failing with a clear message at the deadline:

    await eventually(lambda: refs[6].version == 3, what="the passed-on mark landed")
    value = await eventually(get_value, until=lambda v: v > 2)      # returns the value
    wait_until(lambda: port_open(port), timeout=60, what="the server listens")  # sync

``eventually`` also runs inside notebook kernels: prefix a cell with :data:`IN_KERNEL`.
This module imports nothing but the standard library.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["IN_KERNEL", "eventually", "wait_until"]

_SPINS = 10  # loop turns polled with sleep(0) before backing off to `interval`
#: The default deadline, in real seconds. Generous: it costs nothing when the condition
#: holds (the wait ends at once), and CI's two cores are shared with Ray clusters, kernels
#: and browsers, where a real process can take several seconds to answer.
DEADLINE = 30.0


def _describe(check: Callable[..., Any], what: str | Callable[[], str] | None) -> str:
    if callable(what):
        return what()
    if what:
        return what
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return repr(check)


def _failure(check, what, timeout: float, value: Any, until) -> AssertionError:
    last = f"; last value: {value!r}" if until is not bool else ""
    return AssertionError(f"waited {timeout:g} s in vain for: {_describe(check, what)}{last}")


async def eventually(check: Callable[[], Any], *, until: Callable[[Any], bool] = bool,
                     timeout: float = DEADLINE, interval: float = 0.01,
                     what: str | Callable[[], str] | None = None) -> Any:
    """Poll ``check()`` (a plain or an async callable) until ``until(value)`` is true,
    and return that value.

    The first few polls only yield to the event loop (``sleep(0)``), so work already
    queued on it finishes without any real wait; after that the poll backs off to
    *interval* real seconds. At *timeout* real seconds it fails with an
    ``AssertionError`` naming *what* was awaited (by default the source of *check*) and
    the last value.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    polls = 0
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if loop.time() >= deadline:
            raise _failure(check, what, timeout, value, until)
        polls += 1
        await asyncio.sleep(0 if polls <= _SPINS else interval)


def wait_until(check: Callable[[], Any], *, until: Callable[[Any], bool] = bool,
               timeout: float = DEADLINE, interval: float = 0.1,
               what: str | Callable[[], str] | None = None) -> Any:
    """:func:`eventually` for code without an event loop (Playwright's sync API, server
    fixtures): poll every *interval* real seconds until ``until(check())`` is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _failure(check, what, timeout, value, until)
        time.sleep(interval)


#: Code that makes :func:`eventually` importable in a notebook kernel started by a test.
IN_KERNEL = (f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
             "from tests.waiting import eventually\n")
