"""Every notebook in notebooks/ runs top to bottom in a real kernel, offline, and holds what
a teacher promises a room about it.

One kernel per notebook, all in this process (importing nbformat costs ~1 s, so once).
The kernel runs with this very interpreter - or, when ``AGENTBOOK_NOTEBOOK_PYTHON`` names
another, with that one: CI names the Python of Binder's environment (built from
binder/requirements.txt alone), so each notebook runs once in CI and Binder's environment
gets every check below. It runs in a temporary folder, with a temporary folder of its own
as ``TMPDIR``, so a notebook that uses the default store leaves its ``.agentbook`` there,
not in the repository, and one that leaves scratch folders behind is caught.

The static checks read the notebooks' JSON only: each ends with an exercise whose solution
is collapsed, no cell after a live widget closes it or the runtime it follows (Run All must
leave the widgets working), and instructions that only make sense in Jupyter say what to
do in Voila too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


# -- running ---------------------------------------------------------------------------
def _stdout(nb, starts: str) -> str:
    """What the code cell whose source starts with *starts* printed."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts)]
    return "".join(out.get("text", "") for out in cell.outputs if out.get("output_type") == "stream")


def _replays_the_refund_turn(nb) -> None:
    # 07 section 8: the scripted answer replaces the answer to the 42.50 EUR refund request
    printed = _stdout(nb, 'ASKED = "Please refund 42.50')
    assert ("  user: Please refund 42.50 for order o-1001, it arrived broken\n"
            "  assistant: Refunds above 40 EUR need a manager: I've passed your request on.\n"
            ) in printed, printed


def _ranks_the_slow_shops_only(nb) -> None:
    # 06 section 3: the three shops with the slow supplier, and no shop that was only unlucky
    (cell,) = [c for c in nb.cells if c.cell_type == "code"
               and c.source.startswith("yesterday, today = ")]
    (table,) = [out["data"]["text/plain"] for out in cell.outputs if "data" in out]
    names = re.findall(r"shop-\d{4}", table)
    assert names == ["shop-0042", "shop-0420", "shop-0777"], table


def _shows_two_history_rows(nb) -> None:
    # 01 section 6: limit=2 is two rows, the failure and the newest version before it
    (cell,) = [c for c in nb.cells if c.cell_type == "code"
               and c.source.startswith("alice.history(limit=2)")]
    (frame,) = [out["data"]["text/html"] for out in cell.outputs if "data" in out]
    body = frame.split("<tbody>", 1)[1]
    assert body.count("<tr>") == 2, frame
    assert "close_ticket" in body and "open_ticket" in body, frame


CHECKS: dict[str, Callable] = {
    "01_quickstart.ipynb": _shows_two_history_rows,
    "06_analytics.ipynb": _ranks_the_slow_shops_only,
    "07_chat_and_tools.ipynb": _replays_the_refund_turn,
}


# what the owners of these notebooks have yet to fix
LEAVES_TEMP: dict[str, str] = {}
WRITES_STDERR: dict[str, str] = {}


#: Ray's raylet gives its agent 15 s to start, hard-coded, then dies (ray-project/ray#65983),
#: and ``ray.init`` says this: on a loaded machine notebook 11's cluster can fail to start so.
#: The tests' own clusters start with three tries (tests/ray_start.py); a notebook whose Ray
#: failed to start this way runs once more, in a fresh kernel and temporary folder. Any
#: other failure, or this one twice, fails the test.
RAY_DID_NOT_START = "The current node timed out during startup"


