"""How SQL reaches a store: what an agent's own SQL (and SQL a model wrote) may touch,
read-only connections for reads from outside, and SQLite's errors as agentbook's typed
errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import apsw

from ..errors import ReadOnlyError, SQLError, StoreCorruptError, StoreError
from . import health
from .schema import INTERNAL_PREFIX

__all__ = ["open_reader", "query_reader", "reading", "readonly_authorizer", "translate_error",
           "user_authorizer"]

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


def open_reader(path: str) -> apsw.Connection:
    """Open a read-only connection to a store file."""
    try:
        return apsw.Connection(path, flags=_OPEN_RO)
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


def query_reader(
    conn: apsw.Connection, query: str, params: tuple, path: str = ""
) -> tuple[list[str], list[tuple]]:
    """Run a user's read-only query; return column names and rows."""
    with reading(conn, path):
        try:
            cursor = conn.execute(query, params, can_cache=False)
            try:
                names = [d[0] for d in cursor.description]
            except apsw.ExecutionCompleteError:  # no rows: ask SQLite for the columns alone
                from apsw import ext

                info = ext.query_info(conn, query, params)
                return [d[0] for d in (info.description or ())], []
            return names, cursor.fetchall()
        except _BAD_INPUT as exc:
            raise translate_error(exc, path) from None
