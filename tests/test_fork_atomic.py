"""A fork is all or nothing (issue 18): killed half-way, it leaves no store under its name
(forking again works, the name never runs as a blank new agent), and the catalog can
always be rebuilt to match the stores."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import agentbook as ab

CHILD = textwrap.dedent('''
    import asyncio, os, signal, sys
    import agentbook as ab
    import agentbook.travel.replay as replay

    class Forked(ab.Agent):
        initial_state = {"n": 0}

        @ab.callable
        async def bump(self):
            self.sql("CREATE TABLE IF NOT EXISTS t(x)")
            self.sql("INSERT INTO t VALUES (?)", self.state["n"])
            self.set_state({"n": self.state["n"] + 1})

    async def main():
        folder, when = sys.argv[1], sys.argv[2]
        rt = ab.Runtime(folder)
        ref = rt.get(Forked, "parent")
        for _ in range(3):
            await ref.bump()
        real_copy, real_link = replay.copy_into, os.link

        def copy_then_die(mem, conn):
            real_copy(mem, conn)
            os.kill(os.getpid(), signal.SIGKILL)      # the fork's rows are half written

        def link_then_die(src, dst):
            real_link(src, dst)
            if str(dst).endswith("child.db"):
                os.kill(os.getpid(), signal.SIGKILL)  # published, nothing after it ran

        if when == "mid-write":
            replay.copy_into = copy_then_die
        else:
            os.link = link_then_die
        await ref.fork("child")

    asyncio.run(main())
''')


class Forked(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def bump(self):
        self.sql("CREATE TABLE IF NOT EXISTS t(x)")
        self.sql("INSERT INTO t VALUES (?)", self.state["n"])
        self.set_state({"n": self.state["n"] + 1})


def _kill_mid_fork(tmp_path, when: str):
    script = tmp_path / "fork_child.py"
    script.write_text(CHILD)
    folder = tmp_path / "rt"
    done = subprocess.run([sys.executable, str(script), str(folder), when], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    return folder


def _stores(folder) -> set[str]:
    base = folder / "agents" / "Forked"
    return {p for p in os.listdir(base) if p.endswith(".db")}


@pytest.mark.parametrize("when", ["mid-write", "after-publish"])
async def test_a_fork_killed_half_way_is_all_or_nothing(tmp_path, when):
    folder = _kill_mid_fork(tmp_path, when)
    rt = ab.Runtime(folder)
    try:
        child = rt.get(Forked, "child")
        if when == "mid-write":
            assert _stores(folder) == {"parent.db"}  # no blank store under the fork's name
            child = await rt.get(Forked, "parent").fork("child")  # forking again works
        else:
            assert _stores(folder) == {"parent.db", "child.db"}
        base = folder / "agents" / "Forked"
        for left in [p for p in os.listdir(base) if ".fork-" in p]:
            os.utime(base / left, (0, 0))  # (left by the kill long ago)
            os.rename(base / left, base / left.replace("child.db", "grandchild.db", 1))
        await rt.get(Forked, "parent").fork("grandchild")  # (and clears what a kill left)
        assert not [p for p in os.listdir(folder / "agents" / "Forked") if ".fork-" in p]
        assert child.state == {"n": 3}
        assert child.version == 3
        assert child.sql("SELECT x FROM t ORDER BY x")["x"].tolist() == [0, 1, 2]
        assert rt.catalog.rebuild() == 3
        assert {(c, n) for c, n, *_ in rt.catalog.rows()} == {
            ("Forked", "parent"), ("Forked", "child"), ("Forked", "grandchild")}
        parents = {n: p for _c, n, _f, _t, p in rt.catalog.rows()}
        assert "parent" in parents["child"] and "3" in parents["child"]
    finally:
        await rt.aclose()


async def test_a_fork_that_fails_leaves_no_file_and_no_listing(tmp_path, monkeypatch):
    rt = ab.Runtime(tmp_path / "rt")
    ref = rt.get(Forked, "parent")
    await ref.bump()

    def broken(mem, conn):
        raise OSError("disk went away")

    monkeypatch.setattr("agentbook.travel.replay.copy_into", broken)
    with pytest.raises(OSError):
        await ref.fork("child")
    left = [p for p in os.listdir(tmp_path / "rt" / "agents" / "Forked") if "child" in p]
    assert left == []  # (no temporary file either)
    assert [n for _c, n, *_ in rt.catalog.rows()] == ["parent"]
    monkeypatch.undo()
    child = await ref.fork("child")
    assert child.state == {"n": 1}
    await rt.aclose()


async def test_forking_onto_an_existing_name_is_refused_and_changes_nothing(tmp_path):
    rt = ab.Runtime(tmp_path / "rt")
    ref = rt.get(Forked, "parent")
    await ref.bump()
    other = rt.get(Forked, "other")
    await other.bump()
    await other.bump()
    with pytest.raises(ab.UsageError, match="already exists"):
        await ref.fork("other")
    assert other.state == {"n": 2}
    await rt.aclose()
