"""Two processes on one folder, seen from the reading side (issue 18): reads are never
stale, reads wait out another connection's hold on a store, nothing is deleted or forked
behind the lease's back, and every path to a store is the runtime's own (stores named by
an older agentbook are found).

The cross-process tests drive a child process of :mod:`tests.test_ownership` (its
``call``/``hibernate`` commands; see that module's docstring).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import agentbook as ab
from agentbook.store import lease, sqlaccess
from agentbook.store.changesets import materialize

from .test_ownership import Child, OwnCounter


@pytest.fixture
def child(tmp_path):
    made: list[Child] = []

    def start(folder) -> Child:
        made.append(Child(str(folder)))
        return made[-1]

    yield start
    for c in made:
        c.close()


async def _agent_on_disk(folder, name: str = "a", calls: int = 1) -> str:
    """Make agent *name* with *calls* calls, let it go, and return its store's path."""
    rt = ab.Runtime(folder)
    for i in range(calls):
        await rt.get(OwnCounter, name).add(f"x{i}")
    path = rt.path_of(("OwnCounter", name))
    await rt.aclose()
    return path


def _while_held(path: str, read: Callable[[], Any]) -> Any:
    """Run *read* in a thread while another connection holds *path* exclusively (as a
    writer closing its store does while it checkpoints), let go, and return what *read*
    returned. A read that does not wait has failed before the hold ends."""
    holder = apsw.Connection(path)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
    holder.execute("CREATE TABLE IF NOT EXISTS held(x)")  # (writing takes the lock)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = read()
        except Exception as exc:
            out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(0.5)  # (a read that fails at once is over by now; one that waits is not)
    holder.close()
    worker.join(30)
    assert not worker.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- the views see every process's commits ------------------------------------------------
async def test_the_views_catch_up_with_what_another_process_commits(tmp_path, child,
                                                                    monkeypatch):
    folder = tmp_path / "store"
    other = child(folder)
    assert await other.ask("call shared a0") == "ok 1"
    rt = ab.Runtime(folder)

    def newest(name: str) -> Any:
        return rt.sql(f"SELECT version FROM agents WHERE name = '{name}'").version.tolist()

    assert newest("shared") == [rt.get(OwnCounter, "shared").version]
    assert len(rt.analytics.table("runs")) == 1
    for i in range(1, 3):  # the other process commits; this one runs nothing
        assert await other.ask(f"call shared a{i}") == f"ok {i + 1}"
    assert await other.ask("call second b0") == "ok 1"
    version = rt.get(OwnCounter, "shared").version
    assert newest("shared") == [version]
    assert newest("second") == [rt.get(OwnCounter, "second").version]
    history = rt.sql("SELECT max(version) AS v, count(*) AS n FROM history"
                     " WHERE name = 'shared' AND method = 'add'")
    assert history.v[0] == version and history.n[0] == 3
    assert sorted(rt.sql("SELECT id FROM runs").id) == ["a0", "a1", "a2", "b0"]
    # nothing new anywhere: a catch-up looks at the files and opens none of them (files
    # changed in the last 2 s are read again, for coarse file-system clocks: not here)
    monkeypatch.setattr("agentbook.analytics.views._SETTLED_NS", 0)
    rt.analytics.catch_up()
    opened: list[str] = []
    real = sqlaccess.open_reader
    monkeypatch.setattr("agentbook.store.open_reader",
                        lambda path: opened.append(path) or real(path))
    assert rt.analytics.catch_up() == 0
    assert opened == []
    assert await other.ask("call shared a3") == "ok 4"
    assert rt.analytics.catch_up() == 1
    assert set(opened) == {rt.path_of(("OwnCounter", "shared"))}  # (its history, its runs)
    await rt.aclose()


async def test_a_new_store_that_another_process_makes_is_in_the_views(tmp_path, child):
    folder = tmp_path / "store"
    rt = ab.Runtime(folder)
    assert await rt.get(OwnCounter, "here").add("h0") == 1
    assert rt.sql("SELECT name FROM agents").name.tolist() == ["here"]
    other = child(folder)
    assert await other.ask("call there t0") == "ok 1"
    assert await other.ask("call there t1") == "ok 2"
    assert sorted(rt.sql("SELECT name FROM agents").name) == ["here", "there"]
    assert rt.sql("SELECT count(*) AS n FROM history WHERE name = 'there'"
                  " AND method = 'add'").n[0] == 2
    await rt.aclose()


# -- reads wait out another connection's hold ---------------------------------------------
async def test_readers_wait_for_a_store_another_connection_holds(tmp_path):
    from agentbook.cli.doctor import check_file

    folder = tmp_path / "store"
    path = await _agent_on_disk(folder, calls=2)
    rt = ab.Runtime(folder)
    version = rt.get(OwnCounter, "a").version
    agents = _while_held(path, rt.agents)
    assert agents.version.tolist() == [version]
    views = _while_held(path, lambda: rt.sql("SELECT version FROM agents"))
    assert views.version.tolist() == [version]
    entry = _while_held(path, lambda: check_file(path))
    assert entry["ok"] and entry["version"] == version, entry
    # every reader from outside waits a few seconds (a fork's copy of its parent too)
    conn = sqlaccess.open_reader(path)
    assert conn.execute("PRAGMA busy_timeout").fetchall()[0][0] >= 1000
    conn.close()
    mem = materialize(path, version, "a")
    assert mem.execute("PRAGMA busy_timeout").fetchall()[0][0] >= 1000
    mem.close()
    await rt.aclose()


