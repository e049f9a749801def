"""``agentbook mcp MODULE:ATTR --agent CLASS/NAME``: one agent as an MCP server over stdio.

``MODULE:ATTR`` names what holds the agents: an ``ab.Runtime`` (used as it is), an agent
class (a runtime on ``--path`` is opened for it), or a function returning a runtime.
``MODULE`` is a module name importable from the current folder, or a ``.py`` file.
MCP clients (Claude Desktop, the ``mcp`` SDK...) start this command and speak MCP on its
stdin and stdout; everything else (logs, the agent's own prints) goes to stderr.

Also runnable as ``python -m agentbook.mcp.stdio MODULE:ATTR --agent CLASS/NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import AgentbookError, UsageError
from .sdk import require_sdk

__all__ = ["load_runtime", "main", "run", "serve_stdio"]


async def serve_stdio(rt: Any, class_name: str, name: str) -> None:
    """Serve agent ``class_name/name`` of *rt* on this process's stdin and stdout until
    the client hangs up."""
    require_sdk()
    from mcp.server.stdio import stdio_server

    from .server import agent_server

    server = agent_server(rt, class_name, name)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def load_runtime(spec: str, path: str) -> Any:
    """The runtime named by ``MODULE:ATTR`` (see the module doc)."""
    from ..core.agent import Agent
    from ..core.runtime import Runtime

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"name what holds the agents as MODULE:ATTR, such as app:rt (got {spec!r})")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py"):
            loader = importlib.util.spec_from_file_location("_agentbook_mcp_app", module_name)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader)
            sys.modules[loader.name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"could not import {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{module_name} has no attribute {attr!r}") from None
    if isinstance(obj, type) and issubclass(obj, Agent):
        return Runtime(path)
    if not isinstance(obj, Runtime) and callable(obj):
        obj = obj()
    if not isinstance(obj, Runtime):
        raise UsageError(f"{spec} is a {type(obj).__name__}; it must be an ab.Runtime, an agent "
                         "class, or a function returning a runtime")
    return obj


def run(spec: str, agent: str, path: str = ".agentbook") -> int:
    """Load the runtime, check the agent's class, serve until stdin closes; exit status."""
    require_sdk()
    from .server import resolve_class

    class_name, sep, name = agent.partition("/")
    if not sep or not class_name or not name:
        raise UsageError(f"name the agent as CLASS/NAME, such as Support/alice (got {agent!r})")
    rt = load_runtime(spec, path)
    resolved = resolve_class(class_name)
    if resolved is None:
        raise UsageError(f"{spec} defines no agent class {class_name!r}")

    async def serve() -> None:
        try:
            await serve_stdio(rt, resolved, name)
        finally:
            await rt.aclose()
            if rt.mcp_clients is not None:
                await rt.mcp_clients.wait_closed()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentbook.mcp.stdio MODULE:ATTR --agent CLASS/NAME [--path P]``."""
    parser = argparse.ArgumentParser(
        prog="agentbook mcp", description="Serve one agent's @ab.callable methods as MCP tools "
        "over stdio.")
    parser.add_argument("app", metavar="MODULE:ATTR",
                        help="an ab.Runtime, an agent class, or a function returning a runtime")
    parser.add_argument("--agent", required=True, metavar="CLASS/NAME",
                        help="the agent to serve, such as Support/alice")
    parser.add_argument("--path", default=".agentbook", metavar="P",
                        help="the store's folder, when MODULE:ATTR is an agent class")
    args = parser.parse_args(argv)
    try:
        return run(args.app, args.agent, args.path)
    except AgentbookError as exc:
        print(f"agentbook: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
