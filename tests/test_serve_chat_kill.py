"""A served chat agent whose process is SIGKILLed mid-turn, with Cloudflare's own client
(``WebSocketChatTransport`` + the AI SDK's ``Chat``) connected: the client sees the stream cut
and reconnects to the restarted server. The turn's mark (committed when it started) tells
the new life the turn was interrupted: the transcript the client gets on connect holds the
turns before, the killed turn's message and an empty assistant message marked interrupted
(never half of the answer); its resume probe is answered with the interruption (the error of
a resumed stream, as Cloudflare's terminal record); and the next turn works. Checked in the
store: ``ref.messages()`` shows the interrupted turn, the model never sees it.

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
from agentbook.chat.turns import INTERRUPTED_TEXT
from agentbook.store.chatturns import ChatTurns

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
        hello = "Hello! I'm the builtin offline model. How can I help?"
        after = first["afterRestart"]
        assert [(m["role"], m["text"], m.get("interrupted", False)) for m in after] == [
            ("user", "hello", False), ("assistant", hello, False),
            ("user", "a slow reply that dies", False), ("assistant", "", True)]
        assert after[3]["parts"] == []  # (nothing of what it had said)
        assert first["statusAfterRestart"] == "error"
        assert first["errorAfterRestart"] == INTERRUPTED_TEXT
        assert first["status"] == "ready"
        assert [(m["role"], m["text"]) for m in first["messages"]][-2:] == [
            ("user", "hello again"), ("assistant", hello)]
        async with await ab.connect(url, token=token) as client:
            await eventually(lambda: client.messages, what="the transcript on connect")
            shown = [(m["role"], "".join(p.get("text", "") for p in m["parts"]),
                      bool(m.get("metadata", {}).get("interrupted"))) for m in client.messages]
        assert shown == [("user", "hello", False), ("assistant", hello, False),
                         ("user", "a slow reply that dies", False), ("assistant", "", True),
                         ("user", "hello again", False), ("assistant", hello, False)]
    finally:
        await child.stop()
    # the store, read by a runtime of its own: the interrupted turn is two rows, no more
    rt = ab.Runtime(tmp_path / "store")
    try:
        frame = rt.get("WireChat", "k1").messages()
        rows = [(r.role, r.content, r.name if isinstance(r.name, str) else None)
                for r in frame.itertuples()]
        assert rows == [("user", "hello", None), ("assistant", hello, None),
                        ("user", "a slow reply that dies", None),
                        ("assistant", "", "interrupted"),
                        ("user", "hello again", None), ("assistant", hello, None)]
        assert frame.id[2] == after[2]["id"] and frame.id[3] == after[3]["id"]
        assert not ChatTurns(rt.catalog).marks()  # superseded by the next turn
    finally:
        rt.close()
