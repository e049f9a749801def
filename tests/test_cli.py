"""The ``agentbook`` command line, on stores written by a real runtime."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import types

import pytest

import agentbook as ab
from agentbook.cli.main import main


class CliDesk(ab.Agent):
    """A tiny agent whose store the CLI reads (the CLI itself never imports this class)."""

    initial_state = {"items": 0}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, text TEXT)")

    @ab.callable
    async def add(self, text: str) -> int:
        self.sql("INSERT INTO items(text) VALUES (?)", text)
        self.set_state({"items": self.state["items"] + 1})
        return self.state["items"]

    @ab.callable
    async def fail(self) -> None:
        self.set_state({"items": -1})
        raise ValueError("desk is closed")


async def _fill(path) -> None:
    rt = ab.Runtime(path)
    desk = rt.get(CliDesk, "front")
    await desk.add("pen")
    await desk.add("paper")
    with pytest.raises(ValueError):
        await desk.fail()
    await rt.get(CliDesk, "back").add("stapler")
    await rt.aclose()


@pytest.fixture
def store(tmp_path):
    """The folder of a store with CliDesk/front (versions 1-3, one failure) and CliDesk/back."""
    path = tmp_path / "s"
    asyncio.run(_fill(path))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("agentbook: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err


def test_help_lists_every_command_serve_included(capsys):
    """``agentbook --help`` names every command the CLI has, in the SPEC's order (serve
    parses its own arguments, and is listed all the same)."""
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == ["ls", "show", "history", "sql", "serve", "demo", "bench", "doctor", "mcp"]


def test_serve_help_is_the_serve_commands_own(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "usage: agentbook serve" in capsys.readouterr().out


def test_ls_lists_every_agent_with_its_version(store, capsys):
    code, out, _ = run(capsys, "ls", "--path", store)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["class", "name", "version", "created"]
    assert sorted(r.split()[:3] for r in rows) == [["CliDesk", "back", "2"],
                                                   ["CliDesk", "front", "3"]]


def test_show_prints_state_version_file_and_tables(store, capsys):
    code, out, _ = run(capsys, "show", "CliDesk/front", "--path", store)
    assert code == 0
    assert "version  3" in out
    assert os.path.join(store, "agents", "CliDesk", "front.db") in out
    assert '"items": 2' in out  # the failed handler's state was not kept
    assert "items  2 rows" in out


def test_history_prints_versions_newest_first_with_the_failure(store, capsys):
    code, out, _ = run(capsys, "history", "CliDesk/front", "--path", store)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["version", "ts", "source"]
    assert "fail()" in lines[1] and "ValueError: desk is closed" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["3", "2", "1"]
    assert 'add("paper")' in lines[2] and '{"items": 2}' in lines[2]


def test_history_pages_with_limit_and_before(store, capsys):
    code, out, _ = run(capsys, "history", "CliDesk/front", "--path", store,
                       "--limit", "1", "--before", "3")
    assert code == 0
    rows = [line for line in out.splitlines()[1:] if line.split()[0].isdigit()]
    assert [r.split()[0] for r in rows] == ["2"]


def test_sql_prints_the_rows_of_one_agent(store, capsys):
    code, out, _ = run(capsys, "sql", "CliDesk/front", "SELECT id, text FROM items ORDER BY id",
                       "--path", store)
    assert code == 0
    assert out.splitlines() == ["id  text", " 1  pen", " 2  paper", "(2 rows)"]


def test_sql_refuses_a_write_with_one_line(store, capsys):
    code, out, err = run(capsys, "sql", "CliDesk/front", "DELETE FROM items", "--path", store)
    assert_one_line_error(code, out, err, "read-only")
    code, out, _ = run(capsys, "sql", "CliDesk/front", "SELECT count(*) AS n FROM items",
                       "--path", store)
    assert out.splitlines()[1].strip() == "2"


def test_sql_reports_malformed_sql_in_one_line(store, capsys):
    assert_one_line_error(*run(capsys, "sql", "CliDesk/front", "SELEC * FROM items",
                               "--path", store), "syntax error")


def test_unknown_agent_is_one_line_error(store, capsys):
    assert_one_line_error(*run(capsys, "show", "CliDesk/nobody", "--path", store),
                          "CliDesk/nobody", "agentbook ls")
    assert_one_line_error(*run(capsys, "history", "Nope/front", "--path", store), "Nope/front")


def test_target_without_a_class_is_one_line_error(store, capsys):
    assert_one_line_error(*run(capsys, "show", "front", "--path", store), "CLASS/NAME")


def test_missing_folder_is_an_error_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    assert_one_line_error(*run(capsys, "ls", "--path", str(missing)), "does not exist")
    assert not missing.exists()


def test_a_folder_without_a_store_is_left_untouched(tmp_path, capsys):
    assert_one_line_error(*run(capsys, "ls", "--path", str(tmp_path)), "no agentbook store")
    assert os.listdir(tmp_path) == []


def test_demo_quick_runs_offline_on_a_temporary_store(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "demo", "--quick")
    assert code == 0 and err == ""
    assert "raised ValueError: no open ticket #7 (nothing kept)" in out
    assert "{'open': 1, 'closed': 1}" in out
    assert "3 agents, 8 versions, 1 failed call rolled back" in out
    assert "The store was temporary and is gone. Next:" in out and "--path DIR" in out
    assert os.listdir(tmp_path) == []


def test_demo_keeps_its_store_with_path_for_the_read_commands(tmp_path, capsys):
    path = str(tmp_path / "demo")
    assert run(capsys, "demo", "--quick", "--path", path)[0] == 0
    code, out, _ = run(capsys, "show", "Support/alice", "--path", path)
    assert code == 0 and "version  4" in out and "tickets  2 rows" in out
    assert_one_line_error(*run(capsys, "demo", "--quick", "--path", path), "empty folder")


def test_demo_simulates_the_days_asked_and_says_what_it_counted(capsys, tmp_path):
    plots = tmp_path / "plots"
    code, out, err = run(capsys, "demo", "--customers", "40", "--days", "3", "--plots", str(plots))
    assert code == 0
    assert err == "", "piped: no progress lines (a bar is drawn only on a terminal)"
    assert out.startswith("agentbook demo: 40 customers and a support desk, 3 simulated days")
    assert "week" not in out.split("DuckDB")[0].lower(), "3 days are not a week"
    assert "3 simulated days of 40 customers took" in out
    assert "versions recorded: one per message an agent handled and committed" in out
    assert "The fork below added" in out and "replayed on the fork 'desk-generous'" in out
    assert "tickets per day:" in out and "Thu 2026-01-01" in out and "00:00:00" not in out
    assert "approvals:" in out
    assert sorted(os.listdir(plots)) == ["agentbook-latency.png", "agentbook-schedule.png",
                                         "agentbook-throughput.png"]
    assert "The store was temporary and is gone" in out
    assert "agentbook demo --path DIR" in out and "notebooks/" in out and "agentbook bench" in out
    assert_one_line_error(*run(capsys, "demo", "--days", "1"), "at least")


def test_demo_kept_store_holds_the_counts_it_printed(capsys, tmp_path):
    from agentbook.cli.demo import FORK, run_week

    path = str(tmp_path / "week")
    figures = run_week(customers=15, days=2, path=path, plots_dir=None)
    out = capsys.readouterr().out
    assert "2 simulated days of 15 customers" in out and f"The store is kept in {path}" in out
    assert f"agentbook ls --path {path}" in out
    with ab.Runtime(path, events=False) as rt:
        frame = rt.sql(f"SELECT name = '{FORK}' AS fork, count(*) AS n FROM history GROUP BY ALL")
    counts = {bool(f): int(n) for f, n in zip(frame["fork"], frame["n"], strict=True)}
    assert counts == {False: figures["versions"], True: figures["fork_versions"]}
    assert f"{figures['versions']} versions recorded" in out
    assert f"added {figures['fork_versions']} more" in out


def test_demo_draws_its_progress_in_place_on_a_terminal(capsys, monkeypatch):
    from agentbook.cli.demo import run_week

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_week(customers=10, days=2, plots_dir=None)
    drawn = terminal.getvalue()
    assert "%|" in drawn and "\r" in drawn
    assert "\n" not in drawn, "one line, redrawn: never a new line per step"


def test_bench_says_so_when_the_suite_is_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "agentbook.bench", None)
    assert_one_line_error(*run(capsys, "bench", "--quick"), "agentbook.bench")


def test_bench_hands_every_argument_to_the_suite(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("agentbook.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "agentbook.bench", fake)
    assert main(["bench", "--quick", "--json", "x.json"]) == 0
    assert seen == [["--quick", "--json", "x.json"]]


def test_python_dash_m_agentbook_reads_the_store(store):
    done = subprocess.run([sys.executable, "-m", "agentbook", "ls", "--path", store],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "front" in done.stdout and "back" in done.stdout
    done = subprocess.run([sys.executable, "-m", "agentbook", "show", "CliDesk/none",
                           "--path", store], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("agentbook: error: ") and done.stderr.count("\n") == 1


def test_importing_the_cli_does_not_import_pandas():
    code = "import sys, agentbook.cli.main; print('pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# -- agentbook sql "..." : DuckDB over the views of every agent ---------------------------------
def test_sql_without_an_agent_queries_the_views_of_every_agent(store, capsys):
    code, out, _ = run(capsys, "sql", "SELECT name, count(*) AS versions FROM history"
                       " WHERE version IS NOT NULL GROUP BY name ORDER BY name", "--path", store)
    assert code == 0
    assert out.splitlines() == ["name   versions", "back          2", "front         3", "(2 rows)"]
    code, out, _ = run(capsys, "sql", "SELECT name, outcome, error FROM history"
                       " WHERE outcome = 'error'", "--path", store)
    assert out.splitlines()[1].split(None, 2) == ["front", "error", "ValueError: desk is closed"]
    code, out, _ = run(capsys, "sql", "SELECT name, state->>'items' AS items FROM agents"
                       " ORDER BY name", "--path", store)
    assert out.splitlines()[1:3] == ["back   1", "front  2"]


def test_sql_prints_csv_and_json(store, capsys):
    import csv
    import io
    import json

    query = ("SELECT name, version, ts, duration_ms > 0 AS timed, args FROM history"
             " WHERE version = 2 ORDER BY name")
    code, out, _ = run(capsys, "sql", query, "--path", store, "--csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["name", "version", "ts", "timed", "args"]
    assert [r[0] for r in rows[1:]] == ["back", "front"]
    assert rows[2][2].endswith("+00:00") and rows[2][3] == "True" and rows[2][4] == '["pen"]'
    code, out, _ = run(capsys, "sql", query, "--path", store, "--json")
    data = json.loads(out)
    assert [d["name"] for d in data] == ["back", "front"]
    assert data[1]["version"] == 2 and data[1]["timed"] is True and data[1]["args"] == '["pen"]'
    assert data[1]["ts"].endswith("Z") and data[1]["ts"][10] == "T"
    code, out, _ = run(capsys, "sql", "CliDesk/front", "SELECT id, text FROM items ORDER BY id",
                       "--path", store, "--json")
    assert json.loads(out) == [{"id": 1, "text": "pen"}, {"id": 2, "text": "paper"}]
    with pytest.raises(SystemExit) as info:  # argparse: one or the other
        main(["sql", query, "--csv", "--json", "--path", store])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_sql_over_the_views_refuses_writes_and_bad_sql_in_one_line(store, capsys):
    assert_one_line_error(*run(capsys, "sql", "DELETE FROM history", "--path", store),
                          "only reads")
    assert_one_line_error(*run(capsys, "sql", "SELECT * FROM nowhere", "--path", store),
                          "nowhere")
    assert_one_line_error(*run(capsys, "sql", "SELEC 1", "--path", store), "syntax error")


def test_sql_with_only_an_agent_asks_for_the_query(store, capsys):
    assert_one_line_error(*run(capsys, "sql", "CliDesk/front", "--path", store),
                          "give a query after the agent")


def test_sql_on_a_missing_store_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert_one_line_error(*run(capsys, "sql", "SELECT 1", "--path", str(tmp_path / "none")),
                          "no agentbook store")
    assert not (tmp_path / "none").exists()
