"""Group 11: damaged, full and read-only stores.

* A store file that is truncated, has a garbage header or a garbage first page: its agent
  refuses to start with a clear error (it names the file's new place and ``agentbook
  doctor``), the file is moved to ``<root>/quarantine/`` and recorded in the catalog, it
  stays refused after a restart, and every other agent keeps working.
* A byte changed inside a history row's JSON - same length, invisible to SQLite's own
  checks - is found by the hash chain: ``ref.verify()`` and ``agentbook.cli.doctor`` name the
  first bad version.
* A full disk - a store's size cap (everywhere), and a real file system that fills up
  (a small tmpfs, where this process may mount one) - gives ``StoreFullError`` and
  everything works again once there is room, with nothing half-written.
* A read-only store folder or file - a read-only bind mount (root included; where this
  process may mount), ``chmod`` (when not root) - gives a typed error and everything works
  again once it is writable. Where neither is possible, the typed translation of SQLite's
  read-only and full errors is checked directly, through the mailbox. A store SQLite
  would open read-only is refused and closed, so it recovers by itself.
* A store file truncated to nothing, and damage found while an agent runs, are
  quarantined too; reads of a quarantined agent say so; ``ref.verify()`` reports a page
  that stops SQLite's own check instead of raising.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import apsw
import pytest

import agentbook as ab
from agentbook.cli.doctor import check_stores
from agentbook.store import translate_error

from . import storeutil

needs_mount = pytest.mark.skipif(not storeutil.can_mount(), reason=(
    "needs to mount a tmpfs or a read-only bind (root with CAP_SYS_ADMIN); the typed "
    "translation is still checked by test_sqlites_errors_become_typed_errors_in_the_mailbox"))


class RelSafe(ab.Agent):
    initial_state = {"n": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT)")

    @ab.callable
    async def inc(self, pad: int = 16) -> int:
        self.sql("INSERT INTO items(v) VALUES (?)", "x" * pad)
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def note(self, text: str) -> None:
        """Leaves *text* in its history row's arguments only."""

    @ab.callable
    async def count(self) -> int:
        return self.sql("SELECT count(*) AS n FROM items")[0]["n"]


def _flip_in_history(path: Path, marker: bytes) -> None:
    """Flip one bit of *marker*'s text where it sits in a page of ``_ab_history`` (exactly
    one place): same length, so SQLite's structure stays valid."""
    with storeutil.reading(path) as conn:
        pages = storeutil.pages_of(conn, "_ab_history")
    data = bytearray(path.read_bytes())
    size = _page_size(data)
    hits = [(p - 1) * size + i for p in sorted(pages)
            for i in _find_all(bytes(data[(p - 1) * size:p * size]), marker)]
    assert len(hits) == 1, f"{marker!r} is in {len(hits)} places of the history"
    data[hits[0] + len(marker) - 2] ^= 0x01
    path.write_bytes(bytes(data))


