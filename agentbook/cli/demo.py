"""``agentbook demo``: the capstone's simulated support desk, and the quickstart, in a
terminal.

:func:`run_week` (``agentbook demo``) runs the capstone's week
(:mod:`agentbook.cli.capstone`) on the virtual clock, replays its second half on a fork
with a generous refund policy, answers a few questions with DuckDB, writes the plots and
says what each figure counts. :func:`run_demo` (``agentbook demo --quick``) is the
three-agent quickstart: a small ``Support`` agent, a failing call that leaves nothing
behind, then the agent's state, a SQL query and its history. Both run offline, with no
keys, on a temporary store unless a folder is given, and end by saying what to try next.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from typing import Any

from ..errors import UsageError

__all__ = ["run_demo", "run_week"]

#: The fork the week's "what if" replays on.
FORK = "desk-generous"


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
    print()
    print(_next_steps(path if keep else None))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# -- the week (agentbook demo) ------------------------------------------------------------------
def run_week(customers: int = 1000, days: int = 7, path: str | None = None,
             plots_dir: str | None = ".") -> dict[str, Any]:
    """Simulate the capstone's support desk for *days* days of *customers* customers and
    print what happened (progress on a terminal's stderr: a bar drawn in place; none when
    piped).

    Args:
        customers: Simulated customers.
        days: Simulated days (at least 2: the fork is made at the end of day ``days // 2``).
        path: A new or empty folder to keep the store in; a temporary one when ``None``.
        plots_dir: Where the PNG plots go; ``None`` for none.

    Returns:
        The figures printed: ``customers``, ``days``, ``seconds`` (real time of the
        simulation), ``desk`` (its final state), ``versions`` and ``fork_versions`` (history
        rows of the real run and of the fork), ``fork_version``, ``replayed``,
        ``what_if_refunded``, ``plots``.
    """
    print(f"agentbook demo: {customers} customers and a support desk, {_days(days)} on the "
          "virtual clock (offline, no keys)", flush=True)
    return asyncio.run(_week(customers, days, path, plots_dir))


async def _week(customers: int, days: int, path: str | None,
                plots_dir: str | None) -> dict[str, Any]:
    import agentbook as ab

    from ..progress import bar
    from . import capstone

    figures: dict[str, Any] = {"customers": customers, "days": days}
    progress = bar(100, "simulating", leave=False,
                   bar_format="{desc:<42} {percentage:3.0f}%|{bar}| {elapsed}")

    def step(fraction: float, label: str) -> None:
        progress.set_description_str(label, refresh=False)
        progress.update(max(0, round(fraction * 100) - progress.n))

    rt = ab.Runtime(path or ":memory:", clock=ab.VirtualClock(), max_open=2048)
    try:
        t0 = time.perf_counter()
        week = await capstone.simulate(rt, customers, days, step)
        figures["seconds"] = time.perf_counter() - t0
        figures["desk"] = week["desk"]
        figures["fork_version"] = week["fork_version"]
        step(0.92, "what if refunds were generous from mid-week?")
        replay = await capstone.what_if(rt, week["fork_version"])
        figures["what_if_refunded"] = replay.fork.state["refunded"]
        figures["replayed"] = sum(1 for s in replay.steps if s.outcome == "ok")
        step(0.96, "asking DuckDB about the week")
        counts = rt.sql(f"SELECT name = '{FORK}' AS fork, count(*) AS n FROM history GROUP BY ALL")
        by_fork = {bool(f): int(n) for f, n in zip(counts["fork"], counts["n"], strict=True)}
        figures["versions"], figures["fork_versions"] = by_fork.get(False, 0), by_fork.get(True, 0)
        answers = {question: rt.sql(sql) for question, sql in capstone.QUESTIONS.items()}
        figures["plots"] = _save_plots(rt, plots_dir) if plots_dir else []
        step(1.0, "done")
    finally:
        progress.close()
        await rt.aclose()
    _print_week(figures, answers, path)
    return figures


def _save_plots(rt: Any, folder: str) -> list[str]:
    """The schedule, latency and throughput plots as PNG files in *folder*."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for kind in ("schedule", "latency", "throughput"):
        target = os.path.join(folder, f"agentbook-{kind}.png")
        getattr(rt.plot, kind)().savefig(target, dpi=110)
        written.append(target)
    return written


def _print_week(figures: dict[str, Any], answers: dict[str, Any], path: str | None) -> None:
    from .tables import format_table, frame_rows

    desk, days = figures["desk"], figures["days"]
    print()
    print(f"{_days(days).capitalize()} of {figures['customers']} customers took "
          f"{figures['seconds']:.1f} s of real time.")
    print(f"Desk: {desk['closed']} refunds issued ({desk['refunded']:.2f} in all), "
          f"{desk['open']} tickets still open.")
    print(f"{figures['versions']} versions recorded: one per message an agent handled and "
          "committed (a plan,")
    print("  a ticket, a refund, a follow-up), each with the state it left. The fork below "
          f"added {figures['fork_versions']} more.")
    print(f"What if refunds were generous from the end of day {days // 2}? The desk was forked "
          f"at its version {figures['fork_version']},")
    print(f"  and the {figures['replayed']} messages it handled after that were replayed on the "
          f"fork '{FORK}' with every")
    print(f"  refund granted: {figures['what_if_refunded']:.2f} refunded instead of "
          f"{desk['refunded']:.2f}.")
    print()
    print("DuckDB's answers (SQL over every agent's history; the fork's runs count too where a "
          "question")
    print("does not leave them out - the SQL is in agentbook.cli.capstone.QUESTIONS):")
    for question, frame in answers.items():
        print()
        print(f"{question}:")
        frame = _dates(frame)
        print(_indent(format_table(list(frame.columns), frame_rows(frame))))
    print()
    for target in figures["plots"]:
        print(f"plot written: {target}")
    print(_next_steps(path))


def _dates(frame: Any) -> Any:
    """Times at midnight (a ``date_trunc('day', ...)`` column) as dates: ``Thu 2026-01-01``."""
    import pandas as pd

    frame = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values) and (values.dt.floor("D") == values).all():
            frame[column] = values.dt.strftime("%a %Y-%m-%d")
    return frame


def _days(days: int) -> str:
    return "a simulated week" if days == 7 else f"{days} simulated days"


def _next_steps(path: str | None) -> str:
    """What to try next; says whether the store was kept."""
    if path is None:
        lines = ["The store was temporary and is gone. Next:",
                 "  agentbook demo --path DIR   keep the store, then look into it with "
                 "agentbook ls/history/sql --path DIR"]
    else:
        lines = [f"The store is kept in {path}. Look into it:",
                 f"  agentbook ls --path {path}",
                 f'  agentbook sql "SELECT agent, method, count(*) FROM history GROUP BY ALL" '
                 f"--path {path}",
                 "Next:"]
    lines += ["  jupyter lab notebooks/      the notebooks, step by step (10_capstone.ipynb "
              "is this week)",
              "  agentbook bench --quick     check that the benchmarks run (agentbook bench: "
              "the real figures)"]
    return "\n".join(lines)
