"""An agent's small key-value store (``self.kv``): JSON text by key, in ``_ab_kv``.

Writes go through the running handler (which captures them for history first), so they
commit with it; these functions only run the statements."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .agentstore import AgentStore

__all__ = ["count", "delete", "get", "has", "keys", "put"]


def get(store: AgentStore, key: str) -> str | None:
    """The JSON text stored under *key*, or ``None``."""
    rows = store.internal("SELECT value FROM _ab_kv WHERE key = ?", (key,))
    return cast("str", rows[0][0]) if rows else None


def put(store: AgentStore, key: str, value_json: str) -> None:
    """Store *value_json* under *key* (replacing what was there)."""
    store.internal("INSERT OR REPLACE INTO _ab_kv(key, value) VALUES (?, ?)", (key, value_json))


def delete(store: AgentStore, key: str) -> None:
    """Forget *key*."""
    store.internal("DELETE FROM _ab_kv WHERE key = ?", (key,))


def has(store: AgentStore, key: object) -> bool:
    """Whether *key* is stored."""
    return bool(store.internal("SELECT 1 FROM _ab_kv WHERE key = ?", (key,)))


def keys(store: AgentStore) -> list[str]:
    """Every key, sorted."""
    return [cast("str", r[0]) for r in store.internal("SELECT key FROM _ab_kv ORDER BY key")]


def count(store: AgentStore) -> int:
    """How many keys are stored."""
    return cast("int", store.internal("SELECT count(*) FROM _ab_kv")[0][0])
