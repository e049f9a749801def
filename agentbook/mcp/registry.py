"""Registrations of MCP servers in an agent's store, and what a target may be.

A registration is a row of ``_ab_mcp_servers`` (tracked: in history and time travel);
header and env values are rows of ``_ab_secrets`` under scope ``mcp:<name>`` (untracked:
never in a changeset, so never in history, a fork or a view). These helpers read and
check them; :mod:`agentbook.mcp.agentside` writes them inside the agent's handler.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .. import jsonvalue
from ..errors import MCPServerNotFoundError, MCPTargetError
from ..store import mcp as stored
from ..store.mcp import Registration

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..store import AgentStore
    from .client import Connection
    from .transport import Spec

__all__ = ["Registration", "not_found", "pairs", "parse_target", "replayed", "row", "spec_of",
           "status"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: URL query parameters that carry credentials: refused (URLs are kept in history).
_URL_SECRETS = frozenset({"token", "access_token", "api_key", "apikey", "key", "secret",
                          "password", "auth", "authorization"})


def parse_target(target: Any) -> tuple[str, str | tuple[str, ...]]:
    """``("http", url)`` or ``("stdio", command)``; :class:`MCPTargetError` otherwise."""
    if isinstance(target, str) and "://" in target:
        url = target.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MCPTargetError(f"an MCP server URL starts with http:// or https:// and names "
                                 f"a host; {url!r} does not")
        if parts.username is not None or parts.password is not None or any(
                k.lower() in _URL_SECRETS for k, _ in parse_qsl(parts.query)):
            raise MCPTargetError("put credentials in headers=, not in the URL (URLs are kept in "
                                 "history; headers are kept apart as secrets)")
        return "http", url
    if isinstance(target, str):
        try:
            target = shlex.split(target)
        except ValueError as exc:
            raise MCPTargetError(f"could not split the command {target!r}: {exc}") from None
    if isinstance(target, (list, tuple)) and target and all(
            isinstance(p, str) and p and "\x00" not in p for p in target):
        return "stdio", tuple(target)
    raise MCPTargetError(f"an MCP server is a URL (http:// or https://) or a command (a list "
                         f"of strings, such as [sys.executable, '-m', 'mcp_server_time']), not "
                         f"{target!r}")


def row(agent: Agent, server: str) -> Registration:
    """The registration row of *server*, or :class:`MCPServerNotFoundError`."""
    store = agent._ab_instance.store
    assert store is not None  # (called inside a handler: the store is open)
    found = stored.registration(store, server) if isinstance(server, str) else None
    if found is None:
        raise not_found(store, server)
    return found


def spec_of(store: AgentStore, row: Registration) -> Spec:
    """How to reach the server of registration *row*, its secrets read from the store
    (those the registration names but the store lacks are listed as ``missing``)."""
    from .transport import Spec

    name, transport, target_json, names_json = row
    target = jsonvalue.loads(target_json)
    names = jsonvalue.loads(names_json)
    found = store.secrets.items(f"mcp:{name}")
    headers = tuple((k, found[f"header:{k}"]) for k in names.get("headers", ())
                    if f"header:{k}" in found)
    env = tuple((k, found[f"env:{k}"]) for k in names.get("env", ()) if f"env:{k}" in found)
    missing = tuple(k for k in [*names.get("headers", ()), *names.get("env", ())]
                    if f"header:{k}" not in found and f"env:{k}" not in found)
    return Spec(name, transport, tuple(target) if transport == "stdio" else target, headers,
                env, missing)


def status(row: Registration, conn: Connection) -> dict[str, Any]:
    """What ``get_mcp_servers()`` shows of one server (JSON; never a secret)."""
    name, transport, target_json, _ = row
    return {"name": name, "transport": transport, "target": jsonvalue.thaw(
        jsonvalue.loads(target_json)), **conn.status()}


def replayed(row: Registration) -> dict[str, Any]:
    """The status of a server while a replay runs (nothing is contacted)."""
    return {"name": row.name, "transport": row.transport, "target": jsonvalue.thaw(
        jsonvalue.loads(row.target)), "state": "replay", "error": None, "tools": []}


def pairs(what: str, mapping: Any, pattern: re.Pattern) -> tuple[tuple[str, str], ...]:
    """``headers=`` or ``env=`` checked, with ``ab.Secret`` values revealed, sorted."""
    if not mapping:
        return ()
    if not isinstance(mapping, dict):
        raise MCPTargetError(f"{what}= is a dict of strings, not {type(mapping).__name__}")
    out = []
    for key, value in mapping.items():
        if hasattr(value, "reveal"):  # ab.Secret
            value = value.reveal()
        if not isinstance(key, str) or not pattern.fullmatch(key):
            raise MCPTargetError(f"{key!r} can't be the name of an entry of {what}=")
        if not isinstance(value, str) or "\x00" in value or (what == "headers" and (
                "\r" in value or "\n" in value)):
            raise MCPTargetError(f"{what}[{key!r}] must be a single-line string (or ab.Secret)")
        out.append((key, value))
    return tuple(sorted(out))


def not_found(store: AgentStore, name: Any) -> MCPServerNotFoundError:
    """The error for an unknown server name, listing the known ones."""
    known = stored.names(store)
    return MCPServerNotFoundError(
        f"this agent has no MCP server named {name!r} (it has: {', '.join(known) or 'none'}); "
        "add it with await self.add_mcp_server(name, url_or_command)", str(name))
