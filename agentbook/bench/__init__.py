"""``agentbook bench``: the benchmark suite of the core runtime.

    python -m agentbook.bench [--quick] [--json PATH] [--only NAME,...] [--dir DIR]

Every figure is agentbook against a floor (the same work by hand with the same
libraries) or a peer (LangGraph), measured in one run, interleaved, median of the rounds
(see BENCH.md). The table goes to stdout, progress to stderr (a bar drawn in place on a
terminal, one line per benchmark otherwise). ``--quick`` uses tiny sizes: it checks that
every benchmark still runs; its numbers mean nothing, so its table judges no target
(``met`` says ``n/a``).

Importing this package is cheap; the benchmarks load agentbook, psutil and LangGraph
only when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Any

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentbook bench",
        description="Benchmark agentbook's core runtime against hand-written floors and peers.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (about half a minute): checks that every benchmark "
                             "runs; the figures mean nothing and no target is judged")
    parser.add_argument("--json", metavar="PATH",
                        help="also write {name: {value, unit, floor, ratio, target, ...}} here")
    parser.add_argument("--only", metavar="NAME,...",
                        help="run only these benchmarks (comma-separated)")
    parser.add_argument("--dir", metavar="DIR",
                        help="where the temporary stores go (default: the system temp folder;"
                             " use a real disk, not tmpfs)")
    return parser


def run(quick: bool = False, only: list[str] | None = None, directory: str | None = None,
        verbose: bool = False) -> list[Any]:
    """Run the suite and return its :class:`~agentbook.bench.report.Result` list.

    Args:
        quick: Tiny sizes (checks the benchmarks run; the figures mean nothing).
        only: Names of benchmarks to run (all when empty).
        directory: Parent folder of the temporary stores.
        verbose: Print progress to stderr.

    Raises:
        ValueError: an unknown name in *only*.
    """
    from .core import Sizes, run_suite, select_groups

    groups = select_groups(only)
    sizes = Sizes.quick() if quick else Sizes.full()
    if not verbose:
        sizes = dataclasses.replace(sizes, progress=False)
    folder = tempfile.mkdtemp(prefix="agentbook-bench-", dir=directory)
    t0 = time.perf_counter()
    progress = None
    if verbose:
        from ..progress import bar

        # a terminal: one bar drawn in place, a line per finished benchmark above it;
        # piped (CI logs): the lines only
        progress = bar(len(groups), "benchmarks", unit="groups", leave=False,
                       bar_format="{desc:<28} {n_fmt}/{total_fmt} |{bar}| {elapsed}")

    def log(message: str) -> None:
        if not verbose:
            return
        line = f"[{time.perf_counter() - t0:6.1f}s] {message}"
        if progress is None or progress.disable:
            print(line, file=sys.stderr, flush=True)
        elif not message.endswith(" ..."):  # the bar names the benchmark running
            progress.write(line, file=sys.stderr)

    async def suite() -> list[Any]:
        results: list[Any] = []
        for group in groups:
            if progress is not None:
                progress.set_description_str(group)
            results += await run_suite(sizes, folder, [group], log)
            if progress is not None:
                progress.update(1)
        return results

    try:
        from .timing import run_coroutine

        return run_coroutine(suite())
    finally:
        if progress is not None:
            progress.close()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``agentbook bench`` and ``python -m agentbook.bench``).

    Returns:
        0 when every benchmark ran (met targets or not: benchmarks are not tests),
        1 when one of them failed to run, 2 on bad arguments.
    """
    from .report import format_table, write_json

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    mode = ("quick (tiny sizes: checks that each benchmark runs; the figures mean nothing and "
            "no target is judged)" if args.quick else "full")
    print(f"agentbook bench: {mode}, python {sys.version.split()[0]}", file=sys.stderr)
    try:
        results = run(quick=args.quick, only=only, directory=args.dir, verbose=True)
    except ValueError as exc:
        print(f"agentbook bench: {exc}", file=sys.stderr)
        return 2
    print(format_table(results, quick=args.quick))
    if args.json:
        write_json(results, args.json, quick=args.quick)
        print(f"wrote {args.json}", file=sys.stderr)
    failed = [r for r in results if r.skipped and r.skipped.startswith("error:")]
    return 1 if failed else 0
