"""Tiny chat agents for the chat-over-the-wire tests (class names are global: keep the
``Wire`` prefix). Also run as a server process by the kill test:

    python -m tests.serve_chat_agents STORE_DIR PORT TOKEN_FILE

serves them on 127.0.0.1:PORT (the token is read from TOKEN_FILE, never argv) and prints
``{"listening": PORT}`` once it listens.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import agentbook as ab
from agentbook.models.base import Chunk
from agentbook.models.builtin import BuiltinModel

#: Tool calls that actually ran (name, arguments), in this process.
RAN: list[tuple[str, dict]] = []


class SlowWhenAsked(BuiltinModel):
    """The builtin model; it streams a reply slowly (``delay`` s a word) when the user's
    message says "slow", so a test can act while a turn streams."""

    delay = 0.1

    async def stream(self, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None, **options: Any) -> Any:
        response = await self.complete(messages, tools, **options)
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        slow = "slow" in str(last_user.get("content") or "").lower()
        for i, word in enumerate(response.content.split(" ")):
            yield Chunk(word if i == 0 else " " + word)
            await asyncio.sleep(self.delay if slow else 0)
        yield Chunk("", response)


@ab.tool
def lookup_weather(city: str) -> dict:
    """Look up the weather for a city.

    Args:
        city: The city.
    """
    RAN.append(("lookup_weather", {"city": city}))
    return {"city": city, "sky": "sunny", "celsius": 21}


@ab.tool(needs_approval=True)
def delete_file(path: str) -> dict:
    """Delete a file from the disk.

    Args:
        path: The file's path.
    """
    RAN.append(("delete_file", {"path": path}))
    return {"deleted": path}


class WireChat(ab.ChatAgent):
    """A chat agent with a server tool, a gated tool, and a slow mode."""

    model = SlowWhenAsked()
    tools = [lookup_weather, delete_file]


class WireCounter(ab.Agent):
    """Not a chat agent: chat frames get an error, resume probes still an answer."""

    initial_state = {"n": 0}


async def _main(store: str, port: int, token_file: str) -> None:
    with open(token_file) as f:
        token = f.read().strip()
    rt = ab.Runtime(store)
    server = rt.serve(port, token=token)
    print(json.dumps({"listening": server.port}), flush=True)
    await server.wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
