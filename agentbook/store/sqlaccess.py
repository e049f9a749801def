"""How SQL reaches a store: what an agent's own SQL (and SQL a model wrote) may touch,
read-only connections for reads from outside, and SQLite's errors as agentbook's typed
errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import apsw

from ..errors import ReadOnlyError, SQLError, StoreCorruptError, StoreError, UsageError
from . import fds, health
from .schema import INTERNAL_PREFIX

__all__ = ["OUTSIDE_LIMITS", "READONLY_LIMITS", "READ_BUSY_MS", "QueryLimits", "open_reader",
           "outside_limits", "query_reader", "reading", "readonly_authorizer", "run_limited",
           "translate_error", "user_authorizer"]

_OPEN_RO = apsw.SQLITE_OPEN_READONLY
#: What apsw raises for SQL text or values SQLite can't take (NUL, lone surrogates,
#: integers beyond 64 bits).
_BAD_INPUT = (ValueError, OverflowError)


def sql_params(params: tuple) -> tuple | dict:
    """``sql(query, *params)``'s parameters: given one by one, or as one list, tuple or
    dict (for ``:name`` placeholders)."""
    if len(params) == 1 and isinstance(params[0], (dict, list, tuple)):
        return params[0] if isinstance(params[0], dict) else tuple(params[0])
    return params


def translate_error(exc: BaseException, path: str = "", *, writing: bool = True) -> Exception:
    """Turn an ``apsw`` exception into agentbook's typed error (others pass through)."""
    where = f" ({path})" if path else ""
    if isinstance(exc, (apsw.CantOpenError, apsw.IOError, OSError)) and fds.exhausted():
        return fds.exhausted_error(path)
    if isinstance(exc, apsw.FullError):
        return health.full(path)
    if isinstance(exc, apsw.ReadOnlyError) and not writing:
        return ReadOnlyError(
            "this SQL is read-only: ref.sql and at(...).sql only query; change the "
            "agent's tables inside one of its handlers with self.sql(...)"
        )
    if isinstance(exc, apsw.ReadOnlyError) or (
            isinstance(exc, apsw.CantOpenError) and path and health.read_only_cause(path)):
        return health.read_only(path)
    if isinstance(exc, (apsw.CorruptError, apsw.NotADBError)):
        return StoreCorruptError(
            f"the store file is damaged{where}: {exc}; restore it from a backup or "
            "remove the file"
        )
    if isinstance(exc, apsw.AuthError):
        return SQLError(
            f"not allowed: {exc}. Agent SQL may use the agent's own tables only "
            "(no _ab_ tables, ATTACH, PRAGMA or transaction statements)"
        )
    if isinstance(exc, (apsw.SQLError, apsw.ConstraintError, apsw.MismatchError, apsw.RangeError,
                        apsw.BindingsError, apsw.TooBigError)):
        return SQLError(str(exc).removeprefix("SQLError: "))
    if isinstance(exc, apsw.InterruptError):
        return SQLError(f"the query was interrupted: {exc}")
    if isinstance(exc, _BAD_INPUT) and not isinstance(exc, apsw.Error):
        return SQLError(f"SQLite can't take this SQL or value: {exc}")
    if isinstance(exc, (apsw.IOError, apsw.CantOpenError, apsw.BusyError, apsw.LockedError)):
        return StoreError(f"the store could not be used{where}: {exc}")
    return exc  # type: ignore[return-value]


_ALLOWED_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
     "table_list", "function_list", "collation_list"}
)


def user_authorizer(op: int, p1: Any, p2: Any, db: Any, trigger: Any) -> int:
    """What an agent's own SQL may do: anything to its own tables, nothing else."""
    if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH, apsw.SQLITE_TRANSACTION,
              apsw.SQLITE_SAVEPOINT):
        return apsw.SQLITE_DENY
    if op == apsw.SQLITE_PRAGMA:
        return apsw.SQLITE_OK if str(p1).lower() in _ALLOWED_PRAGMAS else apsw.SQLITE_DENY
    if op == apsw.SQLITE_FUNCTION and str(p2).lower() in ("load_extension", "readfile", "writefile"):
        return apsw.SQLITE_DENY
    for name in (p1, p2):
        if isinstance(name, str) and name.startswith(INTERNAL_PREFIX) and op != apsw.SQLITE_FUNCTION:
            return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


