"""The README's first Python example runs as written, top-level ``await`` included."""

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
