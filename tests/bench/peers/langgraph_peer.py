"""The LangGraph peer of ``agentbook bench``: durable messages through one LangGraph thread.

LangGraph + ``SqliteSaver`` (the official SQLite checkpointer) on a WAL file with
``synchronous=NORMAL`` - the same durability agentbook's ``durability="normal"`` gives -
running a one-node graph that adds ``by`` to a counter ``n``. One ``invoke`` on the same
thread is one durable message: LangGraph loads the thread's latest checkpoint, runs the
node and writes the new checkpoints before it returns. LangGraph's default durability
mode is used (what a user gets without tuning).

The suite loads this file by path (it lives under ``tests/`` so LangGraph stays an
optional extra: ``pip install 'agentbook[bench]'``). Without LangGraph, :data:`MISSING`
says why and the suite skips the comparison.
"""

from __future__ import annotations

import sqlite3
from typing import Any, TypedDict

try:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
except ImportError as exc:  # pragma: no cover - depends on the environment
    MISSING: str | None = (
        f"LangGraph is not installed ({exc.name or exc}); "
        "pip install 'agentbook[bench]' to compare against it"
    )
else:
    MISSING = None

__all__ = ["MISSING", "LangGraphPeer"]


class CounterState(TypedDict):
    """The graph's state: a counter and the step to add."""

    n: int
    by: int


def _inc(state: CounterState) -> dict[str, int]:
    return {"n": state["n"] + state["by"]}


class LangGraphPeer:
    """A compiled one-node LangGraph on a SqliteSaver file, one thread.

    Args:
        path: The SQLite file of the checkpointer.
        thread_id: The LangGraph thread (the peer of one agent).

    Raises:
        RuntimeError: LangGraph is not installed (the message says how to install it).
    """

    def __init__(self, path: str, thread_id: str = "one") -> None:
        if MISSING is not None:
            raise RuntimeError(MISSING)
        self.conn = sqlite3.connect(path, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        saver = SqliteSaver(self.conn)
        saver.setup()
        graph = StateGraph(CounterState)
        graph.add_node("inc", _inc)
        graph.add_edge(START, "inc")
        graph.add_edge("inc", END)
        self.app: Any = graph.compile(checkpointer=saver)
        self.config = {"configurable": {"thread_id": thread_id}}
        self.n = self.app.invoke({"n": 0, "by": 1}, self.config)["n"]

    def invoke(self, count: int) -> int:
        """Run *count* invocations (each a durable step) and return the counter."""
        app, config = self.app, self.config
        for _ in range(count):
            self.n = app.invoke({"by": 1}, config)["n"]
        return self.n

    def close(self) -> None:
        """Close the checkpointer's connection."""
        self.conn.close()
