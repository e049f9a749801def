"""Store health without privileges: file-system errors, short files and SQLite's errors
become agentbook's typed errors (the real full disks and read-only mounts are in
tests/reliability/test_corrupt_store.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import apsw
import pytest

import agentbook as ab
from agentbook.store import health, translate_error
from agentbook.store.agentstore import AgentStore, _write_atomically


@pytest.mark.parametrize(("code", "typed"), [
    (errno.ENOSPC, ab.StoreFullError), (errno.EDQUOT, ab.StoreFullError),
    (errno.EROFS, ab.StoreReadOnlyError), (errno.EACCES, ab.StoreReadOnlyError),
    (errno.EIO, ab.StoreError)])
def test_file_system_errors_become_typed_errors(code: int, typed: type) -> None:
    err = health.os_error(OSError(code, "boom"), "/x/a.db")
    assert type(err) is typed and "/x/a.db" in str(err)


def test_a_failed_template_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    from agentbook.store import agentstore

    path = str(tmp_path / "agents" / "A" / "a.db")

    class Full:
        def __init__(self, name: str, mode: str) -> None:
            self.fh = open(name, mode)  # noqa: SIM115 - closed in __exit__

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agentstore, "open", Full, raising=False)
    with pytest.raises(ab.StoreFullError, match="free disk space"):
        _write_atomically(path, b"x" * 100)
    assert list((tmp_path / "agents" / "A").iterdir()) == []


@pytest.mark.parametrize("size", [0, 1, 99])
def test_a_store_file_shorter_than_a_header_is_damage(tmp_path: Path, size: int) -> None:
    path = tmp_path / "a.db"
    path.write_bytes(b"\0" * size)
    with pytest.raises(ab.StoreCorruptError, match="too short"):
        AgentStore(str(path))
    assert path.stat().st_size == size, "SQLite did not make it a new database"
    assert health.check_file(str(tmp_path / "missing.db")) is True


@pytest.mark.parametrize("exc", [
    apsw.BindingsError("Incorrect number of bindings supplied"), apsw.InterruptError("interrupted"),
    apsw.TooBigError("string or blob too big"), ValueError("null character in query"),
    OverflowError("int too big to convert")])
def test_errors_of_bad_sql_input_are_sql_errors(exc: Exception) -> None:
    assert isinstance(translate_error(exc, "a.db"), ab.SQLError)


def test_cant_open_is_read_only_only_when_the_folder_cannot_be_written(tmp_path: Path) -> None:
    err = translate_error(apsw.CantOpenError("unable to open database file"),
                          str(tmp_path / "a.db"))
    assert type(err) is ab.StoreError  # the folder is writable: some other cause


def test_a_damage_error_marks_the_store_broken_only_if_sqlite_agrees(tmp_path: Path) -> None:
    store = AgentStore(str(tmp_path / "a.db"))
    try:
        err = store.translate(apsw.CorruptError("database disk image is malformed"))
        assert isinstance(err, ab.StoreCorruptError) and store.broken is None
        err = store.translate(apsw.ReadOnlyError("attempt to write a readonly database"))
        assert isinstance(err, ab.StoreReadOnlyError) and store.broken is err
    finally:
        store.close()