_READ_OPS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION,
                       apsw.SQLITE_RECURSIVE})


def readonly_authorizer(op: int, p1: Any, p2: Any, db: Any, trigger: Any) -> int:
    """Queries only: for SQL that came from a model or a user's text."""
    if op not in _READ_OPS:
        return apsw.SQLITE_DENY
    return user_authorizer(op, p1, p2, db, trigger)


#: How long a read from outside waits (milliseconds) while another connection - often
#: another process's, closing its store and checkpointing it - holds the file, before it
#: fails with a ``StoreError``.
READ_BUSY_MS = 5_000


def open_reader(path: str) -> apsw.Connection:
    """Open a read-only connection to a store file; its reads wait up to
    :data:`READ_BUSY_MS` for a writer (of any process) that holds the file a moment."""
    try:
        conn = apsw.Connection(path, flags=_OPEN_RO)
        conn.set_busy_timeout(READ_BUSY_MS)
        return conn
    except apsw.Error as exc:
        raise translate_error(exc, path, writing=False) from None


@contextmanager
def reading(conn: apsw.Connection, path: str = "") -> Iterator[apsw.Connection]:
    """Run user queries on a reader with the user authorizer and typed errors."""
    conn.authorizer = user_authorizer
    try:
        yield conn
    except apsw.Error as exc:
        raise translate_error(exc, path, writing=False) from None
    finally:
        conn.authorizer = None


@dataclass
class QueryLimits:
    """What one query that a model or a person wrote may cost.

    Attributes:
        seconds: Its time budget, rows fetched included (``None``: no limit). A progress
            handler looks at the clock every :data:`PROGRESS_STEPS` SQLite steps, and the
            fetch loop at every row.
        value_bytes: The largest string or blob it may make or read (SQLite's
            ``SQLITE_LIMIT_LENGTH`` while it runs; ``None``: SQLite's own, 1 GB). This also
            bounds what one step costs (``zeroblob``, ``randomblob``, ``replace`` ...), so
            that the time budget holds for them too.
        result_bytes: How big its rows may be in all (strings and blobs by length, other
            values 16 bytes; ``None``: no cap).
        what: How to raise them, for the error messages.
    """

    seconds: float | None = None
    value_bytes: int | None = None
    result_bytes: int | None = None
    what: str = ""


#: SQLite steps between two looks at a limited query's clock.
PROGRESS_STEPS = 100
#: ``self.sql(..., readonly=True)``, SQL a model wrote (its seconds are the runtime's
#: ``max_query_seconds``). Change the caps here for every agent of the process.
READONLY_LIMITS = QueryLimits(
    value_bytes=4 << 20, result_bytes=32 << 20,
    what="set agentbook.store.sqlaccess.READONLY_LIMITS.{name} = ... (None: no cap)")
#: ``ref.sql`` and ``at(...).sql``: a person's query, from outside, on the event loop
#: (which it holds while it runs: every agent of the kernel waits).
OUTSIDE_LIMITS = QueryLimits(
    seconds=2.0, value_bytes=1 << 30, result_bytes=1 << 30,
    what="pass ref.sql(..., {name}=...) (None: no limit)")
_OUTSIDE_NAMES = {"seconds": "timeout", "value_bytes": "max_bytes", "result_bytes": "max_bytes"}


