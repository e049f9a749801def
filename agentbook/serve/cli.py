"""``agentbook serve MODULE[:ATTR]``: serve agents from the command line.

    agentbook serve app:rt                 a Runtime made in app.py
    agentbook serve app:make_runtime       a function returning one
    agentbook serve app:Support            one agent class, on a runtime at --path
    agentbook serve app                    every agent class defined in app.py

The token comes from ``AGENTBOOK_TOKEN``; without it a random one is made and printed
once (never on the command line, where other users' ``ps`` would see it). Ctrl+C or
SIGTERM closes the connections and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import AgentbookError, UsageError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentbook serve",
        description="Serve agents over HTTP and WebSocket (Cloudflare's agents protocol). "
                    "The token is read from AGENTBOOK_TOKEN, or made up and printed.")
    parser.add_argument("target", metavar="MODULE[:ATTR]",
                        help="a Runtime, a function returning one, or an agent class; a "
                             "module alone serves every agent class defined in it")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument("--path", default=".agentbook",
                        help="the store, when MODULE does not make its own Runtime")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding beyond loopback (needs AGENTBOOK_TOKEN)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="a browser origin allowed to connect (repeatable)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                        help="a Host header name accepted besides loopback (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``agentbook serve``; returns the exit status (2 on errors).

    Args:
        argv: The arguments after ``serve`` (``sys.argv[2:]`` when ``None``).
    """
    args = _parser().parse_args(sys.argv[2:] if argv is None else list(argv))
    try:
        return asyncio.run(_serve(args))
    except AgentbookError as exc:
        print(f"agentbook: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def load(target: str, path: str) -> tuple[Any, list[type] | None, bool]:
    """``(runtime, classes or None for all, whether the runtime is ours to close)``.

    Raises:
        UsageError: the module or attribute can't be found, or is not servable.
    """
    from ..core.agent import Agent
    from ..core.runtime import Runtime

    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"can't import {module_name!r}: {exc}") from None
    if not attr:
        classes = [v for v in vars(module).values() if isinstance(v, type)
                   and issubclass(v, Agent) and v.__module__ == module.__name__]
        if not classes:
            raise UsageError(f"{module_name} defines no agent class; name one as MODULE:ATTR")
        return Runtime(path), classes, True
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name} has no attribute {attr!r}") from None
    if isinstance(obj, type) and issubclass(obj, Agent):
        return Runtime(path), [obj], True
    if callable(obj) and not isinstance(obj, Runtime):
        obj = obj()
    if isinstance(obj, Runtime):
        return obj, None, False
    raise UsageError(f"{target} is a {type(obj).__name__}; serve a Runtime, a function "
                     "returning one, or an agent class")


async def _serve(args: argparse.Namespace) -> int:
    from .handle import serve

    rt, classes, ours = load(args.target, args.path)
    token = os.environ.get("AGENTBOOK_TOKEN") or None
    try:
        server = serve(rt, args.port, host=args.host, token=token, allow_remote=args.allow_remote,
                       allow_origins=args.allow_origin, allow_hosts=args.allow_host,
                       classes=classes)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        print(f"agentbook: serving {', '.join(server.routes()) or '(no agent classes)'} "
              f"at {server.url}/agents/<class>/<name>", flush=True)
        if token is None:
            print(f"agentbook: token {server.token}  (set AGENTBOOK_TOKEN to choose it)", flush=True)
        await server.wait()
        await server.stop()
        print("agentbook: stopped", flush=True)
    finally:
        if ours:
            await rt.aclose()
    return 0
