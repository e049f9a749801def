"""JSON values: the only thing agentbook stores or sends.

``freeze(value, path)`` checks that *value* is JSON (dicts with ``str`` keys, lists,
``str`` without lone surrogates, finite numbers, ``bool``, ``None``) and returns a deep,
read-only copy made of :class:`FrozenDict` and :class:`FrozenList`. A bad value raises
:class:`~agentbook.errors.JSONValueError` (a ``TypeError``) naming where it sits, before
anything is written. Tuples are accepted and become lists, as JSON would make them.

An ``ab.Secret`` passes where a value is only written down (arguments, results, events):
there it is written as ``{"$secret": name}``. Where a value is stored and read back as it is
- the state, key-value values, schedule and queue payloads, ``initial_state`` - it is refused:
it would be a ``Secret`` while the agent is awake and a dict after it hibernates. Which is
which follows the *path* (:data:`STORED_ROOTS`).

Frozen containers are ``dict`` and ``list`` subclasses, so reading, ``json.dumps``,
``{**state, "k": v}`` and ``list(...)`` all work; mutating them raises
:class:`~agentbook.errors.ReadOnlyError` telling the user to call ``set_state``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from functools import lru_cache
from typing import Any

from .errors import JSONValueError, ReadOnlyError
from .secrets import Secret

__all__ = ["STORED_ROOTS", "FrozenDict", "FrozenList", "canonical", "dumps", "freeze", "loads",
           "thaw"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 200
#: Ints of at most this many bits have at most 640 digits: JSON text under any limit of
#: ``sys.set_int_max_str_digits`` (640 is the lowest one). Longer ints are checked.
_SHORT_INT_BITS = 2126

#: The paths (up to the first ``[``) of values that are stored and read back as they are, so
#: may not hold an ``ab.Secret``; ``"<Class>.initial_state"`` counts as ``initial_state``.
STORED_ROOTS = frozenset({"state", "kv", "payload", "initial_state"})

_READ_ONLY_HINT = (
    "this value is a read-only copy of the agent's state; build a new value and "
    "call self.set_state(new_state) instead of changing it in place"
)


def _read_only(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise ReadOnlyError(_READ_ONLY_HINT)


class FrozenDict(dict):
    """A read-only ``dict`` holding JSON values."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __copy__(self) -> dict:
        return thaw(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return thaw(self)

    def __reduce__(self) -> Any:
        return (dict, (thaw(self),))


class FrozenList(list):
    """A read-only ``list`` holding JSON values."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = clear = extend = insert = pop = remove = reverse = sort = _read_only

    def __copy__(self) -> list:
        return thaw(self)

    def __deepcopy__(self, memo: dict) -> list:
        return thaw(self)

    def __reduce__(self) -> Any:
        return (list, (thaw(self),))


def _bad(path: str, what: str) -> JSONValueError:
    return JSONValueError(
        f"{path} is {what}, which is not a JSON value; agentbook stores only JSON "
        f"(dict with str keys, list, str, int, float, bool, None)",
        path,
    )


def freeze(value: Any, path: str = "value") -> Any:
    """Check that *value* is JSON and return a deep read-only copy of it.

    Args:
        value: The value to check.
        path: How to name the value in an error, e.g. ``state`` or ``args[0]``. It also
            says whether an ``ab.Secret`` may be in it: not under :data:`STORED_ROOTS`.

    Raises:
        JSONValueError: naming the path of the first value that is not JSON (or of an
            ``ab.Secret`` in a value that is stored).
    """
    if type(value) is dict:  # (the common state: a flat dict of plain values, checked
        for k, item in value.items():  # here without a call per item)
            if type(k) is not str or not k.isascii():
                break
            t = type(item)
            if t is str:
                if not item.isascii():
                    break
            elif t is int:
                if item.bit_length() > _SHORT_INT_BITS:
                    break
            elif t is float:
                if not math.isfinite(item):
                    break
            elif t is not bool and item is not None:
                break
        else:  # dict of ASCII keys to ASCII strings, short ints, finite floats, booleans
            return FrozenDict(value)  # and None: the checks of _freeze, all passed
    return _freeze(value, path, 0, set())


def _freeze(v: Any, path: str, depth: int, seen: set[int]) -> Any:
    t = type(v)
    if t is str:
        if not v.isascii() and _SURROGATE.search(v):
            raise _bad(path, "a string with a lone surrogate (not valid UTF-8)")
        return v
    if t is int:
        if v.bit_length() > _SHORT_INT_BITS and _too_many_digits(v):
            raise JSONValueError(
                f"{path} is an int of over {sys.get_int_max_str_digits()} digits, too long for "
                "JSON text; store it as a string, e.g. hex(n)", path)
        return v
    if t is bool or v is None:
        return v
    if t is float:
        if math.isfinite(v):
            return v
        raise _bad(path, f"the float {v!r}")
    if depth > _MAX_DEPTH:
        raise JSONValueError(
            f"{path} is nested more than {_MAX_DEPTH} levels deep; flatten the value", path
        )
    if isinstance(v, dict):
        key = id(v)
        if key in seen:
            raise _bad(path, "a reference back to one of its own containers (a cycle)")
        seen.add(key)
        out = {}
        for k, item in v.items():
            if type(k) is not str:
                raise _bad(f"{path}[{_safe_repr(k)}]", f"under a {type(k).__name__} key")
            if not k.isascii() and _SURROGATE.search(k):
                raise _bad(path, "a dict with a key holding a lone surrogate (not valid UTF-8)")
            out[k] = _freeze(item, f"{path}[{k!r}]", depth + 1, seen)
        seen.discard(key)
        return FrozenDict(out)
    if isinstance(v, (list, tuple)):
        key = id(v)
        if key in seen:
            raise _bad(path, "a reference back to one of its own containers (a cycle)")
        seen.add(key)
        out_list = FrozenList(_freeze(item, f"{path}[{i}]", depth + 1, seen) for i, item in enumerate(v))
        seen.discard(key)
        return out_list
    if isinstance(v, str):  # str subclasses (enums...) become plain str
        return _freeze(str.__str__(v), path, depth, seen)
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return _freeze(int(v), path, depth, seen)
    if isinstance(v, float):
        return _freeze(float(v), path, depth, seen)
    if isinstance(v, Secret):
        if _stored(path):
            raise JSONValueError(
                f"{path} is an ab.Secret, which can't be stored here: it would come back as "
                f"{{'$secret': {v.name!r}}} once the agent hibernates; keep it in "
                f"self.secrets[{v.name!r}] and store the name {v.name!r} instead", path)
        return v  # kept as it is; written as {"$secret": name} (see agentbook.secrets)
    raise _bad(path, f"a {t.__name__}")


def _stored(path: str) -> bool:
    """Whether *path* names a value that is stored and read back (see :data:`STORED_ROOTS`)."""
    root = path.split("[", 1)[0]
    return root in STORED_ROOTS or (root.endswith(".initial_state") and " " not in root)


def _too_many_digits(v: int) -> bool:
    """Whether ``str(v)`` would pass Python's limit on int digits (``json.dumps`` too)."""
    limit = sys.get_int_max_str_digits()
    return limit > 0 and abs(v) >= _power_of_ten(limit)


@lru_cache(maxsize=4)
def _power_of_ten(n: int) -> int:
    return 10**n


def _safe_repr(value: Any) -> str:
    """``repr(value)``, cut to 60 characters; its type's name if ``repr`` fails."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def thaw(value: Any) -> Any:
    """Return a plain, mutable deep copy of a JSON value."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


def redact_secret(value: Any) -> Any:
    """The ``default=`` of every JSON encoder agentbook uses: an ``ab.Secret`` is written as
    ``{"$secret": "<name>"}``, anything else that is not JSON is a ``TypeError``.

    Public for agentbook's own encoders (serve, MCP); not part of the user's API."""
    if isinstance(value, Secret):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON")


try:
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring as _c_string
except ImportError:  # pragma: no cover - a Python without json's C speedups
    _c_make_encoder = None
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            default=redact_secret)
#: json's own C encoder, made once: what JSONEncoder.encode does, minus its per-call
#: Python set-up (a third of the time of a small state's text) and the making of the
#: encoder (a burst dumps a state per message). No circular-reference marks (they are per
#: call): a value containing itself ends in RecursionError instead, turned into the same
#: JSONValueError.
_c_encode = None if _c_make_encoder is None else _c_make_encoder(
    None, redact_secret, _c_string, None, ":", ",", False, False, False)
