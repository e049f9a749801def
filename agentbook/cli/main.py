"""``agentbook`` on the command line: look into a store, serve agents, run the demo and the
benchmarks.

    agentbook ls [--path P]                          the agents in a store
    agentbook show CLASS/NAME [--path P]             one agent: state, version, file, tables
    agentbook history CLASS/NAME [--limit N] [--before V]
    agentbook sql "SELECT ..." [--csv | --json]      DuckDB over the views of every agent
    agentbook sql CLASS/NAME "SELECT ..."            a read-only query on one agent's tables
    agentbook serve MODULE[:ATTR] [--port P]         agents over HTTP/WebSocket
    agentbook demo [--customers N] [--days D]        a simulated week of a support desk, offline
    agentbook bench [...]                            the benchmark suite (agentbook.bench)
    agentbook doctor [--check-stores] [--path P]     check the environment and the stores
    agentbook doctor --release CLASS/NAME [--restored FILE] [--force]
    agentbook mcp MODULE:ATTR --agent CLASS/NAME     serve one agent as an MCP server (stdio)

Read commands open a store that exists and never create one; they work without the
agents' classes (a store is read by class *name*). An error from agentbook prints one
line, ``agentbook: error: ...``, and exits with status 2. Heavy libraries (pandas) are
imported inside the commands, so ``import agentbook.cli`` stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import AgentbookError, AgentNotFoundError, UsageError
from .tables import format_table, frame_rows, history_rows, is_missing

if TYPE_CHECKING:
    import pandas as pd

    from ..core.ref import AgentRef
    from ..core.runtime import Runtime

__all__ = ["main"]

DEFAULT_PATH = ".agentbook"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``agentbook`` command line; returns the exit status.

    Args:
        argv: The arguments after the program name (``sys.argv[1:]`` when ``None``).
    """
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0] == "serve":  # agentbook.serve.cli parses its own arguments
        return _serve(given[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # the suite parses its own arguments
        return _guarded(lambda: _bench(argv[1:]))
    args = _parser().parse_args(argv)
    return _guarded(lambda: args.command(args))


def _guarded(run: Callable[[], int | None]) -> int:
    """Run a command; agentbook's errors become one line on stderr and status 2."""
    try:
        return run() or 0
    except AgentbookError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"agentbook: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `agentbook history ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentbook",
        description="Look into agentbook stores, serve agents, run the demo and the "
                    "benchmarks.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[[argparse.Namespace], int | None], help: str,
                **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(command=run)
        return p

    def path_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--path", default=DEFAULT_PATH, metavar="P",
                       help=f"the store's folder (default: {DEFAULT_PATH})")

    p = command("ls", _ls, "list the agents in a store")
    path_option(p)

    p = command("show", _show, "show one agent: state, version, file and SQL tables")
    p.add_argument("target", metavar="CLASS/NAME", help="the agent, such as Support/alice")
    path_option(p)

    p = command("history", _history, "show an agent's versions, newest first")
    p.add_argument("target", metavar="CLASS/NAME", help="the agent, such as Support/alice")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="rows to show (default: 20)")
    p.add_argument("--before", type=int, metavar="V", help="only versions below V (the next page)")
    path_option(p)

    p = command("sql", _sql, "run a read-only SQL query: DuckDB over the views of every agent "
                "(agents, history, schedules, approvals, dead_letters, messages, tool_calls), "
                "or, with CLASS/NAME, SQLite over that agent's own tables",
                usage="agentbook sql [-h] [--path P] [--csv | --json] [CLASS/NAME] QUERY")
    p.add_argument("target", metavar="CLASS/NAME",
                   help="the agent whose own tables to query (leave out for the views)")
    p.add_argument("query", nargs="?", metavar="QUERY", help="one SELECT statement")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--csv", dest="form", action="store_const", const="csv",
                      help="print CSV (a header line, then one line per row)")
    form.add_argument("--json", dest="form", action="store_const", const="json",
                      help="print a JSON array with one object per row")
    path_option(p)

    # `agentbook serve` is handed to agentbook.serve.cli before this parser runs (it parses
    # its own arguments, `agentbook serve -h`); it is here so that --help lists it.
    command("serve", lambda args: _serve([]), "serve agents over HTTP and WebSocket "
                                              "(agentbook serve -h)")
    p = command("demo", _demo, "a simulated support desk for a week, in this terminal "
                               "(offline, no keys)")
    p.add_argument("--path", metavar="P",
                   help="keep the demo's store in this new or empty folder (default: a "
                        "temporary one, removed afterwards)")
    p.add_argument("--customers", type=int, default=1000, help="simulated customers (1000)")
    p.add_argument("--days", type=int, default=7, help="simulated days (7)")
    p.add_argument("--plots", metavar="DIR", default=".",
                   help="where the PNG plots go (default: here); '' for none")
    p.add_argument("--quick", action="store_true",
                   help="the three-agent quickstart instead of the week")

    command("bench", lambda args: _bench([]), "run the benchmark suite (agentbook bench -h)")
    p = command("doctor", _doctor, "check the environment (and with --check-stores, every "
                                   "store) and say what to fix")
    p.add_argument("--check-stores", action="store_true",
                   help="also check every store in --path: integrity and history hash chains")
    p.add_argument("--release", metavar="CLASS/NAME",
                   help="put a quarantined agent's store back into service, once it passes the "
                        "checks (the file in quarantine/, or --restored FILE)")
    p.add_argument("--restored", metavar="FILE",
                   help="with --release: a copy restored from a backup to put in service instead")
    p.add_argument("--force", action="store_true",
                   help="with --release: even if the file still fails its checks")
    path_option(p)
    p = command("mcp", _mcp, "serve one agent's @ab.callable methods as MCP tools over stdio")
    p.add_argument("app", metavar="MODULE:ATTR",
                   help="an ab.Runtime, an agent class, or a function returning a runtime")
    p.add_argument("--agent", required=True, metavar="CLASS/NAME",
                   help="the agent to serve, such as Support/alice")
    path_option(p)
    return parser


