"""The serve path: agents over HTTP and WebSocket, speaking Cloudflare's agents protocol.

``rt.serve()`` (or ``agentbook serve MODULE:ATTR``) runs a Starlette app on uvicorn, in
the background of the running event loop; ``ab.connect(url, token=...)`` is the Python
client. Starlette, uvicorn and websockets are imported only when used.

    handle.py    serve() and the Server handle: url, token, stop(), connections
    app.py       the routes; HTTP requests go to the agent's on_request
    session.py   one WebSocket client: state sync, RPC, on_connect/on_message/on_close
    protocol.py  the frames, Connection, Stream
    gate.py      the output gate: what a handler sends leaves after its commit
    auth.py      token, tickets, Host and Origin checks
    classes.py   which agent classes are served: the user's, never agentbook's own
    client.py    ab.connect
    cli.py       agentbook serve
"""

from .handle import Server, serve

__all__ = ["Server", "serve"]
