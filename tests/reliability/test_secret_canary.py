"""Group 8: a planted secret never shows up anywhere agentbook writes or shows things.

Canaries (unique strings) are planted every way a secret reaches an agent:

* an ``ab.Secret`` passed as an argument, then put in the state, the key-value store, a
  schedule's payload, an effect, an event, a broadcast, the return value, a log line;
* ``self.secrets`` (an ``ab.Secret`` and a plain string);
* an approval's arguments (and its summary, formatted with the secret);
* a chat turn: a tool call whose arguments carry an ``ab.Secret`` and a tool that returns one;
* an MCP server's ``Authorization`` header (if ``agentbook.mcp`` and the SDK are there);
* a failing call and a failing fire-and-forget message that carry the secret.

Then every surface is searched for the canary strings: the bytes of every file in the
runtime's folder (the store files and their WALs without the ``_ab_secrets`` table's own
pages - that table is where secrets are meant to live - the catalog, the fork's store),
``ref.history()``, events, every DuckDB view through ``rt.sql``, the logs, ``repr``/
``_repr_html_`` of everything a notebook shows, the widget state a notebook saves, the
CLI's output, a fork, a replay, and what the serve path answers (if ``agentbook.serve``
is there). The figure printed is the number of appearances (0).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import apsw
import pytest

import agentbook as ab

from . import storeutil

TOKEN = secrets.token_hex(8)
CANARY = f"sk-canary-arg-{TOKEN}"  # an ab.Secret given as an argument
CANARY_RAW = f"sk-canary-raw-{TOKEN}"  # a plain string put in self.secrets
CANARY_TOOL = f"sk-canary-tool-{TOKEN}"  # in a tool call's arguments and a tool's result
CANARY_MCP = f"sk-canary-mcp-{TOKEN}"  # an MCP server's header
CANARIES = (CANARY, CANARY_RAW, CANARY_TOOL, CANARY_MCP)

log = logging.getLogger("agentbook.tests.canary")


class RelKeeper(ab.Agent):
    initial_state = {"note": ""}

    @ab.callable
    async def keep(self, key: Any) -> Any:
        self.secrets["api"] = key
        self.secrets["raw"] = CANARY_RAW
        # stored values name the secret (a Secret itself is refused there: it would come
        # back as {"$secret": name} after hibernation)
        self.set_state({"note": "has a key", "key": key.name})
        self.kv["key"] = key.name
        await self.schedule(3600, "later", {"key": key.name})
        await self.effect("fetch", lambda: key)
        self.emit("keeper:key", key=key)
        self.broadcast({"key": key})
        log.info("keeping %s (%r)", key, key)
        await self.request_approval("use", {"key": key}, summary=f"use the key {key}")
        return key

    @ab.callable
    async def fail_with(self, key: Any) -> None:
        raise RuntimeError(f"failed while holding {key!r}")

    @ab.callable
    async def check(self) -> bool:
        return self.secrets["api"].reveal() == CANARY and self.secrets["raw"].reveal() == CANARY_RAW

    async def later(self, payload: Any) -> None:
        pass

    async def use(self, key: Any) -> str:
        return "used"

    @ab.callable
    async def plug_mcp(self, port: int) -> dict:
        return await self.add_mcp_server(
            "bank", f"http://127.0.0.1:{port}/mcp",
            headers={"Authorization": ab.Secret(f"Bearer {CANARY_MCP}", "bank-token")})


@ab.tool
def pay_with(card: Any) -> str:
    """Pay with a card token."""
    return "paid" if card.reveal() == CANARY_TOOL else "wrong card"


@ab.tool
def issue_token() -> Any:
    """Issue a fresh token."""
    return ab.Secret(CANARY_TOOL, "token")


class RelKeeperChat(ab.ChatAgent):
    tools = [pay_with, issue_token]
    model = ab.models.scripted([
        {"tool_calls": [{"name": "pay_with", "arguments": {"card": ab.Secret(CANARY_TOOL, "card")}},
                        {"name": "issue_token", "arguments": {}}]},
        "done",
    ])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _has_mcp() -> bool:
    try:
        from agentbook.mcp import require_sdk

        require_sdk()
        return True
    except Exception:
        return False


class Scan:
    """Everything searched, and where a canary turned up."""

    def __init__(self) -> None:
        self.surfaces: list[str] = []
        self.found: list[str] = []
        self.bytes = 0

    def text(self, surface: str, value: Any) -> None:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        self.surfaces.append(surface)
        self.bytes += len(data)
        for canary in CANARIES:
            if canary.encode() in data:
                self.found.append(f"{canary.split('-')[2]} canary in {surface}")


def _scan_folder(scan: Scan, root: Path) -> None:
    """Every file under *root*; agent stores and their WALs without _ab_secrets' pages."""
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith("-shm"):
            continue
        db = path.with_name(path.name.removesuffix("-wal"))
        skip: set[int] = set()
        if db.suffix == ".db" and db.name != "catalog.db":
            with storeutil.reading(db) as conn:
                skip = storeutil.pages_of(conn, "_ab_secrets")
                assert skip, f"{db}: no _ab_secrets pages found"
        if path.name.endswith("-wal"):
            data = storeutil.wal_bytes_without(path, skip)
        elif skip:
            data = storeutil.db_bytes_without(path, skip)
        else:
            data = path.read_bytes()
        scan.text(f"file {path.relative_to(root)}", data)


def _widget_state() -> str:
    try:
        from ipywidgets.widgets import widget
    except ImportError:
        return ""
    return json.dumps([w.get_state() for w in list(widget._instances.values())], default=repr)


