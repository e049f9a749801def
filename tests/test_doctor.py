"""``agentbook.cli.doctor``: check every store (integrity, hash chain, quarantine) and put a
restored store back into service - without ever writing to what it checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import apsw
import pytest

import agentbook as ab
from agentbook.cli.doctor import check_file, check_stores, exit_status, format_report, release


class DocLedger(ab.Agent):
    initial_state = {"n": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, text TEXT)")

    @ab.callable
    async def note(self, text: str) -> int:
        self.sql("INSERT INTO notes(text) VALUES (?)", text)
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


async def _folder(tmp_path: Path, names=("a", "b"), notes: int = 3) -> Path:
    root = tmp_path / "store"
    rt = ab.Runtime(root, clock=ab.VirtualClock())
    for name in names:
        for i in range(notes):
            await rt.get(DocLedger, name).note(f"{name}-note-{i}")
    await rt.aclose()
    return root


def _files(root: Path) -> dict[str, bytes]:
    """The content of every store, catalog and WAL (a reader may add empty -wal and -shm
    companions, as any SQLite reader does; -shm is shared memory, not content)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def _flip_in_history(path: Path, marker: bytes) -> None:
    """Change one byte of a history row's JSON: same length, so SQLite can't tell."""
    data = bytearray(path.read_bytes())
    assert data.count(marker) == 1, "the marker must sit in exactly one place"
    at = data.index(marker)
    data[at + len(marker) - 1] ^= 0x01
    path.write_bytes(bytes(data))


async def test_a_sound_folder_is_all_ok_and_nothing_is_written(tmp_path: Path) -> None:
    root = await _folder(tmp_path)
    before = _files(root)
    results = check_stores(root)
    assert _files(root) == before
    stores = [r for r in results if r["kind"] == "store"]
    assert [(r["class"], r["name"], r["version"], r["ok"]) for r in stores] == [
        ("DocLedger", "a", 4, True), ("DocLedger", "b", 4, True)]
    assert all(r["quick_check"] == "ok" and r["first_bad_version"] is None for r in stores)
    catalog = [r for r in results if r["kind"] == "catalog"]
    assert catalog[0]["ok"] and catalog[0]["file"] == "catalog.db"
    assert exit_status(results) == 0
    report = format_report(results)
    assert "ok           DocLedger/a  agents/DocLedger/a.db  version 4" in report
    assert report.splitlines()[-1] == "2 stores checked: 0 damaged, 0 quarantined"


async def test_a_changed_byte_sqlite_cannot_see_breaks_the_hash_chain(tmp_path: Path) -> None:
    root = await _folder(tmp_path)
    path = root / "agents" / "DocLedger" / "a.db"
    _flip_in_history(path, b'"a-note-1"')
    results = {r["name"]: r for r in check_stores(root) if r["kind"] == "store"}
    bad = results["a"]
    assert bad["quick_check"] == "ok", "SQLite itself sees nothing wrong"
    assert not bad["ok"] and bad["first_bad_version"] == 3
    assert "version 3" in bad["error"]
    assert results["b"]["ok"]
    assert exit_status(list(results.values())) == 1
    assert "DAMAGED      DocLedger/a" in format_report(list(results.values()))


