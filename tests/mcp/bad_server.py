"""A deliberately misbehaving MCP stdio server (raw JSON-RPC lines), for fault tests.

    python bad_server.py MODE

Modes: ``ok`` (behaves), ``exit`` (dies at start, explaining on stderr), ``hang-init`` (never
answers the handshake), ``hang-call`` (never answers a tool call), ``die-call`` (exits in
the middle of a tool call), ``die-once`` (like die-call, but only while the file named by
``BAD_SERVER_FLAG`` does not exist; it creates it), ``malformed`` (answers a tool call with
a result that breaks the protocol's shape), ``garbage`` (answers with a non-JSON line),
``bad-schema`` (offers one good tool and one whose input schema is not a schema),
``echo-env`` (its ``reveal`` tool answers with the value of env var ``API_TOKEN``).
"""

import json
import os
import sys

MODE = sys.argv[1] if len(sys.argv) > 1 else "ok"

GOOD = {"name": "ping", "description": "Answer pong.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}
BAD = {"name": "broken", "description": "A tool whose schema is not a schema.",
       "inputSchema": {"type": "object", "properties": {"x": {"type": "strang"}}}}
REVEAL = {"name": "reveal", "description": "Tell the token.",
          "inputSchema": {"type": "object", "properties": {}}}


def send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    if MODE == "exit":
        print("bad_server: missing configuration file settings.toml", file=sys.stderr)
        sys.exit(3)
    for line in sys.stdin:
        msg = json.loads(line)
        method, mid = msg.get("method"), msg.get("id")
        if mid is None:  # a notification
            continue
        if method == "initialize":
            if MODE == "hang-init":
                continue
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "bad", "version": "0"}}})
        elif method == "tools/list":
            tools = [GOOD, BAD] if MODE == "bad-schema" else [GOOD, REVEAL] \
                if MODE == "echo-env" else [GOOD]
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
        elif method == "tools/call":
            flag = os.environ.get("BAD_SERVER_FLAG", "")
            if MODE == "hang-call":
                continue
            if MODE == "die-call" or (MODE == "die-once" and flag and not os.path.exists(flag)):
                if flag:
                    open(flag, "w").close()
                print("bad_server: crashed in the middle of a call", file=sys.stderr)
                os._exit(9)
            if MODE == "malformed":
                send({"jsonrpc": "2.0", "id": mid, "result": {"content": "not a list"}})
            elif MODE == "garbage":
                sys.stdout.write("this is not JSON\n")
                sys.stdout.flush()
            elif msg["params"]["name"] == "reveal":
                token = os.environ.get("API_TOKEN", "")
                send({"jsonrpc": "2.0", "id": mid, "result": {
                    "content": [{"type": "text", "text": f"my token is {token}"}]}})
            else:
                text = msg["params"].get("arguments", {}).get("text", "")
                send({"jsonrpc": "2.0", "id": mid, "result": {
                    "content": [{"type": "text", "text": f"pong {text}".strip()}]}})
        else:
            send({"jsonrpc": "2.0", "id": mid,
                  "error": {"code": -32601, "message": f"method not found: {method}"}})


if __name__ == "__main__":
    main()