def _stop_processes_under(folder: Path) -> None:
    """Kill what a failed attempt left running from *folder* (Ray's processes keep their
    session under the kernel's ``TMPDIR``)."""
    import psutil

    from .ray_start import kill

    kill([p for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()
          and any(str(folder) in part for part in p.info["cmdline"] or ())])


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_top_to_bottom(path, notebook_kernel, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for attempt in (1, 2):
        # a short path: Ray puts its sockets under TMPDIR, and a socket's path has 107 bytes
        temp = Path(tempfile.mkdtemp(prefix="nb-"))
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, kernel_name=notebook_kernel, timeout=180,
                                resources={"metadata": {"path": str(tmp_path / str(attempt))}})
        (tmp_path / str(attempt)).mkdir()
        try:
            client.execute(env={**os.environ, "TMPDIR": str(temp)})
            break
        except CellExecutionError as exc:
            failure = exc
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        _stop_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        if attempt == 2 or RAY_DID_NOT_START not in str(failure):
            again = " (again: the first run's Ray did not start either)" if attempt == 2 else ""
            pytest.fail(f"{path.name} failed in a cell{again}:\n{failure}", pytrace=False)
    try:
        errors = [out for cell in nb.cells for out in cell.get("outputs", [])
                  if out.get("output_type") == "error"]
        assert not errors, errors
        stderr = [(i, out["text"]) for i, cell in enumerate(nb.cells) for out in cell.get("outputs", [])
                  if out.get("output_type") == "stream" and out.get("name") == "stderr"]
        if path.name not in WRITES_STDERR:  # a warning in a red box, in front of a room
            assert not stderr, f"{path.name} wrote to stderr: {stderr}"
        if path.name in CHECKS:
            CHECKS[path.name](nb)
        # ipykernel keeps each cell's code in ipykernel_<pid> (for tracebacks), Ray its
        # session's logs in ray/: theirs to keep
        left = sorted(p.name for p in temp.iterdir()
                      if not p.name.startswith("ipykernel_") and p.name != "ray")
        if path.name not in LEAVES_TEMP:
            assert not left, f"{path.name} left these in the temporary folder: {left}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


# -- an exercise at the end, its solution collapsed ------------------------------------
EXERCISE = re.compile(r"^#{2,3} +Exercises?\b", re.M)
HEADING = re.compile(r"^#+ +(.*)$", re.M)
# what may follow the solution: closing and cleaning up, nothing to learn from
CLEANUP = re.compile(r"(await +)?[\w.]+\.(aclose|close|stop|shutdown)\(\)|shutil\.rmtree\(\w+\)"
                     r"|import \w+")


def _collapsed(cell: dict) -> bool:
    """A solution as the notebooks hide it: a code cell with its source hidden (JupyterLab
    shows a bar to click), or markdown in a ``<details>`` element."""
    if cell["cell_type"] == "code":
        return cell.get("metadata", {}).get("jupyter", {}).get("source_hidden") is True
    return "<details" in _source(cell)


def _code_lines(cell: dict) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in _source(cell).splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_notebook_ends_with_an_exercise_and_its_collapsed_solution(path):
    cells = _cells(path)
    exercises = [i for i, c in enumerate(cells)
                 if c["cell_type"] == "markdown" and EXERCISE.search(_source(c))]
    assert exercises, f"{path.name} has no '## Exercise' section"
    start = exercises[-1]
    solutions = [i for i in range(start + 1, len(cells)) if _collapsed(cells[i])]
    assert solutions, f"{path.name}: the exercise's solution is not collapsed " \
                      "(set the cell's metadata jupyter.source_hidden to true)"
    solution = solutions[0]
    between = [i for i in range(start + 1, solution) if _code_lines(cells[i])
               or cells[i]["cell_type"] == "markdown"]
    assert not between, f"{path.name}: cells {between} stand between the exercise and its solution"
    for i in range(solution + 1, len(cells)):
        cell = cells[i]
        if cell["cell_type"] == "markdown":
            headings = [h for h in HEADING.findall(_source(cell)) if h.strip() != "Where next"]
            assert not headings, f"{path.name} goes on after its exercise: cell {i} {headings}"
        else:
            taught = [line for line in _code_lines(cell) if not CLEANUP.fullmatch(line)]
            assert not taught, f"{path.name} goes on after its exercise: cell {i} runs {taught}"


# -- Run All leaves the widgets working ----------------------------------------------
# calls that make a live widget (the inbox and an approval are widgets when displayed)
MAKES_WIDGET = re.compile(r"\.(widget|timeline|diff_widget|chat_widget|dashboard)\(|"
                          r"\b(inbox_widget|approval_widget)\(")