def _page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def _find_all(haystack: bytes, needle: bytes) -> list[int]:
    out, at = [], haystack.find(needle)
    while at >= 0:
        out.append(at)
        at = haystack.find(needle, at + 1)
    return out


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "cut mid-page":
        data = data[: len(data) // 2 + 1234]
    elif how == "garbage header":
        data[:100] = bytes(range(100))
    elif how == "garbage first page":
        data[100:_page_size(data)] = b"\xff" * (_page_size(data) - 100)
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


async def _three_agents(root: Path, clock: ab.VirtualClock, pad: int = 2000) -> ab.Runtime:
    rt = ab.Runtime(root, clock=clock)
    for name in ("bad", "good1", "good2"):
        for _ in range(30):
            await rt.get(RelSafe, name).inc(pad)
    rt.hibernate()
    return rt


@pytest.mark.parametrize("how", ["truncated", "cut mid-page", "garbage header", "garbage first page"])
async def test_a_damaged_store_is_quarantined_and_the_others_keep_working(tmp_path: Path, clock,
                                                                         how: str, figure) -> None:
    root = tmp_path / "store"
    rt = await _three_agents(root, clock)
    bad = rt.get(RelSafe, "bad")
    path = Path(rt.path_of(bad._ab_key))
    _damage(path, how)
    untyped = undetected = others_broken = 0

    with pytest.raises(ab.StoreCorruptError) as caught:
        await bad.inc()
    message = str(caught.value)
    assert "quarantine" in message and "doctor" in message and "bad" in message
    moved = [p for p in (root / "quarantine").iterdir() if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and not path.exists()
    held = rt.catalog.quarantined("RelSafe", "bad")
    assert held is not None and Path(held[0]) == moved[0]
    with pytest.raises(ab.StoreCorruptError, match="won't start"):  # and it stays refused
        await bad.inc()
    assert not path.exists(), "a refused agent must not get a fresh, empty store"

    for name in ("good1", "good2"):  # the others keep working, reads and writes
        ref = rt.get(RelSafe, name)
        try:
            assert await ref.inc() == 31 and ref.verify()["ok"]
            assert len(ref.history(limit=100)) == 32
        except Exception:
            others_broken += 1
            raise
    views = rt.sql("SELECT name, count(*) AS n FROM history GROUP BY name ORDER BY name")
    assert views.name.tolist()[-2:] == ["good1", "good2"]
    await rt.aclose()

    rt2 = ab.Runtime(root, clock=clock)  # after a restart: still refused, still listed
    with pytest.raises(ab.StoreCorruptError):
        await rt2.get(RelSafe, "bad").inc()
    assert await rt2.get(RelSafe, "good1").inc() == 32
    await rt2.aclose()
    report = {r["name"]: r for r in check_stores(root) if r["kind"] == "quarantined"}
    assert list(report) == ["bad"] and not report["bad"]["ok"]
    figure(f"corrupt_store:{how}", cases=1, untyped=untyped, others_broken=others_broken,
           undetected=undetected)


@pytest.mark.parametrize("where", ["args", "state", "chain", "deleted row"])
async def test_a_change_sqlite_cannot_see_is_found_by_the_hash_chain(tmp_path: Path, clock,
                                                                    where: str, figure) -> None:
    rt = ab.Runtime(tmp_path / "store", clock=clock)
    ref = rt.get(RelSafe, "chained")
    for i in range(5):
        await ref.inc()
        await ref.note(f"marker-{i:03d}")
    rt.hibernate()
    path = Path(rt.path_of(ref._ab_key))
    # versions: 1 on_start, then inc/note pairs: note "marker-002" is version 7
    conn = apsw.Connection(str(path))
    if where == "deleted row":  # a version taken out of the middle
        conn.execute("DELETE FROM _ab_history WHERE version = 7")
        want = 8
    elif where == "state":  # a state rewritten in place, same length (raw SQL on the file)
        conn.execute("UPDATE _ab_history SET state = '{\"n\":9}' WHERE version = 6")
        want = 6
    elif where == "args":  # bit rot inside a row's JSON
        _flip_in_history(path, b'["marker-002"]')
        want = 7
    else:  # bit rot in the chain itself
        chain = conn.execute("SELECT chain FROM _ab_history WHERE version = 7").fetchall()[0][0]
        _flip_in_history(path, chain.encode())
        want = 7
    conn.close()
    assert storeutil.quick_check(path) == "ok", "SQLite's own check sees nothing"
    verdict = ref.verify()
    figure(f"corrupt_store:chain {where}", cases=1, untyped=0, others_broken=0,
           undetected=int(verdict["first_bad_version"] != want))
    assert verdict == {"ok": False, "quick_check": "ok", "first_bad_version": want}
    entry = next(r for r in check_stores(tmp_path / "store") if r["name"] == "chained")
    assert entry["first_bad_version"] == want and not entry["ok"]
    await rt.aclose()


async def test_a_full_store_gives_a_typed_error_and_works_again_with_room(tmp_path: Path, clock,
                                                                         figure) -> None:
    rt = ab.Runtime(tmp_path / "store", clock=clock, max_store_bytes=256 * 1024)
    full, other = rt.get(RelSafe, "full"), rt.get(RelSafe, "other")
    await other.inc()
    with pytest.raises(ab.StoreFullError, match="full"):
        for _ in range(200):
            await full.inc(4000)
    version = full.version
    assert await other.inc() == 2, "another agent's store is not full"
    rt.max_store_bytes = None
    rt.hibernate()
    assert await full.inc(4000) == version  # (version counts on_start too)
    assert full.verify()["ok"] and other.verify()["ok"]
    figure("corrupt_store:size cap", cases=1, untyped=0, others_broken=0, undetected=0)
    await rt.aclose()


@needs_mount
async def test_a_real_disk_that_fills_up_gives_typed_errors_and_recovers(tmp_path: Path, clock,
                                                                        figure) -> None:
    with storeutil.tmpfs("2m") as disk:
        rt = ab.Runtime(disk / "store", clock=clock)
        a, b = rt.get(RelSafe, "a"), rt.get(RelSafe, "b")
        await a.inc()
        await b.inc()
        acknowledged = {"a": 1, "b": 1}
        with pytest.raises(ab.StoreFullError, match="free disk space"):
            while True:
                acknowledged["a"] = await a.inc(20_000)
        with pytest.raises(ab.StoreFullError):
            for _ in range(100):
                acknowledged["b"] = await b.inc(20_000)
        storeutil.run("mount", "-o", "remount,size=16m", str(disk))  # space returns
        for name, ref in (("a", a), ("b", b)):
            assert await ref.inc() == acknowledged[name] + 1, f"{name} lost or doubled a message"
            assert await ref.count() == acknowledged[name] + 1
            assert ref.verify()["ok"]
        await rt.aclose()
        assert all(r["ok"] for r in check_stores(disk / "store"))
    figure("corrupt_store:disk full", cases=1, untyped=0, others_broken=0, undetected=0)


@needs_mount
async def test_creating_an_agent_on_a_full_disk_is_a_store_full_error(tmp_path: Path, clock) -> None:
    """A new agent's store is written from the template with plain file I/O: its ENOSPC
    is a StoreFullError too, no half-written file stays, and it works once there is room."""
    with storeutil.tmpfs("1m") as disk:
        rt = ab.Runtime(disk / "store", clock=clock)
        await rt.get(RelSafe, "first").inc()
        filler = disk / "filler"
        with pytest.raises(OSError), open(filler, "wb") as fh:
            fh.write(b"x" * (2 << 20))
        folder = disk / "store" / "agents" / "RelSafe"
        try:
            with pytest.raises(ab.StoreFullError, match="free disk space"):
                await rt.get(RelSafe, "newcomer").inc()
            assert sorted(p.name for p in folder.iterdir() if p.name.startswith("newcomer")) == []
        finally:
            filler.unlink()
        assert await rt.get(RelSafe, "newcomer").inc() == 1
        await rt.aclose()


def _readonly_ways() -> list:
    ways = []
    if storeutil.can_mount():
        ways.append("bind mount")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ways.append("chmod")
    return ways or [pytest.param("none", marks=pytest.mark.skip(reason=(
        "root without mount rights: chmod does not stop root (run as a non-root user, or as "
        "root with CAP_SYS_ADMIN); the typed translation is checked by "
        "test_sqlites_errors_become_typed_errors_in_the_mailbox")))]


class _ReadOnly:
    def __init__(self, way: str, target: Path) -> None:
        self.way, self.target = way, target
        self._bind = None

    def __enter__(self) -> None:
        if self.way == "bind mount":
            self._bind = storeutil.read_only_bind(self.target)
            self._bind.__enter__()
        else:
            os.chmod(self.target, 0o555 if self.target.is_dir() else 0o444)

    def __exit__(self, *exc: object) -> None:
        if self._bind is not None:
            self._bind.__exit__(None, None, None)
        else:
            os.chmod(self.target, 0o755 if self.target.is_dir() else 0o644)


READ_ONLY_TARGETS = ["folder", "folder, with -wal/-shm left by a reader", "file"]


async def _read_only_setup(tmp_path: Path, clock: ab.VirtualClock,
                           target: str) -> tuple[ab.Runtime, ab.AgentRef, Path, Path]:
    rt = await _three_agents(tmp_path / "store", clock, pad=10)
    ref = rt.get(RelSafe, "bad")
    path = tmp_path / "store" / "agents" / "RelSafe" / "bad.db"
    if "reader" in target:  # e.g. `agentbook ls` ran: SQLite leaves -wal and -shm behind
        storeutil.quick_check(path)
        assert path.with_name("bad.db-shm").exists()
    return rt, ref, path, (path if target == "file" else path.parent)


@pytest.mark.parametrize("target", READ_ONLY_TARGETS)
@pytest.mark.parametrize("way", _readonly_ways())
async def test_a_read_only_store_gives_a_typed_error_writes_nothing_and_recovers(
        tmp_path: Path, clock, way: str, target: str, figure) -> None:
    rt, ref, path, readonly = await _read_only_setup(tmp_path, clock, target)
    before = storeutil.dump(path)
    untyped = others_broken = 0
    with _ReadOnly(way, readonly):
        for _ in range(2):
            try:
                await ref.inc()
            except ab.StoreError as exc:
                assert "store" in str(exc) and str(path) in str(exc)
            except Exception:
                untyped += 1
                raise
            else:
                raise AssertionError("a write to a read-only store succeeded")
        if target == "file":  # the other stores in the folder are writable
            assert await rt.get(RelSafe, "good1").inc() == 31
    assert storeutil.dump(path) == before
    assert await ref.inc() == 31, "writable again: the next message works"
    assert ref.verify()["ok"] and await rt.get(RelSafe, "good2").inc() == 31
    figure(f"corrupt_store:read-only {target} ({way})", cases=1, untyped=untyped,
           others_broken=others_broken, undetected=0)
    await rt.aclose()


@pytest.mark.parametrize("way", _readonly_ways())
async def test_a_read_only_store_folder_is_a_store_read_only_error(tmp_path: Path, clock,
                                                                  way: str) -> None:
    """A read-only folder where SQLite can't make the -wal/-shm of a WAL store
    (SQLITE_CANTOPEN) is a StoreReadOnlyError, and so is a read-only runtime folder, for
    an agent that has a store and for a new one."""
    rt, ref, _, readonly = await _read_only_setup(tmp_path, clock, "folder")
    try:
        with _ReadOnly(way, readonly), pytest.raises(ab.StoreReadOnlyError, match="writable"):
            await ref.inc()
        rt.hibernate()
        with _ReadOnly(way, tmp_path / "store"):
            with pytest.raises(ab.StoreReadOnlyError):
                await ref.inc()
            with pytest.raises(ab.StoreReadOnlyError):
                await rt.get(RelSafe, "newcomer").inc()
            with pytest.raises(ab.StoreError):  # SQLite can't make the -shm to read either
                ref.state  # noqa: B018 - the read is the test
        assert await ref.inc() == 31 and await rt.get(RelSafe, "newcomer").inc() == 1
    finally:
        await rt.aclose()


@pytest.mark.parametrize("way", _readonly_ways())
def test_a_runtime_in_a_folder_that_cannot_be_made_is_a_store_read_only_error(
        tmp_path: Path, clock, way: str) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    with _ReadOnly(way, parent), pytest.raises(ab.StoreReadOnlyError, match="writable"):
        ab.Runtime(parent / "new-subfolder", clock=clock)
    assert not (parent / "new-subfolder").exists()


@pytest.mark.parametrize("target", READ_ONLY_TARGETS[1:])
@pytest.mark.parametrize("way", _readonly_ways())
async def test_a_read_only_store_recovers_by_itself(tmp_path: Path, clock, way: str,
                                                    target: str) -> None:
    """A store SQLite would open read-only (its file, or its folder with the -wal/-shm
    already there, is read-only) is refused and closed, not kept open read-only: the next
    message after it is writable again works, without a hibernate or a restart."""
    rt, ref, _, readonly = await _read_only_setup(tmp_path, clock, target)
    try:
        with _ReadOnly(way, readonly), pytest.raises(ab.StoreReadOnlyError):
            await ref.inc()
        assert await ref.inc() == 31
    finally:
        await rt.aclose()


async def test_sqlites_errors_become_typed_errors_in_the_mailbox(tmp_path: Path, clock,
                                                                 monkeypatch, figure) -> None:
    """The translation itself, without privileges: SQLite's read-only, full, damaged and
    can't-open errors raised at commit reach the caller typed, write nothing, and the
    agent works again once the cause is gone."""
    for exc, typed in [(apsw.ReadOnlyError("attempt to write a readonly database"),
                        ab.StoreReadOnlyError),
                       (apsw.FullError("database or disk is full"), ab.StoreFullError),
                       (apsw.CorruptError("database disk image is malformed"), ab.StoreCorruptError),
                       (apsw.NotADBError("file is not a database"), ab.StoreCorruptError),
                       (apsw.CantOpenError("unable to open database file"), ab.StoreError),
                       (apsw.IOError("disk I/O error"), ab.StoreError)]:
        assert isinstance(translate_error(exc, "x.db"), typed), exc
    assert isinstance(translate_error(apsw.ReadOnlyError("ro"), writing=False), ab.ReadOnlyError)

    rt = ab.Runtime(tmp_path / "store", clock=clock)
    ref = rt.get(RelSafe, "t")
    await ref.inc()
    path = rt.path_of(ref._ab_key)
    for exc, typed in [(apsw.ReadOnlyError("attempt to write a readonly database"),
                        ab.StoreReadOnlyError), (apsw.FullError("database or disk is full"),
                                                 ab.StoreFullError)]:
        before = storeutil.dump(path)
        from agentbook.store.agentstore import AgentStore

        real_commit = AgentStore.commit

        def failing_commit(self: AgentStore, exc: BaseException = exc) -> None:
            raise exc

        monkeypatch.setattr(AgentStore, "commit", failing_commit)
        with pytest.raises(typed):
            await ref.inc()
        monkeypatch.setattr(AgentStore, "commit", real_commit)
        assert storeutil.dump(path) == before
        version = ref.version
        assert await ref.inc() == ref.state["n"] and ref.version == version + 1
    figure("corrupt_store:translation", cases=2, untyped=0, others_broken=0, undetected=0)
    await rt.aclose()


@pytest.mark.parametrize("size", [0, 50])
async def test_a_store_truncated_to_nothing_is_refused_not_recreated(tmp_path: Path, clock,
                                                                   size: int) -> None:
    """SQLite takes a 0-byte file for a new, empty database: a store file truncated to
    nothing (or to less than SQLite's header) must not start the agent over at version 0;
    it is quarantined like the other damage."""
    rt = await _three_agents(tmp_path / "store", clock, pad=10)
    ref = rt.get(RelSafe, "bad")
    path = Path(rt.path_of(ref._ab_key))
    path.write_bytes(path.read_bytes()[:size])
    try:
        with pytest.raises(ab.StoreCorruptError, match="too short"):
            ref.state  # noqa: B018 - a read says so too (and moves nothing)
        assert path.exists()
        with pytest.raises(ab.StoreCorruptError, match="quarantine") as caught:
            await ref.inc()
        assert "doctor" in str(caught.value) and not path.exists()
        held = rt.catalog.quarantined("RelSafe", "bad")
        assert held is not None and Path(held[0]).stat().st_size == size
        with pytest.raises(ab.StoreCorruptError, match="won't start"):
            await ref.inc()
        assert not path.exists(), "a refused agent must not get a fresh, empty store"
        assert await rt.get(RelSafe, "good1").inc() == 31
    finally:
        await rt.aclose()


async def test_damage_found_while_running_quarantines_the_store(tmp_path: Path, clock) -> None:
    """Damage found while an agent runs (a bad page its open did not read) fails that
    message, closes the store and quarantines it: no more writes go into the damaged file."""
    rt, path = await _damaged_data_page(tmp_path, clock)
    ref = rt.get(RelSafe, "bad")
    try:
        assert await ref.note("opens the store; reads no page of items") is None
        with pytest.raises(ab.StoreCorruptError, match="quarantine"):
            await ref.count()  # reads every page of items: finds the damage
        assert not path.exists() and rt.catalog.quarantined("RelSafe", "bad") is not None
        assert ("RelSafe", "bad") not in rt.open_stores
        with pytest.raises(ab.StoreCorruptError, match="won't start"):
            await ref.inc()  # ... so no more writes may go in
        assert await rt.get(RelSafe, "good1").inc() == 31
    finally:
        await rt.aclose()


async def test_a_corrupt_error_from_elsewhere_does_not_quarantine_a_sound_store(
        tmp_path: Path, clock, monkeypatch) -> None:
    """SQLITE_CORRUPT can also come from a malformed changeset or a connection a handler
    opened itself: the message fails, but a store SQLite's own check finds sound stays."""
    rt = ab.Runtime(tmp_path / "store", clock=clock)
    ref = rt.get(RelSafe, "sound")
    await ref.inc()
    from agentbook.store.agentstore import AgentStore

    def corrupt_commit(self: AgentStore) -> None:
        raise apsw.CorruptError("database disk image is malformed")

    monkeypatch.setattr(AgentStore, "commit", corrupt_commit)
    with pytest.raises(ab.StoreCorruptError):
        await ref.inc()
    monkeypatch.undo()
    assert rt.catalog.quarantined("RelSafe", "sound") is None
    assert await ref.inc() == 2 and ref.verify()["ok"]
    await rt.aclose()


async def test_verify_reports_a_damaged_page_instead_of_raising(tmp_path: Path, clock) -> None:
    """On a damaged page SQLite's quick_check may raise SQLITE_CORRUPT instead of
    returning rows: verify() still answers, with ok False and SQLite's message."""
    rt, _ = await _damaged_data_page(tmp_path, clock)
    try:
        verdict = rt.get(RelSafe, "bad").verify()
        assert verdict["ok"] is False and verdict["quick_check"] != "ok"
    finally:
        await rt.aclose()


async def test_reads_of_a_quarantined_agent_say_so(tmp_path: Path, clock) -> None:
    """Reads from outside of a quarantined agent find no file: they must say it is
    quarantined (and where the file went), not answer as if the agent were new."""
    rt = await _three_agents(tmp_path / "store", clock, pad=10)
    ref = rt.get(RelSafe, "bad")
    _damage(Path(rt.path_of(ref._ab_key)), "garbage header")
    try:
        with pytest.raises(ab.StoreCorruptError):
            await ref.inc()
        moved = rt.catalog.quarantined("RelSafe", "bad")[0]
        reads = {"state": lambda: ref.state, "version": lambda: ref.version,
                 "history": ref.history, "verify": ref.verify,
                 "sql": lambda: ref.sql("SELECT * FROM items")}
        for what, read in reads.items():
            with pytest.raises(ab.StoreCorruptError, match="doctor") as caught:
                read()
            assert moved in str(caught.value), what
    finally:
        await rt.aclose()


async def _damaged_data_page(tmp_path: Path, clock: ab.VirtualClock) -> tuple[ab.Runtime, Path]:
    rt = await _three_agents(tmp_path / "store", clock)
    path = Path(rt.path_of(rt.get(RelSafe, "bad")._ab_key))
    with storeutil.reading(path) as conn:
        leaves = [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'items' AND pagetype = 'leaf'").fetchall()]
    data = bytearray(path.read_bytes())
    page, size = leaves[len(leaves) // 2], _page_size(data)
    data[(page - 1) * size:page * size] = b"\x5a" * size
    path.write_bytes(bytes(data))
    return rt, path


def test_the_mount_helpers_clean_up(tmp_path: Path) -> None:
    if not storeutil.can_mount():
        pytest.skip("no mount rights here")
    target = tmp_path / "dir"
    target.mkdir()
    with storeutil.read_only_bind(target), pytest.raises(OSError):
        (target / "x").write_text("no")
    (target / "x").write_text("yes")
    mounts = subprocess.run(["mount"], capture_output=True, text=True).stdout
    assert str(target) not in mounts
