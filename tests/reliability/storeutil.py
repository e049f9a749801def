"""Reading agent stores from the outside, for the reliability tests.

The tests never trust the runtime to tell them what is in a store: they open the SQLite
files themselves. A store left by a killed process may need its WAL recovered first,
which takes write access; then the check runs on a copy, so the file under test is
never written by the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw

Dump = dict[str, Any]


@contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[apsw.Connection]:
    """A read-only connection to a store file (on a copy if SQLite must recover it first)."""
    path = Path(path)
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    scratch = None
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except apsw.ReadOnlyError:  # a hot WAL or journal left by a killed writer
            conn.close()
            scratch = Path(tempfile.mkdtemp(prefix="ab-check-"))
            for suffix in ("", "-journal", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    shutil.copy(src, scratch)
            conn = apsw.Connection(str(scratch / path.name))
        yield conn
    finally:
        conn.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def dump_conn(conn: apsw.Connection) -> Dump:
    """Every table's rows (sorted), the schema and the user version: the whole logical
    content of a database."""
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").fetchall()]
    out: Dump = {
        "schema": conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name").fetchall(),
        "user_version": conn.execute("PRAGMA user_version").fetchall()[0][0],
    }
    for table in tables:
        rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
        out[table] = sorted(rows, key=repr)
    return out


def dump(path: str | os.PathLike[str]) -> Dump:
    """The logical content of the store file at *path* (see :func:`dump_conn`)."""
    with reading(path) as conn:
        return dump_conn(conn)


def diff_tables(before: Dump, after: Dump) -> list[str]:
    """Names of the tables (and ``schema``/``user_version``) that differ."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def quick_check(path: str | os.PathLike[str]) -> str:
    with reading(path) as conn:
        return "; ".join(r[0] for r in conn.execute("PRAGMA quick_check").fetchall())


# -- raw bytes, page by page ------------------------------------------------------------------
def pages_of(conn: apsw.Connection, *names: str) -> set[int]:
    """Page numbers owned by the named tables and indexes (``dbstat``)."""
    marks = ",".join("?" * len(names))
    return {r[0] for r in conn.execute(
        f"SELECT pageno FROM dbstat WHERE name IN ({marks})", names).fetchall()}


def db_bytes_without(path: str | os.PathLike[str], skip_pages: set[int]) -> bytes:
    """The main database file's bytes without the pages in *skip_pages*."""
    data = Path(path).read_bytes()
    if len(data) < 100:
        return data
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    kept = bytearray()
    for start in range(0, len(data), page_size):
        if start // page_size + 1 not in skip_pages:
            kept += data[start:start + page_size]
    return bytes(kept)


def wal_bytes_without(path: str | os.PathLike[str], skip_pages: set[int]) -> bytes:
    """A WAL file's frames, except those holding a page in *skip_pages* (32-byte WAL
    header, then frames of a 24-byte header and one page)."""
    data = Path(path).read_bytes()
    if len(data) < 32:
        return data
    page_size = int.from_bytes(data[8:12], "big")
    kept = bytearray(data[:32])
    for start in range(32, len(data), 24 + page_size):
        frame = data[start:start + 24 + page_size]
        if int.from_bytes(frame[:4], "big") not in skip_pages:
            kept += frame
    return bytes(kept)


# -- privileges for the fault tests ------------------------------------------------------------
_CAN_MOUNT: bool | None = None


def can_mount() -> bool:
    """Whether this process may mount file systems (root with CAP_SYS_ADMIN, e.g. a VM;
    not a default Docker container)."""
    global _CAN_MOUNT
    if _CAN_MOUNT is None:
        _CAN_MOUNT = False
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount"):
            probe = tempfile.mkdtemp(prefix="ab-mount-probe-")
            try:
                ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "none", probe],
                                    capture_output=True).returncode == 0
                if ok:
                    subprocess.run(["umount", probe], capture_output=True)
                _CAN_MOUNT = ok
            finally:
                os.rmdir(probe)
    return _CAN_MOUNT


def run(*cmd: str) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


@contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A small tmpfs mount (a real disk that can fill up); needs :func:`can_mount`."""
    where = Path(tempfile.mkdtemp(prefix="ab-tmpfs-"))
    run("mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        os.rmdir(where)


@contextmanager
def read_only_bind(target: str | os.PathLike[str]) -> Iterator[None]:
    """Make a folder or file read-only for everyone, root included (a read-only bind
    mount over itself); needs :func:`can_mount`."""
    target = str(target)
    run("mount", "--bind", target, target)
    try:
        run("mount", "-o", "remount,bind,ro", target)
        yield
    finally:
        # Lazy: a file descriptor the product leaked must not keep the mount (and the test
        # folder) busy.
        subprocess.run(["umount", "-l", target], capture_output=True)
