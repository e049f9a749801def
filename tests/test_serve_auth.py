"""Who may use a served runtime: the token, tickets, Origin and Host, where it binds
(fault list item 9). Every refusal leaves the server serving and the agents untouched."""

from __future__ import annotations

import hmac
import json
import logging

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

import agentbook as ab
from agentbook.serve import auth as auth_module
from agentbook.serve.auth import check_bind, is_loopback

from . import serve_agents
from .serve_agents import (
    ServeCounter,
    auth,
    closed_with,
    raw,
    recv,
)

served = serve_agents.served  # the fixture (pytest finds it by this name)
PATH = "/agents/serve-counter/a"


@pytest.fixture(autouse=True)
def _auth_case(request) -> None:
    """Each test here is a case of the serve-path auth matrix in the reliability summary
    (tests/reliability/conftest.py): a failed case counts there as a bypass. (Not
    record_property: it warns under --junitxml's xunit2 family, an error in this suite.)"""
    request.node.user_properties.append(
        ("agentbook_figure", {"name": f"serve_auth_matrix:{request.node.name}", "cases": 1}))


def client(server, **headers) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=headers, trust_env=False)


async def still_serves(server) -> None:
    async with client(server, **auth(server)) as http:
        assert (await http.get(PATH)).status_code == 200


# -- HTTP ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "query", "status"), [
    ({}, "", 401),
    ({"Authorization": "Bearer wrong"}, "", 401),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "", 401),
    ({"Authorization": "Bearer TOKEN"}, "?token=TOKEN", 401),  # in the URL: refused anyway
    ({}, "?token=TOKEN", 401),
    ({"Authorization": "Bearer TOKEN"}, "", 200),
    ({"Authorization": "token TOKEN"}, "", 200),  # Jupyter's spelling
])
async def test_http_needs_the_token_in_the_authorization_header(rt, served, headers, query, status):
    headers = {k: v.replace("TOKEN", served.token) for k, v in headers.items()}
    async with client(served, **headers) as http:
        response = await http.get(PATH + query.replace("TOKEN", served.token))
    assert response.status_code == status
    assert served.token not in response.text
    if status == 401:
        assert response.headers.get("www-authenticate") == "Bearer" or "URL" in response.text
    await still_serves(served)
    assert rt.get(ServeCounter, "a").version == 0


async def test_tickets_need_the_token(served):
    async with client(served) as http:
        assert (await http.post("/_agentbook/ticket")).status_code == 401
    async with client(served, **auth(served)) as http:
        got = (await http.post("/_agentbook/ticket")).json()
    assert got["expires_in"] == 30 and len(got["ticket"]) > 20 and got["ticket"] != served.token


@pytest.mark.parametrize(("headers", "status"), [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Origin": "http://127.0.0.1:1"}, 403),  # another port is another origin
    ({"Host": "evil.example"}, 403),  # DNS rebinding
    ({"Host": "evil.example:PORT"}, 403),
    ({"Origin": "http://127.0.0.1:PORT"}, 200),  # the server itself
    ({"Origin": "http://localhost:PORT", "Host": "localhost:PORT"}, 200),
])
async def test_http_checks_origin_and_host(rt, served, headers, status):
    headers = {k: v.replace("PORT", str(served.port)) for k, v in headers.items()}
    async with client(served, **auth(served), **headers) as http:
        response = await http.get(PATH)
    assert response.status_code == status
    await still_serves(served)


async def test_allowed_origins_get_cors_headers_and_preflights(rt):
    server = rt.serve(allow_origins=["http://localhost:5173"])
    try:
        async with client(server) as http:
            pre = await http.options(PATH, headers={"Origin": "http://localhost:5173",
                                                    "Access-Control-Request-Method": "POST"})
            got = await http.get(PATH, headers={**auth(server), "Origin": "http://localhost:5173"})
            other = await http.get(PATH, headers={**auth(server), "Origin": "http://localhost:5174"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        assert got.status_code == 200
        assert got.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert other.status_code == 403
    finally:
        await server.stop()


# -- WebSocket -----------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "query", "reason"), [
    ({}, "", "no token"),
    ({"Authorization": "Bearer wrong"}, "", "wrong token"),
    ({}, "?token=TOKEN", "URL"),
    ({"Authorization": "Bearer TOKEN"}, "?access_token=TOKEN", "URL"),
    ({}, "?ticket=made-up", "ticket"),
])
async def test_websockets_with_bad_credentials_are_closed_with_4001(rt, served, headers, query,
                                                                    reason):
    headers = {k: v.replace("TOKEN", served.token) for k, v in headers.items()}
    async with await raw(served, PATH + query.replace("TOKEN", served.token),
                         headers=headers) as ws:
        code, why = await closed_with(ws)
    assert code == 4001 and reason in why and served.token not in why
    await still_serves(served)
    assert served.connections == 0


