"""``agentbook demo``: the quickstart, run headless in a terminal.

A small ``Support`` agent, a few customers, a failing call that leaves nothing behind,
then the agent's state, a SQL query and its history. Offline, no keys, on a temporary
store unless a folder is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from typing import Any

from ..errors import UsageError

__all__ = ["run_demo"]


def _support_class() -> type:
    """The demo's agent; defined on demand so importing this module registers nothing."""
    from ..core.agent import Agent
    from ..methods import callable

    class Support(Agent):
        initial_state = {"open": 0, "closed": 0}

        async def on_start(self) -> None:
            self.sql("CREATE TABLE IF NOT EXISTS tickets("
                     "id INTEGER PRIMARY KEY, text TEXT NOT NULL, status TEXT NOT NULL)")

        @callable
        async def open_ticket(self, text: str) -> int:
            rows = self.sql("INSERT INTO tickets(text, status) VALUES (?, 'open') RETURNING id",
                            text)
            self.set_state({**self.state, "open": self.state["open"] + 1})
            return rows[0]["id"]

        @callable
        async def close_ticket(self, ticket_id: int) -> None:
            self.set_state({"open": self.state["open"] - 1, "closed": self.state["closed"] + 1})
            closed = self.sql("UPDATE tickets SET status = 'closed' "
                              "WHERE id = ? AND status = 'open' RETURNING id", ticket_id)
            if not closed:
                raise ValueError(f"no open ticket #{ticket_id}")

    return Support


def run_demo(path: str | None = None) -> None:
    """Run the demo and print what happens.

    Args:
        path: A new or empty folder to keep the store in; a temporary one when ``None``.

    Raises:
        UsageError: *path* exists and is not an empty folder.
    """
    if path is None:
        with tempfile.TemporaryDirectory(prefix="agentbook-demo-") as tmp:
            asyncio.run(_scenario(os.path.join(tmp, "store"), keep=False))
        return
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UsageError(f"agentbook demo --path wants a new or empty folder; {path} is not")
    asyncio.run(_scenario(path, keep=True))


async def _scenario(path: str, *, keep: bool) -> None:
    from ..core.runtime import Runtime
    from .tables import format_table, history_rows

    Support = _support_class()
    out: list[str] = []
    say = out.append
    failed = 0
    async with Runtime(path) as rt:
        alice, bob = rt.get(Support, "alice"), rt.get(Support, "bob")
        newcomer = rt.spawn(Support)
        calls: list[tuple[str, Any, str, Any]] = [
            ("alice", alice, "open_ticket", "printer on fire"),
            ("alice", alice, "open_ticket", "screen flickers"),
            ("bob", bob, "open_ticket", "cannot log in"),
            ("newcomer", newcomer, "open_ticket", "where is my refund?"),
            ("alice", alice, "close_ticket", 1),
            ("alice", alice, "close_ticket", 7),
        ]
        results = []
        sent = time.perf_counter()
        for _, ref, method, arg in calls:
            try:
                results.append(("->", repr(await ref.call(method, arg))))
            except ValueError as exc:
                failed += 1
                results.append(("raised", f"ValueError: {exc} (nothing kept)"))
        sent = time.perf_counter() - sent
        texts = [f"await {label}.{method}({json.dumps(arg)})" for label, _, method, arg in calls]
        width = max(map(len, texts))
        say("Each message runs one handler, which commits a version or leaves nothing behind:")
        say('  alice, bob = rt.get(Support, "alice"), rt.get(Support, "bob")')
        say(f"  {'newcomer = rt.spawn(Support)':<{width}}  -> {newcomer.name}")
        for text, (verb, what) in zip(texts, results, strict=True):
            say(f"  {text:<{width}}  {verb} {what}")
        say("")
        say("alice.state")
        say(f"  {alice.state}")
        query = "SELECT id, text, status FROM tickets"
        say("")
        say(f'alice.sql("{query}")')
        tickets = alice.sql(query)
        say(_indent(format_table(list(tickets.columns), tickets.values.tolist())))
        say("")
        say("alice.history()")
        columns = ["version", "call", "outcome", "state", "error"]
        say(_indent(format_table(columns, history_rows(alice.history(), columns))))
        agents = rt.agents()
        versions = int(agents["version"].sum())

    where = f"kept in {path}" if keep else "a temporary store, removed afterwards"
    print(f"agentbook demo: a Support agent for each of {len(agents)} customers ({where})")
    print()
    print("\n".join(out))
    print()
    print(f"{len(agents)} agents, {versions} versions, {failed} failed call rolled back; "
          f"{len(calls)} messages in {sent * 1000:.1f} ms.")
    if keep:
        print(f"Look again with: agentbook ls --path {path}")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
