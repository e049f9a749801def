"""The DuckDB projection under load: catch-up speed and percentile queries over 1 M rows.

Two figures (BENCH.md's rules: one run, interleaved rounds, medians):

``catchup_rows_per_s``
    ``rt.analytics.rebuild()`` - a catch-up from nothing - over 1 000 agents with 1 000
    history rows each, in history rows per second. Floor: appending the *same* rows,
    already in an Arrow table, to a bare DuckDB table (``INSERT INTO t SELECT * FROM
    arrow``): the part of a catch-up that cannot get faster, so the ratio says how much
    of the time goes to reading the SQLite stores and moving rows into Arrow.
    Target: at least 500 000 rows/s.

``p99_by_method_ms``
    ``rt.sql("SELECT method, p50, p99 ... FROM history GROUP BY method")`` over those
    1 M rows, in milliseconds, as a user sees it (with the catch-up check before the
    query, nothing new to read). Floor: the same query on the bare DuckDB table.
    Target: at most 200 ms.

How the stores are made: a real runtime creates the agents (one message each, so every
file is a genuine agentbook store), then the rest of each agent's history is written
straight into its ``_ab_history`` with ``apsw``, one transaction per agent - a million
handler runs would take minutes, and the projection reads only the history columns, so
the rows only need to look like real ones (methods, sources, durations, states, due
times). The ``chain`` and ``changes`` columns stay empty: they are not projected.

Run alone with ``python -m agentbook.bench.analytics [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import agentbook as ab

from ..store.files import BareHistoryRow, append_bare_history
from .report import Result, Target, to_json
from .timing import check, interleave

__all__ = ["AnalyticsSizes", "BenchAnalytics", "bench_analytics", "make_stores", "run"]

#: Methods of the generated history, with the median duration (ms) of each.
METHODS = {"lookup": 0.4, "work": 1.5, "summarize": 6.0, "notify": 0.8, "digest": 3.0}
P_QUERY = ("SELECT method, quantile_cont(duration_ms, 0.5) AS p50,"
           " quantile_cont(duration_ms, 0.99) AS p99, count(*) AS n"
           " FROM {table} GROUP BY method ORDER BY method")


class BenchAnalytics(ab.Agent):
    """The agent whose stores the benchmark fills: one real version each."""

    initial_state = {"n": 0}

    @ab.callable
    async def work(self, by: int = 1) -> int:
        """Add *by* to the counter."""
        self.set_state({"n": self.state["n"] + by})
        return self.state["n"]


class AnalyticsSizes:
    """How big the benchmark is: agents, history rows per agent, rounds."""

    def __init__(self, agents: int, rows_per_agent: int, rounds: int, warmup: bool) -> None:
        self.agents = agents
        self.rows_per_agent = rows_per_agent
        self.rounds = rounds
        self.warmup = warmup

    @classmethod
    def full(cls) -> AnalyticsSizes:
        """1 000 agents x 1 000 rows = 1 M history rows, 5 rounds."""
        return cls(1000, 1000, 5, True)

    @classmethod
    def quick(cls) -> AnalyticsSizes:
        """Tiny: checks that the benchmark runs."""
        return cls(20, 50, 2, False)

    @property
    def rows(self) -> int:
        """History rows in all."""
        return self.agents * self.rows_per_agent


# -- making the stores ---------------------------------------------------------------------
async def _create_agents(path: str, agents: int) -> None:
    rt = ab.Runtime(path, durability="normal", events=False)
    try:
        refs = [rt.get(BenchAnalytics, f"agent-{i:04d}") for i in range(agents)]
        for start in range(0, agents, 100):
            await asyncio.gather(*(r.work() for r in refs[start:start + 100]))
    finally:
        await rt.aclose()


def _history_rows(agent: int, rows: int, t0: float, rng: random.Random) -> list[tuple]:
    """Versions 2..rows+1 of one agent: (version, ts, method, args, source, ms, state, due, occ)."""
    names = list(METHODS)
    out = []
    ts = t0
    lognormal, choice = rng.lognormvariate, rng.choice
    slow = 3.0 if agent % 97 == 17 else 1.0  # a few agents are slower than the rest
    for k in range(rows):
        version = k + 2
        ts += rng.expovariate(1 / 60.0)  # about a minute apart
        method = choice(names)
        ms = METHODS[method] * slow * lognormal(0.0, 0.6)
        if k % 10 == 9:  # every tenth run was queued or scheduled work
            due = ts - rng.expovariate(1 / 2.0)
            source, occ = f"queue:q{agent}-{k}", f"q{agent}-{k}:0"
        else:
            due, source, occ = None, "cell", None
        out.append((version, ts, method, f"[{k % 7}]", source, ms, f'{{"n": {version}}}', due,
                    occ))
    return out


async def make_stores(path: str, agents: int, rows_per_agent: int, seed: int = 7) -> int:
    """A store folder with *agents* agents of *rows_per_agent* history rows each.

    Version 1 of each agent is a real handler run (a real runtime made the files); the
    others are written into ``_ab_history`` directly. Returns the number of history rows.
    """
    await _create_agents(path, agents)
    await asyncio.to_thread(_write_history, path, agents, rows_per_agent - 1, seed)
    return agents * rows_per_agent


def _write_history(path: str, agents: int, extra_rows: int, seed: int) -> None:
    import apsw

    rng = random.Random(seed)
    folder = os.path.join(path, "agents", BenchAnalytics.__name__)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".db"))
    check(len(files) == agents, "every agent has a store file")
    for i, file in enumerate(files):
        rows = _history_rows(i, extra_rows, _T0, rng)
        if not rows:
            continue
        conn = apsw.Connection(os.path.join(folder, file))
        try:
            conn.execute("PRAGMA synchronous=OFF")
            append_bare_history(conn, [
                BareHistoryRow(v, ts, m, a, src, ms, str(v - 1), st, due, occ)
                for v, ts, m, a, src, ms, st, due, occ in rows])
        finally:
            conn.close()


#: The generated history starts here: 2026-01-01T00:00Z.
_T0 = 1_767_225_600.0


# -- the measurement ---------------------------------------------------------------------------
async def measure(sizes: AnalyticsSizes, folder: str,
                  log: Any = lambda message: None) -> list[Result]:
    """Make the stores in *folder*, then measure both figures, interleaved with their floors."""
    import duckdb

    from ..analytics.views import Analytics

    path = os.path.join(folder, "analytics-store")
    t0 = time.perf_counter()
    total = await make_stores(path, sizes.agents, sizes.rows_per_agent)
    log(f"analytics: {total:,} history rows in {sizes.agents} stores made in "
        f"{time.perf_counter() - t0:.1f} s")
    rt = ab.Runtime(path, events=False)
    floor_db = duckdb.connect()
    try:
        check(rt.analytics.catch_up() == total, "the first catch-up reads every history row")
        floor_db.register("ab_rows", rt.db.sql("SELECT * FROM history").to_arrow_table())

        def catch_up() -> float:  # a fresh projection, as the first rt.sql of a session
            fresh = Analytics(rt)
            start = time.perf_counter()
            added = fresh.catch_up()
            figure = added / max(time.perf_counter() - start, 1e-9)
            check(added == total, "the catch-up read every row")
            fresh.db.close()
            return figure

        def append() -> float:  # bare Arrow -> DuckDB append of those rows
            floor_db.execute("CREATE OR REPLACE TABLE history AS SELECT * FROM ab_rows LIMIT 0")
            start = time.perf_counter()
            floor_db.execute("INSERT INTO history SELECT * FROM ab_rows")
            return total / max(time.perf_counter() - start, 1e-9)

        pairs = await interleave(catch_up, append, sizes.rounds, sizes.warmup)
        catchup = Result.from_rounds(
            "catchup_rows_per_s", "rows/s", pairs, Target("value", ">=", 500_000),
            f"fresh projection catching up {total:,} history rows from {sizes.agents} agent "
            "stores (SQLite -> Python -> Arrow -> DuckDB); floor: bare DuckDB append of the "
            "same rows from an Arrow table")

        query = P_QUERY.format(table="history")
        floor_db.execute("CREATE OR REPLACE TABLE history AS SELECT * FROM ab_rows")
        expected = floor_db.execute(query).fetchall()
        check(rt.sql(query).values.tolist() == [list(r) for r in expected],
              "the views and the floor give the same percentiles")

        def via_rt_sql() -> float:
            start = time.perf_counter()
            rt.sql(query)
            return (time.perf_counter() - start) * 1000

        def bare_query() -> float:
            start = time.perf_counter()
            floor_db.execute(query).fetchall()
            return (time.perf_counter() - start) * 1000

        qpairs = await interleave(via_rt_sql, bare_query, max(sizes.rounds, 5), sizes.warmup)
        direct = [_timed(lambda: rt.db.execute(query).df()) for _ in range(max(sizes.rounds, 3))]
        empty = [_timed(rt.analytics.catch_up) for _ in range(max(sizes.rounds, 3))]
        p99 = Result.from_rounds(
            "p99_by_method_ms", "ms", qpairs, Target("value", "<=", 200),
            f"rt.sql(p50 and p99 of duration_ms GROUP BY method) over {total:,} rows, with its "
            f"catch-up check (nothing new: median {statistics.median(empty):.0f} ms; the query "
            f"on rt.db alone: median {statistics.median(direct):.0f} ms); floor: the same "
            "query on a bare DuckDB table")
        return [catchup, p99]
    finally:
        floor_db.close()
        await rt.aclose()


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _sizes_for(sz: Any) -> AnalyticsSizes:
    """The analytics sizes of the suite's sizes: full unless the suite runs ``--quick``."""
    agents = getattr(sz, "analytics_agents", None)
    rows = getattr(sz, "analytics_rows_per_agent", None)
    if agents and rows:
        return AnalyticsSizes(agents, rows, sz.rounds, sz.warmup)
    return AnalyticsSizes.full() if sz.warmup else AnalyticsSizes.quick()  # quick has no warmup


