"""The serve path against a real server on 127.0.0.1: HTTP with httpx, raw frames with
``websockets``, and ``ab.connect``. (Authentication: tests/test_serve_auth.py; Cloudflare's
own npm client: tests/test_serve_npm.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

import agentbook as ab
from agentbook.serve.protocol import kebab

from . import serve_agents
from .serve_agents import (
    SEEN,
    TIMEOUT,
    ServeCounter,
    ServeHooks,
    ServeHttp,
    auth,
    closed_with,
    raw,
    recv,
)

served = serve_agents.served  # the fixture (pytest finds it by this name)


def http(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=auth(server), trust_env=False)


async def wait_event(rt, type_: str, predicate=lambda e: True) -> asyncio.Future:
    """A future of the next event of *type_* that satisfies *predicate*."""
    fut = asyncio.get_running_loop().create_future()

    def seen(event):
        if not fut.done() and predicate(event):
            fut.set_result(event)

    unsubscribe = rt.events.subscribe(seen, types=type_)
    fut.add_done_callback(lambda _: unsubscribe())
    return fut


# -- routes and HTTP -----------------------------------------------------------------------
def test_class_names_become_kebab_case_as_cloudflare_writes_them():
    assert kebab("ServeCounter") == "serve-counter"
    assert kebab("SupportAgent") == "support-agent"
    assert kebab("ALLCAPS_AGENT") == "allcaps-agent"
    assert kebab("support") == "support"


async def test_get_returns_the_state_without_making_a_version(rt, served):
    await rt.get(ServeCounter, "a").inc(2)
    async with http(served) as client:
        got = await client.get("/agents/serve-counter/a")
        exact = await client.get("/agents/ServeCounter/a")
        posted = await client.post("/agents/serve-counter/a", json={})
    assert got.status_code == 200 and got.json() == {"name": "a", "state": {"n": 2}}
    assert exact.json() == got.json()
    assert posted.status_code == 405
    assert rt.get(ServeCounter, "a").version == 1


async def test_on_request_runs_in_the_mailbox_and_its_writes_commit(rt, served):
    ref = rt.get(ServeHttp, "h")
    async with http(served) as client:
        first = await client.post("/agents/serve-http/h", json={"a": 1})
        failed = await client.post("/agents/serve-http/h", json={"fail": True})
        text = await client.get("/agents/serve-http/h", params={"as": "text"})
        nothing = await client.get("/agents/serve-http/h", params={"as": "nothing"})
    assert first.status_code == 200 and first.json() == {"posts": 1, "got": {"a": 1}}
    assert failed.status_code == 500 and failed.json()["error"] == "refused on purpose"
    assert text.text == "hello from h" and text.headers["content-type"].startswith("text/plain")
    assert nothing.status_code == 204
    assert ref.state == {"posts": 1}
    rows = ref.history()
    assert list(rows["method"])[-1] == "on_request" and list(rows["source"])[-1] == "http:POST"


async def test_unknown_class_is_404_bad_name_400_and_big_body_413(rt, served):
    async with http(served) as client:
        unknown = await client.get("/agents/no-such-agent/x")
        bad = await client.get("/agents/serve-counter/" + "x" * 300)
        big = await client.post("/agents/serve-http/h", content=b"x" * (served.max_message + 1))
        index = await client.get("/")
    assert unknown.status_code == 404 and "serve-counter" in unknown.json()["error"]
    assert bad.status_code == 400
    assert big.status_code == 413 and rt.get(ServeHttp, "h").version == 0
    assert {"serve-counter", "serve-hooks", "serve-http"} <= set(index.json()["agents"])


async def test_classes_limits_what_is_served(rt):
    server = rt.serve(classes=[ServeHttp])
    try:
        async with http(server) as client:
            assert (await client.get("/agents/serve-counter/a")).status_code == 404
            assert (await client.get("/agents/serve-http/a")).status_code == 200
            assert (await client.get("/")).json()["agents"] == ["serve-http"]
    finally:
        await server.stop()


async def test_only_user_classes_are_served_never_agentbooks_own(rt, served):
    """``ab.Agent``, ``ab.ChatAgent`` and the classes agentbook defines for itself (the
    benchmarks' agents here) are no routes: a URL can't make an agent of them."""
    import agentbook.bench.agents as bench_agents

    own = ["agent", "chat-agent", kebab(bench_agents.BenchCounter.__name__)]
    async with http(served) as client:
        answers = [await client.get(f"/agents/{segment}/x") for segment in own]
        exact = await client.get("/agents/ChatAgent/x")
        index = (await client.get("/")).json()["agents"]
    assert [a.status_code for a in answers] == [404, 404, 404] and exact.status_code == 404
    assert not set(own) & set(index) and "serve-counter" in index
    assert rt.agents().empty  # nothing was made


async def test_naming_agentbooks_own_class_to_serve_is_a_usage_error(rt):
    with pytest.raises(ab.UsageError, match="ChatAgent"):
        rt.serve(classes=[ServeCounter, ab.ChatAgent])
    assert rt.server is None


# -- the WebSocket protocol ----------------------------------------------------------------
async def test_a_client_gets_its_identity_then_the_committed_state(rt, served):
    await rt.get(ServeCounter, "a").inc(3)
    async with await raw(served, "/agents/serve-counter/a?_pk=abc") as ws:
        identity, state = await recv(ws, 2)
    assert identity == {"type": "cf_agent_identity", "name": "a", "agent": "serve-counter",
                        "stateFollows": True}
    assert state == {"type": "cf_agent_state", "state": {"n": 3}}


async def test_an_rpc_result_comes_after_the_state_it_caused(rt, served):
    async with await raw(served) as ws:
        await recv(ws, 2)
        await ws.send(json.dumps({"type": "rpc", "id": "1", "method": "inc", "args": [5]}))
        state, result = await recv(ws, 2)
    assert state == {"type": "cf_agent_state", "state": {"n": 5}}
    assert result == {"type": "rpc", "id": "1", "success": True, "result": 5, "done": True}
    row = rt.get(ServeCounter, "a").history(limit=1).iloc[0]
    assert row["method"] == "inc" and row["source"].startswith("ws:")


@pytest.mark.parametrize(("method", "args", "error_type"), [
    ("_private", [], "NotCallableError"),
    ("uncallable", [], "NotCallableError"),
    ("validate_state_change", [{}, "x"], "NotCallableError"),
    ("set_state", [{"n": 5}], "NotCallableError"),
    ("no_such_method", [], "UnknownMethodError"),
    ("inc", [1, 2, 3], "BadArgumentsError"),
    ("fail", [], "RuntimeError"),
])
async def test_refused_and_failing_calls_get_an_error_and_change_nothing(rt, served, method, args,
                                                                      error_type):
    errors = await wait_event(rt, "rpc:error")
    async with await raw(served) as ws:
        await recv(ws, 2)
        await ws.send(json.dumps({"type": "rpc", "id": "x", "method": method, "args": args}))
        (reply,) = await recv(ws)
        await ws.send(json.dumps({"type": "rpc", "id": "y", "method": "peek", "args": []}))
        (after,) = await recv(ws)
    assert reply["success"] is False and reply["id"] == "x" and reply["errorType"] == error_type
    assert reply["error"]
    assert (await asyncio.wait_for(errors, TIMEOUT))["payload"]["method"] == method
    assert after == {"type": "rpc", "id": "y", "success": True, "result": 0, "done": True}
    assert rt.get(ServeCounter, "a").state == {"n": 0}


async def test_bad_frames_get_an_error_frame_and_the_connection_stays_healthy(rt, served):
    bad = ["{not json", "[1, 2]", '{"type": "mystery"}', '{"type": "rpc", "id": 7}',
           '{"type": "rpc", "id": "r", "method": 3, "args": []}', '{"n": NaN}', "[" * 100_000,
           '{"type": "rpc", "id": "s", "method": "inc", "args": [{"\\ud800": 1}]}',
           '{"type": "cf_agent_state", "state": {"n": 1, "\\udfff": 2}}', "9" * 5000,
           b"\x00\x01", "x" * (served.max_message + 1)]
    async with await raw(served) as ws:
        await recv(ws, 2)
        for frame in bad:
            await ws.send(frame)
        replies = await recv(ws, len(bad))
        await ws.send(json.dumps({"type": "rpc", "id": "ok", "method": "inc", "args": []}))
        state, result = await recv(ws, 2)
    assert [r["type"] for r in replies] == ["error"] * 4 + ["rpc"] + ["error"] * 7
    assert replies[4]["id"] == "r" and replies[4]["success"] is False
    assert "not JSON" in replies[0]["error"] and "over the limit" in replies[-1]["error"]
    assert result["result"] == 1 and state["state"] == {"n": 1}
    assert rt.get(ServeCounter, "a").version == 1


async def test_a_result_that_is_not_json_is_an_error_not_nan(served):
    async with await raw(served) as ws:
        await recv(ws, 2)
        await ws.send(json.dumps({"type": "rpc", "id": "n", "method": "not_json", "args": []}))
        (reply,) = await recv(ws)
    assert reply["success"] is False and "not JSON" in reply["error"]


async def test_streaming_calls_send_chunks_then_the_result_after_the_commit(rt, served):
    async with await raw(served) as ws:
        await recv(ws, 2)
        await ws.send(json.dumps({"type": "rpc", "id": "s", "method": "count", "args": [3]}))
        frames = await recv(ws, 5)
        await ws.send(json.dumps({"type": "rpc", "id": "e", "method": "count_badly", "args": []}))
        chunk, error = await recv(ws, 2)
    assert [f["result"] for f in frames[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert all(f["done"] is False and f["id"] == "s" for f in frames[:3])
    assert frames[3] == {"type": "cf_agent_state", "state": {"n": 3}}
    assert frames[4] == {"type": "rpc", "id": "s", "success": True, "result": "counted",
                         "done": True}
    assert chunk["result"] == 1 and error == {"type": "rpc", "id": "e", "success": False,
                                              "error": "ran out of numbers",
                                              "errorType": "RuntimeError"}
    assert rt.get(ServeCounter, "a").history(limit=2).iloc[1]["args"] == [3]


async def test_a_client_state_update_is_validated_with_its_source_and_echoed(rt, served):
    SEEN.clear()
    async with await raw(served, "/agents/serve-counter/a?_pk=me") as ws:
        await recv(ws, 2)
        await ws.send(json.dumps({"type": "cf_agent_state", "state": {"n": 7}}))
        (echo,) = await recv(ws)
        await ws.send(json.dumps({"type": "cf_agent_state", "state": {"n": -1}, "id": 9}))
        error, authoritative = await recv(ws, 2)
    assert echo == {"type": "cf_agent_state", "state": {"n": 7}}
    assert SEEN == [({"n": 7}, "client:me"), ({"n": -1}, "client:me")]
    assert error["type"] == "cf_agent_state_error" and "negative" in error["error"]
    assert error["id"] == 9 and authoritative["state"] == {"n": 7}
    assert rt.get(ServeCounter, "a").state == {"n": 7}
    assert rt.get(ServeCounter, "a").history(limit=1).iloc[0]["source"] == "client:me"


# -- hooks, connections, read-only, broadcast ----------------------------------------------
async def test_hooks_run_as_handlers_and_their_sends_leave_after_the_commit(rt, served):
    ref = rt.get(ServeHooks, "h")
    closed = await wait_event(rt, "rpc", lambda e: e["payload"]["method"] == "on_close")
    async with await raw(served, "/agents/serve-hooks/h?_pk=c1") as ws:
        _identity, state, update, welcome = await recv(ws, 4)
        assert state["state"]["connects"] == 0 and update["state"]["connects"] == 1
        assert welcome == {"welcome": "c1", "readonly": False}
        assert [c.id for c in served.connections_of(("ServeHooks", "h"))] == ["c1"]
        await ws.send("hello there")
        update, echo = await recv(ws, 2)
        assert echo == {"echo": "hello there", "conn_state": {"joined": 1}}
        await ws.send("boom")
        (error,) = await recv(ws)
        assert error["type"] == "error" and "boom" in error["error"]
        await ws.send(b"\x01\x02")
        await recv(ws, 2)
    await asyncio.wait_for(closed, TIMEOUT)
    assert ref.state == {"connects": 1, "messages": ["hello there", "<2 bytes>"], "closes": [1000]}
    rows = ref.history()
    ok = rows[rows["outcome"] == "ok"]
    assert list(ok["method"])[::-1] == ["on_connect", "on_message", "on_message", "on_close"]
    assert list(rows[rows["outcome"] != "ok"]["method"]) == ["on_message"]
    assert set(rows["source"]) == {"ws:c1"}


async def test_without_hooks_connecting_makes_no_version(rt, served):
    disconnected = await wait_event(rt, "disconnect")
    connected = await wait_event(rt, "connect")
    async with await raw(served, "/agents/serve-counter/quiet?_pk=q") as ws:
        await recv(ws, 2)
    assert (await asyncio.wait_for(connected, TIMEOUT))["payload"] == {"connectionId": "q"}
    assert (await asyncio.wait_for(disconnected, TIMEOUT))["payload"]["code"] == 1000
    assert rt.get(ServeCounter, "quiet").version == 0


async def test_a_failing_on_connect_closes_the_connection_and_on_close_runs(rt, served):
    closed = await wait_event(rt, "rpc", lambda e: e["payload"]["method"] == "on_close")
    async with await raw(served, "/agents/serve-hooks/h?refuse=1") as ws:
        code, reason = await closed_with(ws)
    await asyncio.wait_for(closed, TIMEOUT)
    assert code == 1011 and "not today" in reason
    assert rt.get(ServeHooks, "h").state == {"connects": 0, "messages": [], "closes": [1011]}


async def test_a_read_only_connection_reads_but_cannot_change_the_state(rt, served):
    ref = rt.get(ServeHooks, "h")
    async with await raw(served, "/agents/serve-hooks/h?ro=1") as ro:
        *_, welcome = await recv(ro, 4)
        assert welcome["readonly"] is True
        await ro.send(json.dumps({"type": "cf_agent_state", "state": {"connects": 50}}))
        error, authoritative = await recv(ro, 2)
        await ro.send(json.dumps({"type": "rpc", "id": "b", "method": "bump", "args": []}))
        (refused,) = await recv(ro)
        await ro.send(json.dumps({"type": "rpc", "id": "r", "method": "connects", "args": []}))
        (allowed,) = await recv(ro)
        async with await ab.connect(served.url_for(ServeHooks, "h"), token=served.token) as writer:
            (joined,) = await recv(ro)
            await writer.call("bump")
            (bumped,) = await recv(ro)
    assert error == {"type": "cf_agent_state_error", "error": "Connection is readonly"}
    assert authoritative["state"]["connects"] == 1
    assert refused["success"] is False and refused["errorType"] == "ReadOnlyError"
    assert allowed["result"] == 1 and joined["state"]["connects"] == 2
    assert bumped["state"]["connects"] == 102 and ref.state["connects"] == 102


async def test_broadcast_reaches_every_connection_but_the_excluded(rt, served):
    async with await raw(served) as first, await raw(served) as second:
        await recv(first, 2)
        await recv(second, 2)
        await second.send(json.dumps({"type": "rpc", "id": "1", "method": "shout",
                                      "args": ["all", False]}))
        assert await recv(first) == [{"shout": "all"}]
        assert await recv(second, 2) == [{"shout": "all"}, {"type": "rpc", "id": "1",
                                         "success": True, "result": None, "done": True}]
        await rt.get(ServeCounter, "a").shout("not you", True)
        await rt.get(ServeCounter, "a").shout("everyone")
        assert await recv(second, 2) == [{"shout": "not you"}, {"shout": "everyone"}]
        assert await recv(first) == [{"shout": "everyone"}]


async def test_sends_from_a_cell_call_leave_after_its_commit_and_never_if_it_fails(rt, served):
    ref = rt.get(ServeCounter, "a")
    async with await raw(served) as ws:
        await recv(ws, 2)
        with pytest.raises(RuntimeError):
            await ref.whisper("lost", True)
        assert await ref.whisper("kept") == 1
        assert await recv(ws) == [{"whisper": "kept"}]


async def _clients_watching(served, n: int) -> tuple[list, list[list[int]]]:
    url = served.url_for(ServeCounter, "a")
    seen: list[list[int]] = [[] for _ in range(n)]
    clients = [await ab.connect(url, token=served.token,
                                on_state=lambda s, _src, i=i: seen[i].append(s["n"]))
               for i in range(n)]
    return clients, seen


async def _all_reach(clients, total: int) -> None:
    done = [asyncio.get_running_loop().create_future() for _ in clients]
    for client, fut in zip(clients, done, strict=True):
        client.on_state(lambda s, _src, f=fut: s["n"] == total and not f.done() and f.set_result(1))
        if client.state["n"] == total and not fut.done():
            fut.set_result(1)
    await asyncio.wait_for(asyncio.gather(*done), TIMEOUT)
    for client in clients:
        await client.close()


def _committed(ref) -> list[int]:
    """``n`` at every version, oldest first (version 0 included)."""
    return [0, *[s["n"] for s in ref.history(limit=1000)["state"]][::-1]]


async def test_many_clients_receive_every_state_change_in_order(rt, served):
    clients, seen = await _clients_watching(served, 20)
    ref = rt.get(ServeCounter, "a")
    total = 0
    for step in range(60):  # from cells and from clients, one after another
        total += step % 3 + 1
        await (clients[step % 20].call("inc", step % 3 + 1) if step % 2 else ref.inc(step % 3 + 1))
    await _all_reach(clients, total)
    assert all(s == _committed(ref) for s in seen), seen[0]


async def test_concurrent_calls_reach_every_client_in_commit_order(rt, served):
    clients, seen = await _clients_watching(served, 20)
    ref = rt.get(ServeCounter, "a")
    calls = [clients[i % 20].call("inc") if i % 2 else ref.inc() for i in range(60)]
    await asyncio.gather(*calls)
    await _all_reach(clients, 60)
    committed = _committed(ref)
    for states in seen:  # the same, strictly increasing, committed states everywhere
        assert states == seen[0] and states == sorted(set(states)) and set(states) <= set(committed)


async def test_concurrent_calls_reach_every_client_as_every_committed_state(rt, served):
    clients, seen = await _clients_watching(served, 5)
    ref = rt.get(ServeCounter, "a")
    await asyncio.gather(*(clients[i % 5].call("inc") if i % 2 else ref.inc() for i in range(30)))
    await _all_reach(clients, 30)
    assert all(s == list(range(31)) for s in seen), seen[0]


# -- the Python client ---------------------------------------------------------------------
async def test_the_python_client_calls_syncs_and_sets_state(rt, served):
    changes = []
    client = await ab.connect(served.url_for(ServeCounter, "a"), token=served.token,
                              on_state=lambda state, source: changes.append(state["n"]))
    assert (client.name, client.agent, client.state) == ("a", "serve-counter", {"n": 0})
    assert await client.call("inc", 4) == 4 and client.state == {"n": 4}
    chunks = []
    assert await client.call("count", 2, on_chunk=chunks.append) == "counted"
    assert chunks == [{"i": 0}, {"i": 1}]
    await client.set_state({"n": 1})
    with pytest.raises(ab.StateRejectedError, match="negative"):
        await client.set_state({"n": -5})
    with pytest.raises(ab.NotCallableError):
        await client.call("_private")
    for bad in (float("nan"), {"\ud800": 1}, {1, 2}):
        with pytest.raises(ab.JSONValueError):
            await client.call("inc", bad)
    with pytest.raises(ab.AgentbookError, match="failed on purpose") as info:
        await client.call("fail")
    assert info.value.type == "RuntimeError"
    await rt.get(ServeCounter, "a").inc(10)
    assert await client.call("peek") == 11 and client.state == {"n": 11}
    assert changes == [0, 4, 6, 1, 1, 11]
    await client.close()
    assert client.closed
    with pytest.raises(ConnectionError):
        await client.call("peek")


async def test_stopping_the_server_closes_its_connections(rt, served):
    client = await ab.connect(served.url_for(ServeCounter, "a"), token=served.token)
    assert served.connections == 1 and rt.server is served
    pending = asyncio.ensure_future(client.call("peek", timeout=TIMEOUT))
    await served.stop()
    await asyncio.gather(pending, return_exceptions=True)
    await asyncio.wait_for(client.wait_closed(), TIMEOUT)
    assert client.closed and rt.server is None and not served.running
    assert served.connections == 0


async def test_serve_refuses_a_second_server_and_a_call_outside_a_loop(rt, served, tmp_path):
    with pytest.raises(ab.UsageError, match="already served"):
        rt.serve()
    other = ab.Runtime(tmp_path / "other")
    try:
        with pytest.raises(ab.UsageError, match="running event loop"):
            await asyncio.to_thread(other.serve)
    finally:
        other.close()


async def test_a_busy_port_is_a_usage_error(rt, served):
    with pytest.raises(ab.UsageError, match="already served"):
        rt.serve(port=served.port)
    other = ab.Runtime(":memory:")
    try:
        with pytest.raises(ab.UsageError, match="pick another port"):
            other.serve(port=served.port)
    finally:
        other.close()


def test_importing_agentbook_does_not_import_the_server_libraries():
    code = ("import sys, agentbook; bad = [m for m in ('starlette', 'uvicorn', 'websockets') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_agentbook_serve_runs_from_the_command_line_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "AGENTBOOK_TOKEN": "a-token-for-the-cli-test"}
    code = ("import sys; from agentbook.serve.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "tests.serve_agents:ServeCounter", "--port", "0",
         "--path", str(tmp_path / "store")],
        cwd=os.path.dirname(os.path.dirname(__file__)), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving serve-counter at http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split(" at ")[1].split("/agents")[0]
        got = httpx.get(f"{url}/agents/serve-counter/a", trust_env=False,
                        headers={"Authorization": "Bearer a-token-for-the-cli-test"})
        assert got.json() == {"name": "a", "state": {"n": 0}}
        assert "a-token-for-the-cli-test" not in line
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "stopped" in out and "a-token-for-the-cli-test" not in out + err