async def test_a_websocket_may_offer_the_token_as_a_subprotocol(served):
    async with await raw(served, headers={}, subprotocols=["agents", f"bearer.{served.token}"]) as ws:
        identity, _ = await recv(ws, 2)
        assert ws.subprotocol == "agents" and identity["type"] == "cf_agent_identity"
    async with await raw(served, headers={}, subprotocols=["agents", "bearer.nope"]) as ws:
        assert (await closed_with(ws))[0] == 4001


async def test_a_ticket_works_once_and_expires_on_the_wall_clock(rt, served, clock):
    """Tickets expire on the wall clock: a paused VirtualClock (the runtime's) must not keep
    one alive, nor a fast-forwarded one end it early (issue 18)."""
    wall = [1000.0]
    served.auth.now = lambda: wall[0]
    ticket = served.ticket()
    async with await raw(served, f"{PATH}?ticket={ticket}", headers={}) as ws:
        assert (await recv(ws))[0]["type"] == "cf_agent_identity"
    async with await raw(served, f"{PATH}?ticket={ticket}", headers={}) as ws:
        assert (await closed_with(ws))[0] == 4001  # used up
    late = served.ticket()
    wall[0] += served.auth.ticket_ttl  # real time passes; the runtime's clock stands still
    async with await raw(served, f"{PATH}?ticket={late}", headers={}) as ws:
        assert (await closed_with(ws))[0] == 4001  # expired
    fresh = served.ticket()
    await clock.advance(10 * served.auth.ticket_ttl)  # the runtime's clock: no bearing
    wall[0] += served.auth.ticket_ttl - 1
    client = await ab.connect(served.url_for(ServeCounter, "a"), ticket=fresh)
    assert client.state == {"n": 0}
    await client.close()


def test_tickets_read_the_wall_clock_not_the_runtime_clock():
    """A 1 s ticket of a runtime on a paused VirtualClock used to stay valid forever."""
    auth = auth_module.Auth("t", ab.VirtualClock(), ticket_ttl=1.0)
    wall = [50.0]
    auth.now = lambda: wall[0]
    kept, gone = auth.issue(), auth.issue()
    assert auth.redeem(kept)
    wall[0] += 1.0
    assert not auth.redeem(gone)


@pytest.mark.parametrize(("origin", "host"), [
    ("http://evil.example", None),
    (None, "evil.example"),
    ("http://attacker.example:PORT", "attacker.example"),  # DNS rebinding
])
async def test_websockets_from_a_bad_origin_or_host_are_refused_at_the_handshake(served, origin,
                                                                                 host):
    headers = auth(served)
    if origin:
        headers["Origin"] = origin.replace("PORT", str(served.port))
    with pytest.raises(InvalidStatus) as info:
        await raw(served, headers=headers, host=host)
    assert info.value.response.status_code == 403
    await still_serves(served)


async def test_ab_connect_reports_a_refusal(served):
    with pytest.raises(ConnectionRefusedError, match="wrong token"):
        await ab.connect(served.url_for(ServeCounter, "a"), token="wrong")
    with pytest.raises(ConnectionRefusedError, match="403"):
        await ab.connect(served.url_for(ServeCounter, "a"), token=served.token,
                         headers={"Origin": "http://evil.example"})


async def test_unknown_agents_are_closed_with_4004_after_authentication(served):
    async with await raw(served, "/agents/nobody/a") as ws:
        assert (await closed_with(ws))[0] == 4004
    async with await raw(served, "/agents/nobody/a", headers={}) as ws:
        assert (await closed_with(ws))[0] == 4001  # no hint for strangers


# -- binding, secrecy ----------------------------------------------------------------------
def test_loopback_names():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.2", "example.com"]))