_canonical_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), sort_keys=True, default=redact_secret
)


def dumps(value: Any) -> str:
    """Compact JSON text of an already-checked value.

    Raises:
        JSONValueError: the value was not checked and is not JSON (NaN, a huge int...).
    """
    try:
        if _c_encode is None:
            return _encoder.encode(value)
        return "".join(_c_encode(value, 0))
    except ValueError as exc:
        raise _unencodable(value, exc) from None
    except RecursionError:  # (the shared encoder keeps no marks: a cycle ends here too)
        raise JSONValueError(
            f"{_safe_repr(value)} is not a JSON value: it contains itself or is nested "
            f"too deeply; keep values acyclic and under {_MAX_DEPTH} levels (check them "
            "with agentbook.jsonvalue.freeze first)", "value") from None


def canonical(value: Any) -> str:
    """Canonical JSON text (sorted keys, compact): equal values give equal text."""
    try:
        return _canonical_encoder.encode(value)
    except ValueError as exc:
        raise _unencodable(value, exc) from None


def _unencodable(value: Any, exc: ValueError) -> JSONValueError:
    return JSONValueError(f"{_safe_repr(value)} is not a JSON value ({exc}); use finite floats "
                          f"and ints of at most {sys.get_int_max_str_digits()} digits", "value")


def loads(text: str | None) -> Any:
    """Parse JSON text into a frozen value (``None`` for ``None``)."""
    if text is None or text == "null":  # (a schedule's usual payload: no parse)
        return None
    return freeze(json.loads(text))