# -- reading a store ------------------------------------------------------------------------
def open_store(path: str) -> Runtime:
    """Open the existing store in *path* for reading; never creates one.

    Raises:
        UsageError: *path* is not the folder of an agentbook store.
    """
    from ..core.runtime import Runtime

    if path == ":memory:":
        raise UsageError("a ':memory:' store lives only inside the process that made it; "
                         "give --path the folder of a durable store")
    if not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(path) else "does not exist"
        raise UsageError(f"no agentbook store at {path}: it {what} (give --path the folder "
                         f"an ab.Runtime wrote; the default is {DEFAULT_PATH})")
    if not os.path.isfile(os.path.join(path, "catalog.db")):
        raise UsageError(f"{path} holds no agentbook store (no catalog.db in it); give --path "
                         "the folder an ab.Runtime wrote")
    return Runtime(path, events=False)


def _agent(rt: Runtime, target: str) -> AgentRef:
    """The agent named by ``CLASS/NAME``; raises unless it has a store."""
    class_name, sep, name = target.partition("/")
    if not sep or not class_name or not name:
        raise UsageError(f"name the agent as CLASS/NAME, such as Support/alice (got {target!r})")
    ref = rt.get(class_name, name)
    try:
        ref.sql("SELECT 1")
    except AgentNotFoundError:
        raise AgentNotFoundError(
            f"no agent {target} in {rt.path}; `agentbook ls --path {rt.path}` lists the agents"
        ) from None
    return ref


def _ls(args: argparse.Namespace) -> None:
    with open_store(args.path) as rt:
        agents = rt.agents()
    if agents.empty:
        print(f"no agents in {args.path} yet")
        return
    columns = ["class", "name", "version", "created"]
    if agents["parent"].notna().any():
        columns.append("parent")
    _print_table(columns, frame_rows(agents[columns]))


def _show(args: argparse.Namespace) -> None:
    with open_store(args.path) as rt:
        ref = _agent(rt, args.target)
        state, version = ref.state, ref.version
        tables = [(t, _count(ref, t)) for t in _user_tables(ref)]
        file = rt.path_of((ref.class_name, ref.name))  # (also a store an older agentbook named)
    print(f"{args.target}")
    print(f"  version  {version}")
    print(f"  file     {file}")
    print("state")
    print(_indent(json.dumps(state, indent=2, ensure_ascii=False)))
    print("tables")
    if not tables:
        print("  (none)")
    for table, count in tables:
        print(f"  {table}  {count} row{'' if count == 1 else 's'}")


def _user_tables(ref: AgentRef) -> list[str]:
    frame = ref.sql(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\' AND name NOT LIKE '\\_ab\\_%' ESCAPE '\\' ORDER BY name"
    )
    return list(frame["name"])


def _count(ref: AgentRef, table: str) -> int:
    quoted = '"' + table.replace('"', '""') + '"'
    return int(ref.sql(f"SELECT count(*) AS n FROM {quoted}")["n"][0])


_HISTORY_COLUMNS = ["version", "ts", "source", "call", "outcome", "ms", "result", "state", "error"]


def _history(args: argparse.Namespace) -> None:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    with open_store(args.path) as rt:
        ref = _agent(rt, args.target)
        frame = ref.history(limit=args.limit, before=args.before)
    if frame.empty:
        print(f"{args.target} has no versions" + (f" before {args.before}" if args.before else ""))
        return
    _print_table(_HISTORY_COLUMNS, history_rows(frame, _HISTORY_COLUMNS))


