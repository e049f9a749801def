"""One owner per agent across processes (SPEC 2.1), exclusive store creation, file names
that stay apart on case-insensitive file systems, and names that can't leave the folder.

The cross-process tests start this very file as a child process (``python
test_ownership.py child FOLDER``): it opens ``ab.Runtime(FOLDER)`` and obeys one command
per line on stdin, answering one line on stdout:

    call NAME ID     ->  ok <count> | err <ErrorType> <message>
    state NAME       ->  ok <state as JSON>
    every NAME       ->  ok            (the agent schedules tick() every 0.05 s)
    hibernate        ->  ok <how many hibernated>
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import apsw
import pytest

import agentbook as ab
from agentbook.store import AgentStore, agent_file

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


class OwnCounter(ab.Agent):
    """Counts calls; each call also leaves a row naming the process that ran it."""

    initial_state = {"n": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS runs(id TEXT, pid INTEGER)")

    @ab.callable
    async def add(self, msg_id: str) -> int:
        self.sql("INSERT INTO runs VALUES (?, ?)", msg_id, os.getpid())
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def every(self) -> None:
        await self.schedule_every(0.05, "tick")

    async def tick(self) -> None:
        self.sql("INSERT INTO runs VALUES ('tick', ?)", os.getpid())
        self.set_state({"n": self.state["n"] + 1})


# -- the child ------------------------------------------------------------------------
async def _child(folder: str) -> None:
    rt = ab.Runtime(folder, hibernate_after=3600, owner_wait=0.2)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        word, *rest = line.split()
        try:
            if word == "call":
                answer = str(await rt.get(OwnCounter, rest[0]).add(rest[1]))
            elif word == "state":
                answer = json.dumps(rt.get(OwnCounter, rest[0]).state)
            elif word == "every":
                await rt.get(OwnCounter, rest[0]).every()
                answer = ""
            elif word == "hibernate":
                answer = str(rt.hibernate())
            else:
                answer = f"unknown command {word}"
            out = f"ok {answer}\n"
        except Exception as exc:
            out = f"err {type(exc).__name__} {' '.join(str(exc).split())}\n"
        os.write(1, out.encode())
    await rt.aclose()


class Child:
    """A child process running :func:`_child` on *folder*."""

    def __init__(self, folder: str) -> None:
        self.proc = subprocess.Popen([sys.executable, HERE, "child", folder], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def ask(self, command: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        assert line.endswith("\n"), f"the child died answering {command!r}"
        return line.strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


@pytest.fixture
def child(tmp_path):
    made: list[Child] = []

    def start(folder=None) -> Child:
        made.append(Child(str(folder or tmp_path / "store")))
        return made[-1]

    yield start
    for c in made:
        c.close()


def _disk(folder, name: str) -> tuple[int, int]:
    """(state n, rows in runs) of agent *name*, read straight from its file."""
    rt = ab.Runtime(folder)
    path = rt.path_of(("OwnCounter", name))
    rt.close()
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        state = json.loads(conn.execute("SELECT state FROM _ab_state").fetchall()[0][0])
        rows = conn.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    finally:
        conn.close()
    return state["n"], rows


# -- across processes ---------------------------------------------------------------------
async def test_a_second_process_gets_a_typed_error_naming_the_owner(tmp_path, child):
    folder = tmp_path / "store"
    owner = child()
    for i in range(3):
        assert await owner.ask(f"call shared a{i}") == f"ok {i + 1}"
    rt = ab.Runtime(folder, owner_wait=0.2)
    ref = rt.get(OwnCounter, "shared")
    with pytest.raises(ab.OwnedElsewhereError) as caught:
        await ref.add("b0")
    err = caught.value
    assert isinstance(err, ab.StoreError)
    assert err.owner["pid"] == owner.proc.pid and err.owner["host"]
    assert str(owner.proc.pid) in str(err) and "hibernate" in str(err)
    # the owner goes on undisturbed: no raw SQLite error, its count is the file's
    for i in range(3, 6):
        assert await owner.ask(f"call shared a{i}") == f"ok {i + 1}"
    # reads from here are fresh: they read what the owner committed
    assert ref.state == {"n": 6} and ref.version == ref.history().version.max()
    assert ref.history().method.tolist()[:6] == ["add"] * 6
    assert ref.sql("SELECT count(*) AS c FROM runs").c[0] == 6
    assert _disk(folder, "shared") == (6, 6)
    # the owner lets go: this process takes over, then gives it back
    assert await owner.ask("hibernate") == "ok 1"
    assert await ref.add("b1") == 7
    rt.hibernate()
    assert await owner.ask("call shared a6") == "ok 8"
    assert await owner.ask("state shared") == 'ok {"n": 8}'
    assert ref.state == {"n": 8}
    pids = {r.pid for r in ref.sql("SELECT pid FROM runs").itertuples()}
    assert pids == {owner.proc.pid, os.getpid()}
    await rt.aclose()


async def test_a_killed_owner_frees_its_agents_at_once(tmp_path, child):
    folder = tmp_path / "store"
    owner = child()
    assert await owner.ask("call shared a0") == "ok 1"
    owner.kill()
    rt = ab.Runtime(folder, owner_wait=5.0)
    assert await asyncio.wait_for(rt.get(OwnCounter, "shared").add("b0"), 5.0) == 2
    await rt.aclose()


async def test_schedules_run_only_in_the_owning_process(tmp_path, child):
    from .waiting import eventually

    folder = tmp_path / "store"
    owner = child()
    assert await owner.ask("every ticker") == "ok"
    rt = ab.Runtime(folder, owner_wait=0.05)  # its timers load the shared index
    ref = rt.get(OwnCounter, "ticker")
    await eventually(lambda: ref.state["n"] >= 1, timeout=30, what="the first tick")
    start = ref.state["n"]
    # 20 more occurrences in the owner; this process's timers saw each come due
    await eventually(lambda: ref.state["n"] >= start + 20, timeout=30,
                     what="20 more ticks in the owner")
    rows = ref.sql("SELECT pid, count(*) AS c FROM runs GROUP BY pid")
    assert rows.pid.tolist() == [owner.proc.pid], rows
    ticks = ref.history(limit=1000, method="tick")
    assert len(ticks) >= start + 20 and ticks.occurrence.is_unique  # each occurrence once
    assert ("OwnCounter", "ticker") not in rt.open_stores
    # the owner dies: this process takes the schedule over
    owner.kill()
    before = ref.state["n"]
    await eventually(lambda: ref.state["n"] >= before + 3, timeout=30,
                     what="ticks run here after the owner died")
    assert os.getpid() in ref.sql("SELECT pid FROM runs").pid.tolist()
    await rt.aclose()


async def test_a_hibernation_empties_the_lock_file_and_a_destroy_removes_it(tmp_path):
    """Issue 20: the lock file stays between wakes (no create and unlink per wake), empty
    and unlocked while the agent sleeps; it names its holder while awake; another runtime
    takes it after a hibernation; deleting the agent removes it."""
    from agentbook.store import lease

    rt = ab.Runtime(tmp_path / "s")
    ref = rt.get(OwnCounter, "a")
    assert await ref.add("x") == 1
    lock = rt.catalog.lock_path("OwnCounter", "a")
    assert lease.owner_of(lock)["pid"] == os.getpid() and not lease.is_free(lock)
    inode = os.stat(lock).st_ino
    rt.hibernate()
    assert os.path.exists(lock) and os.path.getsize(lock) == 0 and lease.is_free(lock)
    assert lease.owner_of(lock) == {}
    other = ab.Runtime(tmp_path / "s", owner_wait=0.0)
    assert await other.get(OwnCounter, "a").add("y") == 2  # (the same file, taken again)
    assert os.stat(lock).st_ino == inode and not lease.is_free(lock)
    other.hibernate()
    await other.aclose()
    assert await ref.add("z") == 3
    await ref.destroy()
    assert not os.path.exists(lock)
    await rt.aclose()


# -- creation ---------------------------------------------------------------------------
async def test_creation_never_overwrites_a_store_another_process_made(tmp_path, monkeypatch):
    from agentbook.store import health

    path = str(tmp_path / "agents" / "S" / "a.db")
    other = AgentStore(path)
    other.begin()
    other.write_state(5, '{"n": 5}')
    other.commit()
    other.close()
    # this process looked before the other one published its store ("file missing?")
    monkeypatch.setattr(health, "check_file", lambda p: True)
    store = AgentStore(path)
    assert store.load_state() == (5, '{"n": 5}')
    store.close()


def test_creation_uses_a_temporary_file_of_its_own(tmp_path):
    path = tmp_path / "agents" / "S" / "a.db"
    path.parent.mkdir(parents=True)
    os.mkdir(f"{path}.tmp")  # another process's temporary file in the way
    store = AgentStore(str(path))
    assert store.load_state() is None
    store.close()
    assert sorted(os.listdir(path.parent)) == ["a.db", "a.db.tmp"]


# -- names and case -----------------------------------------------------------------------
@pytest.mark.parametrize("names", [("Alice", "alice", "ALICE", "aLiCe"), ("a", "A"),
                                   ("x.Y-z", "X.y-Z", "x.y-z"), ("con", "CON", "Con")])
def test_names_that_differ_only_in_case_get_different_files(names):
    files = [agent_file("Support", n) for n in names]
    assert len({f.casefold() for f in files}) == len(names), files


@pytest.mark.parametrize("name", ["con", "CON", "nul", "Com1", "lpt9", "aux.x", "prn"])
def test_windows_reserved_names_are_never_bare_file_names(name):
    stem = os.path.basename(agent_file("Support", name)).split(".")[0]
    assert stem.lower() not in {"con", "prn", "aux", "nul", "com1", "lpt9"}


def test_lowercase_names_keep_their_readable_file_names():
    assert agent_file("Support", "alice") == os.path.join("agents", "Support", "alice.db")


async def test_a_store_whose_inside_name_differs_is_refused_not_merged(tmp_path):
    rt = ab.Runtime(tmp_path)
    assert await rt.get(OwnCounter, "alice").add("x") == 1
    rt.hibernate()
    # a case-insensitive file system shows alice's file under Alice's file name
    alice = rt.path_of(("OwnCounter", "alice"))
    os.symlink(alice, os.path.join(os.path.dirname(alice), os.path.basename(
        agent_file("OwnCounter", "Alice"))))
    with pytest.raises(ab.StoreError, match="alice"):
        await rt.get(OwnCounter, "Alice").add("y")
    assert _disk(tmp_path, "alice") == (1, 1)
    await rt.aclose()


async def test_a_store_made_under_the_old_file_name_is_still_found(tmp_path):
    rt = ab.Runtime(tmp_path)
    assert await rt.get(OwnCounter, "Alice").add("x") == 1
    path = rt.path_of(("OwnCounter", "Alice"))
    await rt.aclose()
    old = os.path.join(tmp_path, "agents", "OwnCounter", "Alice.db")  # the naming before
    if path != old:
        os.rename(path, old)
    rt = ab.Runtime(tmp_path)
    ref = rt.get(OwnCounter, "Alice")
    assert ref.state == {"n": 1}
    assert await ref.add("y") == 2
    assert rt.path_of(("OwnCounter", "Alice")) == old
    await rt.aclose()


@pytest.mark.parametrize("class_name", ["../../evil", "a/b", "a\\b", "..", ".", "CON", "nul",
                                        "Com1", "x\x00y", "tab\there", "dot.", "", "a:b"])
async def test_bad_class_names_are_refused_and_nothing_is_written(tmp_path, class_name):
    targets: list = [class_name]
    if class_name and "\x00" not in class_name:  # (type() refuses NUL; "" is set below)
        targets.append(type(class_name, (ab.Agent,), {"__module__": __name__}))
    folder = tmp_path / "rt" / "store"
    rt = ab.Runtime(folder)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for target in targets:
        with pytest.raises(ab.UsageError):
            rt.get(target, "alice")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    await rt.aclose()


@pytest.mark.parametrize("name", [".", "..", "a/b", "a\\b", "x\x00", "", "a\nb"])
async def test_bad_agent_names_are_refused(tmp_path, name):
    rt = ab.Runtime(tmp_path)
    with pytest.raises(ab.UsageError):
        rt.get(OwnCounter, name)
    await rt.aclose()


async def test_classes_whose_names_differ_only_in_case_are_refused(tmp_path):
    lower = type("owncounter", (OwnCounter,), {"__module__": __name__})
    rt = ab.Runtime(tmp_path)
    assert await rt.get(OwnCounter, "a").add("x") == 1
    with pytest.raises(ab.UsageError, match="case"):
        rt.get(lower, "a")
    await rt.aclose()
    rt = ab.Runtime(tmp_path)  # a new process: the folder on disk says so
    with pytest.raises(ab.UsageError, match="case"):
        rt.get("owncounter", "a")
    await rt.aclose()


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    asyncio.run(_child(sys.argv[2]))
