"""Who may talk to a served runtime: the token, one-time tickets, Host and Origin checks.

The rules are Jupyter Server's:

* The server binds 127.0.0.1 unless given ``allow_remote=True`` *and* a token.
* Every request carries the token in the ``Authorization`` header (``Bearer <token>`` or
  ``token <token>``), compared in constant time. Clients that cannot set headers
  (browsers, Cloudflare's ``agents`` client) trade the token for a **ticket**
  (``POST /_agentbook/ticket``): random, single-use, valid for 30 seconds, sent as
  ``?ticket=`` in the WebSocket URL. A WebSocket may also offer the subprotocol
  ``bearer.<token>``. The token itself never goes in a URL: a ``?token=`` is refused.
* The one exception: ``GET`` of a page the user named (``server.add_page``, at
  ``/_agentbook/pages/<name>``) needs no token; a page holds no secret, and its script
  connects with a ticket it reads from the link's ``#fragment`` (``server.page_url``),
  which browsers never send to a server.
* ``Host`` must name this machine's loopback (or the bound host, or ``allow_hosts``),
  which stops DNS rebinding; a browser's ``Origin`` must be this server itself or one of
  ``allow_origins``. Both are checked on HTTP and on WebSocket upgrades.

Refusals: HTTP 401 (no or wrong token) or 403 (Host, Origin); a WebSocket with bad
credentials is accepted and closed with 4001 (Cloudflare's client treats 4xxx as final
instead of retrying forever), a bad Host or Origin is refused at the handshake (403).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import UsageError

__all__ = ["Auth", "Guard", "check_bind", "is_loopback", "redact_uvicorn_logs"]

TICKET_PATH = "/_agentbook/ticket"
#: Where the pages a user serves live (``server.add_page``): GET without the token.
PAGES_PATH = "/_agentbook/pages/"
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_URL_SECRETS = ("token", "access_token")
#: The WebSocket subprotocol that carries a session pass: ``pass.<secret>``.
PASS_PREFIX = "pass."
#: Seconds a session pass stays valid after its last use.
PASS_TTL = 3600.0
_PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    (b"access-control-allow-headers", b"Authorization, Content-Type"),
    (b"access-control-max-age", b"600"),
]


def is_loopback(host: str) -> bool:
    """Whether *host* (a name or an address) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool, token: str | None) -> None:
    """Refuse to listen beyond loopback unless explicitly allowed and given a token.

    Raises:
        UsageError: *host* is not loopback and ``allow_remote`` or a good token is missing.
    """
    if is_loopback(host):
        return
    if not allow_remote:
        raise UsageError(
            f"serving on {host!r} would let other machines call your agents; agentbook binds "
            "127.0.0.1 unless you pass allow_remote=True together with token=...")
    if token is None or len(token) < 16:
        raise UsageError(
            f"serving on {host!r} needs a token of at least 16 characters that you chose "
            "(token=...), so that you can hand it to the clients you trust")


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Auth:
    """The token and the tickets of one server.

    Args:
        token: The secret; a random one (32 bytes) when ``None``.
        clock: Not used (kept for callers that pass the runtime's clock): tickets expire on
            the wall clock, never on a runtime's, which a paused ``VirtualClock`` stops.
        ticket_ttl: Seconds a ticket stays valid.

    Attributes:
        now: Where ticket expiry reads the time: ``time.monotonic`` (tests may replace it).
    """

    def __init__(self, token: str | None, clock: Any = None, ticket_ttl: float = 30.0) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise UsageError("token= must be a non-empty string (or None for a random one)")
        self.token = token if token is not None else secrets.token_urlsafe(32)
        self._secret = self.token.encode("utf-8")
        self.now: Callable[[], float] = time.monotonic
        self.ticket_ttl = float(ticket_ttl)
        self._tickets: dict[bytes, float] = {}
        #: Seconds a session pass stays valid after its last use (:meth:`issue_pass`).
        self.pass_ttl = PASS_TTL
        self._passes: dict[bytes, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"<Auth token=*** tickets={len(self._tickets)}>"

    def check(self, presented: str | None) -> bool:
        """Whether *presented* is the token (constant time)."""
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("latin-1", "replace"), self._secret)

    def bearer(self, scope: Mapping[str, Any]) -> str | None:
        """The token in the request's ``Authorization`` header, or ``None``."""
        value = _header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return ""
        return credential.strip()

    def issue(self, ttl: float | None = None) -> str:
        """A new single-use ticket, valid for *ttl* (default :attr:`ticket_ttl`) seconds."""
        now = self.now()
        if len(self._tickets) > 1000:
            self._tickets = {k: t for k, t in self._tickets.items() if t > now}
        ticket = secrets.token_urlsafe(24)
        self._tickets[hashlib.sha256(ticket.encode()).digest()] = now + (
            self.ticket_ttl if ttl is None else float(ttl))
        return ticket

    def redeem(self, ticket: str) -> bool:
        """Use up *ticket*; whether it was valid (known, unused, unexpired)."""
        digest = hashlib.sha256(ticket.encode("utf-8", "replace")).digest()
        expires = self._tickets.pop(digest, None)
        return expires is not None and self.now() < expires

    def issue_pass(self, path: str) -> str:
        """A session pass for WebSocket connections to *path* (one agent's) only: what a
        page that connected with a one-time ticket reconnects with after a dropped socket.
        Reusable, valid :attr:`pass_ttl` seconds after its last use, never for HTTP or
        another agent, and kept in memory only (a restarted server knows none)."""
        now = self.now()
        if len(self._passes) > 1000:
            self._passes = {k: v for k, v in self._passes.items() if v[1] > now}
        secret = secrets.token_urlsafe(24)
        self._passes[hashlib.sha256(secret.encode()).digest()] = (path, now + self.pass_ttl)
        return secret

    def _pass_ok(self, secret: str, path: str) -> bool:
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).digest()
        held = self._passes.get(digest)
        now = self.now()
        if held is None or held[1] <= now or not hmac.compare_digest(held[0], path):
            return False
        self._passes[digest] = (held[0], now + self.pass_ttl)
        return True

    def websocket_refusal(self, scope: dict) -> str | None:
        """Why a WebSocket upgrade may not go on, or ``None`` if its credentials are good."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if any(name in query for name in _URL_SECRETS):
            return ("the token never goes in a URL; send it in the Authorization header, or "
                    f"POST {TICKET_PATH} for a one-time ?ticket=")
        bearer = self.bearer(scope)
        if bearer is not None:
            return None if self.check(bearer) else "wrong token"
        for proto in scope.get("subprotocols", ()):
            if proto.startswith("bearer."):
                return None if self.check(proto[7:]) else "wrong token"
            if proto.startswith(PASS_PREFIX):
                return None if self._pass_ok(proto[len(PASS_PREFIX):], scope.get("path", "")) \
                    else "the session pass is unknown, expired or for another agent; open a new link"
        tickets = query.get("ticket")
        if tickets:
            if self.redeem(tickets[0]):
                return None
            return f"the ticket is unknown, used or expired; POST {TICKET_PATH} for a new one"
        return (f"no token: send 'Authorization: Bearer <token>', or POST {TICKET_PATH} "
                "(with that header) for a one-time ?ticket=")


class Guard:
    """ASGI middleware: Host and Origin on everything, the token on HTTP, CORS for the
    origins allowed explicitly.

    Args:
        app: The application behind the guard.
        auth: The server's :class:`Auth`.
        port: The port the server listens on (same-origin pages use it).
        hosts: Host names accepted besides loopback (``"*"``: any).
        origins: Browser origins accepted besides the server's own (``"*"``: any).
        pages: The pages served without the token (``GET`` and ``HEAD`` of
            ``PAGES_PATH + name`` for a name in it; the server's ``add_page`` fills it).
    """

    def __init__(self, app: Any, auth: Auth, port: int, hosts: Iterable[str],
                 origins: Iterable[str], pages: Mapping[str, Any] | None = None) -> None:
        self.app = app
        self.pages = pages if pages is not None else {}
        self.auth = auth
        self.port = port
        self.hosts = _LOOPBACK_NAMES | {h.strip("[]").lower() for h in hosts}
        self.origins = {o.rstrip("/") for o in origins}

    def host_ok(self, scope: dict) -> bool:
        """Whether the ``Host`` header names this server (no DNS rebinding)."""
        if "*" in self.hosts:
            return True
        host = _header(scope, b"host")
        if not host:
            return False
        name = urlsplit("//" + host).hostname
        return name is not None and name in self.hosts

    def origin_ok(self, origin: str | None) -> bool:
        """Whether a browser page from *origin* may talk to this server."""
        if origin is None:
            return True  # not a browser: scripts, Node, curl
        origin = origin.rstrip("/")
        if "*" in self.origins or origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        return (parts.scheme in ("http", "https") and parts.hostname in self.hosts
                and port == self.port)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if not self.host_ok(scope) or not self.origin_ok(origin):
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await respond(send, 403, {"error": "this Host or Origin may not use the server; "
                                          "see allow_hosts= and allow_origins= of rt.serve()"})
            return
        if kind == "websocket":  # authenticated by the endpoint (accept, then 4001)
            await self.app(scope, receive, send)
            return
        cors: list = []
        if origin is not None and not self._same_origin(origin):
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
                await respond(send, 204, None, cors + _PREFLIGHT_HEADERS)
                return
        path = scope.get("path", "")
        if (scope["method"] in ("GET", "HEAD") and path.startswith(PAGES_PATH)
                and path[len(PAGES_PATH):] in self.pages):
            # a page the user named: no secret in it (its script gets a ticket from the link)
            await self.app(scope, receive, _with_headers(send, cors) if cors else send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if any(name in query for name in _URL_SECRETS):
            await respond(send, 401, {"error": "the token never goes in a URL; send it in the "
                                      "Authorization header"}, cors)
            return
        if not self.auth.check(self.auth.bearer(scope)):
            wrong = _header(scope, b"authorization") is not None
            await respond(send, 401, {"error": "wrong token" if wrong else
                                      "no token: send the header 'Authorization: Bearer <token>'"},
                          [*cors, (b"www-authenticate", b"Bearer")])
            return
        if cors:
            await self.app(scope, receive, _with_headers(send, cors))
        else:
            await self.app(scope, receive, send)

    def _same_origin(self, origin: str) -> bool:
        parts = urlsplit(origin.rstrip("/"))
        try:
            return parts.hostname in self.hosts and parts.port == self.port
        except ValueError:
            return False


def _with_headers(send: Any, extra: list) -> Any:
    async def sender(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sender


async def respond(send: Any, status: int, body: Any, headers: Iterable = ()) -> None:
    """Send a whole JSON response (``body=None``: empty) with plain ASGI."""
    data = b"" if body is None else json.dumps(body).encode()
    head = [(b"content-length", str(len(data)).encode()), *headers]
    if body is not None:
        head.insert(0, (b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


_SECRETS = [
    (re.compile(r"(?i)\b((?:access_)?token|ticket)=[^&\s\"']+"), r"\1=[redacted]"),
    (re.compile(r"(?i)(authorization:\s*)(\S+\s+)?\S+"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer)\s+\S+"), r"\1 [redacted]"),
    (re.compile(r"(?i)\bbearer\.[^,\s\"']+"), "bearer.[redacted]"),
]


class _Redact(logging.Filter):
    """Keep credentials out of uvicorn's log lines (a token a client put in a URL, the
    ``Authorization`` header at debug level, a ``bearer.`` subprotocol)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = original = record.getMessage()
        for pattern, replacement in _SECRETS:
            message = pattern.sub(replacement, message)
        if message != original:
            record.msg, record.args = message, None
        return True


def redact_uvicorn_logs() -> None:
    """Filter credentials out of uvicorn's loggers (once per process)."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Redact) for f in logger.filters):
            logger.addFilter(_Redact())
