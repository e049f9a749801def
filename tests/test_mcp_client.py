"""Agents as MCP clients, against real servers nobody here wrote.

``mcp-server-time`` (PyPI) over stdio, ``@modelcontextprotocol/server-everything`` (npm)
over stdio and streamable HTTP, and ``tests/mcp/bad_server.py`` for the faults: a server
that won't start, hangs, dies mid-call, answers malformed results or offers a tool whose
schema is not a schema. Nothing here sleeps to wait: events and futures, with timeouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

import agentbook as ab
from agentbook.mcp import MCPNotInstalledError, MCPServerNotFoundError, MCPTargetError
from agentbook.mcp.agentside import manager
from tests.mcp.agents import McpChat, McpGatedChat, McpScriptedChat, McpUser
from tests.mcp.peers import TIME, Events, bad, everything_http, everything_stdio, server_processes

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install 'agentbook[mcp]'")
pytest.importorskip("mcp_server_time", reason="pip install mcp-server-time")


@pytest.fixture
async def mrt(rt):
    """The shared runtime fixture, plus: every MCP server it started has let go at the end."""
    yield rt
    await rt.aclose()
    if rt.mcp_clients is not None:
        await rt.mcp_clients.wait_closed()


# -- real servers -------------------------------------------------------------------------
async def test_time_server_over_stdio_connects_discovers_and_calls(mrt):
    events = Events(mrt)
    ref = mrt.get(McpUser, "t")
    status = await ref.add("time", TIME)
    assert status["state"] == "ready", status
    assert status["error"] is None
    assert {"get_current_time", "convert_time"} <= set(status["tools"])
    assert status["last_sync"] is not None and status["transport"] == "stdio"
    now = await ref.use("time", "get_current_time", {"timezone": "Europe/Paris"})
    assert now["timezone"] == "Europe/Paris" and "datetime" in now
    assert [e["type"] for e in events.seen if e["type"].startswith("mcp:")][:3] == [
        "mcp:client:preconnect", "mcp:client:connect", "mcp:client:discover"]
    tools = {t["name"]: t for t in await ref.tools()}
    assert tools["get_current_time"]["parameters"]["required"] == ["timezone"]


async def test_a_tool_error_is_a_typed_error_and_the_agent_keeps_working(mrt):
    ref = mrt.get(McpUser, "t")
    await ref.add("time", TIME)
    out = await ref.use("time", "get_current_time", {"timezone": "Nowhere/Atlantis"})
    assert out["error"] == "MCPToolError" and "Nowhere/Atlantis" in out["message"]
    out = await ref.use("time", "no_such_tool", {})
    assert out["error"] == "MCPToolError" and "get_current_time" in out["message"]
    with pytest.raises(MCPServerNotFoundError, match="no MCP server named 'nope'"):
        await ref.use_or_raise("nope", "x")
    assert await ref.bump() == 3  # two use() calls counted, then this one


async def test_calls_are_journaled_and_a_replay_serves_them_without_the_server(mrt):
    ref = mrt.get(McpUser, "j")
    await ref.add("time", TIME)
    first = await ref.use("time", "get_current_time", {"timezone": "UTC"})
    failed = await ref.use("time", "get_current_time", {"timezone": "Bad/Zone"})
    effects = _effects(mrt, ref)
    assert ["mcp:time:get_current_time", {"ok": first}] in effects
    assert any(e[0] == "mcp:time:get_current_time" and e[1].get("error") == "MCPToolError"
               for e in effects)
    spawned = Events(mrt)
    result = await ref.replay(1)  # from the add_mcp_server on
    steps = result.frame()
    assert steps.same_state.all()
    # the calls' results are served from the record; the registration reports "replay"
    # (a replay connects nothing), so it is the one step whose result differs
    assert steps.same_result.tolist() == [False, True, True] and not result.identical
    assert result.fork.history(5)["result"].iloc[-2]["state"] == "replay"
    assert spawned.count("mcp:client:preconnect") == 0  # nothing connects: the record serves
    replayed = result.fork.history(5)
    assert list(replayed["result"].head(2))[::-1] == [first, failed]


async def test_adding_the_same_server_again_changes_nothing(mrt):
    events = Events(mrt)
    ref = mrt.get(McpUser, "t")
    await ref.add("time", TIME)
    before = ref.version
    again = await ref.add("time", TIME)
    assert again["state"] == "ready"
    assert events.count("mcp:client:preconnect") == 1
    diff = ref.diff(before, ref.version)
    assert diff.rows.empty  # the second add wrote no row


async def test_server_everything_over_stdio(mrt):
    ref = mrt.get(McpUser, "e")
    status = await ref.add("everything", everything_stdio())
    assert status["state"] == "ready", status
    assert {"echo", "get-sum"} <= set(status["tools"])
    assert await ref.use("everything", "echo", {"message": "hello"}) == "Echo: hello"
    assert "3" in await ref.use("everything", "get-sum", {"a": 1, "b": 2})
    assert status["server_info"]["name"] == "mcp-servers/everything"


async def test_server_everything_over_streamable_http(mrt):
    async with everything_http() as url:
        ref = mrt.get(McpUser, "h")
        status = await ref.add("everything", url)
        assert status["state"] == "ready", status
        assert status["transport"] == "http" and status["target"] == url
        assert await ref.use("everything", "echo", {"message": "over http"}) == "Echo: over http"


# -- durability: kill, hibernate, restart -------------------------------------------------
async def test_killing_the_stdio_server_mid_session_reconnects(mrt):
    events = Events(mrt)
    marker = f"mcp-test-{uuid.uuid4().hex}"
    ref = mrt.get(McpUser, "k")
    await ref.add("time", TIME, env={"AB_TEST_MARKER": marker})
    assert (await ref.use("time", "get_current_time", {"timezone": "UTC"}))["timezone"] == "UTC"
    (victim,) = server_processes(marker)
    victim.kill()
    lost = await events.wait("mcp:client:error", server="time")
    assert "closed the connection" in lost["payload"]["error"]
    again = await ref.use("time", "get_current_time", {"timezone": "Asia/Tokyo"})
    assert again["timezone"] == "Asia/Tokyo"  # the call waited for the reconnect
    assert events.count("mcp:client:connect") == 2
    assert events.count("mcp:client:discover") >= 2  # tools listed again on reconnect
    (revived,) = server_processes(marker)
    assert revived.pid != victim.pid


async def test_a_server_dying_mid_call_is_a_typed_error_then_it_recovers(mrt, tmp_path):
    events = Events(mrt)
    ref = mrt.get(McpUser, "d")
    flag = tmp_path / "died"
    await ref.add("flaky", bad("die-once"), env={"BAD_SERVER_FLAG": str(flag)})
    out = await ref.use("flaky", "ping", {"text": "a"})
    assert out["error"] == "MCPConnectionError", out
    assert "crashed in the middle of a call" in out["message"]  # its stderr explains
    await events.wait("mcp:client:connect", count=2)
    assert await ref.use("flaky", "ping", {"text": "b"}) == "pong b"


async def test_hibernation_closes_the_connection_and_the_next_call_reconnects(mrt):
    events = Events(mrt)
    ref = mrt.get(McpUser, "z")
    await ref.add("time", TIME)
    assert mrt.hibernate() == 1
    closed = await events.wait("mcp:client:close")
    assert closed["payload"]["reason"] == "hibernate"
    now = await ref.use("time", "get_current_time", {"timezone": "UTC"})
    assert now["timezone"] == "UTC"
    assert events.count("mcp:client:connect") == 2


async def test_restarting_the_runtime_brings_back_the_registration_and_its_tools(tmp_path):
    folder = tmp_path / "store"
    first = ab.Runtime(folder)
    await first.get(McpUser, "r").add("time", TIME)
    await first.aclose()
    await first.mcp_clients.wait_closed()

    second = ab.Runtime(folder)  # "restart the kernel"
    try:
        events = Events(second)
        ref = second.get(McpUser, "r")
        now = await ref.use("time", "get_current_time", {"timezone": "UTC"})
        assert now["timezone"] == "UTC"  # the first call after the restart works
        (status,) = await ref.servers()
        assert status["state"] == "ready" and "convert_time" in status["tools"]
        assert events.count("mcp:client:connect") == 1
    finally:
        await second.aclose()
        if second.mcp_clients is not None:
            await second.mcp_clients.wait_closed()


async def test_removing_a_server_forgets_it_and_its_secrets(mrt):
    events = Events(mrt)
    ref = mrt.get(McpUser, "x")
    await ref.add("time", TIME, env={"TZ_TOKEN": "t0ken-to-forget"})
    await ref.drop("time")
    assert await ref.servers() == []
    assert (await events.wait("mcp:client:close"))["payload"]["reason"] == "removed"
    with pytest.raises(MCPServerNotFoundError):
        await ref.use_or_raise("time", "get_current_time", {"timezone": "UTC"})
    with pytest.raises(MCPServerNotFoundError):
        await ref.drop("time")
    assert _secrets(mrt, ref) == []


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("target, kw, match", [
    ("ftp://example.org/mcp", {}, "http:// or https://"),
    ("http:///nohost", {}, "names a host"),
    ("https://user:pw@example.org/mcp", {}, "credentials in headers="),
    ("https://example.org/mcp?api_key=abc", {}, "credentials in headers="),
    (42, {}, "a URL .* or a command"),
    ([], {}, "a URL .* or a command"),
    (["python", ""], {}, "a URL .* or a command"),
    ("", {}, "a URL .* or a command"),
    (TIME, {"headers": {"Authorization": "x"}}, "headers= are for HTTP"),
    ("http://127.0.0.1:9/mcp", {"env": {"A": "b"}}, "env= is for stdio"),
    (TIME, {"env": {"BAD NAME": "x"}}, "can't be the name"),
    ("http://127.0.0.1:9/mcp", {"headers": {"X-A": "two\nlines"}}, "single-line"),
])
async def test_bad_targets_are_typed_errors_and_nothing_is_written(mrt, target, kw, match):
    ref = mrt.get(McpUser, "b")
    with pytest.raises(MCPTargetError, match=match):
        await ref.add("srv", target, **kw)
    with pytest.raises(MCPTargetError, match="1-64 letters"):
        await ref.add("no spaces", TIME)
    assert await ref.servers() == []
    assert await ref.bump() == 1


async def test_servers_that_wont_start_fail_with_the_reason_and_retry_with_backoff(mrt):
    events = Events(mrt)
    ref = mrt.get(McpUser, "f")
    status = await ref.add("broken", bad("exit"))
    assert status["state"] == "failed"
    assert "missing configuration file settings.toml" in status["error"]  # from its stderr
    missing = await ref.add("missing", ["/no/such/program-xyz"])
    assert missing["state"] == "failed" and "no such program" in missing["error"]
    out = await ref.use("missing", "anything", {})
    assert out["error"] == "MCPConnectionError" and "retrying" in out["message"]
    retried = await events.wait("mcp:client:error", count=2, server="broken")
    assert retried["payload"]["attempt"] == 2 and retried["payload"]["retry_in"] > 0.5
    assert await ref.bump() == 2


async def test_a_stdio_server_stderr_never_reaches_our_own_output(mrt, capfd):
    ref = mrt.get(McpUser, "q")
    status = await ref.add("noisy", bad("exit"))
    assert "settings.toml" in status["error"]  # captured, and used to explain the failure
    await ref.add("time", TIME)
    await ref.use("time", "get_current_time", {"timezone": "Bad/Zone"})  # the server logs it
    out, err = capfd.readouterr()
    assert "settings.toml" not in out + err and "Bad/Zone" not in out + err


async def test_a_server_that_hangs_times_out(mrt):
    manager(mrt).connect_timeout = 1.5
    ref = mrt.get(McpUser, "h")
    status = await ref.add("mute", bad("hang-init"))
    assert status["state"] == "failed" and "no answer within 1.5 s" in status["error"]
    manager(mrt).connect_timeout = 30.0  # a busy machine may take a while to start the next
    assert (await ref.add("stuck", bad("hang-call")))["state"] == "ready"
    out = await ref.use("stuck", "ping", {}, timeout=0.5)
    assert out["error"] == "MCPTimeoutError" and "0.5 s" in out["message"]
    assert await ref.bump() == 2


@pytest.mark.parametrize("mode, error, timeout", [("malformed", "MCPProtocolError", 30.0),
                                                  ("garbage", "MCPTimeoutError", 1.0)])
async def test_malformed_results_are_typed_errors(mrt, mode, error, timeout):
    ref = mrt.get(McpUser, "m")
    status = await ref.add("odd", bad(mode))
    assert status["state"] == "ready", status
    out = await ref.use("odd", "ping", {}, timeout=timeout)
    assert out["error"] == error, out
    await ref.add("fine", bad("ok"))
    assert await ref.use("fine", "ping", {"text": "still"}) == "pong still"


async def test_a_tool_with_an_invalid_schema_is_left_out_and_the_state_says_why(mrt):
    ref = mrt.get(McpUser, "s")
    status = await ref.add("half", bad("bad-schema"))
    assert status["state"] == "ready" and status["tools"] == ["ping"]
    assert "'strang', not a JSON Schema type" in status["invalid_tools"]["broken"]
    out = await ref.use("half", "broken", {})
    assert out["error"] == "MCPProtocolError" and "strang" in out["message"]
    assert await ref.use("half", "ping", {"text": "ok"}) == "pong ok"
    assert await ref.chat_tool_names() == ["ping"]


async def test_the_wake_hook_starts_reconnecting_without_waiting(tmp_path):
    from agentbook.mcp.agentside import wake

    folder = tmp_path / "store"
    first = ab.Runtime(folder)
    await first.get(McpUser, "w").add("time", TIME)
    await first.aclose()
    await first.mcp_clients.wait_closed()
    second = ab.Runtime(folder)
    try:
        events = Events(second)
        ref = second.get(McpUser, "w")
        assert await ref.bump() == 1  # awake; nothing asked for a tool
        wake(second.instances[ref._ab_key])  # what the core calls when an agent wakes
        await events.wait("mcp:client:connect")  # connected with no tool call waiting for it
        assert (await ref.use("time", "get_current_time", {"timezone": "UTC"}))["timezone"] == "UTC"
        assert events.count("mcp:client:preconnect") == 1
    finally:
        await second.aclose()
        if second.mcp_clients is not None:
            await second.mcp_clients.wait_closed()


@pytest.mark.slow
async def test_round_trips_through_agentbook_keep_up_with_the_bare_client():
    """Same stdio server, interleaved batches; the figures are printed (-s). The target is
    0.8 on a quiet machine; this floor only catches a collapse on a busy CI box."""
    from tests.mcp.roundtrips import measure

    figures = await measure(calls=100, rounds=5, server="time")
    print(figures)
    assert figures["ratio"] >= 0.4, figures


async def test_the_round_trip_measure_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    import tempfile

    from tests.mcp.roundtrips import measure

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # this process
    monkeypatch.setenv("TMPDIR", str(private))  # and the server it starts
    figures = await measure(calls=3, rounds=1, server="raw")
    assert figures["agentbook_per_s"] > 0
    assert os.listdir(private) == []


def test_without_the_sdk_mcp_is_a_typed_error_naming_the_pip_command(monkeypatch):
    from agentbook.mcp import require_sdk

    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(MCPNotInstalledError, match=r"pip install .agentbook\[mcp\]") as info:
        require_sdk()
    assert isinstance(info.value, ab.UsageError) and isinstance(info.value, ImportError)


def test_importing_agentbook_does_not_import_mcp_starlette_or_uvicorn():
    code = ("import sys, agentbook, agentbook.mcp; "
            "print(sorted(m for m in ('mcp', 'starlette', 'uvicorn', 'httpx2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- chat ---------------------------------------------------------------------------------
async def test_a_chat_turn_uses_an_mcp_tool_through_the_builtin_model(mrt):
    ref = mrt.get(McpChat, "c")
    await ref.add("time", TIME)
    answer = await ref.chat("What is the current time in timezone 'Europe/Paris'?")
    assert "Europe/Paris" in answer
    calls = mrt.sql("SELECT tool, args, error FROM tool_calls")
    assert list(calls["tool"]) == ["get_current_time"]
    assert json.loads(calls["args"][0]) == {"timezone": "Europe/Paris"}
    assert calls["error"].isna().all()
    effects = _effects(mrt, ref)
    assert [k for k, _ in effects] == ["model", "tool:get_current_time", "model"]  # once each
    replay = await ref.replay(ref.version)
    assert replay.identical
    forked = mrt.mcp_clients.get(replay.fork._ab_key, "time")  # (a wake may connect it, in the
    assert forked is None or forked.calls == 0          # background: the turn asked nothing)


async def test_mcp_tools_that_collide_are_prefixed_by_server_name(mrt):
    from agentbook.models.builtin import ScriptedModel

    McpScriptedChat.model = ScriptedModel([
        {"tool_calls": [{"name": "ping", "arguments": {"text": "A"}},
                        {"name": "b_ping", "arguments": {"text": "B"}}]}, "done"])
    try:
        ref = mrt.get(McpScriptedChat, "p")
        await ref.add("a", bad("ok"))
        await ref.add("b", bad("ok"))
        assert await ref.chat("ping both") == "done"
        results = mrt.sql("SELECT tool, result FROM tool_calls ORDER BY tool")
        assert list(results["tool"]) == ["b_ping", "ping"]
        assert [json.loads(r) for r in results["result"]] == ["pong B", "pong A"]
    finally:
        McpScriptedChat.model = None


async def test_an_mcp_tool_can_require_approval(mrt):
    ref = mrt.get(McpGatedChat, "g")
    await ref.add("time", TIME)
    await ref.chat("What is the current time in timezone 'UTC'?")
    (pending,) = mrt.approvals.list("pending")
    assert pending.method == "run_approved_tool"
    assert pending.kwargs["tool"] == "get_current_time"
    assert "tool:get_current_time" not in [k for k, _ in _effects(mrt, ref)]  # not run
    answer = await mrt.approvals.approve(pending.id)
    assert "UTC" in answer
    assert "tool:get_current_time" in [k for k, _ in _effects(mrt, ref)]  # ran, once


# -- the secret canary ----------------------------------------------------------------------
async def test_secret_canary_in_headers_and_env_never_leaves_the_secrets_table(tmp_path, caplog):
    """Credentials reach the servers (the header opens an auth-checked server, the env
    reaches a stdio server) and appear nowhere else: not in history, events, views, forks,
    reprs, logs, nor in any byte of the store outside ``_ab_secrets``' own pages."""
    import logging

    from agentbook.mcp.http import mcp_app
    from tests.mcp.peers import serve_asgi

    caplog.set_level(logging.DEBUG)
    header_canary = f"hdr-canary-{uuid.uuid4().hex}"
    env_canary = f"env-canary-{uuid.uuid4().hex}"
    canaries = (header_canary, env_canary)
    folder = tmp_path / "store"
    rt = ab.Runtime(folder)
    events = Events(rt)
    host = ab.Runtime(tmp_path / "host")  # agentbook's own MCP server, behind the canary token
    try:
        async with serve_asgi(mcp_app(host, token=header_canary)) as base:
            url = f"{base}/mcp/McpUser/served"
            ref = rt.get(McpUser, "keeper")
            wrong = await ref.add("wrong", url, headers={"Authorization": "Bearer not-it"})
            assert wrong["state"] == "failed" and "HTTP 401" in wrong["error"], wrong
            remote = await ref.add("remote", url, headers={
                "Authorization": ab.Secret(f"Bearer {header_canary}", "remote-token")})
            assert remote["state"] == "ready" and "bump" in remote["tools"], remote
            assert await ref.use("remote", "bump", {}) == {"result": 1}
            local = await ref.add("local", bad("echo-env"),
                                  env={"API_TOKEN": ab.Secret(env_canary, "api-token")})
            assert local["state"] == "ready", local
            # the env reached the server; what it says back is scrubbed before the journal
            assert await ref.use("local", "reveal", {}) == "my token is [secret]"

            fork = await ref.fork("copy")
            forked = {s["name"]: s for s in await fork.ready(5)}
            assert forked["remote"]["state"] == "failed"
            assert "never copy secrets" in forked["remote"]["error"]

            seen = [
                json.dumps(events.seen, default=str),
                ref.history(1000).to_json(date_format="iso", default_handler=str), repr(ref.history(1000)),
                fork.history(1000).to_json(date_format="iso", default_handler=str),
                json.dumps(await ref.servers()), json.dumps(await fork.servers()),
                repr(rt.mcp_clients), repr(rt.mcp_clients.get(ref._ab_key, "remote").spec),
                repr(ref), ref._repr_html_(), repr(rt),
            ]
            for view in ("history", "events", "agents", "schedules", "approvals", "messages",
                         "tool_calls"):
                seen.append(rt.sql(f"SELECT * FROM {view}").to_json(date_format="iso", default_handler=str))
            seen.append(caplog.text)
            for text in seen:
                for canary in canaries:
                    assert canary not in text
    finally:
        await rt.aclose()
        await host.aclose()
        for runtime in (rt, host):
            if runtime.mcp_clients is not None:
                await runtime.mcp_clients.wait_closed()

    keeper = folder / "agents" / "McpUser"
    scanned = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        allowed = _secret_pages(path) if path == keeper / "keeper.db" else []  # not the fork
        for canary in canaries:
            for at in _find_all(data, canary.encode()):
                assert any(lo <= at < hi for lo, hi in allowed), f"{canary} in {path} at {at}"
        scanned += 1
    assert scanned >= 3 and (keeper / "copy.db").exists()
    assert any(_find_all((keeper / "keeper.db").read_bytes(), header_canary.encode()))


def _secret_pages(path) -> list[tuple[int, int]]:
    """Byte ranges of the pages holding ``_ab_secrets`` (after folding in the WAL)."""
    import apsw

    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        pages = conn.execute("SELECT pageno FROM dbstat WHERE name = '_ab_secrets'").fetchall()
    finally:
        conn.close()
    return [((n - 1) * size, n * size) for (n,) in pages]


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at != -1:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


# -- helpers --------------------------------------------------------------------------------
def _effects(rt, ref) -> list:
    from agentbook.store import open_reader

    conn = open_reader(rt.path_of(ref._ab_key))
    try:
        rows = conn.execute("SELECT effects FROM _ab_history WHERE effects IS NOT NULL"
                            " ORDER BY version").fetchall()
    finally:
        conn.close()
    return [e for (text,) in rows for e in json.loads(text)]


def _secrets(rt, ref) -> list:
    from agentbook.store import open_reader

    conn = open_reader(rt.path_of(ref._ab_key))
    try:
        return conn.execute("SELECT * FROM _ab_secrets").fetchall()
    finally:
        conn.close()