# -- destroy deletes under the lease ------------------------------------------------------
async def test_destroy_of_an_agent_another_process_runs_waits_then_fails(tmp_path, child):
    folder = tmp_path / "store"
    other = child(folder)
    assert await other.ask("call shared a0") == "ok 1"
    rt = ab.Runtime(folder, owner_wait=0.2)
    ref = rt.get(OwnCounter, "shared")
    path = rt.path_of(ref._ab_key)
    with pytest.raises(ab.OwnedElsewhereError) as caught:
        await ref.destroy()
    assert caught.value.owner["pid"] == other.proc.pid
    assert os.path.exists(path) and len(rt.agents()) == 1  # nothing deleted, still listed
    assert await other.ask("call shared a1") == "ok 2"  # the owner goes on undisturbed
    # once the owner lets go, destroy takes the lease and deletes
    assert await other.ask("hibernate") == "ok 1"
    await ref.destroy()
    assert not os.path.exists(path) and rt.agents().empty
    assert await other.ask("call shared a2") == "ok 1"  # a new agent under the old name
    await rt.aclose()


async def test_destroy_deletes_the_files_while_holding_the_lease(tmp_path, monkeypatch):
    rt = ab.Runtime(tmp_path)
    ref = rt.get(OwnCounter, "a")
    assert await ref.add("x") == 1
    path = rt.path_of(ref._ab_key)
    lock = rt.catalog.lock_path(*ref._ab_key)
    free_while_deleting: list[bool] = []
    real_remove = os.remove

    def remove(target, *args, **kwargs):
        if str(target).startswith(path):
            free_while_deleting.append(lease.is_free(lock))
        return real_remove(target, *args, **kwargs)

    monkeypatch.setattr(os, "remove", remove)
    await ref.destroy()
    monkeypatch.undo()
    assert free_while_deleting and not any(free_while_deleting)
    assert lease.is_free(lock) and not os.path.exists(path)  # let go afterwards
    assert await ref.add("y") == 1
    await rt.aclose()


# -- paths are the runtime's; a fork takes the new agent's lease --------------------------
async def _old_named_store(folder, name: str = "Alice") -> str:
    """Agent *name*'s store, moved to where an older agentbook put it; its path."""
    path = await _agent_on_disk(folder, name)
    old = os.path.join(folder, "agents", "OwnCounter", f"{name}.db")
    assert path != old
    os.rename(path, old)
    return old


def test_show_names_the_file_the_runtime_reads(tmp_path, capsys):
    from agentbook.cli.main import main

    old = asyncio.run(_old_named_store(tmp_path))
    assert main(["show", "OwnCounter/Alice", "--path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"  file     {old}\n" in out and '"n": 1' in out


async def test_release_refuses_when_an_old_named_store_is_in_service(tmp_path):
    from agentbook.cli.doctor import release

    old = await _old_named_store(tmp_path)
    restored = tmp_path / "backup.db"
    restored.write_bytes(Path(old).read_bytes())
    conn = apsw.Connection(str(tmp_path / "catalog.db"))
    conn.execute("INSERT INTO quarantine VALUES ('OwnCounter', 'Alice', ?, 'test', 0)",
                 (str(tmp_path / "quarantine" / "gone.db"),))
    conn.close()
    with pytest.raises(ab.UsageError, match="already at"):
        release(tmp_path, "OwnCounter", "Alice", restored=restored)
    stores = [f for f in os.listdir(os.path.dirname(old)) if f.endswith(".db")]
    assert stores == ["Alice.db"]  # no second store of Alice


async def test_a_fork_takes_the_new_agents_lease_while_it_writes(tmp_path):
    rt = ab.Runtime(tmp_path)
    ref = rt.get(OwnCounter, "a")
    assert await ref.add("x") == 1
    # another process is making OwnCounter('b') right now (it holds b's lease)
    other = lease.take(rt.catalog.lock_path("OwnCounter", "b"), "OwnCounter('b')")
    with pytest.raises(ab.OwnedElsewhereError):
        await ref.fork("b")
    assert not os.path.exists(rt.path_of(("OwnCounter", "b")))
    assert [r[1] for r in rt.catalog.rows()] == ["a"]
    other.release()
    fork = await ref.fork("b")
    assert fork.state == {"n": 1}
    assert lease.is_free(rt.catalog.lock_path("OwnCounter", "b"))  # let go when written
    rows = {r[1]: r[2] for r in rt.catalog.rows()}
    assert os.path.join(tmp_path, rows["b"]) == rt.path_of(("OwnCounter", "b"))
    assert await fork.add("y") == 2
    assert fork.state == {"n": 2}
    await rt.aclose()
