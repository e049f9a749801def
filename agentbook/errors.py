"""Every error agentbook raises, in one tree.

Each message says what went wrong and what to do next, in one sentence.

    AgentbookError
     ├── UsageError                    the call itself is wrong; fix the code
     │    ├── UnknownMethodError       (also AttributeError) no such method on the agent
     │    ├── NotCallableError         the method is private, a framework method, or lacks @ab.callable
     │    ├── BadArgumentsError        (also TypeError) arguments don't fit the method's signature
     │    ├── JSONValueError           (also TypeError) a value is not JSON; names its path
     │    ├── ReadOnlyError            a write through a read-only surface (ref.sql, state copies)
     │    ├── NotInHandlerError        an agent API used outside one of its handlers
     │    ├── LimitError               a payload, state or queue is over its configured limit
     │    ├── WouldBlockError          a blocking wait on something only a person can finish
     │    ├── ReentrancyError          an awaited call that would wait for itself (a deadlock)
     │    └── ScheduleError            (also ValueError) a bad time, cron, interval or schedule id
     ├── SQLError                      SQLite refused a query; carries SQLite's message
     ├── StateError
     │    ├── StateRejectedError       validate_state_change refused the new state
     │    └── IncompatibleStateError   a redefined class no longer fits the stored state
     ├── ApprovalError                 a decision on an approval can't be made
     │    ├── ApprovalNotFoundError    (also KeyError) no approval has that id
     │    ├── ApprovalDecidedError     it was already approved, rejected or expired
     │    ├── ApprovalExpiredError     its time ran out; ask the agent again
     │    ├── ApprovalForbiddenError   the person deciding is not among its approvers
     │    └── ApprovalTamperedError    its stored action no longer matches what was approved
     ├── TimeTravelError
     │    ├── VersionNotFoundError     (also LookupError) no such version, or it was pruned
     │    └── ReplayError              a replayed step needs an effect that was never journaled
 ├── WorkflowError                 a workflow run failed or was cancelled (.run, .status)
     │    ├── WorkflowStepError        a step.do raised on every attempt its retry policy allows
     │    └── WorkflowNondeterminismError  the code no longer asks for the steps the run journaled
     ├── ModelError                    a model provider failed; carries the provider's message
     │    ├── ModelAuthError           the key is missing or refused
     │    ├── ModelRateLimitError      the provider said slow down
     │    ├── ModelTimeoutError        no answer in time
     │    ├── ModelResponseError       the answer (or its stream) was malformed
     │    └── ModelNotInstalledError   the provider's SDK is not installed; says what to install
     ├── ToolError                     a tool is misdeclared or was called wrongly
     ├── MCPError                      an MCP server could not do what was asked (.server names it)
     │    ├── MCPNotInstalledError     (also UsageError, ImportError) the mcp SDK is missing
     │    ├── MCPTargetError           (also UsageError) a bad name, URL, command, headers or env
     │    ├── MCPServerNotFoundError   (also UsageError, KeyError) no server by that name
     │    ├── MCPConnectionError       the server did not start, died, or can't be reached
     │    ├── MCPTimeoutError          (also TimeoutError) no answer in time
     │    ├── MCPProtocolError         the server's answer was malformed
     │    └── MCPToolError             the tool reported an error, or has no such tool
     ├── RemoteError                   (ab.connect clients) the served agent's method raised
     ├── HostUnavailableError          (Ray backend) the agent's host restarted mid-call
     ├── AgentNotFoundError            (also KeyError) no agent by that class and name has been created
     ├── AgentStartError               on_start raised; the agent did not start
     ├── StoreError                    the durable store could not do its job
     │    ├── StoreCorruptError        a store file is damaged; it was moved aside
     │    ├── StoreFullError           the disk (or the configured size cap) is full
     │    ├── StoreReadOnlyError       the store's folder or file can't be written
     │    ├── OwnedElsewhereError      another process runs the agent now (.owner: pid, host, since)
     │    ├── StoreMismatchError       the file holds another agent's store (a name differing in case)
     │    └── AgentFileError           an exported agent file is foreign, damaged, or from a newer agentbook
     └── RuntimeClosedError            the runtime was closed; make a new one

Exceptions raised *by a handler* are not wrapped: the caller gets the very exception
the handler raised, after everything that handler wrote was rolled back.
"""

from __future__ import annotations

