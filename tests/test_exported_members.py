"""Pins the public API: adding or removing a public name is a deliberate change."""

import inspect

import agentbook as ab


def test_all_is_sorted_and_complete():
    assert ab.__all__ == sorted(ab.__all__)
    assert set(ab.__all__) == {
        "Agent", "AgentFileError", "AgentNotFoundError", "AgentRef", "AgentStartError", "AgentbookError",
        "Approval", "ApprovalDecidedError", "ApprovalError", "ApprovalExpiredError",
        "ApprovalForbiddenError", "ApprovalNotFoundError", "ApprovalTamperedError", "Approvals",
        "Occurrence", "Retry", "Schedule", "ScheduleError", "TimeTravelError",
        "VersionNotFoundError", "ReplayError", "ChatAgent", "ChatChunk", "Tool", "models",
        "tool", "ModelError", "ModelAuthError", "ModelRateLimitError", "ModelTimeoutError",
        "ModelResponseError", "ModelNotInstalledError", "ToolError", "connect", "Secret",
        "LimitError", "HostUnavailableError", "needs_approval",
        "BadArgumentsError", "EventBus", "IncompatibleStateError", "JSONValueError",
        "NotCallableError", "NotInHandlerError", "ReadOnlyError", "ReentrancyError", "Runtime",
        "RuntimeClosedError", "SQLError", "StateError", "StateRejectedError",
        "StoreCorruptError", "StoreError", "StoreFullError", "StoreReadOnlyError",
        "OwnedElsewhereError", "StoreMismatchError", "LeaseLostError",
        "SystemClock", "UnknownMethodError", "UsageError", "VirtualClock", "WouldBlockError",
        "callable", "run", "runtime", "sweep",
        "workflow", "Step", "WorkflowRun", "WorkflowError", "WorkflowNondeterminismError",
        "WorkflowStepError",
    }


def test_every_public_name_has_a_docstring():
    for name in ab.__all__:
        obj = getattr(ab, name)
        assert inspect.getdoc(obj), f"ab.{name} has no docstring"


def test_every_error_is_drawn_in_the_errors_module_docstring():
    import agentbook.errors as errors

    for name in errors.__all__:
        if name != "AgentbookError":
            assert name in errors.__doc__, name
        assert issubclass(getattr(errors, name), ab.AgentbookError)


def test_public_methods_of_agent_and_ref_have_docstrings():
    for cls in (ab.Agent, ab.AgentRef, ab.Runtime, ab.VirtualClock):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_"):
                continue
            if inspect.isfunction(member) or isinstance(member, property):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
