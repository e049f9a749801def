"""The rows of ``_ab_approvals``, read and written by name.

The approvals concept (:mod:`agentbook.approve`) decides *what* a request, a claim or a
decision means; this module is the only place that knows their SQL. Writes go through
:meth:`AgentStore.internal`, so they join the running handler's savepoint and commit with
it: an approval is requested, approved or decided in the same commit as the handler that
did it, or not at all. Reads that come from outside the mailbox (the catalog keeping its
index true, a rewind on the writer's own connection) take a plain connection instead.

Three named rows:

* :class:`StoredApproval`: what the mailbox checks before it runs an approved method;
* :class:`IndexedApproval`: an approval as the catalog's index and the inbox see it (the
  columns of the catalog's ``approvals`` table, in order);
* :class:`Decision`: what became of one (who, when, why), as the inbox is told after a commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:
    import apsw

    from .agentstore import AgentStore

__all__ = ["INDEX_COLUMNS", "Decision", "IndexedApproval", "StoredApproval", "cancel_pending_since", "decide",
           "decision", "expiry_schedule", "get", "index_rows", "insert", "mark_approved",
           "mark_failed", "pending_kwargs", "set_result"]


class StoredApproval(NamedTuple):
    """What the mailbox checks of one ``_ab_approvals`` row before anything runs."""

    method: str
    #: JSON text of the positional arguments (a list).
    args: str
    #: JSON text of the keyword arguments (an object).
    kwargs: str
    nonce: str
    #: SHA-256 over agent, method, arguments, nonce and expiry (see ``approve/requests.py``).
    digest: str
    #: JSON list of who may decide (``None``: anyone).
    approvers: str | None
    expires: float | None
    #: ``pending``, ``approved``, ``failed``, ``rejected``, ``expired`` or ``cancelled``.
    status: str
    decided_by: str | None
    #: The schedule that expires it (``None``: it never expires, or a replay recorded it).
    expiry_schedule: str | None


#: The columns of the catalog's ``approvals`` index, in :class:`IndexedApproval`'s order.
INDEX_COLUMNS = ("id, class, name, method, args, kwargs, summary, side_effects, created,"
                 " expires, status, decided_by, decided_at, reason")


class IndexedApproval(NamedTuple):
    """One approval as the inbox shows it: a row of the catalog's ``approvals`` index."""

    id: str
    #: The agent's class name.
    agent: str
    #: The agent's name.
    name: str
    method: str
    #: JSON text of the positional arguments.
    args: str
    #: JSON text of the keyword arguments.
    kwargs: str
    summary: str
    #: JSON text of a list of strings.
    side_effects: str
    created: float
    expires: float | None
    status: str
    decided_by: str | None
    decided_at: float | None
    #: Why it was rejected or cancelled, or the error of a ``failed`` run.
    reason: str | None


class Decision(NamedTuple):
    """What became of one approval."""

    id: str
    status: str
    by: str | None
    at: float | None
    #: The reason given (the error, for ``failed``).
    reason: str | None


_STORED = ("SELECT method, args, kwargs, nonce, digest, approvers, expires, status, decided_by,"
           " expiry_schedule FROM _ab_approvals WHERE id = ?")


# -- inside the agent's mailbox (the writer connection, the handler's transaction) -------
def insert(store: AgentStore, *, id: str, method: str, args: str, kwargs: str, nonce: str,
           digest: str, summary: str, side_effects: str, approvers: str | None, created: float,
           expires: float | None, status: str, decided_at: float | None, reason: str | None,
           expiry_schedule: str | None, requested_at_version: int) -> None:
    """Write a requested approval (JSON columns as text)."""
    store.internal(
        "INSERT INTO _ab_approvals(id, method, args, kwargs, nonce, digest, summary, side_effects,"
        " approvers, created, expires, status, decided_at, reason, expiry_schedule,"
        " requested_at_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (id, method, args, kwargs, nonce, digest, summary, side_effects, approvers, created,
         expires, status, decided_at, reason, expiry_schedule, requested_at_version),
    )


