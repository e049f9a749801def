"""``rt.serve()``: start the server in the background and hand back a :class:`Server`.

The socket is bound at once (so ``server.url`` is known even with ``port=0``), then
uvicorn serves the Starlette app as a task on the running event loop - the kernel's,
in a notebook - without touching signal handlers or logging configuration.

The server keeps the open connections per agent. Committed state changes reach them
through ``rt.events`` (``state:update``, subscribed only while someone is connected) and
``self.broadcast`` through the runtime's broadcast hooks; both run synchronously at the
output gate, so every client sees every change, in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ..chat import live
from ..core.agent import Agent
from ..errors import UsageError
from .auth import PAGES_PATH, TICKET_PATH, Auth, Guard, check_bind, redact_uvicorn_logs
from .chat import ChatWire
from .classes import is_own, served_classes
from .limits import HEADER_SECONDS, KEEP_ALIVE_SECONDS, ConnectionGuard, default_max_connections
from .protocol import STATE, Connection, encode, kebab

if TYPE_CHECKING:
    from ..core.runtime import Runtime

__all__ = ["Server", "serve"]

log = logging.getLogger("agentbook.serve")

Key = tuple[str, str]
#: A page's name: a file name, no folders, no leading dot.
_PAGE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
#: The chat page that comes with agentbook (plain JavaScript speaking the agents chat frames).
CHAT_PAGE = Path(__file__).with_name("pages") / "chat.html"
#: The largest request head (request line and headers) a connection may send.
_MAX_HEADER_BYTES = 64 << 10


class Server:
    """A running server (what ``rt.serve()`` returns).

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        token: The secret clients send (``Authorization: Bearer <token>``). Never shown
            in the server's ``repr``.
        port: The port it listens on.
    """

    def __init__(self, rt: Runtime, auth: Auth, host: str, port: int,
                 classes: Iterable[type[Agent] | str] | None, max_message: int) -> None:
        self.rt = rt
        self.auth = auth
        self.host = host
        self.port = port
        self.max_message = max_message
        self._allowed = None if classes is None else {
            c if isinstance(c, str) else c.__name__ for c in classes}
        own = [c for c in classes or () if not isinstance(c, str) and is_own(c)]
        if own:
            raise UsageError(f"{', '.join(c.__name__ for c in own)}: agentbook's own classes "
                             "are not served; serve your own subclasses of them")
        self._conns: dict[Key, dict[str, Connection]] = {}
        #: The state object last sent per agent: one batch's events may repeat it.
        self._sent: dict[Key, Any] = {}
        self._count = 0
        self._unsubscribe: Any = None
        self._routes: tuple[int, dict[str, str]] = (-1, {})
        self._uvicorn: Any = None
        self._task: asyncio.Task | None = None
        self._stopping: asyncio.Task | None = None
        #: The header deadline and connection cap (:mod:`agentbook.serve.limits`).
        self.connection_guard: Any = None
        #: The chat frames of the chat agents served (:mod:`agentbook.serve.chat`).
        self.chat = ChatWire(self)
        #: The pages served (``add_page``): name -> the file, read on every request.
        self.pages: dict[str, Path] = {}

    # -- the public handle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """The server's base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token(self) -> str:
        """The token clients must send."""
        return self.auth.token

    @property
    def running(self) -> bool:
        """Whether the server is serving (not stopped or stopping)."""
        return self._task is not None and not self._task.done() and self._stopping is None

    def url_for(self, agent: type[Agent] | str, name: str) -> str:
        """The HTTP URL of one agent (``ab.connect`` takes it; ``ws://`` is the same path)."""
        class_name = agent if isinstance(agent, str) else agent.__name__
        return f"{self.url}/agents/{kebab(class_name)}/{quote(name, safe='')}"

    def ticket(self) -> str:
        """A one-time ticket for a client that cannot send headers (``?ticket=...``)."""
        return self.auth.issue()

    def add_page(self, path: str | os.PathLike[str] = CHAT_PAGE, name: str | None = None) -> str:
        """Serve the one file *path* at ``/_agentbook/pages/<name>`` (default: its file name);
        returns its URL. Only files added here are served - no folders, no listing - and a
        ``GET`` of one needs no token: a page must hold no secret. Its script connects with
        a ticket from its link's fragment (:meth:`page_url`). The file is read on every
        request, so an edit shows on reload. Without *path*: agentbook's chat page
        (:data:`CHAT_PAGE`), a plain-JavaScript client of a chat agent.

        Raises:
            UsageError: *path* is not a file, or *name* is not a plain file name.
        """
        file = Path(path).resolve()
        if not file.is_file():
            raise UsageError(f"add_page needs a file; {str(path)!r} is not one")
        name = file.name if name is None else name
        if not isinstance(name, str) or not _PAGE_NAME.fullmatch(name):
            raise UsageError(f"a page's name is a plain file name (letters, digits, . _ -), "
                             f"not {name!r}")
        self.pages[name] = file
        return f"{self.url}{PAGES_PATH}{name}"

    def page_url(self, page: str, /, ttl: float | None = None, **params: str) -> str:
        """The link to open *page* (a name given to :meth:`add_page`) with: its URL, and
        after ``#`` a fresh one-time ticket (valid *ttl* seconds, default the server's
        ``ticket_ttl``) and *params*
        (``agent=``, ``name=``... for the chat page). A fragment never reaches a server or
        its logs; the page drops it from the address bar once read.

        Raises:
            UsageError: no page of that name was added.
        """
        if page not in self.pages:
            raise UsageError(f"no page {page!r} is served; add it with server.add_page(path)")
        fragment = urlencode({"ticket": self.auth.issue(ttl), **params})
        return f"{self.url}{PAGES_PATH}{page}#{fragment}"

    def connections_of(self, key: Key) -> list[Connection]:
        """The open connections to agent *key* ``(class name, name)``."""
        conns = self._conns.get(key)
        return [] if not conns else [c for c in conns.values() if not c.closed]

    @property
    def connections(self) -> int:
        """How many WebSocket clients are connected."""
        return self._count

    def stop(self) -> asyncio.Task:
        """Stop serving: open connections are closed (1012), then the socket.

        Returns a task; ``await server.stop()`` waits until everything is closed."""
        if self._stopping is None:
            if self._uvicorn is not None:
                self._uvicorn.should_exit = True
            self._stopping = asyncio.ensure_future(self._stopped())
        return self._stopping

    async def wait(self) -> None:
        """Wait until the server stops (for scripts and the CLI)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<agentbook server {self.url} {state}, {self._count} connections; "
                "token in server.token>")

    def _repr_html_(self) -> str:
        return (f"<div><b>agentbook server</b> at <code>{self.url}</code> "
                f"({'running' if self.running else 'stopped'}, {self._count} connections; "
                "the token is in <code>server.token</code>)</div>")

    # -- routing -------------------------------------------------------------------------
    def resolve(self, segment: str) -> str | None:
        """The class name a URL segment names (its kebab-case form, or the name itself);
        only the user's classes are routes (:mod:`.classes`)."""
        size, table = self._routes
        classes = served_classes()
        if size != len(classes):
            table = {}
            for name in classes:
                if self._allowed is None or name in self._allowed:
                    table.setdefault(kebab(name), name)
                    table[name] = name
            self._routes = (len(classes), table)
        return table.get(segment)

    def routes(self) -> list[str]:
        """The kebab-case names of the agent classes this server routes to."""
        self.resolve("")
        return sorted({kebab(name) for name in self._routes[1].values()})

    # -- connections ----------------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        """Register an accepted connection (it gets every state change from now on)."""
        self._conns.setdefault(conn.agent, {})[conn.id] = conn
        self._count += 1
        if self._unsubscribe is None:
            self._unsubscribe = self.rt.events.subscribe(self._on_state, types="state:update")

    def remove(self, conn: Connection) -> None:
        """Forget a connection that went away."""
        conns = self._conns.get(conn.agent)
        if conns is None or conns.get(conn.id) is not conn:
            return
        del conns[conn.id]
        if not conns:
            del self._conns[conn.agent]
            self._sent.pop(conn.agent, None)
        self._count -= 1
        if self._count == 0 and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_state(self, event: dict) -> None:
        key = (event["agent"], event["name"])
        conns = self._conns.get(key)
        state = event["payload"]["state"]
        if conns and self._sent.get(key) is not state:
            self._sent[key] = state
            text = encode({"type": STATE, "state": state})
            for conn in list(conns.values()):
                conn.frame(text)

    def start(self, uvicorn_server: Any, sock: socket.socket) -> None:
        """Serve on the bound *sock* with *uvicorn_server*, as a task of the running event
        loop, and take the runtime's broadcasts from now on (called once, by :func:`serve`)."""
        self._uvicorn = uvicorn_server
        self._task = asyncio.get_running_loop().create_task(uvicorn_server.serve(sockets=[sock]))
        self._task.add_done_callback(_report_crash)
        self.rt.broadcast_hooks.append(self.on_broadcast)
        live.watch(self.rt, self.chat)

    def on_broadcast(self, key: Key, message: Any, exclude: list) -> None:
        """The runtime's broadcast hook: ``self.broadcast(message, exclude)`` of agent *key*
        reaches its open connections (except those excluded), at the output gate."""
        conns = self._conns.get(key)
        if not conns:
            return
        skip = {getattr(e, "id", e) for e in exclude}
        text = message if isinstance(message, str) else encode(message)
        for conn in list(conns.values()):
            if conn.id not in skip:
                conn.frame(text)

    async def _stopped(self) -> None:
        try:
            if self._task is not None:
                await asyncio.shield(self._task)
        except Exception:
            pass  # already logged by _report_crash
        finally:
            self._detach()

    def _detach(self) -> None:
        hooks = self.rt.broadcast_hooks
        if self.on_broadcast in hooks:
            hooks.remove(self.on_broadcast)
        if self.rt.server is self:
            self.rt.server = None
        live.unwatch(self.rt, self.chat)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


