"""The floor of chat over the wire: a bare WebSocket server carrying the same frames.

:class:`WireFloor` listens the way ``rt.serve()`` does (uvicorn with the same WebSocket
implementation, ``websockets-sansio``, on a socket from the serve path's own ``_listen``)
and speaks just enough of the agents protocol for ``ab.connect(...).stream_chat``: on
connect it sends the frames a real server sent on connect, and it answers each
``cf_agent_use_chat_request`` with the very frames a real turn of the builtin model sent
(recorded by :func:`record`, the request id swapped in), one per turn of the event loop -
the pace at which the builtin model yields its words. No runtime, no agent, no store, no
model: what is left is the round trip, the frames' writes and the client's reads, so
``chat_wire_*`` can say how close the serve path comes to the transport itself.

``python -m agentbook.bench.wirefloor`` is also the client side measured in a process of
its own (:func:`main`): it reads one JSON command a line (``{"url", "token", "n",
"text"}``), runs *n* timed turns on that URL (one connection per URL, kept) and writes one
JSON line (``{"runs": [[ttft, chars, first, last, tail], ...]}``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

__all__ = ["WireFloor", "main", "record", "timed"]

_REQUEST = "cf_agent_use_chat_request"
_RESPONSE = "cf_agent_use_chat_response"
#: The request id a recorded turn is made with (replaced by each request's own).
_RECORDED_ID = "floor-recorded-id"


async def timed(chunks: Any) -> tuple[float, int, float, float, int]:
    """``(time to the first text chunk, characters of text, first chunk's time, last's,
    characters after the first chunk)`` of one streamed turn."""
    t0 = time.perf_counter()
    first = last = 0.0
    count = head = 0
    async for chunk in chunks:
        if chunk.kind == "text" and chunk.text:
            last = time.perf_counter()
            if not count:
                first, head = last, len(chunk.text)
            count += len(chunk.text)
    return first - t0, count, first, last, count - head


async def record(url: str, token: str, text: str) -> tuple[list[str], list[str]]:
    """The frames a real server sends on connect (up to the transcript) and for one turn
    of *text* (up to its ``done``), as sent."""
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://", 1) + "?_pk=floorrecorder"
    on_connect: list[str] = []
    turn: list[str] = []
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                       proxy=None, compression=None) as ws:
        while True:
            frame = str(await ws.recv())
            on_connect.append(frame)
            if json.loads(frame).get("connect"):
                break
        body = {"messages": [{"id": "u-floor", "role": "user",
                              "parts": [{"type": "text", "text": text}]}],
                "trigger": "submit-message"}
        await ws.send(json.dumps({"type": _REQUEST, "id": _RECORDED_ID,
                                  "init": {"method": "POST", "body": json.dumps(body)}}))
        while True:
            frame = str(await ws.recv())
            parsed = json.loads(frame)
            if parsed.get("type") == _RESPONSE and parsed.get("id") == _RECORDED_ID:
                turn.append(frame)
                if parsed.get("done"):
                    break
    return on_connect, turn


class WireFloor:
    """A bare WebSocket server replaying recorded frames (see the module's docstring)."""

    def __init__(self, on_connect: list[str], turn: list[str]) -> None:
        self.on_connect = on_connect
        quoted = json.dumps(_RECORDED_ID)
        self.turn = [f.split(quoted) for f in turn]  # (each request's id goes between)
        self.port = 0
        self._server: Any = None
        self._task: asyncio.Task | None = None

    async def app(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        offered = scope.get("subprotocols") or []
        await send({"type": "websocket.accept",
                    "subprotocol": "agents" if "agents" in offered else None})
        for frame in self.on_connect:
            await send({"type": "websocket.send", "text": frame})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            frame = json.loads(message.get("text") or "{}")
            if frame.get("type") != _REQUEST:
                continue
            rid = json.dumps(frame["id"])
            for pieces in self.turn:
                await send({"type": "websocket.send", "text": rid.join(pieces)})
                await asyncio.sleep(0)  # (one frame per turn of the loop, as a model's words)

    async def start(self) -> str:
        """Listen on 127.0.0.1 (a free port); the URL to connect to."""
        import uvicorn

        from ..serve.handle import _listen

        sock = _listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, interface="asgi3", lifespan="off", log_config=None,
                                log_level="warning",
                                access_log=False, ws="websockets-sansio",
                                ws_per_message_deflate=False, proxy_headers=False,
                                server_header=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{self.port}/agents/bench-wire-chat/floor"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await self._task


async def _serve_commands() -> None:
    from ..serve.client import connect

    loop = asyncio.get_running_loop()
    clients: dict[str, Any] = {}
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            client = clients.get(cmd["url"])
            if client is None:
                client = clients[cmd["url"]] = await connect(cmd["url"], token=cmd["token"])
            runs = [await timed(client.stream_chat(cmd["text"])) for _ in range(cmd["n"])]
            sys.stdout.write(json.dumps({"runs": runs}) + "\n")
            sys.stdout.flush()
    finally:
        for client in clients.values():
            await client.close()


def main() -> None:
    """The client side in a process of its own (see the module's docstring)."""
    asyncio.run(_serve_commands())


if __name__ == "__main__":
    main()
