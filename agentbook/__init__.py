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

from .agent import Agent, callable
from .clock import SystemClock, VirtualClock
from .errors import (
    AgentbookError,
    AgentNotFoundError,
    AgentStartError,
    BadArgumentsError,
    IncompatibleStateError,
    JSONValueError,
    NotCallableError,
    NotInHandlerError,
    ReadOnlyError,
    ReentrancyError,
    RuntimeClosedError,
    SQLError,
    StateError,
    StateRejectedError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
    UnknownMethodError,
    UsageError,
    WouldBlockError,
)
from .events import EventBus
from .ref import AgentRef
from .runtime import Runtime, runtime
from .sync import run

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentNotFoundError",
    "AgentRef",
    "AgentStartError",
    "AgentbookError",
    "BadArgumentsError",
    "EventBus",
    "IncompatibleStateError",
    "JSONValueError",
    "NotCallableError",
    "NotInHandlerError",
    "ReadOnlyError",
    "ReentrancyError",
    "Runtime",
    "RuntimeClosedError",
    "SQLError",
    "StateError",
    "StateRejectedError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreReadOnlyError",
    "SystemClock",
    "UnknownMethodError",
    "UsageError",
    "VirtualClock",
    "WouldBlockError",
    "callable",
    "run",
    "runtime",
]
