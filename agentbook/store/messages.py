"""A chat agent's conversation in its store: messages, tool calls and the tool cache.

Three tracked tables (so a rewind or a fork carries the conversation with the state):

- ``_ab_messages``: the conversation in order (``seq``); old turns fold into one row of
  role ``summary`` kept at ``seq = 0``, so it always reads first.
- ``_ab_tool_calls``: one row per tool call (what ran, what it returned, how long it took).
- ``_ab_tool_cache``: results of tools with a ``ttl``, by ``tool:canonical-arguments``.

They are the lazy group ``chat`` (:mod:`agentbook.store.groups`): a store has them from
its first write of a message, tool call or cached result, and reads them as empty before.
Writes go through :meth:`AgentStore.internal` on the writer, inside the running handler's
transaction (the caller starts the change capture first); the ``read_*`` functions take
any connection, such as a read-only one, and never wait for a running handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .groups import read

if TYPE_CHECKING:
    import apsw

    from .agentstore import AgentStore

__all__ = ["Message", "ToolCall", "add_message", "cache_result", "cached_result", "clear", "fold",
           "has_message", "last_seq", "messages", "pending_tool_approval", "read_messages",
           "read_tool_calls", "record_tool_call", "summary"]

_MESSAGE_COLS = "seq, id, role, content, tool_calls, tool_call_id, name, ts"
_TOOL_CALL_COLS = "id, tool, args, result, error, duration_ms, cached, ts"
_GROUP = "chat"


class Message(NamedTuple):
    """One row of ``_ab_messages``."""

    seq: int
    id: str
    role: str  # system | user | assistant | tool | summary
    content: str
    tool_calls: str | None  # JSON, on assistant messages that call tools
    tool_call_id: str | None
    name: str | None
    ts: float


class ToolCall(NamedTuple):
    """One row of ``_ab_tool_calls``."""

    id: str
    tool: str
    args: str  # JSON
    result: str | None  # JSON
    error: str | None
    duration_ms: float
    cached: int  # 0 or 1
    ts: float


# -- the writer (inside the handler) ---------------------------------------------------------
def messages(store: AgentStore, *, with_summary: bool = True) -> list[Message]:
    """The stored conversation in order (the summary row first, unless *with_summary* is
    false)."""
    if not store.has_group(_GROUP):
        return []
    where = "" if with_summary else " WHERE role != 'summary'"
    return [Message._make(r) for r in store.internal(
        f"SELECT {_MESSAGE_COLS} FROM _ab_messages{where} ORDER BY seq")]


def add_message(store: AgentStore, id: str, role: str, content: str, tool_calls: str | None,
                tool_call_id: str | None, name: str | None, ts: float) -> None:
    """Append one message (its ``seq`` is the next one)."""
    store.ensure_group(_GROUP)
    store.internal(
        "INSERT INTO _ab_messages(id, role, content, tool_calls, tool_call_id, name, ts)"
        " VALUES (?,?,?,?,?,?,?)", (id, role, content, tool_calls, tool_call_id, name, ts))


def last_seq(store: AgentStore) -> int:
    """The highest ``seq`` of the conversation (0 when it is empty or only a summary)."""
    if not store.has_group(_GROUP):
        return 0
    rows = store.internal("SELECT max(seq) FROM _ab_messages")
    return (rows[0][0] or 0) if rows else 0


def has_message(store: AgentStore, message_id: str) -> bool:
    """Whether a message of id *message_id* is stored."""
    return store.has_group(_GROUP) and bool(
        store.internal("SELECT 1 FROM _ab_messages WHERE id = ? LIMIT 1", (message_id,)))


def clear(store: AgentStore) -> None:
    """Delete the whole conversation, its summary included (a client's "clear history")."""
    if store.has_group(_GROUP):
        store.internal("DELETE FROM _ab_messages")


def summary(store: AgentStore) -> str | None:
    """The summary of the turns folded so far (``None`` before the first fold)."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal("SELECT content FROM _ab_messages WHERE role = 'summary'")
    return rows[0][0] if rows else None


def fold(store: AgentStore, through_seq: int, text: str, ts: float) -> None:
    """Replace the messages up to *through_seq* (and the old summary) by summary *text*."""
    store.ensure_group(_GROUP)
    store.internal("DELETE FROM _ab_messages WHERE role = 'summary' OR seq <= ?",
                   (through_seq,))
    store.internal("INSERT INTO _ab_messages(seq, id, role, content, ts)"
                   " VALUES (0, 'summary', 'summary', ?, ?)", (text, ts))


def record_tool_call(store: AgentStore, call: ToolCall) -> None:
    """Write one tool call's row (a call id seen before is replaced)."""
    store.ensure_group(_GROUP)
    store.internal("INSERT OR REPLACE INTO _ab_tool_calls VALUES (?,?,?,?,?,?,?,?)", call)


def cache_result(store: AgentStore, key: str, result_json: str, expires: float) -> None:
    """Keep a tool's result under *key* until *expires* (runtime clock, epoch s)."""
    store.ensure_group(_GROUP)
    store.internal("INSERT OR REPLACE INTO _ab_tool_cache VALUES (?, ?, ?)",
                   (key, result_json, expires))


def cached_result(store: AgentStore, key: str, now: float) -> str | None:
    """The cached result JSON under *key*, if it has not expired by *now*."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal("SELECT result FROM _ab_tool_cache WHERE key = ? AND expires > ?",
                          (key, now))
    return rows[0][0] if rows else None


def pending_tool_approval(store: AgentStore, approval_id: str) -> str | None:
    """The keyword arguments (JSON) of a still-pending approval of a gated tool call
    (method ``run_approved_tool``); ``None`` for any other approval.

    (It reads ``_ab_approvals``: the one look at another concept's table the chat needs,
    kept here next to the rest of the chat's SQL.)"""
    rows = store.internal(
        "SELECT kwargs FROM _ab_approvals WHERE id = ? AND status = 'pending'"
        " AND method = 'run_approved_tool'", (approval_id,))
    return rows[0][0] if rows else None


# -- any connection (read-only views) --------------------------------------------------------
def read_messages(conn: apsw.Connection) -> list[Message]:
    """The stored conversation in order, read on *conn*."""
    return [Message._make(r) for r in read(
        conn, f"SELECT {_MESSAGE_COLS} FROM _ab_messages ORDER BY seq")]


def read_tool_calls(conn: apsw.Connection) -> list[ToolCall]:
    """Every recorded tool call, read on *conn*."""
    return [ToolCall._make(r) for r in read(conn, f"SELECT {_TOOL_CALL_COLS} FROM _ab_tool_calls")]

