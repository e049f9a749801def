"""Cloudflare's own client - ``AgentClient`` from the ``agents`` npm package, on Node -
against a real ``rt.serve()``: it connects, gets the state, sets it (validated), calls
methods (streaming too) and is refused without credentials. The effects are checked
in the runtime, not only in what the client printed.

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
from .serve_agents import SEEN, ServeCounter

served = serve_agents.served  # the fixture (pytest finds it by this name)

NODE_DIR = Path(__file__).parent / "node"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason=(
        "Node.js is not installed (apt-get install -y nodejs npm, then npm ci --prefix tests/node)")),
    pytest.mark.skipif(not (NODE_DIR / "node_modules" / "agents").is_dir(),
                       reason="the agents npm client is not installed: npm ci --prefix tests/node"),
]


async def run_client(server, auth: str, name: str = "alice") -> dict:
    env = {**os.environ, "AB_HOST": f"127.0.0.1:{server.port}", "AB_TOKEN": server.token,
           "AB_AGENT": "ServeCounter", "AB_NAME": name, "AB_AUTH": auth}
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "client.mjs"), env=env, cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    return result


async def test_the_npm_client_connects_syncs_sets_state_and_calls(rt, served):
    SEEN.clear()
    got = await run_client(served, "ticket")
    ref = rt.get(ServeCounter, "alice")

    assert got["identity"] == {"name": "alice", "agent": "serve-counter"}
    assert got["ready"] == {"n": 0}
    assert got["inc"] == 105 and got["stateAfterInc"] == {"n": 105, "by": "node"}
    assert got["chunks"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert got["streamed"] == got["done"] == "counted"
    assert len(got["stateErrors"]) == 1 and "negative" in got["stateErrors"][0]
    assert got["stateAfterRefusal"] == {"n": 108, "by": "node"}
    assert "private" in got["_private"] and "framework" in got["validate_state_change"]
    assert "no method 'nope'" in got["nope"]

    assert ref.state == {"n": 108, "by": "node"}
    history = ref.history()
    assert list(history["method"])[::-1] == ["set_state", "inc", "count", "set_state"]
    assert list(history["outcome"])[::-1] == ["ok", "ok", "ok", "error"]
    sources = set(history["source"])
    assert {s.split(":")[0] for s in sources} == {"client", "ws"}
    assert len({s.split(":")[1] for s in sources}) == 1  # one connection: the client's _pk
    assert [state for state, _ in SEEN if state.get("n") == -1] == [{"n": -1}]


async def test_the_npm_client_may_send_the_token_as_a_subprotocol(rt, served):
    got = await run_client(served, "subprotocol", "bob")
    assert got["protocol"] == "agents" and got["inc"] == 105
    assert rt.get(ServeCounter, "bob").state == {"n": 108, "by": "node"}


async def test_the_npm_client_stops_for_good_when_refused(rt, served):
    got = await run_client(served, "none", "carol")
    assert got["connectionError"]["code"] == 4001 and "no token" in got["connectionError"]["reason"]
    assert rt.get(ServeCounter, "carol").version == 0
