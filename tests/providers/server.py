"""A scriptable HTTP/1.1 server on 127.0.0.1 that the official provider SDKs talk to.

Tests queue the exact replies a provider would send (JSON bodies, server-sent event
streams in chunked transfer encoding, error bodies, slow answers, streams cut off
mid-way); the server serves them in order and records every request it receives, so a
test can check what the SDK put on the wire. It runs in a thread of the test process
and never touches anything beyond loopback.

    server = LoopbackServer()
    server.queue(Reply(json={"ok": True}))
    ...   # point an SDK at server.url
    server.requests[-1].json()
    server.close()
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["LoopbackServer", "Recorded", "Reply", "sse"]


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        status: The HTTP status code.
        json: A JSON body (sent with ``Content-Length``).
        body: A raw body, used when ``json`` is None.
        events: Server-sent-event frames; when set, the body is streamed frame by frame
            in chunked transfer encoding, as the providers do.
        headers: Extra response headers.
        delay: Seconds to wait before the status line (for timeouts).
        cut_after: Drop the connection after this many frames, without ending the
            chunked body (a stream broken by the network).
    """

    status: int = 200
    json: Any = None
    body: bytes = b""
    events: list[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut_after: int | None = None


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The request body as JSON."""
        return json.loads(self.body)


def sse(data: Any, event: str | None = None, sep: str = "\n") -> bytes:
    """One server-sent-event frame: an optional ``event:`` line and a ``data:`` line.

    Args:
        data: A JSON value (dumped compactly) or a ready string (sent as is).
        event: The event name, for providers that name their events.
        sep: The line separator (Gemini's frontend uses ``\\r\\n``).
    """
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}{sep}" if event else ""
    return f"{head}data: {text}{sep}{sep}".encode()


class LoopbackServer:
    """A threaded HTTP/1.1 server on a free loopback port serving queued replies."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[Recorded] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def queue(self, *replies: Reply) -> None:
        """Serve *replies* to the next requests, in order."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Forget queued replies and recorded requests; cut short any delayed reply."""
        self._stop.set()
        with self._lock:
            self._replies.clear()
            self.requests.clear()
        self._stop = threading.Event()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if self._replies:
                return self._replies.popleft()
        message = f"loopback server: no reply queued for {recorded.method} {recorded.path}"
        return Reply(status=500, json={"error": {"message": message}})


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms)

        def log_message(self, format: str, *args: Any) -> None:  # silence the access log
            pass

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            recorded = Recorded(self.command, parts.path, parse_qs(parts.query),
                                {k.lower(): v for k, v in self.headers.items()}, body)
            reply = server._next(recorded)
            if reply.delay and server._stop.wait(reply.delay):
                self.close_connection = True
                return
            try:
                if reply.events is None:
                    self._send_body(reply)
                else:
                    self._send_stream(reply)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_body(self, reply: Reply) -> None:
            if reply.json is not None:
                payload = json.dumps(reply.json).encode()
                content_type = "application/json"
            else:
                payload, content_type = reply.body, "text/plain"
            self.send_response(reply.status)
            headers = {"Content-Type": content_type, **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

        def _send_stream(self, reply: Reply) -> None:
            self.send_response(reply.status)
            headers = {"Content-Type": "text/event-stream; charset=utf-8",
                       "Cache-Control": "no-cache", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for i, frame in enumerate(reply.events or []):
                if reply.cut_after is not None and i >= reply.cut_after:
                    # (the frames already written reach the client before the FIN does)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
