"""The agent's side of MCP: registrations in its store, and ``self.mcp``.

A registration is a row of ``_ab_mcp_servers`` (name, transport, target, the *names* of
its secrets): tracked, so it is in history and time travel like any row. Header and env
values go to ``_ab_secrets`` under scope ``mcp:<name>``: untracked, so no changeset, fork,
event or view ever holds them. Everything here runs inside one of the agent's handlers
and commits with it.

``self.mcp.call(server, tool, args)`` goes through the effect journal (key
``mcp:<server>:<tool>``): replays serve the recorded result, or raise the recorded error.
MCP tools join a ChatAgent's tools (:meth:`MCPAccess.chat_tools`); a class attribute
``mcp_needs_approval = ["server", "server:tool_*"]`` puts matching tools behind a
person's approval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..errors import JSONValueError, MCPError, MCPProtocolError, MCPTargetError, MCPToolError
from ..store import mcp as stored
from . import registry
from .chattools import MCPTool, build, recorded, replaying
from .sdk import ERRORS, require_sdk

if TYPE_CHECKING:
    from ..core.agent import Agent
    from .client import Connection, Manager

__all__ = ["MCPAccess", "MCPTool", "add", "remove", "servers", "wake"]

CALL_TIMEOUT = 60.0


def manager(rt: Any) -> Manager:
    """The runtime's connection manager, made on first use."""
    if rt.mcp_clients is None:
        require_sdk()
        from .client import Manager

        rt.check_open()
        rt.mcp_clients = Manager(rt)
    return rt.mcp_clients


# -- registrations ------------------------------------------------------------------------
async def add(agent: Agent, name: str, target: Any, headers: dict, env: dict) -> dict[str, Any]:
    """Register (or update) server *name* and connect; returns its status (see ``servers``)."""
    require_sdk()
    from .client import Spec

    inst = agent._ab_instance
    ctx = inst.require_ctx("add_mcp_server")
    if not isinstance(name, str) or not registry.NAME.fullmatch(name):
        raise MCPTargetError(f"an MCP server name is 1-64 letters, digits, '_' or '-' (it "
                             f"prefixes tool names), not {name!r}")
    transport, norm = registry.parse_target(target)
    hdrs, envs = registry.pairs("headers", headers, registry.HEADER), registry.pairs("env", env, registry.ENV)
    if transport == "stdio" and hdrs:
        raise MCPTargetError(f"headers= are for HTTP servers; give the stdio server {name!r} "
                             "its credentials with env=", name)
    if transport == "http" and envs:
        raise MCPTargetError(f"env= is for stdio servers; give the HTTP server {name!r} its "
                             "credentials with headers=", name)
    spec = Spec(name, transport, norm, hdrs, envs)
    store = inst.store
    assert store is not None  # (a running handler's store is open)
    row = stored.Registration(
        name, transport, jsonvalue.dumps(list(norm) if transport == "stdio" else norm),
        jsonvalue.dumps({"headers": [k for k, _ in hdrs], "env": [k for k, _ in envs]}))
    old = stored.registration(store, name)
    if old != row:
        ctx.capture(store)
        stored.register(store, row, _now(agent))
    if old is None or registry.spec_of(store, old) != spec:
        store.secrets.replace_scope(f"mcp:{name}", [
            (f"{kind}:{key}", value)
            for kind, pairs in (("header", hdrs), ("env", envs)) for key, value in pairs])
    if replaying(ctx):  # the registration is part of the replayed state; connecting is not
        return registry.replayed(row)
    mgr = manager(agent.runtime)
    conn = mgr.ensure(inst.key, spec)
    await conn.settle(mgr.connect_timeout + 5)
    return registry.status(row, conn)


async def remove(agent: Agent, name: str) -> None:
    """Forget server *name* (registration and secrets) and disconnect."""
    inst = agent._ab_instance
    ctx = inst.require_ctx("remove_mcp_server")
    store = inst.store
    assert store is not None  # (a running handler's store is open)
    if stored.registration(store, name) is None:
        raise registry.not_found(store, name)
    ctx.capture(store)
    stored.unregister(store, name)
    store.secrets.drop_scope(f"mcp:{name}")
    if agent.runtime.mcp_clients is not None:
        agent.runtime.mcp_clients.drop(inst.key, name, "removed")