__all__ = [
    "AgentFileError",
    "AgentNotFoundError",
    "AgentStartError",
    "AgentbookError",
    "ApprovalDecidedError",
    "ApprovalError",
    "ApprovalExpiredError",
    "ApprovalForbiddenError",
    "ApprovalNotFoundError",
    "ApprovalTamperedError",
    "BadArgumentsError",
    "HostUnavailableError",
    "IncompatibleStateError",
    "JSONValueError",
    "LimitError",
    "MCPConnectionError",
    "MCPError",
    "MCPNotInstalledError",
    "MCPProtocolError",
    "MCPServerNotFoundError",
    "MCPTargetError",
    "MCPTimeoutError",
    "MCPToolError",
    "ModelAuthError",
    "ModelError",
    "ModelNotInstalledError",
    "ModelRateLimitError",
    "ModelResponseError",
    "ModelTimeoutError",
    "NotCallableError",
    "NotInHandlerError",
    "OwnedElsewhereError",
    "ReadOnlyError",
    "ReentrancyError",
    "RemoteError",
    "ReplayError",
    "RuntimeClosedError",
    "SQLError",
    "ScheduleError",
    "StateError",
    "StateRejectedError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreMismatchError",
    "StoreReadOnlyError",
    "TimeTravelError",
    "ToolError",
    "UnknownMethodError",
    "UsageError",
    "VersionNotFoundError",
    "WorkflowError",
    "WorkflowNondeterminismError",
    "WorkflowStepError",
    "WouldBlockError",
]


class AgentbookError(Exception):
    """Base class of every error agentbook raises itself."""

    def _render_traceback_(self) -> list[str]:
        """In IPython: one short line instead of a traceback through agentbook's insides
        (set ``agentbook.errors.SHORT_TRACEBACKS = False`` for the full one)."""
        if not SHORT_TRACEBACKS:
            import traceback

            return traceback.format_exception(type(self), self, self.__traceback__)
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


#: Show agentbook's own errors in notebooks as one line (set False to debug agentbook).
SHORT_TRACEBACKS = True


class UsageError(AgentbookError):
    """The call is wrong in a way the calling code can fix."""


class UnknownMethodError(UsageError, AttributeError):
    """The agent class has no method of that name."""


class NotCallableError(UsageError):
    """The method exists but may not be called from where it was called."""


class BadArgumentsError(UsageError, TypeError):
    """The arguments do not match the method's signature."""


class JSONValueError(UsageError, TypeError):
    """A state, argument or payload value is not a JSON value.

    Attributes:
        path: Where the bad value sits, such as ``state["a"][2]``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class ReadOnlyError(UsageError):
    """Something tried to write through a read-only surface."""


class LimitError(UsageError):
    """A payload, a state or an agent's queue is over its configured limit."""


class NotInHandlerError(UsageError):
    """An agent API that needs a running handler was used outside one."""


class WouldBlockError(UsageError):
    """A blocking wait was asked for something only a person can finish."""


class ReentrancyError(UsageError):
    """An awaited call would wait for an agent that is waiting for it."""


class SQLError(AgentbookError):
    """SQLite refused a query (syntax, missing table, constraint, ...)."""


class StateError(AgentbookError):
    """A problem with an agent's state."""


class StateRejectedError(StateError):
    """``validate_state_change`` rejected the new state; nothing was written."""


class IncompatibleStateError(StateError):
    """A redefined agent class does not fit the state already stored."""


class ApprovalError(AgentbookError):
    """A decision on an approval can't be made; nothing ran."""


class ApprovalNotFoundError(ApprovalError, KeyError):
    """No approval has that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ApprovalDecidedError(ApprovalError):
    """The approval was already decided; a decision is made once."""


class ApprovalExpiredError(ApprovalError):
    """The approval expired before it was approved."""


class ApprovalForbiddenError(ApprovalError):
    """The person deciding is not among the approval's approvers."""


class ApprovalTamperedError(ApprovalError):
    """The stored action doesn't match the one that was requested (changed arguments)."""


class TimeTravelError(AgentbookError):
    """A time-travel operation can't be done."""


class VersionNotFoundError(TimeTravelError, LookupError):
    """The agent has no such version (not yet, or it was pruned)."""


class ReplayError(TimeTravelError):
    """A replayed step called an effect whose result was never journaled."""


