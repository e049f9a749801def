"""The LangGraph peer of ``agentbook bench``: durable messages through one LangGraph thread.

LangGraph + ``SqliteSaver`` (the official SQLite checkpointer) on a WAL file with
``synchronous=NORMAL`` - the same durability agentbook's ``durability="normal"`` gives -
running a one-node graph that adds ``by`` to a counter ``n``. One ``invoke`` on the same
thread is one durable message: LangGraph loads the thread's latest checkpoint, runs the
node and writes the new checkpoints before it returns. LangGraph's default durability
mode is used (what a user gets without tuning).

Two more peers for the human-in-the-loop and time-travel figures:
:class:`ApprovalPeer` (``interrupt()`` then ``Command(resume=...)``, LangGraph's approval
round trip) and :class:`HistoryPeer` (a thread with many checkpoints, searched for the
checkpoint of one step, as ``get_state_history`` offers).

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
    from langgraph.types import Command, interrupt
except ImportError as exc:  # pragma: no cover - depends on the environment
    MISSING: str | None = (
        f"LangGraph is not installed ({exc.name or exc}); "
        "pip install 'agentbook[bench]' to compare against it"
    )
else:
    MISSING = None

__all__ = ["MISSING", "ApprovalPeer", "HistoryPeer", "LangGraphPeer"]


class CounterState(TypedDict):
    """The graph's state: a counter and the step to add."""

    n: int
    by: int


def _inc(state: CounterState) -> dict[str, int]:
    return {"n": state["n"] + state["by"]}


def _compile(path: str, state: type, name: str, node: Any) -> tuple[sqlite3.Connection, Any]:
    """A one-node graph on a SqliteSaver file (WAL, synchronous=NORMAL)."""
    if MISSING is not None:
        raise RuntimeError(MISSING)
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    saver = SqliteSaver(conn)
    saver.setup()
    graph = StateGraph(state)
    graph.add_node(name, node)
    graph.add_edge(START, name)
    graph.add_edge(name, END)
    return conn, graph.compile(checkpointer=saver)


class LangGraphPeer:
    """A compiled one-node LangGraph on a SqliteSaver file, one thread.

    Args:
        path: The SQLite file of the checkpointer.
        thread_id: The LangGraph thread (the peer of one agent).

    Raises:
        RuntimeError: LangGraph is not installed (the message says how to install it).
    """

    def __init__(self, path: str, thread_id: str = "one") -> None:
        self.conn, self.app = _compile(path, CounterState, "inc", _inc)
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


class RefundState(TypedDict, total=False):
    """The approval graph's state: the total refunded and the refund proposed."""

    n: int
    amount: int


def _refund(state: RefundState) -> dict[str, int]:
    approved = interrupt({"action": "refund", "amount": state["amount"]})
    return {"n": state.get("n", 0) + state["amount"]} if approved else {}


class ApprovalPeer:
    """LangGraph's human in the loop: a node that calls ``interrupt()`` before it acts.

    One round trip: ``invoke`` runs until the interrupt (its checkpoint is the pending
    request), then ``invoke(Command(resume=True))`` approves and the node's update commits.
    """

    def __init__(self, path: str, thread_id: str = "approvals") -> None:
        self.conn, self.app = _compile(path, RefundState, "refund", _refund)
        self.config = {"configurable": {"thread_id": thread_id}}
        self.n = 0

    def round_trip(self) -> int:
        """Request, approve, commit; returns the new total."""
        app, config = self.app, self.config
        paused = app.invoke({"amount": 1}, config)
        if "__interrupt__" not in paused:
            raise RuntimeError(f"the graph did not stop at its interrupt: {paused!r}")
        self.n = app.invoke(Command(resume=True), config)["n"]
        return self.n

    def close(self) -> None:
        """Close the checkpointer's connection."""
        self.conn.close()


class HistoryPeer:
    """A LangGraph thread with *checkpoints* checkpoints of the counter graph (each invoke
    writes three: the input, the node's step and the next input's), then searched for the
    checkpoint of one step."""

    def __init__(self, path: str, checkpoints: int, thread_id: str = "history") -> None:
        self.counter = LangGraphPeer(path, thread_id)
        self.app, self.config = self.counter.app, self.counter.config
        while self.count() < checkpoints:
            self.counter.invoke(max(1, (checkpoints - self.count()) // 3))

    def count(self) -> int:
        """How many checkpoints the thread has."""
        return self.counter.conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = ?",
            (self.config["configurable"]["thread_id"],)).fetchone()[0]

    def newest_step(self) -> int:
        """The step of the newest checkpoint."""
        return self.app.get_state(self.config).metadata["step"]

    def scan(self, step: int) -> dict[str, Any]:
        """The state at *step*, walking ``get_state_history`` (newest first) to it."""
        for snapshot in self.app.get_state_history(self.config):
            if snapshot.metadata.get("step") == step:
                return snapshot.values
        raise KeyError(step)

    def filtered(self, step: int) -> dict[str, Any]:
        """The state at *step* through ``get_state_history(filter={"step": k})``, which
        SqliteSaver runs as a SQL scan of the thread's metadata."""
        for snapshot in self.app.get_state_history(self.config, filter={"step": step}, limit=1):
            return snapshot.values
        raise KeyError(step)

    def close(self) -> None:
        """Close the checkpointer's connection."""
        self.counter.close()
