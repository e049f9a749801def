"""The README's first Python example runs as written, top-level ``await`` included; the
set-up says what the test command needs beside pip, and every skipped test says how to
enable it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the README's fenced ``python`` blocks."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


async def run_like_a_cell(source: str, namespace: dict) -> None:
    """Run *source* as a notebook cell would: top-level ``await`` allowed."""
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if result is not None:  # a coroutine when the source awaits
        await result


async def test_readme_example_runs_in_a_fresh_folder(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    try:
        await run_like_a_cell(blocks[0], namespace)  # the ten-line example; the rest are sketches
        alice = namespace["alice"]
        assert alice.state == {"tickets": 1}
        assert list(alice.sql("SELECT text FROM tickets")["text"]) == ["printer on fire"]
        assert list(alice.history()["version"]) == [2, 1]
    finally:
        if "rt" in namespace:
            await namespace["rt"].aclose()
    assert (tmp_path / ".agentbook" / "agents" / "Support" / "alice.db").exists()


# -- the newcomer's path: the set-up commands and what they leave out ---------------------------
TESTS = Path(__file__).parent
CI = TESTS.parent / ".ci" / "run"

#: Words that say how to enable a skipped test.
HOW = ("pip install", "npm ci", "apt-get install", "pytest -m", "root with CAP_SYS_ADMIN")
#: Skips nobody can enable here, by design or by platform (the reason says why).
CANNOT = ("needs RLIMIT_NOFILE", "':memory:' runtimes are ephemeral by design",
          "the hard limit leaves nothing to raise", "no mount rights here",
          "file-descriptor limits are Unix only", "the serve path is not in this checkout")


def _skip_reasons() -> list[tuple[str, str]]:
    """``(where, reason)`` of every skip in the tests: ``pytest.skip(...)``,
    ``pytest.importorskip(..., reason=...)``, ``pytest.mark.skip(reason=...)`` and
    ``pytest.mark.skipif(..., reason=...)``; a reason built at run time is its source."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name not in ("pytest.skip", "pytest.importorskip", "pytest.mark.skip",
                            "pytest.mark.skipif"):
                continue
            reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
            if reason is None and name == "pytest.skip" and node.args:
                reason = node.args[0]
            where = f"{path.relative_to(TESTS.parent)}:{node.lineno}"
            if reason is None:
                found.append((where, ""))
            elif isinstance(reason, ast.Constant):
                found.append((where, str(reason.value)))
            else:
                found.append((where, ast.unparse(reason)))
    return found


def test_every_skip_says_how_to_enable_it():
    reasons = _skip_reasons()
    assert len(reasons) > 15
    silent = [(where, reason) for where, reason in reasons
              if not any(h in reason for h in HOW) and not any(c in reason for c in CANNOT)
              and "_INSTALL" not in reason and "marker" not in reason]
    assert not silent, "say how to enable these skips (a command to run): " + repr(silent)


def test_the_readme_says_what_the_test_command_needs_beside_pip():
    text = README.read_text(encoding="utf-8")
    command = 'pip install -e ".[test]" && pytest'
    assert command in text
    after = text[text.index(command):][:1500]
    for need in ("npm ci --prefix tests/node", "npm ci --prefix tests/mcp", "chromium",
                 "pytest -rs", ".ci/run", "--junitxml", "python binder/lock.py"):
        assert need in after, f"the README should say, next to the test command: {need}"
    assert f"{command} 2>&1" in CI.read_text(encoding="utf-8"), "CI runs the README's command"
