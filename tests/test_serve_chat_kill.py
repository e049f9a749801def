"""A served chat agent whose process is SIGKILLed mid-turn, with Cloudflare's own client
(``WebSocketChatTransport`` + the AI SDK's ``Chat``) connected: the client sees the stream cut,
reconnects to the restarted server, its resume probe is answered (``resume_none``: nothing
of the turn survives in memory), the transcript it gets on connect is what committed - the
turns before, never half of the killed one - and the next turn works. Checked in the store.

Needs ``npm ci --prefix tests/node``; skipped with that hint otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import agentbook as ab

from .test_serve_chat_npm import NODE_DIR, pytestmark, run_node  # noqa: F401 (the skips)
from .waiting import eventually

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """``python -m tests.serve_chat_agents``: a server process to kill."""

    def __init__(self, store: Path, port: int, token_file: Path) -> None:
        self.args = [sys.executable, "-m", "tests.serve_chat_agents", str(store), str(port),
                     str(token_file)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert b"listening" in line, (line, await self.proc.stderr.read())

    async def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


class _Server:  # what run_node needs of a server
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token


async def test_a_kernel_killed_mid_turn_leaves_the_turn_unstored_and_the_client_goes_on(
        tmp_path):
    token = "t-" + os.urandom(12).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    port = free_port()
    child = Child(tmp_path / "store", port, token_file)
    await child.start()
    url = f"http://127.0.0.1:{port}/agents/wire-chat/k1"
    try:
        client = await ab.connect(url, token=token)
        async with client:
            assert await client.chat("hello") == ("Hello! I'm the builtin offline model. "
                                                  "How can I help?")
        kills = []

        async def on_stderr(line: dict) -> None:
            if line.get("killMe") and not kills:
                kills.append(1)
                await child.kill()
                await child.start()

        got = await run_node("chat_transport.mjs", _Server(port, token), "k1", on_stderr,
                             AB_TEXT="a slow reply that dies", AB_KILL_AFTER="2")
        assert kills == [1]
        first = got["first"]
        assert {"onError": "WebSocket closed mid-stream"} in first["events"]
        assert [(m["role"], m["text"]) for m in first["afterRestart"]] == [
            ("user", "hello"),
            ("assistant", "Hello! I'm the builtin offline model. How can I help?")]
        assert first["status"] == "ready"
        assert [(m["role"], m["text"]) for m in first["messages"]][-2:] == [
            ("user", "hello again"),
            ("assistant", "Hello! I'm the builtin offline model. How can I help?")]
        async with await ab.connect(url, token=token) as client:
            await eventually(lambda: client.messages, what="the transcript on connect")
            stored = [(m["role"], m["parts"][-1]["text"]) for m in client.messages]
        assert stored == [("user", "hello"), ("assistant", stored[1][1]),
                          ("user", "hello again"), ("assistant", stored[3][1])]
        assert not any("dies" in text for _, text in stored)
    finally:
        await child.stop()