def _sql(args: argparse.Namespace) -> None:
    target, query = args.target, args.query
    if query is None:  # a lone argument is the query
        query, target = target, None
        if _AGENT.fullmatch(query.strip()):
            raise UsageError(f"give a query after the agent: agentbook sql {query.strip()} "
                             '"SELECT ..." (or a query alone, for the views of every agent)')
    with open_store(args.path) as rt:
        frame = _sql_one_agent(rt, target, query) if target else _sql_all_agents(rt, query)
    if args.form == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif args.form == "json":
        records = [dict(zip(frame.columns, (_json_value(v) for v in row), strict=True))
                   for row in frame.itertuples(index=False, name=None)]
        print(json.dumps(records, ensure_ascii=False, indent=1))
    else:
        _print_table(list(frame.columns), frame_rows(frame), null="NULL")
        print(f"({len(frame)} row{'' if len(frame) == 1 else 's'})")


#: A lone ``agentbook sql`` argument that names an agent rather than a query.
_AGENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*/\S+")


def _sql_one_agent(rt: Runtime, target: str, query: str) -> pd.DataFrame:
    return _agent(rt, target).sql(query)


def _sql_all_agents(rt: Runtime, query: str) -> pd.DataFrame:
    """DuckDB over the views of every agent in the store (``rt.sql``)."""
    return rt.sql(query)


def _json_value(value: Any) -> Any:
    """A DataFrame cell as JSON: times in ISO 8601 UTC, missing values null."""
    if is_missing(value):
        return None
    if isinstance(value, datetime):  # the views' times are UTC; a naive one stays as it is
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return value.item()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


# -- the other commands -----------------------------------------------------------------------
def _serve(argv: list[str]) -> int:
    from ..serve.cli import main as serve_main

    return serve_main(argv)


def _bench(argv: list[str]) -> int:
    import importlib

    try:
        bench = importlib.import_module("agentbook.bench")
    except ModuleNotFoundError as exc:
        if exc.name not in ("agentbook.bench", "agentbook"):
            raise
        raise UsageError("the benchmark suite (agentbook.bench) is not in this install of "
                         "agentbook") from None
    run = getattr(bench, "main", None)
    if run is None:
        raise UsageError("agentbook.bench has no main(argv) to run; the benchmark suite is "
                         "not finished in this install")
    return run(argv) or 0


def _doctor(args: argparse.Namespace) -> int:
    from .envcheck import check_environment, format_checks, verdict_line

    if args.release:
        return _release(args)
    if args.restored or args.force:
        raise UsageError("--restored and --force go with --release CLASS/NAME")
    results = None
    if args.check_stores:  # a folder that holds no store is an error before anything prints
        from .doctor import check_stores

        if not os.path.isdir(args.path):
            what = "is not a folder" if os.path.exists(args.path) else "does not exist"
            raise UsageError(f"no store folder at {args.path}: it {what} (give --path the "
                             f"folder an ab.Runtime wrote; the default is {DEFAULT_PATH})")
        results = check_stores(args.path)
    checks = check_environment(args.path)
    print(format_checks(checks, verdict=False))
    status = 1 if any(c["required"] and not c["ok"] for c in checks) else 0
    bad = 0
    if results is not None:
        from .doctor import exit_status, format_report

        print(format_report(results))
        status = max(status, exit_status(results))
        bad = sum(1 for e in results if not e["ok"] or e["kind"] == "quarantined")
    print(verdict_line(checks, bad))
    return status


def _release(args: argparse.Namespace) -> int:
    from .doctor import release

    class_name, sep, name = args.release.partition("/")
    if not sep or not class_name or not name:
        raise UsageError(f"name the agent as CLASS/NAME, such as Support/alice "
                         f"(got {args.release!r})")
    entry = release(args.path, class_name, name, args.restored, force=args.force)
    state = "sound" if entry["ok"] else f"still damaged: {entry['error']}"
    print(f"released {class_name}/{name}: {entry['file']} is in service again, version "
          f"{entry['version']} ({state}); it starts at its next message")
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from ..mcp.stdio import run

    return run(args.app, args.agent, args.path)


def _demo(args: argparse.Namespace) -> None:
    if args.quick:
        from .demo import run_demo

        run_demo(args.path)
        return
    from .demo import run_week

    if args.customers < 1 or args.days < 2:
        raise UsageError("the week needs at least 1 customer and 2 days")
    if args.path is not None and os.path.exists(args.path) and os.listdir(args.path):
        raise UsageError(f"{args.path} is not empty; give a new or empty folder")
    run_week(args.customers, args.days, path=args.path, plots_dir=args.plots or None)


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, null: str = "") -> None:
    print(format_table(columns, rows, null=null))


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
