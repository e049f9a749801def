"""``ab.Secret``: a value that is used but never written down.

A secret can be passed to a handler, kept in the agent's secret store (``self.secrets``)
and handed to MCP servers or model clients. Wherever agentbook writes JSON - history,
events, DuckDB views, forks, served responses - a secret is written as
``{"$secret": "<name>"}``; its ``repr`` and ``str`` show only the name. The value comes
out only through :meth:`Secret.reveal`. Secrets in ``self.secrets`` live in a table that
time travel does not track, so forks and changesets never carry them.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.agent import Agent
    from .store.secrets import Secrets

__all__ = ["Secret", "SecretStore"]


class Secret:
    """A secret value (an API key, a token). ``reveal()`` gives it; nothing else does."""

    __slots__ = ("_value", "name")

    def __init__(self, value: str, name: str = "secret") -> None:
        if not isinstance(value, str):
            raise TypeError("a Secret holds a str")
        self._value = value
        self.name = name

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def to_json(self) -> dict[str, str]:
        """What is written wherever agentbook writes JSON."""
        return {"$secret": self.name}

    def __repr__(self) -> str:
        return f"Secret({self.name!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self.name))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret can't be pickled or copied out")

    def __getstate__(self) -> Any:
        raise TypeError("a Secret can't be pickled or copied out")


class SecretStore(MutableMapping[str, Secret]):
    """``self.secrets``: the agent's secrets, kept apart from history and forks."""

    __slots__ = ("_agent", "_scope")

    def __init__(self, agent: Agent, scope: str = "agent") -> None:
        self._agent = agent
        self._scope = scope

    def _secrets(self) -> Secrets:
        # (the agent's store, reached through the agent: this module sits below the store)
        secrets: Secrets = self._agent._ab_store().secrets
        return secrets

    def __getitem__(self, key: str) -> Secret:
        value = self._secrets().get(self._scope, key)
        if value is None:
            raise KeyError(key)
        return Secret(value, key)

    def __setitem__(self, key: str, value: Secret | str) -> None:
        raw = value.reveal() if isinstance(value, Secret) else value
        if not isinstance(raw, str):
            raise TypeError("secrets are strings (or ab.Secret)")
        self._secrets().put(self._scope, key, raw)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._secrets().delete(self._scope, key)

    def __contains__(self, key: object) -> bool:
        return self._secrets().has(self._scope, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._secrets().keys(self._scope))

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __repr__(self) -> str:
        return f"<secrets: {', '.join(self) or 'none'}>"
