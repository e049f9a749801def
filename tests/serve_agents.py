"""Tiny agents for the serve-path tests, one per feature (class names are global: keep
the ``Serve`` prefix)."""

from __future__ import annotations

from typing import Any

import agentbook as ab

#: ``(state, source)`` of every change ``ServeCounter.validate_state_change`` saw.
SEEN: list[tuple[Any, str]] = []


class ServeCounter(ab.Agent):
    """RPC, streaming, broadcasts, sends, and a validator that refuses negative counts."""

    initial_state = {"n": 0}

    def validate_state_change(self, state: Any, source: str) -> None:
        SEEN.append((state, source))
        if state.get("n", 0) < 0:
            raise ValueError("n must not be negative")

    @ab.callable
    async def inc(self, by: int = 1) -> int:
        self.set_state({**self.state, "n": self.state["n"] + by})
        return self.state["n"]

    @ab.callable
    async def peek(self) -> int:
        return self.state["n"]

    @ab.callable
    async def fail(self) -> None:
        self.set_state({**self.state, "n": 999})
        raise RuntimeError("failed on purpose")

    @ab.callable
    async def not_json(self) -> Any:
        return {"x": float("nan")}

    @ab.callable
    async def shout(self, text: str, skip_first: bool = False) -> None:
        exclude = [self.connections[0].id] if skip_first else []
        self.broadcast({"shout": text}, exclude=exclude)

    @ab.callable
    async def whisper(self, text: str, then_fail: bool = False) -> int:
        for conn in self.connections:
            conn.send({"whisper": text})
        if then_fail:
            raise RuntimeError("changed my mind")
        return len(self.connections)

    @ab.callable(streaming=True)
    async def count(self, stream: Any, upto: int) -> str:
        for i in range(upto):
            stream.send({"i": i})
        self.set_state({**self.state, "n": self.state["n"] + upto})
        return "counted"

    @ab.callable(streaming=True)
    async def count_badly(self, stream: Any) -> None:
        stream.send(1)
        stream.error("ran out of numbers")

    async def uncallable(self) -> None:
        self.set_state({"n": 666})

    async def _private(self) -> None:
        self.set_state({"n": 667})


class ServeHooks(ab.Agent):
    """on_connect / on_message / on_close as handlers; per-connection state; read-only."""

    initial_state = {"connects": 0, "messages": [], "closes": []}

    async def on_connect(self, connection: Any, ctx: Any) -> None:
        if ctx.request.query_params.get("ro") == "1":
            connection.set_readonly(True)
        if ctx.request.query_params.get("refuse") == "1":
            raise PermissionError("not today")
        connection.set_state({"joined": self.state["connects"] + 1})
        self.set_state({**self.state, "connects": self.state["connects"] + 1})
        connection.send({"welcome": connection.id, "readonly": connection.readonly})

    async def on_message(self, connection: Any, message: Any) -> None:
        if message == "boom":
            connection.send("never sent")
            raise ValueError("boom")
        text = message if isinstance(message, str) else f"<{len(message)} bytes>"
        self.set_state({**self.state, "messages": [*self.state["messages"], text]})
        connection.send({"echo": text, "conn_state": connection.state})

    async def on_close(self, connection: Any, code: int, reason: str) -> None:
        self.set_state({**self.state, "closes": [*self.state["closes"], code]})

    @ab.callable
    async def bump(self) -> int:
        self.set_state({**self.state, "connects": self.state["connects"] + 100})
        return self.state["connects"]

    @ab.callable
    async def connects(self) -> int:
        return self.state["connects"]


class ServeHttp(ab.Agent):
    """``on_request`` as a handler: its writes commit, its failures leave nothing."""

    initial_state = {"posts": 0}

    async def on_request(self, request: Any) -> Any:
        if request.method == "POST":
            body = await request.json()
            self.set_state({"posts": self.state["posts"] + 1})
            if body.get("fail"):
                raise RuntimeError("refused on purpose")
            return {"posts": self.state["posts"], "got": body}
        if request.query_params.get("as") == "text":
            return f"hello from {self.name}"
        if request.query_params.get("as") == "nothing":
            return None
        return {"name": self.name, "posts": self.state["posts"]}


# -- helpers shared by tests/test_serve*.py ---------------------------------------------
import asyncio  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402

TIMEOUT = 10.0


@pytest.fixture
async def served(rt):
    """``rt.serve()`` on 127.0.0.1 in the test's own event loop; stopped afterwards."""
    server = rt.serve()
    yield server
    await server.stop()


def auth(server: Any) -> dict[str, str]:
    """The header that carries *server*'s token."""
    return {"Authorization": f"Bearer {server.token}"}


async def raw(server: Any, path: str = "/agents/serve-counter/a", *, headers: Any = "auth",
              host: str | None = None, **options: Any) -> Any:
    """A plain ``websockets`` connection (the token in the header unless told otherwise);
    *host* is what its ``Host`` header says (it still connects to 127.0.0.1)."""
    from websockets.asyncio.client import connect

    headers = auth(server) if headers == "auth" else headers
    if host is not None:
        options.update(host="127.0.0.1", port=server.port)
    return await connect(f"ws://{host or '127.0.0.1'}:{server.port}{path}",
                         additional_headers=headers, proxy=None, compression=None,
                         open_timeout=TIMEOUT, **options)


async def recv(ws: Any, n: int = 1) -> list[Any]:
    """The next *n* frames, parsed."""
    out = []
    for _ in range(n):
        text = await asyncio.wait_for(ws.recv(), TIMEOUT)
        try:
            out.append(json.loads(text))
        except ValueError:
            out.append(text)
    return out


async def closed_with(ws: Any) -> tuple[int | None, str | None]:
    """Wait until the server closes *ws*; its close code and reason."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason
