"""Checking a call before it is queued: the method may be called, the arguments fit.

Every check happens at the call site, before anything is queued or written, so a bad
call raises a typed error in the cell that made it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import jsonvalue
from ..envelope import Envelope
from ..errors import NotCallableError, ReentrancyError, UnknownMethodError, UsageError
from ..methods import FRAMEWORK_NAMES, check_arguments, method_info, positional_arity
from .agent import Agent
from .handler import current_chain

if TYPE_CHECKING:
    from ..store.approval_index import ApprovalIndex

__all__ = ["callable_methods", "prepare"]

Key = tuple[str, str]
_NO_ARGS = jsonvalue.FrozenList()
_NO_KWARGS = jsonvalue.FrozenDict()


def prepare(source: str, key: Key, cls: type[Agent] | None, method: str, args: tuple,
            kwargs: dict, *, external: bool, future: bool,
            approvals: ApprovalIndex | None = None) -> Envelope:
    """Check a call to *key* and build its envelope.

    Args:
        source: Where calls from outside any handler come from (``cell``, ``script``...).
        external: Called through a reference (only ``@ab.callable`` methods, unless the
            caller is another agent's handler).
        future: The caller awaits the result (so a cycle would deadlock).
        approvals: The runtime's approval index (``rt.catalog.approval_index``): another
            agent may not call a method it guards. ``None`` skips that check.
    """
    if cls is None:
        raise UsageError(
            f"no agent class named {key[0]!r} is defined in this process; run the cell "
            "that defines it first"
        )
    fn = getattr(cls, method, None)
    seen = cls._ab_calls.get(method)
    if seen is not None and seen[0] is fn:
        is_callable = True
    else:
        seen = None
        is_callable = _check_method(cls, method)
    chain = current_chain.get()
    if chain and chain[-1] != key and approvals is not None \
            and approvals.is_guarded(key[0], method):
        # (another agent may not call a method that approvals guard: only an approval runs it)
        raise _approval_only(cls, method)
    if external and not chain and not is_callable:
        raise NotCallableError(
            f"{cls.__name__}.{method} is not marked @ab.callable, so it can't be called "
            "from outside the agent; decorate it with @ab.callable"
        )
    if seen is None or kwargs or not seen[1] <= len(args) <= seen[2]:
        check_arguments(cls, fn, method, args, kwargs)
    if args:
        frozen = jsonvalue.freeze(args, "args")
        args_json = jsonvalue.dumps(frozen)
    else:
        frozen, args_json = _NO_ARGS, "[]"
    kwargs = jsonvalue.freeze(kwargs, "kwargs") if kwargs else _NO_KWARGS
    if future and key in chain:
        raise ReentrancyError(
            f"{key[0]}({key[1]!r}) is already waiting in this call chain, so awaiting "
            f"{method}() would wait forever; use ref.send(...) or call the method directly"
        )
    origin = f"agent:{chain[-1][0]}/{chain[-1][1]}" if chain else source
    return Envelope.checked(method, frozen, kwargs, args_json,
                            jsonvalue.dumps(kwargs) if kwargs else None, origin, chain)


def _check_method(cls: type[Agent], method: str) -> bool:
    """The checks of a call that depend only on the method: it exists, is a function, is
    public and not the framework's, and is not run by approvals alone (else the typed
    error). Returns whether it is ``@ab.callable``.

    A callable one is remembered in the class's ``_ab_calls`` as ``method -> (function,
    required, total)``: what these checks look at (the name, the function and its marks)
    is the same on every call, so a burst of sends checks it once; with a plain signature's
    positional counts (``-1, -1`` for any other: ``check_arguments`` decides). A method
    replaced on its class is another function, checked again."""
    fn, is_callable = method_info(cls, method)
    if fn is None:
        if not hasattr(cls, method):
            raise UnknownMethodError(
                f"{cls.__name__} has no method {method!r}; its callable methods are: "
                f"{', '.join(callable_methods(cls)) or '(none)'}"
            )
        raise NotCallableError(f"{cls.__name__}.{method} is not a method")
    if method.startswith("_") or method in FRAMEWORK_NAMES:
        raise NotCallableError(
            f"{cls.__name__}.{method} is private or part of the framework and can't be "
            "called as a message; add a public @ab.callable method that uses it"
        )
    if getattr(fn, "_ab_needs_approval", False):
        raise _approval_only(cls, method)
    if is_callable:
        arity = positional_arity(fn)
        cls._ab_calls[method] = (fn, *(arity or (-1, -1)))
    return is_callable


def _approval_only(cls: type[Agent], method: str) -> NotCallableError:
    return NotCallableError(
        f"{cls.__name__}.{method} runs only when a person approves it; have "
        f"{cls.__name__} ask with self.request_approval({method!r}, ...)")


def callable_methods(cls: type[Agent]) -> list[str]:
    """Names of the ``@ab.callable`` methods of *cls*."""
    return sorted(n for n in dir(cls) if not n.startswith("_") and method_info(cls, n)[1])
