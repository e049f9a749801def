"""Agents served as MCP servers, driven by the official ``mcp`` Python client.

Over stdio (``python -m agentbook.mcp.stdio``, what ``agentbook mcp`` runs) and over
streamable HTTP (``agentbook.mcp.http.mcp_app`` in a small Starlette app, and through
``rt.serve(mcp=True)``), in both protocol eras the client speaks (2026's per-request
envelope and the legacy initialize handshake).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentbook as ab
from agentbook.mcp.server import callable_tools, resolve_class
from tests.mcp.peers import serve_asgi
from tests.mcp.served import McpNotes

mcp = pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install 'agentbook[mcp]'")
httpx2 = pytest.importorskip("httpx2", reason="httpx2 comes with the mcp extra: pip install 'agentbook[mcp]'")

ROOT = Path(__file__).parent.parent


def test_callable_methods_become_tools_with_schemas_from_their_signatures():
    tools = callable_tools(McpNotes)
    assert sorted(tools) == ["add_note", "count", "echo", "fail"]  # no streaming, private, plain
    add = tools["add_note"]
    assert add["description"] == "Add a note."
    params = add["parameters"]
    assert params["required"] == ["text"]
    assert params["properties"]["text"] == {"type": "string", "description": "What to remember."}
    assert params["properties"]["priority"]["enum"] == ["low", "high"]
    assert params["properties"]["priority"]["default"] == "low"
    assert tools["echo"]["parameters"] == {  # no hints: any JSON value
        "type": "object", "properties": {"value": {}, "twice": {"default": False}},
        "required": ["value"]}
    assert resolve_class("mcp-notes") == resolve_class("McpNotes") == "McpNotes"
    assert resolve_class("no-such-agent") is None
    from agentbook.serve.protocol import kebab

    assert resolve_class(kebab("McpNotes")) == "McpNotes"  # the same URL segment as /agents/


def test_agentbooks_own_classes_are_no_mcp_servers():
    """Like the serve path's routes: ``ab.Agent``, ``ab.ChatAgent`` and the classes defined
    inside agentbook are not served; a test's (or a notebook's) own classes are."""
    import agentbook.bench.agents as bench_agents

    for name in ("Agent", "agent", "ChatAgent", "chat-agent", bench_agents.BenchCounter.__name__):
        assert resolve_class(name) is None, name
    assert resolve_class("mcp-notes") == "McpNotes"


async def test_an_agent_served_over_stdio_to_the_official_client(tmp_path):
    from mcp import Client, StdioServerParameters

    store = tmp_path / "store"
    params = StdioServerParameters(
        command=sys.executable, cwd=str(ROOT),
        args=["-m", "agentbook.mcp.stdio", "tests.mcp.served:McpNotes", "--agent",
              "McpNotes/stdio", "--path", str(store)])
    async with Client(params) as client:
        assert client.server_info.name == "agentbook McpNotes/stdio"
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert sorted(listed) == ["add_note", "count", "echo", "fail"]
        assert listed["add_note"].input_schema["required"] == ["text"]
        done = await client.call_tool("add_note", {"text": "buy milk", "priority": "high"})
        assert not done.is_error and done.structured_content == {"count": 1}
        count = await client.call_tool("count", {})
        assert count.structured_content == {"result": 1} and count.content[0].text == "1"
        await _refusals(client)
    rt = ab.Runtime(store)  # what the server committed is in the store
    try:
        ref = rt.get(McpNotes, "stdio")
        assert ref.state["notes"] == [{"text": "buy milk", "priority": "high", "tags": []}]
        assert "add_note" in list(ref.history()["method"])
    finally:
        await rt.aclose()


async def _refusals(client) -> None:
    failed = await client.call_tool("fail", {})
    assert failed.is_error and "ValueError: this tool always fails" in failed.content[0].text
    wrong = await client.call_tool("add_note", {"text": 3})
    assert wrong.is_error and "must be a string" in wrong.content[0].text
    unknown = await client.call_tool("not_callable", {})
    assert unknown.is_error and "no callable method 'not_callable'" in unknown.content[0].text
    assert (await client.call_tool("echo", {"value": {"a": [1]}})).structured_content == {"a": [1]}
    assert (await client.call_tool("echo", {"value": "x", "twice": True})).structured_content == {
        "result": ["x", "x"]}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_agent_served_over_streamable_http_to_the_official_client(rt, mode):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from agentbook.mcp.http import mcp_app

    served = mcp_app(rt, token="tok-123")
    app = Starlette(routes=[Mount("/mcp", app=served)], lifespan=lambda app: served.lifespan())
    async with serve_asgi(app) as base:
        url = f"{base}/mcp/mcp-notes/web"  # the kebab-case class name, as Cloudflare writes it
        async with httpx2.AsyncClient(headers={"Authorization": "Bearer tok-123"}) as http, \
                Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            assert sorted(t.name for t in (await client.list_tools()).tools) == [
                "add_note", "count", "echo", "fail"]
            done = await client.call_tool("add_note", {"text": "over http"})
            assert done.structured_content == {"count": 1}
            await _refusals(client)
        async with httpx2.AsyncClient() as http:
            assert (await http.post(url, json={})).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await http.post(url, json={}, headers=wrong)).status_code == 401
            ok = {"Authorization": "Bearer tok-123"}
            for spelling in ("bearer tok-123", "token tok-123"):  # as the serve path takes it
                assert (await http.post(f"{base}/mcp/NoSuchAgent/x", json={},
                                        headers={"Authorization": spelling})).status_code == 404
            assert (await http.post(f"{base}/mcp/NoSuchAgent/x", json={}, headers=ok)
                    ).status_code == 404
            assert (await http.post(f"{base}/mcp/too/many/parts", headers=ok)).status_code == 404
            evil = {**ok, "Host": "evil.example"}  # DNS rebinding
            assert (await http.post(url, json={}, headers=evil)).status_code in (403, 421)
    assert rt.get(McpNotes, "web").state["notes"][0]["text"] == "over http"


async def test_the_http_app_runs_without_anyone_running_its_lifespan(rt):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from agentbook.mcp.http import mcp_app

    served = mcp_app(rt)
    async with serve_asgi(served, lifespan="off") as base, \
            Client(streamable_http_client(f"{base}/McpNotes/solo")) as client:
        assert (await client.call_tool("count", {})).structured_content == {"result": 0}
    await served.aclose()


async def test_rt_serve_with_mcp_serves_each_agent_behind_the_serve_token(rt):
    pytest.importorskip("agentbook.serve", reason="the serve path is not in this checkout")
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    server = rt.serve(mcp=True)
    try:
        url = f"{server.url.rstrip('/')}/mcp/mcp-notes/served"
        headers = {"Authorization": f"Bearer {server.token}"}
        async with httpx2.AsyncClient(headers=headers) as http, \
                Client(streamable_http_client(url, http_client=http)) as client:
            assert (await client.call_tool("add_note", {"text": "via serve"})
                    ).structured_content == {"count": 1}
        async with httpx2.AsyncClient() as http:
            assert (await http.post(url, json={})).status_code == 401
    finally:
        await server.stop()
    assert rt.get(McpNotes, "served").state["notes"][0]["text"] == "via serve"


def test_the_stdio_entry_point_explains_bad_arguments(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agentbook.mcp.stdio", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env={**os.environ, "MCP_TEST_STORE": str(tmp_path / "s")})

    bad_spec = run("nocolon", "--agent", "A/b")
    assert bad_spec.returncode == 2 and "MODULE:ATTR" in bad_spec.stderr
    missing = run("tests.mcp.nope:x", "--agent", "A/b")
    assert missing.returncode == 2 and "could not import" in missing.stderr
    no_class = run("tests.mcp.served:make_runtime", "--agent", "Unknown/b")
    assert no_class.returncode == 2 and "no agent class 'Unknown'" in no_class.stderr
    no_name = run("tests.mcp.served:McpNotes", "--agent", "McpNotes")
    assert no_name.returncode == 2 and "CLASS/NAME" in no_name.stderr
    assert bad_spec.stdout == missing.stdout == ""  # stdout belongs to the protocol


def test_load_runtime_takes_a_runtime_a_factory_or_an_agent_class(tmp_path, monkeypatch):
    from agentbook.mcp.stdio import load_runtime

    monkeypatch.setenv("MCP_TEST_STORE", str(tmp_path / "made"))
    rts = [load_runtime("tests.mcp.served:make_runtime", ""),
           load_runtime("tests.mcp.served:McpNotes", str(tmp_path / "cls"))]
    try:
        assert [Path(r.root).name for r in rts] == ["made", "cls"]
    finally:
        for r in rts:
            r.close()
    with pytest.raises(ab.UsageError, match="must be an ab.Runtime"):
        load_runtime("tests.mcp.served:ab", "")
    with pytest.raises(ab.UsageError, match="has no attribute 'nothing'"):
        load_runtime("tests.mcp.served:nothing", "")