def get(store: AgentStore, approval_id: str) -> StoredApproval | None:
    """The row of *approval_id*, or ``None`` if this store holds no such approval."""
    rows = store.internal(_STORED, (approval_id,))
    return StoredApproval._make(rows[0]) if rows else None


def mark_approved(store: AgentStore, approval_id: str, by: str | None, at: float) -> None:
    """Record the approval (its method runs next, in the same transaction)."""
    store.internal("UPDATE _ab_approvals SET status = 'approved', decided_by = ?, decided_at = ?"
                   " WHERE id = ?", (by, at, approval_id))


def set_result(store: AgentStore, approval_id: str, result_json: str | None) -> None:
    """Keep the approved method's result (JSON text) on the approval."""
    store.internal("UPDATE _ab_approvals SET result = ? WHERE id = ?", (result_json, approval_id))


def expiry_schedule(store: AgentStore, approval_id: str) -> str | None:
    """The id of the schedule that would expire *approval_id* (``None``: none)."""
    rows = store.internal("SELECT expiry_schedule FROM _ab_approvals WHERE id = ?",
                          (approval_id,))
    return rows[0][0] if rows else None


def mark_failed(store: AgentStore, approval_id: str, by: str | None, at: float,
                error: str) -> None:
    """The approved method raised: the approval is consumed as ``failed``."""
    store.internal(
        "UPDATE _ab_approvals SET status = 'failed', decided_by = ?, decided_at = ?, error = ?"
        " WHERE id = ?", (by, at, error, approval_id))


def decide(store: AgentStore, approval_id: str, status: str, by: str | None, at: float,
           reason: str | None) -> None:
    """Record a decision that runs nothing (``rejected``, ``expired``)."""
    store.internal("UPDATE _ab_approvals SET status = ?, decided_by = ?, decided_at = ?,"
                   " reason = ? WHERE id = ?", (status, by, at, reason, approval_id))


def pending_kwargs(store: AgentStore, approval_id: str, method: str) -> str | None:
    """The keyword arguments (JSON text) of *approval_id* if it is still pending and bound
    to *method*; ``None`` otherwise."""
    rows = store.internal(
        "SELECT kwargs FROM _ab_approvals WHERE id = ? AND status = 'pending' AND method = ?",
        (approval_id, method))
    return rows[0][0] if rows else None


def cancel_pending_since(conn: apsw.Connection, version: int, at: float,
                         reason: str) -> list[str]:
    """Cancel every approval still pending that was requested at *version* or later (a
    rewind to before it); returns their ids."""
    cancelled = [str(r[0]) for r in conn.execute(
        "SELECT id FROM _ab_approvals WHERE status = 'pending' AND requested_at_version >= ?",
        (version,)).fetchall()]
    for approval_id in cancelled:
        conn.execute("UPDATE _ab_approvals SET status = 'cancelled', decided_at = ?, reason = ?"
                     " WHERE id = ?", (at, reason, approval_id))
    return cancelled


# -- from outside the mailbox (the catalog's index, on a connection of its own) ----------
def decision(conn: apsw.Connection, approval_id: str) -> Decision | None:
    """What the store says became of *approval_id* (``None``: it holds no such approval).
    A ``failed`` one's reason is its error."""
    rows = conn.execute("SELECT status, decided_by, decided_at, reason, error FROM _ab_approvals"
                        " WHERE id = ?", (approval_id,)).fetchall()
    if not rows:
        return None
    status, by, at, reason, error = cast("tuple[Any, ...]", rows[0])
    return Decision(approval_id, status, by, at, error if status == "failed" else reason)


def index_rows(conn: apsw.Connection, class_name: str, name: str) -> list[IndexedApproval]:
    """Every approval a store holds, as index rows of agent (*class_name*, *name*), in the
    order they were requested."""
    rows = conn.execute(
        "SELECT id, method, args, kwargs, summary, side_effects, created, expires, status,"
        " decided_by, decided_at, CASE WHEN status = 'failed' THEN error ELSE reason END"
        " FROM _ab_approvals ORDER BY created").fetchall()
    return [IndexedApproval(row[0], class_name, name, *row[1:]) for row in cast("list[Any]", rows)]