@pytest.mark.parametrize("damage", ["header", "truncated", "empty", "page"])
async def test_damaged_files_are_reported_not_raised(tmp_path: Path, damage: str) -> None:
    root = await _folder(tmp_path, notes=40)
    path = root / "agents" / "DocLedger" / "a.db"
    data = bytearray(path.read_bytes())
    if damage == "header":
        data[:100] = b"\xff" * 100
    elif damage == "truncated":
        data = data[: len(data) // 2 + 123]
    elif damage == "empty":
        data = bytearray()
    else:
        data[4096 * 3:4096 * 4] = b"\x5a" * 4096
    path.write_bytes(bytes(data))
    entry = {r["name"]: r for r in check_stores(root)}["a"]
    assert not entry["ok"] and entry["error"]
    assert entry["class"] == "DocLedger"


async def test_a_store_left_by_a_killed_writer_is_checked_on_a_copy(tmp_path: Path) -> None:
    root = await _folder(tmp_path)
    path = root / "agents" / "DocLedger" / "a.db"
    writer = apsw.Connection(str(path))  # write without checkpointing, then "die"
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("INSERT INTO notes(text) VALUES ('in the WAL only')")
    killed = tmp_path / "killed"
    shutil.copytree(root, killed)  # the files as a SIGKILL leaves them: a hot WAL
    writer.close()
    assert (killed / "agents" / "DocLedger" / "a.db-wal").exists()
    before = _files(killed)
    results = check_stores(killed)
    assert all(r["ok"] for r in results)
    assert _files(killed) == before


async def _quarantined(tmp_path: Path) -> tuple[Path, Path, ab.Runtime]:
    """A folder whose agent ``a`` was damaged and quarantined at its next message (a copy
    of its sound file kept as a backup), and the runtime that found it."""
    root = await _folder(tmp_path)
    path = root / "agents" / "DocLedger" / "a.db"
    backup = tmp_path / "backup-a.db"
    shutil.copyfile(path, backup)
    path.write_bytes(b"this is no longer a database" * 200)
    rt = ab.Runtime(root, clock=ab.VirtualClock())
    with pytest.raises(ab.StoreCorruptError, match="doctor"):
        await rt.get(DocLedger, "a").note("x")
    return root, backup, rt


async def test_a_quarantined_store_is_listed_and_released_after_a_restore(tmp_path: Path) -> None:
    root, backup, rt = await _quarantined(tmp_path)
    assert await rt.get(DocLedger, "b").note("still fine") == 4
    held = [r for r in check_stores(root) if r["kind"] == "quarantined"]
    assert [(r["class"], r["name"], r["ok"], r["in_service"]) for r in held] == [
        ("DocLedger", "a", False, False)]
    assert "damaged" in held[0]["reason"] or "malformed" in held[0]["reason"] \
        or "not a database" in held[0]["reason"]
    assert exit_status(check_stores(root)) == 1
    assert "QUARANTINED  DocLedger/a" in format_report(check_stores(root))

    with pytest.raises(ab.StoreCorruptError, match="still fails"):
        release(root, "DocLedger", "a")  # the quarantined file is still damaged
    entry = release(root, "DocLedger", "a", restored=backup)
    assert entry["ok"] and entry["version"] == 4 and entry["kind"] == "store"
    assert await rt.get(DocLedger, "a").note("back") == 4  # the backup's state, then one more
    assert rt.get(DocLedger, "a").verify()["ok"]
    await rt.aclose()
    results = check_stores(root)
    assert [r["kind"] for r in results if r["name"] == "a"] == ["store"]
    assert exit_status(results) == 0
    assert len(list((root / "quarantine" / "released").iterdir())) == 1  # kept, out of the way


async def test_a_store_quarantined_by_mistake_can_be_released_as_it_is(tmp_path: Path) -> None:
    root = await _folder(tmp_path)
    src = root / "agents" / "DocLedger" / "a.db"
    moved = root / "quarantine" / "DocLedger.a.db.by-hand"
    moved.parent.mkdir()
    os.replace(src, moved)
    conn = apsw.Connection(str(root / "catalog.db"))
    conn.execute("INSERT INTO quarantine VALUES ('DocLedger', 'a', ?, 'moved by hand', 0)",
                 (str(moved),))
    conn.close()
    held = [r for r in check_stores(root) if r["kind"] == "quarantined"]
    assert held[0]["ok"] and "release it" in format_report(check_stores(root))
    entry = release(root, "DocLedger", "a")
    assert entry["ok"] and src.exists() and not moved.exists()
    rt = ab.Runtime(root, clock=ab.VirtualClock())
    assert await rt.get(DocLedger, "a").note("again") == 4
    await rt.aclose()


async def test_release_refuses_what_it_should(tmp_path: Path) -> None:
    root = await _folder(tmp_path)
    with pytest.raises(ab.UsageError, match="not quarantined"):
        release(root, "DocLedger", "a")
    conn = apsw.Connection(str(root / "catalog.db"))
    conn.execute("INSERT INTO quarantine VALUES ('DocLedger', 'a', ?, 'test', 0)",
                 (str(root / "quarantine" / "gone.db"),))
    conn.close()
    with pytest.raises(ab.UsageError, match="already at"):  # a.db is still in service
        release(root, "DocLedger", "a", restored=root / "agents" / "DocLedger" / "b.db")
    os.remove(root / "agents" / "DocLedger" / "a.db")
    with pytest.raises(ab.UsageError, match="no file"):
        release(root, "DocLedger", "a")
    with pytest.raises(ab.UsageError, match="holds DocLedger"):  # b's file is not a's
        release(root, "DocLedger", "a", restored=root / "agents" / "DocLedger" / "b.db")
    held = [r for r in check_stores(root) if r["kind"] == "quarantined"]
    assert held[0]["quick_check"] == "missing" and not held[0]["ok"]


def test_a_folder_that_is_not_a_store_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ab.UsageError, match="does not exist"):
        check_stores(tmp_path / "nope")
    with pytest.raises(ab.UsageError, match="holds no agentbook store"):
        check_stores(tmp_path)
    assert not (tmp_path / "nope").exists() and list(tmp_path.iterdir()) == []


