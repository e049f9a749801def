"""Real MCP peers for the tests, and small helpers to wait for what they do.

* ``mcp-server-time`` (PyPI) over stdio: ``TIME``.
* ``@modelcontextprotocol/server-everything`` (npm) over stdio (``everything_stdio()``) and
  streamable HTTP (``everything_http()``, bound to 127.0.0.1 by the ``loopback.mjs``
  preload: the server listens on every interface and has no host option). Installed by
  ``npm ci --prefix tests/mcp`` (``.ci/run``); tests that need it skip without it.
* ``bad_server.py``: a misbehaving stdio server of our own, for faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
TIME = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
BAD = str(HERE / "bad_server.py")
LOOPBACK = str(HERE / "loopback.mjs")
_INSTALL = "npm ci --prefix tests/mcp"


def bad(mode: str) -> list[str]:
    """The command of ``bad_server.py`` in *mode*."""
    return [sys.executable, BAD, mode]


def everything_bin() -> str:
    """Path of server-everything's entry point, or skip the test saying how to install it."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (needed for @modelcontextprotocol/server-everything): "
                    f"apt-get install -y nodejs npm, then {_INSTALL}")
    for root in (HERE, HERE.parent / "node"):
        entry = root / "node_modules" / ".bin" / "mcp-server-everything"
        if entry.exists():
            return str(entry.resolve())
    pytest.skip(f"@modelcontextprotocol/server-everything is not installed; run: {_INSTALL}")


def everything_stdio() -> list[str]:
    """The stdio command of server-everything (node itself, never npx: killing npx would
    leave its child running)."""
    return ["node", everything_bin(), "stdio"]


@contextlib.asynccontextmanager
async def everything_http() -> AsyncIterator[str]:
    """server-everything over streamable HTTP on a loopback port; yields its MCP URL."""
    entry = everything_bin()
    with socket.socket() as probe:  # a free port (server-everything takes it from PORT)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        "node", "--import", Path(LOOPBACK).as_uri(), entry, "streamableHttp",
        env={**os.environ, "PORT": str(port)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        async def listening() -> None:
            assert proc.stdout is not None
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError("server-everything exited before listening")
                if b"listening" in line.lower():
                    return

        await asyncio.wait_for(listening(), 30)
        drain = asyncio.ensure_future(_drain(proc.stdout))
        yield f"http://127.0.0.1:{port}/mcp"
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _drain(stream: Any) -> None:
    while await stream.read(65536):
        pass


class Events:
    """Everything the runtime emits (from the moment it is made), and a way to wait for
    the n-th event that matches, without sleeping."""

    def __init__(self, rt: Any) -> None:
        self.seen: list[dict] = []
        self._waiters: list[tuple[Callable[[dict], bool], int, asyncio.Future]] = []
        self.unsubscribe = rt.events.subscribe(self._on)

    def _on(self, event: dict) -> None:
        self.seen.append(event)
        for waiter in list(self._waiters):
            match, count, future = waiter
            if not future.done() and len([e for e in self.seen if match(e)]) >= count:
                future.set_result(event)
                self._waiters.remove(waiter)

    def count(self, type_: str, **payload: Any) -> int:
        return len([e for e in self.seen if _matches(e, type_, payload)])

    async def wait(self, type_: str, count: int = 1, timeout: float = 60, **payload: Any) -> dict:
        """The *count*-th event of *type_* whose payload has the given items."""

        def match(e: dict) -> bool:
            return _matches(e, type_, payload)

        done = [e for e in self.seen if match(e)]
        if len(done) >= count:
            return done[count - 1]
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((match, count, future))
        return await asyncio.wait_for(future, timeout)


def _matches(event: dict, type_: str, payload: dict) -> bool:
    body = event["payload"] if isinstance(event["payload"], dict) else {}
    return event["type"] == type_ and all(body.get(k) == v for k, v in payload.items())


def server_processes(marker: str) -> list[Any]:
    """Child processes of this test whose environment carries *marker*."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if marker in "".join(f"{k}={v}" for k, v in child.environ().items()):
                found.append(child)
    return found


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, lifespan: str = "on") -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port; yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan=lifespan, log_config=None,
                                           log_level="warning", access_log=False))
    started = asyncio.get_running_loop().create_future()
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        if not started.done():
            started.set_result(None)

    server.startup = startup  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.wait({started, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()
