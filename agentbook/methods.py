"""What an agent's methods are: ``@ab.callable``, ``@ab.needs_approval``, and the names the
framework reserves.

Ground layer: the concepts (schedules, approvals), the serve path and MCP ask here whether a
name may be called, without importing the agent class itself. ``agentbook.core.agent``
reserves ``ab.Agent``'s own names when it is defined; a user method may never shadow one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from types import FunctionType
from typing import Any, TypeVar, overload

from .errors import BadArgumentsError

__all__ = ["FRAMEWORK_NAMES", "callable", "check_arguments", "method_info", "needs_approval",
           "positional_arity", "reserve"]

F = TypeVar("F", bound=Callable[..., Any])

#: Names that belong to the framework: never callable as messages (filled by ``reserve``).
FRAMEWORK_NAMES: set[str] = {"initial_state"}


def reserve(names: Iterable[str]) -> None:
    """Reserve the framework's own attribute names (called once, by ``ab.Agent``)."""
    FRAMEWORK_NAMES.update(names)


@overload
def callable(fn: F) -> F: ...
@overload
def callable(*, description: str | None = None) -> Callable[[F], F]: ...


def callable(fn: Any = None, *, description: str | None = None, streaming: bool = False) -> Any:
    """Mark an agent method as callable from outside the runtime.

    Cells, WebSocket clients and MCP clients may call only methods marked with this
    decorator (agents may call each other's public methods directly). Use it bare
    (``@ab.callable``) or with options (``@ab.callable(description="...")``).
    ``streaming=True`` methods take a ``stream`` first argument and may
    ``stream.send(chunk)`` partial results before returning (WebSocket RPC streams them).
    """

    def mark(f: F) -> F:
        f._ab_callable = True  # type: ignore[attr-defined]
        f._ab_description = description or inspect.getdoc(f) or ""  # type: ignore[attr-defined]
        f._ab_streaming = streaming  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def needs_approval(fn: F) -> F:
    """Mark an agent method as one that runs **only** as an approved action.

    Nobody can call it directly - not a cell, a client, or another agent; it runs when a
    person approves a ``request_approval`` for it, once, with the approved arguments.
    """
    fn._ab_needs_approval = True  # type: ignore[attr-defined]
    return fn


def method_info(cls: type, method: str) -> tuple[Callable[..., Any] | None, bool]:
    """``(function, is_callable)`` for *method* on *cls*, or ``(None, False)``."""
    fn = getattr(cls, method, None)
    if fn is None or not isinstance(fn, FunctionType):  # (inspect.isfunction, inlined)
        return None, False
    return fn, bool(getattr(fn, "_ab_callable", False))


_arity: dict[Any, tuple] = {}


def check_arguments(cls: type, fn: Any, method: str, args: tuple, kwargs: dict) -> None:
    """Raise :class:`BadArgumentsError` unless ``fn(self, *args, **kwargs)`` would bind.

    Used where a call is checked before anything is queued or written: a call through a
    ref (``agentbook.core.calls``) and an approval request, which binds its arguments
    now so that approving it can't fail on them later. The signature is looked at once per
    function: ``inspect.signature`` is slow, and most methods take plain arguments, which
    a count decides.
    """
    sig, simple, required, total = _signature(fn)
    if simple and not kwargs and required <= len(args) <= total:
        return
    try:
        sig.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise BadArgumentsError(
            f"{cls.__name__}.{method}{_plain_signature(sig)}: {exc}"
        ) from None


def positional_arity(fn: Any) -> tuple[int, int] | None:
    """``(required, total)`` positional arguments of a method whose parameters (after
    ``self``) are all plain: a call with no keyword arguments and a count in that range
    binds (:func:`check_arguments` decides the same). ``None`` for any other signature."""
    _sig, simple, required, total = _signature(fn)
    return (required, total) if simple else None


def _signature(fn: Any) -> tuple:
    info = _arity.get(fn)
    if info is None:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())[1:]
        simple = all(p.kind == p.POSITIONAL_OR_KEYWORD for p in params)
        required = sum(1 for p in params if p.default is p.empty)
        info = _arity[fn] = (sig, simple, required, len(params))
    return info


def _plain_signature(sig: inspect.Signature) -> str:
    params = list(sig.parameters.values())[1:]
    return str(sig.replace(parameters=params))
