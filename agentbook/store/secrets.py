"""Secrets in an agent's store: ``_ab_secrets``, rows of (scope, key, value).

The table is untracked (see :data:`agentbook.store.schema.UNTRACKED_TABLES`): its changes
are in no changeset, so a secret never reaches history, a fork or a view, and a rewind
leaves it as it is. Scopes keep users apart: ``agent`` is ``self.secrets``, ``mcp:<name>``
holds the headers and env values of one MCP server registration.

Reached as ``store.secrets`` (:attr:`AgentStore.secrets`), so that ``ab.Secret``'s own
module, below the store, can use it without importing it. Writes go through
:meth:`AgentStore.internal`, inside the running handler's transaction, with SQLite's
``secure_delete`` on: the bytes of a value replaced or deleted are overwritten with zeros,
so no copy of an old secret stays in the file's free space (nor, after a checkpoint, in its
WAL). The setting is per connection; it is on only while secrets are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agentstore import AgentStore

__all__ = ["Secrets"]


class Secrets:
    """The secrets of one store, by scope and key. Values are plain strings here: wrapping
    them in ``ab.Secret`` is the caller's business."""

    __slots__ = ("_store",)

    def __init__(self, store: AgentStore) -> None:
        self._store = store

    def get(self, scope: str, key: str) -> str | None:
        """The value of *key* in *scope*, or ``None``."""
        rows = self._store.internal(
            "SELECT value FROM _ab_secrets WHERE scope = ? AND key = ?", (scope, key))
        return rows[0][0] if rows else None

    def has(self, scope: str, key: object) -> bool:
        """Whether *scope* holds *key*."""
        return bool(self._store.internal(
            "SELECT 1 FROM _ab_secrets WHERE scope = ? AND key = ?", (scope, key)))

    def keys(self, scope: str) -> list[str]:
        """The keys of *scope*, sorted."""
        return [r[0] for r in self._store.internal(
            "SELECT key FROM _ab_secrets WHERE scope = ? ORDER BY key", (scope,))]

    def items(self, scope: str) -> dict[str, str]:
        """Every key and value of *scope*."""
        return {r[0]: r[1] for r in self._store.internal(
            "SELECT key, value FROM _ab_secrets WHERE scope = ?", (scope,))}

    def put(self, scope: str, key: str, value: str) -> None:
        """Set *key* of *scope* to *value* (replacing what was there)."""
        with self._wiping():
            self._store.internal("INSERT OR REPLACE INTO _ab_secrets VALUES (?, ?, ?)",
                                 (scope, key, value))

    def delete(self, scope: str, key: str) -> None:
        """Remove *key* from *scope* (nothing happens if it is not there)."""
        with self._wiping():
            self._store.internal("DELETE FROM _ab_secrets WHERE scope = ? AND key = ?",
                                 (scope, key))

    def drop_scope(self, scope: str) -> None:
        """Remove every secret of *scope*."""
        with self._wiping():
            self._store.internal("DELETE FROM _ab_secrets WHERE scope = ?", (scope,))

    def replace_scope(self, scope: str, items: Iterable[tuple[str, str]]) -> None:
        """Make *items* (distinct keys) the whole content of *scope*."""
        with self._wiping():
            self.drop_scope(scope)
            for key, value in items:
                self._store.internal("INSERT INTO _ab_secrets VALUES (?, ?, ?)",
                                     (scope, key, value))

    @contextmanager
    def _wiping(self) -> Iterator[None]:
        """``secure_delete`` on the writer connection while secrets are written (what they
        free is zeroed), then as it was."""
        conn = self._store.conn
        value = conn.execute("PRAGMA secure_delete").fetchall()[0][0]
        before = value if isinstance(value, int) else 0  # (0 off, 1 on, 2 fast)
        if before == 1:
            yield
            return
        conn.execute("PRAGMA secure_delete = ON")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA secure_delete = {before}")

    def __repr__(self) -> str:
        return f"<secrets of {self._store!r}>"