async def _served(scan: Scan, rt: ab.Runtime) -> None:
    try:
        import httpx

        server = rt.serve()
    except (ImportError, ab.UsageError):
        return
    try:
        headers = {"Authorization": f"Bearer {server.token}"}
        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            for url in (server.url + "/", server.url_for(RelKeeper, "k"),
                        server.url_for(RelKeeperChat, "c")):
                response = await client.get(url)
                assert response.status_code == 200, (url, response.text)
                scan.text(f"served GET {url.removeprefix(server.url)}", response.text)
    finally:
        await server.stop()


async def test_a_planted_secret_appears_nowhere(tmp_path: Path, clock, caplog, capsys, figure) -> None:
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "store"
    rt = ab.Runtime(root, clock=clock)
    events: list[dict] = []
    rt.events.subscribe(events.append)
    ref = rt.get(RelKeeper, "k")
    secret = ab.Secret(CANARY, "api")
    scan = Scan()

    returned = await ref.keep(secret)
    assert returned is secret or returned == secret  # the caller may use the value it gave
    assert await ref.check()  # the secrets are really there, for the agent to use
    with pytest.raises(RuntimeError):
        await ref.fail_with(secret)
    ref.send("fail_with", secret)  # fire and forget: the error is logged
    chat = rt.get(RelKeeperChat, "c")
    assert await chat.chat("pay") == "done"
    if _has_mcp():
        status = await ref.plug_mcp(_closed_port())
        scan.text("MCP server status", status)
    approval = rt.approvals.list("pending")[0]
    await rt.approvals.approve(approval.id, by="ops")
    await clock.advance(hours=2)
    fork = await ref.fork("k-fork")
    replayed = await ref.replay(2, on="k-replay")
    await ref.rewind(1)
    await _served(scan, rt)

    # What a notebook shows and keeps.
    for name, value in {
        "repr(ref)": repr(ref), "ref html": ref._repr_html_(), "repr(rt)": repr(rt),
        "rt html": rt._repr_html_(), "repr(state)": repr(ref.at(2).state),
        "repr(secret)": repr(secret), "str(secret)": str(secret),
        "approvals": repr(rt.approvals.list(None)), "inbox frame": rt.approvals.history().to_csv(),
        "history": ref.history(limit=500).to_csv(), "fork history": fork.history().to_csv(),
        "replay": replayed.frame().to_csv(), "schedules": ref.schedules().to_csv(),
        "failures": ref.failures().to_csv(), "messages": chat.messages().to_csv(),
        "chat history": chat.history().to_csv(), "agents": rt.agents().to_csv(),
        "diff": repr(ref.diff(1, 2).state) + ref.diff(1, 2).rows.to_csv(),
        "events": json.dumps(events, default=repr), "ref.state": repr(ref.state),
        "chat state": repr(chat.state),
    }.items():
        scan.text(name, value)
    try:
        scan.text("inbox widget", json.dumps(rt.approvals._repr_mimebundle_(), default=repr))
        scan.text("timeline widget", repr(ref.timeline()))
    except ImportError:
        pass
    scan.text("widget state", _widget_state())
    for view in ("agents", "history", "events", "schedules", "approvals", "dead_letters",
                 "messages", "tool_calls"):
        scan.text(f"rt.sql view {view}", rt.sql(f"SELECT * FROM {view}").to_csv())
    await rt.aclose()

    from agentbook.cli.main import main as cli

    for args in (["ls"], ["show", "RelKeeper/k"], ["history", "RelKeeper/k", "--limit", "100"],
                 ["show", "RelKeeperChat/c"], ["history", "RelKeeper/k-fork"]):
        assert cli([*args, "--path", str(root)]) == 0
    out = capsys.readouterr()
    scan.text("CLI output", out.out + out.err)
    scan.text("logs", caplog.text)
    _scan_folder(scan, root)
    # The fork's store has an _ab_secrets table with no rows: nothing was copied.
    with storeutil.reading(root / "agents" / "RelKeeper" / "k-fork.db") as conn:
        assert conn.execute("SELECT count(*) FROM _ab_secrets").fetchall()[0][0] == 0

    print(f"secret canary: {len(scan.surfaces)} surfaces, {scan.bytes} bytes, "
          f"{len(scan.found)} appearances")
    figure("secret_canary", surfaces=len(scan.surfaces), bytes=scan.bytes,
           appearances=len(scan.found))
    assert scan.found == []


async def test_the_canary_is_found_where_it_is_meant_to_be(tmp_path: Path, clock) -> None:
    """The scan would see a leak: the secret's own table holds the canary."""
    rt = ab.Runtime(tmp_path / "store", clock=clock)
    ref = rt.get(RelKeeper, "k")
    await ref.keep(ab.Secret(CANARY, "api"))
    path = Path(rt.path_of(ref._ab_key))
    await rt.aclose()
    assert CANARY.encode() in path.read_bytes()
    with storeutil.reading(path) as conn:
        pages = storeutil.pages_of(conn, "_ab_secrets")
    assert CANARY.encode() not in storeutil.db_bytes_without(path, pages)
    conn = apsw.Connection(str(path))
    assert conn.execute("SELECT value FROM _ab_secrets WHERE key = 'api'").fetchall() == [(CANARY,)]
    conn.close()
    assert os.path.exists(path)


async def test_secrets_cannot_be_pickled_or_serialised_by_accident() -> None:
    import copy
    import pickle

    secret = ab.Secret(CANARY, "api")
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        copy.copy(secret)
    with pytest.raises(TypeError):
        json.dumps(secret)
    assert CANARY not in json.dumps({"k": secret}, default=repr)
    assert CANARY not in f"{secret} {secret!r} {secret!s}"
    await asyncio.sleep(0)
