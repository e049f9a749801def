"""MCP server registrations in an agent's store: ``_ab_mcp_servers``.

A registration is tracked (in history, rewinds and forks, like any row the agent writes)
and holds no secret: only the *names* of the headers and env values, whose values live in
``_ab_secrets`` under scope ``mcp:<name>`` (see :mod:`agentbook.store.secrets`).
Writes go through :meth:`AgentStore.internal`, inside the running handler's transaction
(the caller starts the change capture first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .agentstore import AgentStore

__all__ = ["Registration", "has_servers", "names", "register", "registration", "registrations",
           "unregister"]

_COLS = "name, transport, target, secret_names"


class Registration(NamedTuple):
    """One row of ``_ab_mcp_servers`` (without its creation time)."""

    name: str
    transport: str  # stdio | http
    target: str  # JSON: a URL, or a command list
    secret_names: str  # JSON: {"headers": [...], "env": [...]}


def has_servers(store: AgentStore) -> bool:
    """Whether the agent registered any MCP server (one cheap look-up)."""
    return bool(store.internal("SELECT 1 FROM _ab_mcp_servers LIMIT 1"))


def registration(store: AgentStore, name: str) -> Registration | None:
    """The registration of server *name*, or ``None``."""
    rows = store.internal(f"SELECT {_COLS} FROM _ab_mcp_servers WHERE name = ?", (name,))
    return Registration._make(rows[0]) if rows else None


def registrations(store: AgentStore) -> list[Registration]:
    """Every registration, oldest first."""
    return [Registration._make(r) for r in store.internal(
        f"SELECT {_COLS} FROM _ab_mcp_servers ORDER BY created, name")]


def names(store: AgentStore) -> list[str]:
    """The registered server names, sorted."""
    return [r[0] for r in store.internal("SELECT name FROM _ab_mcp_servers ORDER BY name")]


def register(store: AgentStore, reg: Registration, created: float) -> None:
    """Write (or replace) a registration."""
    store.internal("INSERT OR REPLACE INTO _ab_mcp_servers VALUES (?, ?, ?, ?, ?)",
                   (*reg, created))


def unregister(store: AgentStore, name: str) -> None:
    """Remove the registration of *name* (its secrets stay: drop scope ``mcp:<name>``)."""
    store.internal("DELETE FROM _ab_mcp_servers WHERE name = ?", (name,))