@pytest.mark.parametrize(("host", "allow_remote", "token"), [
    ("0.0.0.0", False, None),
    ("0.0.0.0", False, "a-long-enough-token-123"),
    ("0.0.0.0", True, None),
    ("::", True, "short"),
    ("192.168.1.2", True, None),
])
async def test_binding_beyond_loopback_needs_the_flag_and_a_token(rt, host, allow_remote, token):
    with pytest.raises(ab.UsageError, match="allow_remote|token"):
        rt.serve(host=host, allow_remote=allow_remote, token=token)
    assert rt.server is None
    check_bind(host, True, "a-long-enough-token-123")  # both given: allowed


async def test_the_token_is_random_compared_in_constant_time_and_never_shown(rt, monkeypatch,
                                                                             caplog):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth_module.hmac, "compare_digest",
                        lambda a, b: compared.append(1) or real(a, b))
    caplog.set_level(logging.DEBUG)
    first, second = rt.serve(), None
    try:
        await first.stop()
        second = rt.serve(token="my-own-token-xyz", log_level="debug")
        assert first.token != second.token and len(first.token) >= 40
        assert second.token == "my-own-token-xyz"
        for shown in (repr(second), second._repr_html_(), repr(second.auth)):
            assert second.token not in shown
        async with client(second, **auth(second)) as http:
            await http.get(PATH)
            await http.get(PATH + "?token=my-own-token-xyz")
        ws = await raw(second)
        await recv(ws, 2)
        await ws.close()
        ws = await raw(second, PATH + "?token=my-own-token-xyz")
        await closed_with(ws)
        assert compared
    finally:
        if second is not None:
            await second.stop()
    server_side = [r for r in caplog.records if r.name.startswith(("uvicorn", "agentbook"))]
    logged = "\n".join(r.getMessage() for r in server_side)
    assert "WebSocket /agents/serve-counter/a" in logged  # uvicorn did log the requests
    assert "my-own-token-xyz" not in logged and first.token not in logged


async def test_bad_credentials_never_reach_the_agent(rt, served):
    refused = []
    rt.events.subscribe(refused.append)
    async with await raw(served, headers={"Authorization": "Bearer nope"}) as ws:
        try:  # sent before the close arrives, or refused because it has
            await ws.send(json.dumps({"type": "rpc", "id": "1", "method": "inc", "args": []}))
        except ConnectionClosed:
            pass
        assert (await closed_with(ws))[0] == 4001
    assert rt.get(ServeCounter, "a").version == 0 and refused == []


async def test_a_session_pass_reconnects_to_its_own_agent_only_and_expires_unused(served):
    """What agentbook's chat page trades its one-time ticket for: a reusable pass for one
    agent's socket (subprotocol ``pass.<secret>``), never for another agent or HTTP."""
    wall = [1000.0]
    served.auth.now = lambda: wall[0]
    async with await raw(served, f"{PATH}?ticket={served.ticket()}", headers={}) as ws:
        await recv(ws, 2)
        await ws.send(json.dumps({"type": "ab_pass_request"}))
        (granted,) = await recv(ws)
    assert granted["type"] == "ab_pass" and granted["expiresIn"] == served.auth.pass_ttl
    secret = granted["pass"]
    for _ in range(2):  # reusable
        async with await raw(served, PATH, headers={},
                             subprotocols=["agents", f"pass.{secret}"]) as ws:
            assert ws.subprotocol == "agents"  # (the pass is never echoed back)
            assert (await recv(ws))[0]["type"] == "cf_agent_identity"
    other = PATH.rsplit("/", 1)[0] + "/b"
    async with await raw(served, other, headers={}, subprotocols=["agents", f"pass.{secret}"]) as ws:
        assert (await closed_with(ws))[0] == 4001  # another agent
    async with httpx.AsyncClient(base_url=served.url) as http:
        got = await http.get(f"{PATH}/get-messages", headers={"Authorization": f"Bearer {secret}"})
        assert got.status_code == 401  # not a token
    wall[0] += served.auth.pass_ttl - 1
    async with await raw(served, PATH, headers={}, subprotocols=["agents", f"pass.{secret}"]) as ws:
        assert (await recv(ws))[0]["type"] == "cf_agent_identity"  # used: valid again that long
    wall[0] += served.auth.pass_ttl
    async with await raw(served, PATH, headers={}, subprotocols=["agents", f"pass.{secret}"]) as ws:
        assert (await closed_with(ws))[0] == 4001  # unused too long