def test_check_file_names_an_unreadable_file_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "agents" / "Thing" / "zed.db"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    entry = check_file(path)
    assert (entry["class"], entry["name"], entry["ok"]) == ("Thing", "zed", False)


# -- the command: agentbook doctor [--check-stores] [--path P] ----------------------------------
def _doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from agentbook.cli.main import main

    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_stores_without_a_store_is_one_error_and_never_says_ready(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for where, what in ((tmp_path / "nope", "does not exist"), (tmp_path, "holds no agentbook")):
        code, out, err = _doctor(capsys, "--check-stores", "--path", str(where))
        assert code == 2 and out == "", "nothing printed before the error, no 'ready'"
        assert err.startswith("agentbook: error: ") and what in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [], "nothing created"


async def test_check_stores_ends_with_one_verdict_over_both_checks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = await _folder(tmp_path)
    code, out, _ = _doctor(capsys, "--check-stores", "--path", str(root))
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "agentbook is ready."
    assert lines[-2] == "2 stores checked: 0 damaged, 0 quarantined"
    assert out.count("agentbook is ready.") == 1
    _flip_in_history(root / "agents" / "DocLedger" / "b.db", b'"b-note-1"')
    code, out, _ = _doctor(capsys, "--check-stores", "--path", str(root))
    assert code == 1 and "ready" not in out
    assert out.splitlines()[-1].endswith("1 store damaged or quarantined (see above).")


def test_a_store_folder_that_does_not_exist_is_not_called_writable_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agentbook.cli.envcheck import check_environment

    def store_check(path: Path) -> dict:
        return next(c for c in check_environment(str(path)) if c["what"] == "store folder writable")

    missing = store_check(tmp_path / "new" / "store")
    assert missing["ok"], "a runtime creates it"
    assert missing["detail"] == (f"{tmp_path / 'new' / 'store'} (does not exist yet; "
                                 f"ab.Runtime({str(tmp_path / 'new' / 'store')!r}) creates it "
                                 f"in {tmp_path})")
    (tmp_path / "file").write_text("not a folder")
    for blocked in (tmp_path / "file", tmp_path / "file" / "store"):
        check = store_check(blocked)
        assert not check["ok"] and "make" in check["fix"], blocked
    assert store_check(tmp_path)["detail"] == str(tmp_path)
    code, out, _ = _doctor(capsys, "--path", str(tmp_path / "file" / "store"))
    assert code == 1 and "FIX   store folder writable" in out and "ready" not in out


async def test_the_command_releases_a_quarantined_store_from_a_backup(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, backup, rt = await _quarantined(tmp_path)
    await rt.aclose()
    code, out, err = _doctor(capsys, "--release", "DocLedger/a", "--path", str(root))
    assert code == 2 and out == "" and "still fails its checks" in err and "--force" in err
    code, out, err = _doctor(capsys, "--release", "DocLedger/a", "--restored", str(backup),
                             "--path", str(root))
    assert code == 0, err
    assert out == ("released DocLedger/a: agents/DocLedger/a.db is in service again, version 4 "
                   "(sound); it starts at its next message\n")
    assert exit_status(check_stores(root)) == 0
    code, _, err = _doctor(capsys, "--release", "DocLedger", "--path", str(root))
    assert code == 2 and "CLASS/NAME" in err
    code, _, err = _doctor(capsys, "--force", "--path", str(root))
    assert code == 2 and "go with --release" in err