def outside_limits(timeout: float | None, max_bytes: int | None) -> QueryLimits:
    """The limits of ``ref.sql(..., timeout=, max_bytes=)`` (one cap for the whole result
    and each value in it)."""
    for name, value in (("timeout", timeout), ("max_bytes", max_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0 or (name == "max_bytes"
                                                       and not isinstance(value, int))):
            raise UsageError(f"ref.sql({name}=...) is a positive "
                             f"{'int' if name == 'max_bytes' else 'number'} or None, "
                             f"not {value!r}")
    return QueryLimits(seconds=timeout, value_bytes=max_bytes, result_bytes=max_bytes,
                       what=OUTSIDE_LIMITS.what)
_SQLITE_MAX_LENGTH = 1_000_000_000


def _how(limits: QueryLimits, name: str) -> str:
    if name == "seconds" and limits.what.startswith("set agentbook"):
        return "ab.Runtime(max_query_seconds=...)"
    if limits.what.startswith("pass ref.sql"):
        name = _OUTSIDE_NAMES[name]
    return limits.what.format(name=name)


def run_limited(conn: apsw.Connection, query: str, params: Any, limits: QueryLimits,
                path: str = "") -> tuple[list[str], list[tuple]]:
    """Run *query* on *conn* within *limits*; return column names and rows.

    The caller sets the authorizer. Over a limit, the query is stopped and the error is an
    :class:`~agentbook.errors.SQLError` saying which limit and how to raise it; SQLite's
    other errors are raised as they are (``apsw`` errors, for the caller to translate).
    """
    deadline = None if limits.seconds is None else time.monotonic() + limits.seconds
    old_length = None
    if limits.value_bytes is not None:
        old_length = conn.limit(apsw.SQLITE_LIMIT_LENGTH,
                                max(1, min(limits.value_bytes, _SQLITE_MAX_LENGTH)))
    if deadline is not None:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    try:
        try:
            cursor = conn.execute(query, params, can_cache=False)
            try:
                names = [d[0] for d in cursor.description]
            except apsw.ExecutionCompleteError:  # no rows (or not a query)
                return [], []
            rows = _fetch(cursor, deadline, limits)
        except apsw.InterruptError:
            if deadline is not None and time.monotonic() > deadline:
                raise _over_time(limits) from None
            raise
        except apsw.TooBigError:
            if limits.value_bytes is not None:
                raise SQLError(
                    f"a value of the query is over {_size(limits.value_bytes)} (a string or "
                    "blob it made or read); ask for less (length(...), substr(...)) or raise "
                    f"the cap: {_how(limits, 'value_bytes')}") from None
            raise
        return names, rows
    finally:
        if deadline is not None:
            conn.set_progress_handler(None)
        if old_length is not None:
            conn.limit(apsw.SQLITE_LIMIT_LENGTH, old_length)


def _fetch(cursor: Any, deadline: float | None, limits: QueryLimits) -> list[tuple]:
    cap = limits.result_bytes
    if deadline is None and cap is None:
        return cast(list[tuple], cursor.fetchall())
    rows: list[tuple] = []
    size = 0
    for row in cursor:
        rows.append(row)
        if cap is not None:
            size += 16 * len(row)
            for value in row:
                if value.__class__ in (str, bytes):
                    size += len(value)
            if size > cap:
                cursor.close()
                raise SQLError(
                    f"the query's result is over {_size(cap)}; ask for fewer rows or columns "
                    f"(a LIMIT, an aggregate) or raise the cap: {_how(limits, 'result_bytes')}")
        if deadline is not None and time.monotonic() > deadline:
            cursor.close()
            raise _over_time(limits)
    return rows


def _over_time(limits: QueryLimits) -> SQLError:
    return SQLError(
        f"the query took longer than {limits.seconds:g} s and was stopped; make it cheaper "
        f"(a LIMIT, an index, fewer rows) or raise the budget with {_how(limits, 'seconds')}")


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MB" if n >= 1 << 20 else f"{n} bytes"


def query_reader(
    conn: apsw.Connection, query: str, params: tuple, path: str = "",
    limits: QueryLimits = OUTSIDE_LIMITS,
) -> tuple[list[str], list[tuple]]:
    """Run a user's read-only query within *limits*; return column names and rows."""
    with reading(conn, path):
        try:
            names, rows = run_limited(conn, query, params, limits, path)
            if not names and not rows:  # no rows: ask SQLite for the columns alone
                from apsw import ext

                info = ext.query_info(conn, query, params)
                return [d[0] for d in (info.description or ())], []
            return names, rows
        except _BAD_INPUT as exc:
            raise translate_error(exc, path) from None
