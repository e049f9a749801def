"""Cloudflare's own chat client, unmodified from npm (``agents`` 0.32 with ``ai`` 7 and
``@ai-sdk/react`` 4, locked in tests/node), against an agentbook ``ChatAgent`` served by
``rt.serve()``: the ``WebSocketChatTransport`` + AI SDK ``Chat`` path (chat_transport.mjs) and
the headless ``useAgentChat`` path (chat_hook.mjs, react-test-renderer). What the clients
report is checked against the runtime: the stored conversation, the tools that ran, who
decided each approval.

Needs ``npm ci --prefix tests/node`` (CI does it); skipped with that hint otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from . import serve_agents
from .serve_chat_agents import RAN, WireChat

served = serve_agents.served  # the fixture (pytest finds it by this name)

NODE_DIR = Path(__file__).parent / "node"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason=(
        "Node.js is not installed (apt-get install -y nodejs npm, then npm ci --prefix tests/node)")),
    pytest.mark.skipif(not (NODE_DIR / "node_modules" / "@ai-sdk" / "react").is_dir(),
                       reason="Cloudflare's chat client is not installed: npm ci --prefix tests/node"),
]


async def run_node(script: str, server, name: str, on_stderr=None, **env: str) -> dict:
    """Run a client script; *on_stderr* gets each JSON line it writes to stderr."""
    full = {**os.environ, "AB_HOST": f"127.0.0.1:{server.port}", "AB_TOKEN": server.token,
            "AB_AGENT": "wire-chat", "AB_NAME": name, **env}
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / script), env=full, cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    errors: list[str] = []

    async def read_stderr() -> None:
        while line := await proc.stderr.readline():
            text = line.decode().strip()
            errors.append(text)
            if on_stderr is not None and text.startswith("{"):
                await on_stderr(json.loads(text))

    reader = asyncio.ensure_future(read_stderr())
    try:
        out = await asyncio.wait_for(proc.stdout.read(), 120)
        await asyncio.wait_for(proc.wait(), 10)
        await reader
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, "\n".join(errors)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, result["error"] + "\n" + "\n".join(errors)
    return result


def texts(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["text"]) for m in messages]


async def test_the_chat_transport_streams_a_turn_and_a_reload_gets_the_transcript(rt, served):
    got = await run_node("chat_transport.mjs", served, "t1", AB_TEXT="hello from node")
    ref = rt.get(WireChat, "t1")

    first = got["first"]
    assert first["status"] == "ready" and first["events"][-1]["onFinish"]["isError"] is False
    assert first["streamed"][-1] == "Hello! I'm the builtin offline model. How can I help?"
    # it streamed: the first word alone, at once, then the rest (the builtin model says a
    # word per event-loop turn: the wire merges deltas closer than serve.chat.COALESCE)
    assert first["streamed"][:2] == ["", "Hello!"] and len(first["streamed"]) >= 3
    expected = [("user", "hello from node"),
                ("assistant", "Hello! I'm the builtin offline model. How can I help?")]
    assert texts(first["messages"]) == expected
    # a reload: the transcript on connect and from get-messages, the same rows as the store's
    second = got["second"]
    assert texts(second["onConnect"]) == texts(second["getMessages"]) == expected
    stored = ref.messages()
    assert [m["id"] for m in second["getMessages"]] == list(stored["id"])
    assert second["getMessages"][0]["id"] == first["messages"][0]["id"]  # the client's own id
    assert second["noToken"] == 401


async def test_the_chat_transport_resumes_a_stream_after_its_socket_dropped(rt, served):
    got = await run_node("chat_transport.mjs", served, "t2", AB_TEXT="a slow one, dropped",
                         AB_DROP_AFTER="2")
    first = got["first"]
    assert {"onError": "WebSocket closed mid-stream"} in first["events"]  # the drop, as the AI SDK sees it
    assert first["statusAfterResume"] == "ready"
    reply = first["messages"][-1]
    assert reply["role"] == "assistant"
    assert reply["text"].endswith("You said: \u201ca slow one, dropped\u201d")
    assert len([m for m in first["messages"] if m["role"] == "assistant"]) == 1  # no duplicate
    stored = rt.get(WireChat, "t2").messages()
    assert list(stored["role"]) == ["user", "assistant"]
    assert stored["content"].iloc[-1] == reply["text"]


async def test_use_agent_chat_turns_tools_approvals_reload_drop_stop_and_clear(rt, served):
    RAN.clear()
    decided: list[str] = []

    async def inbox(line: dict) -> None:  # the notebook's inbox decides this one
        if "waitingForInbox" in line:
            decided.append(line["waitingForInbox"])
            await rt.approvals.approve(line["waitingForInbox"], by="notebook")

    steps = "plain,server_tool,client_tool,approve_here,approve_inbox,reload,drop,stop"
    got = await run_node("chat_hook.mjs", served, "h1", on_stderr=inbox, AB_STEPS=steps)
    ref = rt.get(WireChat, "h1")
    s = got["steps"]

    assert texts(s["plain"]["messages"])[-1] == (
        "assistant", "Hello! I'm the builtin offline model. How can I help?")
    weather = s["server_tool"]["messages"][-1]
    assert weather["tools"] == [{"type": "tool-lookup_weather", "state": "output-available",
                                 "output": {"city": "Paris", "sky": "sunny", "celsius": 21}}]
    # the client tool ran in Node (onToolCall), its result came back, the model went on
    assert got["toolCalls"] == ["get_client_info"]
    info = s["client_tool"]["messages"][-1]
    assert info["tools"][0]["output"] == {"runtime": info["tools"][0]["output"]["runtime"]}
    assert info["text"].startswith("Here is what get_client_info says: runtime: node v")
    # two approvals: one clicked in the client, one decided in the notebook's inbox
    for step, path in (("approve_here", "/tmp/here"), ("approve_inbox", "/tmp/inbox")):
        last = s[step]["messages"][-1]
        assert last["tools"] == [{"type": "tool-delete_file", "state": "output-available",
                                  "output": {"deleted": path}}]
        assert f"Here is what delete_file says: deleted: {path}." in last["text"]
    assert [r for r in RAN if r[0] == "delete_file"] == [
        ("delete_file", {"path": "/tmp/here"}), ("delete_file", {"path": "/tmp/inbox"})]
    here = rt.approvals.get(s["approve_here_asked"]["approvalId"])
    inboxed = rt.approvals.get(s["approve_inbox_asked"]["approvalId"])
    assert here.status == inboxed.status == "approved"
    assert here.decided_by.startswith("client:") and inboxed.decided_by == "notebook"
    assert decided == [inboxed.id]
    # a reload shows the same conversation
    assert s["reload"]["before"] == s["reload"]["after"]
    # a dropped socket resumed: the reply is whole, once, after its user message
    assert texts(s["drop"]["messages"])[-2:] == [
        ("user", "a slow reply over a dropped socket"),
        ("assistant", "I'm the builtin offline model, so I only follow simple rules. "
                      "You said: \u201ca slow reply over a dropped socket\u201d")]
    # stop(): the turn ended as aborted, with what had been said stored
    assert [e["outcome"] for e in s["stop"]["turnEnds"]] == ["aborted"]
    stored = ref.messages()
    assert stored["content"].iloc[-1] == s["stop"]["text"]
    assert len(s["stop"]["text"]) < len("I'm the builtin offline model, so I only follow")
    aborted = rt.sql("SELECT count(*) AS n FROM events WHERE type = 'chat:aborted' "
                     "AND name = 'h1'")
    assert aborted["n"].iloc[0] == 1
    # the stored rows are the ones the client shows (every user message, by the client's id)
    users = [m for m in s["drop"]["messages"] if m["role"] == "user"]
    assert [m["id"] for m in users] == list(stored[stored["role"] == "user"]["id"])[:len(users)]


async def test_use_agent_chat_clear_history_empties_the_stored_conversation(rt, served):
    got = await run_node("chat_hook.mjs", served, "h2", AB_STEPS="plain,clear")
    assert got["steps"]["clear"] == {"local": 0, "server": 0}
    assert len(rt.get(WireChat, "h2").messages()) == 0
