"""Blocking forms of agentbook's awaitables, for scripts and quick cells.

``ab.run(awaitable)`` waits for it and returns its result. Outside any event loop it
uses one private loop for the process (kept, so agents' background work goes on between
calls, and closed at exit). Inside a running loop (a Jupyter cell) it nests with ``nest_asyncio`` - prefer
plain ``await`` there. It refuses to wait on anything only a person can finish (an
approval decision): that would freeze the kernel that has to receive the click.
"""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import Awaitable
from typing import Any, TypeVar

from .errors import WouldBlockError

__all__ = ["run"]

T = TypeVar("T")
_private_loop: asyncio.AbstractEventLoop | None = None


def _close_private_loop() -> None:
    if _private_loop is not None and not _private_loop.is_closed():
        _private_loop.close()


atexit.register(_close_private_loop)


def run(awaitable: Awaitable[T]) -> T:
    """Wait for *awaitable* and return its result (the blocking form of ``await``).

    Raises:
        WouldBlockError: *awaitable* waits for a person (e.g. an approval decision).
    """
    if getattr(awaitable, "_ab_needs_person", False):
        raise WouldBlockError(
            "this waits for a person's decision; blocking here would freeze the kernel that "
            "must receive the click. Let the cell finish, and act in a later cell or in a "
            "callback (approval.on_decided(...))"
        )
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        global _private_loop
        if _private_loop is None or _private_loop.is_closed():
            _private_loop = asyncio.new_event_loop()
        return _private_loop.run_until_complete(_wrap(awaitable))
    import nest_asyncio

    nest_asyncio.apply(loop)
    return loop.run_until_complete(_wrap(awaitable))


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable


def settle(rounds: int = 50) -> Any:
    """An awaitable that lets queued agent work run for a few loop turns."""

    async def _settle() -> None:
        for _ in range(rounds):
            await asyncio.sleep(0)

    return _settle()
