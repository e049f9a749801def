"""Tool-call round trips per second to one local stdio MCP server: through agentbook
(``self.mcp.call`` inside a handler: a message, the call, the journal, a commit) against
the bare official ``mcp`` client, in the same run, interleaved.

    python -m tests.mcp.roundtrips [--calls 200] [--rounds 5] [--server time|raw]

``time`` is ``mcp-server-time`` from PyPI; ``raw`` is ``bad_server.py ok`` (a server with
next to no work per call, so agentbook's own cost shows most).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import agentbook as ab
from tests.mcp.peers import TIME, bad

SERVERS = {"time": (TIME, "get_current_time", {"timezone": "UTC"}),
           "raw": (bad("ok"), "ping", {"text": "x"})}


class McpBench(ab.Agent):
    """One handler, one journaled MCP call."""

    @ab.callable
    async def setup(self, command: list) -> dict:
        return await self.add_mcp_server("srv", command)

    @ab.callable
    async def once(self, tool: str, args: dict) -> Any:
        return await self.mcp.call("srv", tool, args)


async def measure(calls: int = 200, rounds: int = 5, server: str = "time") -> dict[str, Any]:
    """Median round trips/s of each side over *rounds* interleaved batches of *calls*.

    The runtime's store lives in a temporary folder, removed when the measure ends."""
    from mcp import Client, StdioServerParameters

    command, tool, args = SERVERS[server]
    folder = tempfile.mkdtemp(prefix="agentbook-mcp-bench-")
    rt = ab.Runtime(folder)
    ref = rt.get(McpBench, "bench")
    status = await ref.setup(command)
    assert status["state"] == "ready", status
    bare_rates, ours_rates = [], []
    params = StdioServerParameters(command=command[0], args=command[1:])
    try:
        async with Client(params) as client:
            for _ in range(3):  # warm both up
                await client.call_tool(tool, args)
                await ref.once(tool, args)
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(calls):
                    await client.call_tool(tool, args)
                bare_rates.append(calls / (time.perf_counter() - start))
                start = time.perf_counter()
                for _ in range(calls):
                    await ref.once(tool, args)
                ours_rates.append(calls / (time.perf_counter() - start))
    finally:
        await rt.aclose()
        if rt.mcp_clients is not None:
            await rt.mcp_clients.wait_closed()
        shutil.rmtree(folder, ignore_errors=True)
    bare, ours = statistics.median(bare_rates), statistics.median(ours_rates)
    return {"server": server, "calls": calls, "rounds": rounds, "bare_per_s": round(bare, 1),
            "agentbook_per_s": round(ours, 1), "ratio": round(ours / bare, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server", choices=sorted(SERVERS), default="time")
    args = parser.parse_args(argv)
    print(asyncio.run(measure(args.calls, args.rounds, args.server)))


if __name__ == "__main__":
    sys.exit(main())