class WorkflowError(AgentbookError):
    """A workflow run ended without a result: it failed or was cancelled.

    ``run`` is the run's id, ``status`` its status (``failed`` or ``cancelled``)."""

    def __init__(self, message: str, run: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.run = run
        self.status = status


class WorkflowStepError(WorkflowError):
    """A ``step.do`` raised on every attempt its retry policy allows; the message names the
    step and the last error (catch it in the workflow to go on another way)."""


class WorkflowNondeterminismError(WorkflowError):
    """The workflow's code no longer asks for the steps its run journaled (a step's name or
    kind differs at the same position): the message names the step; finish or cancel the
    runs started with the old code, or keep the step sequence the same."""


class ModelError(AgentbookError):
    """A model call failed. ``provider`` names the provider; the message is theirs."""

    def __init__(self, message: str, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class ModelAuthError(ModelError):
    """The provider refused the key (or none was given)."""


class ModelRateLimitError(ModelError):
    """The provider is rate limiting; try again later."""


class ModelTimeoutError(ModelError):
    """The provider did not answer in time."""


class ModelResponseError(ModelError):
    """The provider's answer or stream could not be understood."""


class ModelNotInstalledError(ModelError, ImportError):
    """The provider's SDK is an optional extra that is not installed."""


class ToolError(AgentbookError):
    """A tool is declared wrongly (e.g. a parameter without a JSON type)."""


class HostUnavailableError(AgentbookError):
    """The Ray host running the agent died or restarted during the call: the message may
    or may not have run. Check ``ref.version`` / ``ref.history()`` and send it again if
    needed (its effects, if any, were committed exactly once)."""


class LeaseLostError(HostUnavailableError):
    """A Ray host no longer holds the lease of the agent's shard (it was paused or cut off
    for longer than its lease, or the shard moved): nothing of the message was committed
    there. The driver sends it again to the shard's new owner by itself; if this reaches
    you, send it again (it did not run)."""


class AgentNotFoundError(AgentbookError, KeyError):
    """No agent with that class and name exists in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; we don't want that
        return str(self.args[0]) if self.args else ""


class AgentStartError(AgentbookError):
    """``on_start`` raised, so the agent could not take the message."""


class StoreError(AgentbookError):
    """The durable store could not complete an operation; nothing was written."""


class StoreCorruptError(StoreError):
    """An agent's store file is damaged."""


class StoreFullError(StoreError):
    """The disk or the store's size cap is full."""


class StoreReadOnlyError(StoreError):
    """The store cannot be written (read-only folder, file or mount)."""


class OwnedElsewhereError(StoreError):
    """Another process (or another runtime of this one) runs the agent: it holds the
    agent's lease. ``owner`` says which: ``{"pid", "host", "since"}`` (``since`` is a
    Unix time). Reads (``ref.state``, ``ref.sql``, ``ref.history``) still work."""

    def __init__(self, message: str, owner: dict | None = None) -> None:
        super().__init__(message)
        #: ``{"pid": int, "host": str, "since": float}`` of the owner (empty if unknown).
        self.owner: dict = dict(owner or {})

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.owner))


class StoreMismatchError(StoreError):
    """The file found for an agent holds another agent's store (e.g. a name that differs
    only in case, on a case-insensitive file system); nothing was merged or written."""


class AgentFileError(StoreError):
    """A file given to ``rt.import_agent`` is not an export agentbook can read whole (another
    SQLite file, a damaged one, one from a newer agentbook), or ``ref.export`` was told to
    write over an existing file; nothing was written."""


class RuntimeClosedError(AgentbookError):
    """The runtime was closed."""


class ScheduleError(UsageError, ValueError):
    """A schedule can't be created or found (bad time, cron, interval or id)."""


class RemoteError(AgentbookError):
    """A served agent's method raised; ``type`` is the name of the exception it raised.

    (agentbook's own errors come back as themselves: ``NotCallableError``, ...)
    """

    def __init__(self, message: str, type: str = "Error") -> None:
        super().__init__(message)
        self.type = type


class MCPError(AgentbookError):
    """An MCP server could not do what was asked. ``server`` names the server."""

    def __init__(self, message: str, server: str = "") -> None:
        super().__init__(message)
        self.server = server


class MCPNotInstalledError(MCPError, UsageError, ImportError):
    """The official ``mcp`` SDK is an optional extra that is not installed."""


class MCPTargetError(MCPError, UsageError):
    """A server name, URL, command, headers or env that can't be used."""


class MCPServerNotFoundError(MCPError, UsageError, KeyError):
    """The agent has no MCP server by that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MCPConnectionError(MCPError):
    """The server did not start, died, or can't be reached; its state says why."""


class MCPTimeoutError(MCPError, TimeoutError):
    """The server gave no answer in time."""


class MCPProtocolError(MCPError):
    """The server's answer did not follow the protocol (a malformed result or schema)."""


class MCPToolError(MCPError):
    """The tool reported an error (``is_error``), or the server has no such tool."""
