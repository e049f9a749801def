"""File descriptors (issue 18): an awake agent read from outside holds about six, so the
runtime sizes ``max_open`` from the process's limit on open files, and running out of them
is a typed error, never a raw ``unable to open database file`` or ``OSError``.

The low limits are set in child processes (``preexec_fn``), so this process keeps its own.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from agentbook.store import fds

resource = pytest.importorskip("resource", reason="file-descriptor limits are Unix only")


def _low(limit: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return set_limit


def _run(args: list[str], limit: int, cwd, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, preexec_fn=_low(limit), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


_MANY = textwrap.dedent("""
    import asyncio, sys
    import agentbook as ab

    class Customer(ab.Agent):
        initial_state = {"n": 0}

        async def on_start(self):
            self.sql("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, text TEXT)")

        @ab.callable
        async def note(self, text: str) -> int:
            self.sql("INSERT INTO notes(text) VALUES (?)", text)
            self.set_state({"n": self.state["n"] + 1})
            return self.state["n"]

    async def main() -> None:
        async with ab.Runtime(sys.argv[1]) as rt:
            for i in range(300):
                ref = rt.get(Customer, f"c{i:03d}")
                assert await ref.note("hello") == 1
                assert ref.state == {"n": 1}          # reads from outside: a reader opens
                assert len(ref.sql("SELECT * FROM notes")) == 1
                assert len(ref.history()) >= 1
            assert int(rt.sql("SELECT count(DISTINCT name) AS n FROM history").n[0]) == 300
            print("max_open", rt.max_open)

    asyncio.run(main())
""")


def test_300_agents_read_from_outside_under_ulimit_256(tmp_path):
    script = tmp_path / "many.py"
    script.write_text(_MANY)
    done = _run([sys.executable, str(script), str(tmp_path / "s")], 256, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = int(done.stdout.split()[-1])
    assert 4 <= chosen * fds.PER_STORE <= 256


def test_demo_week_under_ulimit_256(tmp_path):
    """The capstone asks for max_open=2048: under 256 descriptors it is lowered, not fatal."""
    done = _run([sys.executable, "-m", "agentbook", "demo", "--customers", "300", "--days", "2",
                 "--plots", ""], 256, tmp_path)
    assert done.returncode == 0, (done.stdout[-1000:], done.stderr[-2000:])
    assert "approvals" in done.stdout


def test_demo_quick_under_ulimit_256(tmp_path):
    done = _run([sys.executable, "-m", "agentbook", "demo", "--quick"], 256, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


_EXHAUSTED = textwrap.dedent("""
    import asyncio, os, sys
    import agentbook as ab
    from agentbook.errors import LimitError

    class Item(ab.Agent):
        initial_state = {"n": 0}

        @ab.callable
        async def bump(self) -> int:
            self.set_state({"n": self.state["n"] + 1})
            return self.state["n"]

    async def main() -> None:
        async with ab.Runtime(sys.argv[1], max_open=2, hibernate_after=0) as rt:
            for name in ("a", "b", "c"):
                await rt.get(Item, name).bump()
            rt.sql("SELECT 1 AS x"), rt.get(Item, "a").sql("SELECT 1")  # (modules imported)
            await rt.get(Item, "b").bump()  # (a hibernates: reading it opens its file again)
            held = []
            try:                         # use up every descriptor left
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            outcomes = []
            for what in (lambda: rt.get(Item, "a").state, lambda: rt.sql("SELECT 1 AS x"),
                         lambda: rt.get(Item, "a").sql("SELECT 1")):
                try:
                    what()
                    outcomes.append("ok")
                except LimitError as exc:
                    assert "max_open" in str(exc) and "ulimit -n" in str(exc), exc
                    outcomes.append("LimitError")
                except BaseException as exc:
                    outcomes.append(type(exc).__name__ + ": " + str(exc))
            for fd in held:
                os.close(fd)
            print(outcomes)
            assert all(o in ("ok", "LimitError") for o in outcomes), outcomes
            assert "LimitError" in outcomes, outcomes
            assert await rt.get(Item, "a").bump() == 2    # and all is well again

    asyncio.run(main())
""")


def test_running_out_of_descriptors_is_a_typed_error(tmp_path):
    script = tmp_path / "exhausted.py"
    script.write_text(_EXHAUSTED)
    done = _run([sys.executable, str(script), str(tmp_path / "s")], 128, tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])


def test_max_open_is_sized_from_the_limit(monkeypatch, caplog):
    monkeypatch.setattr(fds, "raise_soft_limit", lambda: 256)
    assert fds.fit_max_open(None) * fds.PER_STORE <= 256 - fds.reserve(256)
    assert fds.fit_max_open(10) == 10  # given and fits: kept
    with caplog.at_level(logging.WARNING, "agentbook"):
        lowered = fds.fit_max_open(2048)
    assert lowered == fds.fit_max_open(None) and "ulimit -n" in caplog.text
    assert fds.fit_max_open(0) == 0  # not a count: left for the runtime to refuse
    monkeypatch.setattr(fds, "raise_soft_limit", lambda: 1 << 16)
    assert fds.fit_max_open(None) == fds.DEFAULT_MAX_OPEN


def test_the_soft_limit_is_raised_toward_the_hard_one(tmp_path):
    code = ("import resource, agentbook as ab; ab.Runtime(':memory:');"
            " print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")

    def low_soft() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    done = subprocess.run([sys.executable, "-c", code], preexec_fn=low_soft, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 256
