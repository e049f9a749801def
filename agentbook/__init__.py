"""agentbook: durable, time-travelling agents that live in a Jupyter kernel.

    import agentbook as ab

    class Counter(ab.Agent):
        initial_state = {"n": 0}

        @ab.callable
        async def increment(self, by: int = 1) -> int:
            self.set_state({"n": self.state["n"] + by})
            return self.state["n"]

    rt = ab.Runtime()
    await rt.get(Counter, "c").increment()
"""

from typing import Any

from . import models
from .approve.inbox import Approval, Approvals
from .chat.agent import ChatAgent, ChatChunk
from .chat.tools import Tool, tool
from .clock import SystemClock, VirtualClock
from .core.agent import Agent
from .core.ref import AgentRef
from .core.runtime import Runtime, runtime
from .errors import (
    AgentbookError,
    AgentFileError,
    AgentNotFoundError,
    AgentStartError,
    ApprovalDecidedError,
    ApprovalError,
    ApprovalExpiredError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    ApprovalTamperedError,
    BadArgumentsError,
    HostUnavailableError,
    IncompatibleStateError,
    JSONValueError,
    LeaseLostError,
    LimitError,
    ModelAuthError,
    ModelError,
    ModelNotInstalledError,
    ModelRateLimitError,
    ModelResponseError,
    ModelTimeoutError,
    NotCallableError,
    NotInHandlerError,
    OwnedElsewhereError,
    ReadOnlyError,
    ReentrancyError,
    ReplayError,
    RuntimeClosedError,
    SQLError,
    StateError,
    StateRejectedError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreMismatchError,
    StoreReadOnlyError,
    TimeTravelError,
    ToolError,
    UnknownMethodError,
    UsageError,
    VersionNotFoundError,
    WorkflowError,
    WorkflowNondeterminismError,
    WorkflowStepError,
    WouldBlockError,
)
from .events import EventBus
from .methods import callable, needs_approval
from .schedule.policy import Occurrence, Retry, Schedule, ScheduleError
from .secrets import Secret
from .sync import run
from .travel.sweep import sweep
from .version import __version__ as __version__
from .workflow import Step, WorkflowRun, workflow


async def connect(url: str, *, token: str | None = None, **options: Any) -> object:
    """Connect to an agent served by ``rt.serve()`` (``url`` is its route, e.g.
    ``http://127.0.0.1:8000/agents/support/alice``): a client with ``call``, ``state``,
    ``set_state``, ``on_state`` and ``close``, speaking Cloudflare's agents protocol."""
    from .serve.client import connect as _connect

    return await _connect(url, token=token, **options)


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext agentbook``: the ``%agents`` and ``%%sql`` magics."""
    from .cli.magics import load_ipython_extension as load

    load(ipython)

__all__ = [
    "Agent",
    "AgentFileError",
    "AgentNotFoundError",
    "AgentRef",
    "AgentStartError",
    "AgentbookError",
    "Approval",
    "ApprovalDecidedError",
    "ApprovalError",
    "ApprovalExpiredError",
    "ApprovalForbiddenError",
    "ApprovalNotFoundError",
    "ApprovalTamperedError",
    "Approvals",
    "BadArgumentsError",
    "ChatAgent",
    "ChatChunk",
    "EventBus",
    "HostUnavailableError",
    "IncompatibleStateError",
    "JSONValueError",
    "LeaseLostError",
    "LimitError",
    "ModelAuthError",
    "ModelError",
    "ModelNotInstalledError",
    "ModelRateLimitError",
    "ModelResponseError",
    "ModelTimeoutError",
    "NotCallableError",
    "NotInHandlerError",
    "Occurrence",
    "OwnedElsewhereError",
    "ReadOnlyError",
    "ReentrancyError",
    "ReplayError",
    "Retry",
    "Runtime",
    "RuntimeClosedError",
    "SQLError",
    "Schedule",
    "ScheduleError",
    "Secret",
    "StateError",
    "StateRejectedError",
    "Step",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreMismatchError",
    "StoreReadOnlyError",
    "SystemClock",
    "TimeTravelError",
    "Tool",
    "ToolError",
    "UnknownMethodError",
    "UsageError",
    "VersionNotFoundError",
    "VirtualClock",
    "WorkflowError",
    "WorkflowNondeterminismError",
    "WorkflowRun",
    "WorkflowStepError",
    "WouldBlockError",
    "callable",
    "connect",
    "models",
    "needs_approval",
    "run",
    "runtime",
    "sweep",
    "tool",
    "workflow",
]