def wake(inst: Any) -> None:
    """Core hook for an agent that just woke (its store is open): start reconnecting its
    MCP servers in the background, so they are ready sooner. Never waits, never raises."""
    try:
        rows = stored.registrations(inst.store)
        if rows:
            mgr = manager(inst.runtime)
            for row in rows:
                mgr.ensure(inst.key, registry.spec_of(inst.store, row))
    except Exception:  # the first use says what is wrong (e.g. the SDK is missing)
        pass


def servers(agent: Agent) -> list[dict[str, Any]]:
    """One dict per registered server: ``name``, ``transport``, ``target``, ``state``,
    ``error``, ``tools``, ``invalid_tools``, ``last_sync``, ``attempts``, ``retry_in``,
    ``server_info``. Starts connecting those not connected yet (without waiting)."""
    inst = agent._ab_instance
    ctx = inst.require_ctx("get_mcp_servers")
    store = inst.store
    assert store is not None  # (a running handler's store is open)
    rows = stored.registrations(store)
    if not rows or replaying(ctx):
        return [registry.replayed(row) for row in rows]
    mgr = manager(agent.runtime)
    return [registry.status(row, mgr.ensure(inst.key, registry.spec_of(store, row))) for row in rows]


# -- self.mcp -----------------------------------------------------------------------------
class MCPAccess:
    """``self.mcp``: wait for the servers, call their tools, list them."""

    __slots__ = ("_agent",)

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Connect every registered server (reconnecting after a wake) and wait until each
        is ready or has failed.

        Args:
            timeout: The longest wait, in seconds (default: the connect timeout, 30 s, and
                5 more). A server still connecting then shows ``"connecting"``.

        Returns:
            Each server's status, as :func:`servers` gives it.
        """
        import asyncio

        agent = self._agent
        inst = agent._ab_instance
        ctx = inst.require_ctx("mcp.ready")
        store = inst.store
        assert store is not None  # (a running handler's store is open)
        rows = stored.registrations(store)
        if replaying(ctx):  # a replay serves recorded results: no server is contacted
            return [registry.replayed(row) for row in rows]
        if not rows and agent.runtime.mcp_clients is None:
            return []
        mgr = manager(agent.runtime)
        names = {r.name for r in rows}
        for stale in set(mgr.names(inst.key)) - names:  # rewound away, or a failed add
            mgr.drop(inst.key, stale, "unregistered")
        conns = [mgr.ensure(inst.key, registry.spec_of(store, row)) for row in rows]
        wait = mgr.connect_timeout + 5 if timeout is None else timeout
        if any(c.state == "connecting" for c in conns):
            await asyncio.gather(*(c.settle(wait) for c in conns))
        return [registry.status(row, conn) for row, conn in zip(rows, conns, strict=True)]

    async def call(self, server: str, tool: str, args: dict[str, Any] | None = None, *,
                   timeout: float = CALL_TIMEOUT) -> Any:
        """Call *tool* of *server* with *args*, through the effect journal.

        Args:
            server: The name the server was added under.
            tool: The tool's name on that server.
            args: Its arguments (a dict of JSON values).
            timeout: Seconds to wait for the answer (the connection, if it is still being
                made after a wake, gets its own connect timeout first).

        Returns:
            The tool's structured content, else its text, else its content blocks (a
            read-only JSON value). A replay serves the recorded value.

        Raises:
            MCPServerNotFoundError: no server by that name (nothing is journaled).
            MCPToolError: the tool reported an error, or the server has no such tool.
            MCPConnectionError, MCPTimeoutError, MCPProtocolError: as named; the error is
                journaled too, so a replay raises it again.
        """
        agent = self._agent
        agent._ab_instance.require_ctx("mcp.call")
        if not isinstance(tool, str) or not tool:
            raise MCPTargetError(f"name the tool to call with a string, not {tool!r}", str(server))
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise MCPTargetError(f"MCP tool arguments are a dict, not {type(args).__name__}",
                                 str(server))
        if type(args) is not jsonvalue.FrozenDict:  # a handler's own arguments already are
            args = jsonvalue.freeze(args, f"arguments of {server}.{tool}")
        row = registry.row(agent, server)  # an unknown server is a usage error: not journaled

        async def run(server: str, tool: str, args: dict) -> dict[str, Any]:
            try:
                value = await _live(agent, server, tool, args, timeout, row)
                return {"ok": jsonvalue.freeze(value, f"result of {server}.{tool}")}
            except JSONValueError as exc:
                return {"error": "MCPProtocolError", "message": f"MCP server {server!r} sent a "
                        f"result for {tool} that is not JSON: {exc}"}
            except MCPError as exc:
                return {"error": type(exc).__name__, "message": str(exc)}

        out = await agent.effect(f"mcp:{server}:{tool}", run, server, tool, args)
        if "error" in out:
            raise ERRORS.get(out["error"], MCPError)(out["message"], server)
        return out["ok"]

    async def chat_tools(self) -> list[MCPTool]:
        """The tools of every ready server, as ChatAgent tools (fresh objects each time).

        Their ``fn(**args)`` calls the server without journaling: the chat turn journals
        the tool call itself (``tool:<name>``)."""
        agent = self._agent
        ctx = agent._ab_instance.require_ctx("mcp.chat_tools")
        if replaying(ctx):
            return recorded(agent, ctx)
        statuses = await self.ready()
        mgr = manager(agent.runtime)
        key = agent._ab_instance.key
        out: list[MCPTool] = []
        for status in statuses:
            conn = mgr.get(key, status["name"])
            if conn is not None and conn.state == "ready":
                out += [build(agent, status["name"], spec, lambda s, t: _chat_fn(agent, s, t))
                        for spec in conn.tools.values()]
        return out

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        """The usable tools (``server``, ``name``, ``description``, ``parameters``) of ready
        servers, or of one server."""
        agent = self._agent
        inst = agent._ab_instance
        inst.require_ctx("mcp.tools")
        mgr = agent.runtime.mcp_clients
        if mgr is None:
            return []
        names = [server] if server is not None else mgr.names(inst.key)
        out = []
        for name in names:
            conn = mgr.get(inst.key, name)
            if conn is not None and conn.state == "ready":
                out += [{"server": name, **jsonvalue.thaw(t)} for t in conn.tools.values()]
        return out

    def __repr__(self) -> str:
        return f"<MCP access of {self._agent!r}>"


# -- helpers ------------------------------------------------------------------------------
async def _live(agent: Agent, server: str, tool: str, args: dict, timeout: float,
                row: stored.Registration | None = None) -> Any:
    """Call the server now (no journaling)."""
    conn = _connection(agent, server, row)
    if conn.state != "ready":
        await conn.settle(conn.manager.connect_timeout + 5)
    if conn.state == "ready" and tool not in conn.tools:
        if tool in conn.invalid:
            raise MCPProtocolError(f"MCP tool {server}.{tool} can't be used: "
                                   f"{conn.invalid[tool]}", server)
        offered = ", ".join(sorted(conn.tools)) or "none"
        raise MCPToolError(f"MCP server {server!r} has no tool {tool!r}; it offers: {offered}",
                           server)
    return await conn.call(tool, args, timeout)


def _chat_fn(agent: Agent, server: str, tool: str) -> Any:
    async def call_mcp_tool(**arguments: Any) -> Any:
        return await _live(agent, server, tool, arguments, CALL_TIMEOUT)

    return call_mcp_tool


def _connection(agent: Agent, server: str, row: stored.Registration | None = None) -> Connection:
    """The connection for registered server *server* (the registration decides: a rewind
    may have changed or removed it)."""
    inst = agent._ab_instance
    row = row or registry.row(agent, server)
    mgr = manager(agent.runtime)
    conn = mgr.get(inst.key, server)
    if conn is not None and conn.state != "closed" and conn.registered_as == (row.transport, row.target):
        return conn
    assert inst.store is not None  # (a running handler's store is open)
    return mgr.ensure(inst.key, registry.spec_of(inst.store, row))


def _now(agent: Agent) -> float:
    from ..core.agent import Agent

    return Agent.now(agent)  # unbound: a subclass may define its own ``now``