async def bench_analytics(sz: Any, folder: str) -> list[Result]:
    """The suite's entry point (``agentbook.bench.core.GROUPS``): both figures."""
    return await measure(_sizes_for(sz), folder)


def run(quick: bool = False, directory: str | None = None, verbose: bool = False) -> dict:
    """Measure both figures; returns ``{name: entry}`` in the suite's JSON entry format.

    Args:
        quick: Tiny sizes (checks the benchmark runs; the figures mean nothing).
        directory: Parent folder of the temporary stores (a real disk, not tmpfs).
        verbose: Progress on stderr.
    """
    return to_json(_run(quick, directory, verbose))


def _run(quick: bool, directory: str | None, verbose: bool) -> list[Result]:
    from .timing import run_coroutine

    sizes = AnalyticsSizes.quick() if quick else AnalyticsSizes.full()
    folder = tempfile.mkdtemp(prefix="agentbook-bench-analytics-", dir=directory)

    def log(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    try:
        return run_coroutine(measure(sizes, folder, log))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m agentbook.bench.analytics [--quick] [--json PATH] [--dir DIR]``."""
    import argparse

    from .report import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m agentbook.bench.analytics",
                                     description="Benchmark the DuckDB projection.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--json", metavar="PATH", help="also write the entries here")
    parser.add_argument("--dir", metavar="DIR", help="where the temporary stores go")
    args = parser.parse_args(argv)
    results = _run(args.quick, args.dir, verbose=True)
    print(format_table(results, quick=args.quick))
    for r in results:
        print(f"  {r.name}: {r.note}")
    if args.json:
        write_json(results, args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
