"""``@ab.workflow``: marks an agent method whose first parameter after ``self`` is
``step: ab.Step`` as a durable workflow.

Calling the method (through a ref, or from another handler of the agent) starts a run in
the calling handler's transaction and returns at once; the run moves on in handlers of
its own (:mod:`agentbook.workflow.engine`). Through a ref the call returns an
``ab.WorkflowRun``; inside the agent it returns ``{"workflow": id, "method": name}``.
A workflow method is callable from outside the runtime, like ``@ab.callable``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import UsageError
from . import engine

__all__ = ["is_workflow", "workflow"]

F = TypeVar("F", bound=Callable[..., Any])


def workflow(fn: F) -> F:
    """Make an ``async def`` agent method taking ``step`` first a durable workflow.

    Example:
        >>> class Desk(ab.Agent):                                   # doctest: +SKIP
        ...     @ab.workflow
        ...     async def refund(self, step: ab.Step, order_id: str) -> str:
        ...         order = await step.do("look up", lookup_order, order_id)
        ...         await step.sleep("cooling off", 3600)
        ...         return "done"
    """
    if not inspect.iscoroutinefunction(fn):
        raise UsageError(f"@ab.workflow goes on an async def method; {fn!r} is not one")
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if len(params) < 2 or params[1].name != "step" or params[1].kind not in (
            params[1].POSITIONAL_ONLY, params[1].POSITIONAL_OR_KEYWORD):
        raise UsageError(f"@ab.workflow: the first parameter of {fn.__name__} after self is "
                         "step (async def name(self, step: ab.Step, ...))")

    @functools.wraps(fn)
    def start(self: Any, *args: Any, **kwargs: Any) -> dict:
        inst = self._ab_instance
        return engine.start(inst, inst.require_ctx(fn.__name__), fn.__name__, args, kwargs)

    start.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[params[0], *params[2:]], return_annotation=sig.empty)
    marks = {"_ab_workflow_fn": fn, "_ab_callable": True,  # (callable from outside, too)
             "_ab_description": inspect.getdoc(fn) or "", "_ab_streaming": False}
    for name, value in marks.items():
        setattr(start, name, value)
    return start  # type: ignore[return-value]


def is_workflow(cls: Any, method: str) -> bool:
    """Whether *method* of *cls* is an ``@ab.workflow`` method."""
    return getattr(getattr(cls, method, None), "_ab_workflow_fn", None) is not None
