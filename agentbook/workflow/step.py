"""``ab.Step``: what a workflow's code asks of its run, one step at a time.

A workflow method takes a ``step`` first (after ``self``). Each call on it is one step of
the run's journal, found again by its position and name every time the code runs from the
top: ``do`` runs a function once and journals its result, ``sleep`` and the two waits
register what the run waits for and end the turn. The logic lives in the engine
(:mod:`agentbook.workflow.engine`), which hands a step its *driver*; this module only
says what a workflow may call, and what it gets back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..schedule.policy import Retry

__all__ = ["ApprovalDecision", "Step"]


@dataclass(frozen=True)
class ApprovalDecision:
    """What a person decided on a ``step.wait_for_approval``.

    Attributes:
        approved: Whether it was approved.
        status: ``approved``, ``rejected``, ``expired`` (the timeout passed) or
            ``cancelled``.
        by: Who decided (``None`` for an expiry).
        reason: Why it was rejected (``"expired"`` for an expiry).
        approval: The approval's id (as in ``rt.approvals``).
    """

    approved: bool
    status: str
    by: str | None
    reason: str | None
    approval: str

    def __bool__(self) -> bool:
        return self.approved


class _Driver(Protocol):  # (the engine's side of one run of the code)
    @property
    def current_id(self) -> str: ...
    async def do(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 retry: Retry | dict | int | None) -> Any: ...
    async def sleep(self, name: str, seconds: float) -> None: ...
    async def wait_for_event(self, name: str, timeout: float | None) -> Any: ...
    async def wait_for_approval(self, title: str, timeout: float | None) -> ApprovalDecision: ...


class Step:
    """The steps of one workflow run (the ``step`` parameter of an ``@ab.workflow`` method).

    Every step has a name; a run's steps are told apart by their position, so the code
    must ask for the same steps in the same order each time it runs (else
    :class:`~agentbook.errors.WorkflowNondeterminismError`). Keep what would come out
    differently twice (the time, random numbers, calls to the outside) inside ``do``.
    """

    __slots__ = ("_driver",)

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    @property
    def id(self) -> str:
        """The stable id (``"<run id>:<position>"``) of the step whose function runs now,
        or between steps of the next one (so ``step.do("pay", pay, step.id)`` hands ``pay``
        its own id). The same on every attempt and after a restart: an idempotency key for
        the outside world."""
        return self._driver.current_id

    async def do(self, name: str, fn: Callable[..., Any], /, *args: Any,
                 retry: Retry | dict | int | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync or async) once, and return its JSON result.

        It runs as a handler of the agent, so it may change state and SQL: its writes
        and the journal record commit together, as one version. Once it completed, the
        journaled result comes back instead (also after a restart). If it raises, its
        writes are undone and it is tried again after a backoff, per *retry*
        (``ab.Retry``, a dict of its fields, or a number of attempts; default
        ``ab.Retry()``); after the last attempt :class:`~agentbook.errors.WorkflowStepError`
        is raised here. A step interrupted by a crash runs again (at least once outside).
        """
        return await self._driver.do(name, fn, args, kwargs, retry)

    async def sleep(self, name: str, seconds: float) -> None:
        """Wait *seconds* durably (a schedule; a ``VirtualClock`` moves it). The agent's
        mailbox is free meanwhile."""
        await self._driver.sleep(name, seconds)

    async def wait_for_event(self, name: str, timeout: float | None = None) -> Any:
        """Wait for ``run.send_event(name, value)``; returns the value, or ``None`` once
        *timeout* seconds passed. An event sent before the run got here is kept for it."""
        return await self._driver.wait_for_event(name, timeout)

    async def wait_for_approval(self, title: str, timeout: float | None = None) -> ApprovalDecision:
        """Ask a person (a durable approval: ``rt.approvals``, the inbox widget) and wait
        for the decision; *timeout* seconds without one count as not approved
        (``status == "expired"``)."""
        return await self._driver.wait_for_approval(title, timeout)

    def __repr__(self) -> str:
        return f"<Step {self._driver.current_id}>"
