"""MCP server registrations in an agent's store: ``_ab_mcp_servers``.

A registration is tracked (in history, rewinds and forks, like any row the agent writes)
and holds no secret: only the *names* of the headers and env values, whose values live in
``_ab_secrets`` under scope ``mcp:<name>`` (see :mod:`agentbook.store.secrets`).
Writes go through :meth:`AgentStore.internal`, inside the running handler's transaction
(the caller starts the change capture first). The table is the lazy group ``mcp``
(:mod:`agentbook.store.groups`): made by the first registration, read as empty before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .agentstore import AgentStore

__all__ = ["Registration", "has_servers", "names", "register", "registration", "registrations",
           "unregister"]

_COLS = "name, transport, target, secret_names"
_GROUP = "mcp"


class Registration(NamedTuple):
    """One row of ``_ab_mcp_servers`` (without its creation time)."""

    name: str
    transport: str  # stdio | http
    target: str  # JSON: a URL, or a command list
    secret_names: str  # JSON: {"headers": [...], "env": [...]}


def has_servers(store: AgentStore) -> bool:
    """Whether the agent registered any MCP server (one cheap look-up)."""
    return store.has_group(_GROUP) and bool(
        store.internal("SELECT 1 FROM _ab_mcp_servers LIMIT 1"))


def registration(store: AgentStore, name: str) -> Registration | None:
    """The registration of server *name*, or ``None``."""
    if not store.has_group(_GROUP):
        return None
    rows = store.internal(f"SELECT {_COLS} FROM _ab_mcp_servers WHERE name = ?", (name,))
    return Registration._make(rows[0]) if rows else None


def registrations(store: AgentStore) -> list[Registration]:
    """Every registration, oldest first."""
    if not store.has_group(_GROUP):
        return []
    return [Registration._make(r) for r in store.internal(
        f"SELECT {_COLS} FROM _ab_mcp_servers ORDER BY created, name")]


def names(store: AgentStore) -> list[str]:
    """The registered server names, sorted."""
    if not store.has_group(_GROUP):
        return []
    return [r[0] for r in store.internal("SELECT name FROM _ab_mcp_servers ORDER BY name")]


def register(store: AgentStore, reg: Registration, created: float) -> None:
    """Write (or replace) a registration."""
    store.ensure_group(_GROUP)
    store.internal("INSERT OR REPLACE INTO _ab_mcp_servers VALUES (?, ?, ?, ?, ?)",
                   (*reg, created))


def unregister(store: AgentStore, name: str) -> None:
    """Remove the registration of *name* (its secrets stay: drop scope ``mcp:<name>``)."""
    if store.has_group(_GROUP):
        store.internal("DELETE FROM _ab_mcp_servers WHERE name = ?", (name,))