def serve(rt: Runtime, port: int = 0, *, host: str = "127.0.0.1", token: str | None = None,
          allow_remote: bool = False, mcp: bool = False, allow_origins: Iterable[str] = (),
          allow_hosts: Iterable[str] = (), classes: Iterable[type[Agent] | str] | None = None,
          ticket_ttl: float = 30.0, max_message: int = 1 << 20, compression: bool = False,
          log_level: str = "warning", max_connections: int | None = None,
          header_timeout: float = HEADER_SECONDS) -> Server:
    """Serve *rt*'s agents over HTTP and WebSocket in the background (see ``rt.serve``).

    Args:
        rt: The runtime whose agents are served.
        port: The port; ``0`` picks a free one (read ``server.url``).
        host: The address to bind; loopback unless ``allow_remote``.
        token: The secret clients send; a random one when ``None``.
        allow_remote: Allow binding beyond loopback (needs a ``token`` you chose).
        mcp: Also serve the agents' callable methods as MCP tools at ``/mcp``.
        allow_origins: Browser origins (``"http://localhost:5173"``) allowed besides the
            server's own; ``"*"`` allows any.
        allow_hosts: ``Host`` names accepted besides loopback and *host* (``"*"``: any).
        classes: Serve only these agent classes (default: every class defined outside
            agentbook itself; ``ab.ChatAgent`` and the like are never served).
        ticket_ttl: Seconds a connect ticket stays valid (on the wall clock, never the
            runtime's).
        max_message: Largest WebSocket message or HTTP body accepted, in bytes.
        compression: Negotiate permessage-deflate (off: loopback doesn't need it).
        log_level: uvicorn's log level.
        max_connections: How many HTTP connections may be open at once; over it, the
            oldest idle or half-open ones are closed to make room (``None``: what the
            limit on open files leaves besides the runtime's stores, at most 1 000; see
            :mod:`agentbook.serve.limits`).
        header_timeout: Seconds a connection may take to send its request headers before
            it is closed (idle keep-alive connections close after 5 s, and a request body
            must arrive within 30 s).

    Returns:
        The running :class:`Server`.

    Raises:
        UsageError: not called from a running event loop, already serving, a remote
            bind without ``allow_remote`` and a token, or *classes* names one of
            agentbook's own classes.
    """
    check_bind(host, allow_remote, token)
    try:
        asyncio.get_running_loop()  # (the server runs as a task of this loop)
    except RuntimeError:
        raise UsageError("rt.serve() runs in the background of a running event loop: call it "
                         "from a notebook cell or async code, or use `agentbook serve`") from None
    if rt.server is not None and rt.server.running:
        raise UsageError(f"this runtime is already served at {rt.server.url}; "
                         "stop it first (await server.stop())")
    rt.check_open()
    try:
        import uvicorn
    except ImportError:
        raise UsageError("serving needs starlette and uvicorn: pip install 'agentbook[serve]'") from None
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from .app import build_app

    if not (isinstance(header_timeout, (int, float)) and 0 < header_timeout < float("inf")):
        raise UsageError(f"header_timeout= is a positive number of seconds, not {header_timeout!r}")
    if max_connections is None:
        max_connections = default_max_connections(rt.max_open)
    elif isinstance(max_connections, bool) or not isinstance(max_connections, int) \
            or max_connections < 1:
        raise UsageError(f"max_connections= is a positive int or None, not {max_connections!r}")
    auth = Auth(token, ticket_ttl=ticket_ttl)
    server = Server(rt, auth, host, 0, classes, max_message)
    app = build_app(server, mcp=mcp)
    try:
        sock = _listen(host, port)
    except OSError as exc:
        raise UsageError(f"can't listen on {host}:{port}: {exc.strerror}; pick another port") from None
    server.port = sock.getsockname()[1]
    guard = Guard(app, auth, server.port, [host, *allow_hosts], allow_origins, server.pages)
    connections = ConnectionGuard(max_connections, float(header_timeout))
    server.connection_guard = connections
    config = uvicorn.Config(
        guard, lifespan="off", log_config=None, log_level=log_level, access_log=False,
        ws="websockets-sansio", ws_max_size=max(4 * max_message, 1 << 16),
        ws_per_message_deflate=compression, proxy_headers=False, server_header=False,
        timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # (asyncio accepts up to `backlog` sockets per wake-up, and one that fails for want
        # of descriptors retries once per socket left in the batch: a storm. A batch no
        # bigger than the cap stays within the descriptors the guard leaves.)
        backlog=max(16, min(2048, max_connections)),
        h11_max_incomplete_event_size=_MAX_HEADER_BYTES,
        http=connections.protocol(import_from_string(HTTP_PROTOCOLS["auto"])),
    )
    redact_uvicorn_logs()
    server.start(_quiet_uvicorn()(config), sock)
    rt.server = server
    log.info("serving %s (tickets at %s)", server.url, TICKET_PATH)
    return server


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Made with ``IPPROTO_TCP`` so that asyncio switches Nagle off
    on every accepted connection (``socket.create_server`` leaves the protocol at 0, and a
    state frame followed by an RPC result would then wait for a delayed ACK: 40 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the agentbook server stopped with an error", exc_info=task.exception())


def _quiet_uvicorn() -> type:
    import uvicorn

    class Quiet(uvicorn.Server):
        """uvicorn without its signal handlers (the kernel owns SIGINT)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    return Quiet