SHOWS_INBOX = re.compile(r"^[\w.]+\.approvals(\.get\(.*\))?$")
NEW_RUNTIME = re.compile(r"^\s*(\w+)\s*=\s*(await\s+)?ab\.Runtime\(")
NEW_WIDGET = re.compile(r"^\s*(\w+)\s*=\s*.*(?:" + MAKES_WIDGET.pattern + ")")
CLOSES = re.compile(r"\b(\w+)\.(aclose|close)\(\)")


def _widgets_closed_after_shown(cells: list[dict]) -> list[str]:
    """Lines that close a runtime (or a widget) after a widget on it was shown.

    A runtime is a variable assigned ``ab.Runtime(...)``; assigning it again makes another
    runtime, one the widgets shown before it do not use (a notebook may close a runtime to
    show a restart, as long as no widget follows the one it closes)."""
    runtime: dict[str, int] = {}  # variable -> which assignment holds the runtime now
    widgets: set[str] = set()
    seen: set[tuple[str, int]] = set()  # runtimes that had a widget shown on them
    wrong: list[str] = []
    for n, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        lines = _code_lines(cell)
        for k, line in enumerate(lines):
            if (match := NEW_RUNTIME.match(line)) is not None:
                runtime[match[1]] = runtime.get(match[1], 0) + 1
            if (match := NEW_WIDGET.match(line)) is not None:
                widgets.add(match[1])
            if MAKES_WIDGET.search(line) or (k == len(lines) - 1 and SHOWS_INBOX.match(line)):
                seen |= set(runtime.items())
            for name, _how in CLOSES.findall(line):
                if name in widgets or (name, runtime.get(name)) in seen:
                    wrong.append(f"cell {n}: {line}")
    return wrong


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_cell_closes_a_widget_or_its_runtime_after_showing_it(path):
    wrong = _widgets_closed_after_shown(_cells(path))
    assert not wrong, (f"{path.name}: after Run All its widgets would be dead: {wrong}; say "
                       "in 'Where next' how to close the runtime instead")


def test_the_widget_check_sees_what_kills_a_widget():
    def cells(*sources: str) -> list[dict]:
        return [{"cell_type": "code", "source": s} for s in sources]

    assert _widgets_closed_after_shown(cells(
        "rt = ab.Runtime(':memory:')", "t = ref.timeline()\nt", "await rt.aclose()")) == [
        "cell 2: await rt.aclose()"]
    assert _widgets_closed_after_shown(cells(
        "rt = ab.Runtime()", "inspector = ref.widget()", "inspector.close()")) == [
        "cell 2: inspector.close()"]
    assert _widgets_closed_after_shown(cells(
        "rt = ab.Runtime()", "rt.approvals", "rt.close()")) == ["cell 2: rt.close()"]
    # a restart shown on a runtime of its own, and a notebook without widgets, are fine
    assert _widgets_closed_after_shown(cells(
        "rt = ab.Runtime()", "rt.approvals",
        "before = ab.Runtime(folder)\nbefore.close()\nafter = ab.Runtime(folder)\nafter.close()",
    )) == []
    assert _widgets_closed_after_shown(cells(
        "rt = ab.Runtime()", "rt.close()\nrt = ab.Runtime()", "ref.diff_widget()")) == []


# -- instructions that hold in Voila too ---------------------------------------------
NOTEBOOK_ONLY = re.compile(r"Shift\+Enter|click it to expand|run this cell", re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_jupyter_only_instructions_also_say_what_voila_shows(path):
    """Voila shows the markdown and the outputs, never the code: a cell that says to press
    Shift+Enter, to click a collapsed cell or to run a cell also says what a Voila reader sees."""
    cells = _cells(path)
    wrong = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
             and NOTEBOOK_ONLY.search(_source(c)) and "Voila" not in _source(c)]
    assert not wrong, f"{path.name}: cells {wrong} give Jupyter-only instructions without Voila's"
