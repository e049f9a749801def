"""``agentbook doctor --check-stores``: is every store in a runtime folder sound?

:func:`check_stores` looks at every agent store under ``agents/``, at ``catalog.db`` and at
every store that was quarantined (moved to ``quarantine/`` because it was found damaged):

* SQLite's own ``PRAGMA quick_check``;
* the hash chain over each agent's history (a changed byte in any history row - even one
  SQLite cannot notice, inside a row's JSON - breaks the chain from that version on).

It only reads: a store is opened read-only, and a store whose WAL must first be recovered
(a process was killed while writing) is checked on a copy. No file's content changes (like
any SQLite reader, it may leave the empty ``-wal``/``-shm`` companions of a store it
opened). A store that a running runtime holds open can be checked too.

:func:`release` puts a quarantined store - or a file restored from a backup - back into
service after checking it, and forgets the quarantine, so the agent starts again at its
next message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import apsw

from ..errors import StoreCorruptError, UsageError
from ..store import agent_file, files, health
from ..store.chain import verify_chain
from ..store.sqlaccess import READ_BUSY_MS

__all__ = ["check_file", "check_stores", "exit_status", "format_report", "release"]

_CATALOG = "catalog.db"


def check_stores(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Check every store in the runtime folder *path*.

    Returns:
        One dict per file, stores first (by class and name), then the catalog, then the
        quarantined stores. Every dict has ``kind`` (``"store"``, ``"catalog"`` or
        ``"quarantined"``), ``file`` (relative to *path*), ``class``, ``name``, ``ok``,
        ``quick_check`` (SQLite's answer, ``"ok"`` when sound), ``first_bad_version``
        (the first history row that breaks the hash chain, or ``None``), ``version``
        (the newest committed version, when readable) and ``error`` (what went wrong, in
        one sentence, or ``None``). Quarantined entries also have ``reason``, ``since``
        (epoch seconds) and ``in_service`` (always ``False``): ``ok`` there says whether
        the moved file itself now passes the checks (e.g. after a restore).

    Raises:
        UsageError: *path* is not a runtime folder.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise UsageError(f"no agentbook store at {root}: it does not exist or is not a folder")
    catalog_path = os.path.join(root, _CATALOG)
    agents_dir = os.path.join(root, "agents")
    if not os.path.isfile(catalog_path) and not os.path.isdir(agents_dir):
        raise UsageError(f"{root} holds no agentbook store (no catalog.db, no agents/ folder)")
    quarantined = _quarantine_rows(catalog_path)

    results = []
    for file in _store_files(agents_dir):
        entry = check_file(file)
        entry["kind"] = "store"
        entry["file"] = os.path.relpath(file, root)
        results.append(entry)
    results.sort(key=lambda e: (str(e["class"]), str(e["name"])))

    if os.path.isfile(catalog_path):
        entry = _check(catalog_path, chain=False)
        entry.update(kind="catalog", file=_CATALOG, **{"class": None, "name": None})
        results.append(entry)

    seen = set()
    for class_name, name, file, reason, since in quarantined:
        where = file if os.path.isabs(file) else os.path.join(root, file)
        seen.add(os.path.abspath(where))
        if os.path.exists(where):
            entry = check_file(where)
        else:
            entry = _entry(ok=False, quick_check="missing",
                           error="the quarantined file is gone; restore the agent's store from a "
                                 "backup and release it with agentbook doctor --release")
        entry.update(kind="quarantined", file=os.path.relpath(where, root), reason=reason,
                     since=since, in_service=False, **{"class": class_name, "name": name})
        results.append(entry)
    folder = os.path.join(root, "quarantine")
    if os.path.isdir(folder):  # moved aside, but the catalog lost the record
        for entry_name in sorted(os.listdir(folder)):
            where = os.path.abspath(os.path.join(folder, entry_name))
            if (where in seen or os.path.isdir(where)
                    or entry_name.endswith(("-wal", "-shm", "-journal"))):
                continue
            entry = check_file(where)
            entry.update(kind="quarantined", file=os.path.relpath(where, root),
                         reason="(not recorded in the catalog)", since=None, in_service=False)
            results.append(entry)
    return results


def check_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check one agent store file: ``quick_check``, the hash chain, its class and name."""
    path = os.fspath(path)
    entry = _check(path, chain=True)
    entry.setdefault("file", path)
    if entry.get("class") is None:  # unreadable: say what the path says
        entry["class"] = os.path.basename(os.path.dirname(path))
        stem = os.path.basename(path)
        entry["name"] = stem[:-3] if stem.endswith(".db") else stem
    return entry


def release(path: str | os.PathLike[str], class_name: str, name: str,
            restored: str | os.PathLike[str] | None = None, *, force: bool = False) -> dict[str, Any]:
    """Put a quarantined agent's store back into service.

    Args:
        path: The runtime folder.
        class_name: The agent's class name.
        name: The agent's name.
        restored: A file restored from a backup to use instead of the quarantined one
            (it is copied; the damaged file is kept in ``quarantine/released/``).
        force: Release even if the file still fails its checks.

    Returns:
        The check of the file now in service (see :func:`check_stores`).

    Raises:
        UsageError: the agent is not quarantined, a store is already in its place, or
            the file to release does not exist.
        StoreCorruptError: the file still fails its checks (and *force* is not set).
    """
    from ..store import Catalog

    root = os.path.abspath(os.fspath(path))
    catalog_path = os.path.join(root, _CATALOG)
    if not os.path.isfile(catalog_path):
        raise UsageError(f"{root} holds no agentbook store (no catalog.db in it)")
    rows = [r for r in _quarantine_rows(catalog_path) if (r[0], r[1]) == (class_name, name)]
    if not rows:
        raise UsageError(f"{class_name}({name!r}) is not quarantined in {root}; "
                         "agentbook doctor --check-stores lists the quarantined stores")
    quarantined = rows[0][2] if os.path.isabs(rows[0][2]) else os.path.join(root, rows[0][2])
    source = os.path.abspath(os.fspath(restored)) if restored is not None else quarantined
    if not os.path.isfile(source):
        raise UsageError(f"there is no file at {source} to put back; restore the store from a "
                         "backup and pass it as the restored file")
    target = os.path.join(root, agent_file(class_name, name))
    for place in dict.fromkeys((target, _store_path(root, class_name, name))):
        if any(os.path.exists(place + s) for s in ("", "-wal", "-journal")):
            raise UsageError(f"a store is already at {place}; move it away before releasing "
                             f"{class_name}({name!r})")
    entry = check_file(source)
    if not entry["ok"] and not force:
        raise StoreCorruptError(
            f"{source} still fails its checks ({entry['error']}); restore a sound copy, or "
            "release it anyway with force=True (agentbook doctor --release ... --force)")
    if entry["ok"] and (entry["class"], entry["name"]) != (class_name, name):
        raise UsageError(f"{source} holds {entry['class']}({entry['name']!r}), not "
                         f"{class_name}({name!r})")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + ".tmp"
    for suffix in ("", "-wal"):
        if os.path.exists(source + suffix):
            shutil.copyfile(source + suffix, tmp + suffix)
    for suffix in ("-wal", ""):  # the WAL first: the main file's arrival is the commit
        if os.path.exists(tmp + suffix):
            os.replace(tmp + suffix, target + suffix)
    kept = os.path.join(root, "quarantine", "released")
    for suffix in ("", "-wal", "-shm"):
        if restored is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(source + suffix)
        elif os.path.exists(quarantined + suffix):  # keep the damaged file, out of the way
            os.makedirs(kept, exist_ok=True)
            os.replace(quarantined + suffix,
                       os.path.join(kept, os.path.basename(quarantined) + suffix))
    catalog = Catalog(root)
    try:
        catalog.release(class_name, name)
        catalog.add(class_name, name, agent_file(class_name, name), _created(target))
    finally:
        catalog.close()
    entry = check_file(target)
    entry.update(kind="store", file=os.path.relpath(target, root))
    return entry


def exit_status(results: list[dict[str, Any]]) -> int:
    """0 when every store in service and the catalog are sound and nothing is
    quarantined; 1 otherwise (for ``agentbook doctor``'s exit status)."""
    bad = [e for e in results if not e["ok"] or e["kind"] == "quarantined"]
    return 1 if bad else 0


def format_report(results: list[dict[str, Any]]) -> str:
    """The results as lines a person reads (one per file, then a summary)."""
    lines = []
    for e in results:
        who = "catalog" if e["kind"] == "catalog" else f"{e['class']}/{e['name']}"
        if e["kind"] == "quarantined":
            state = "sound now - release it" if e["ok"] else f"damaged: {e['error']}"
            lines.append(f"QUARANTINED  {who}  {e['file']}  ({state}; moved because: {e['reason']})")
        elif e["ok"]:
            version = f"  version {e['version']}" if e.get("version") is not None else ""
            lines.append(f"ok           {who}  {e['file']}{version}")
        else:
            lines.append(f"DAMAGED      {who}  {e['file']}  {e['error']}")
    stores = sum(e["kind"] == "store" for e in results)
    damaged = sum(e["kind"] != "quarantined" and not e["ok"] for e in results)
    held = sum(e["kind"] == "quarantined" for e in results)
    lines.append(f"{stores} store{'' if stores == 1 else 's'} checked: {damaged} damaged, "
                 f"{held} quarantined")
    return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------------
def _entry(**values: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": None, "file": None, "class": None, "name": None, "ok": False,
                             "quick_check": None, "first_bad_version": None, "version": None,
                             "error": None}
    entry.update(values)
    return entry


def _check(path: str, chain: bool) -> dict[str, Any]:
    try:
        with _reading(path) as conn:
            return _check_conn(conn, chain)
    except apsw.Error as exc:
        return _entry(ok=False, quick_check=str(exc) or type(exc).__name__,
                      error=f"SQLite can't read it ({type(exc).__name__}: {exc})")
    except OSError as exc:
        return _entry(ok=False, quick_check="unreadable", error=f"can't read the file: {exc}")


def _check_conn(conn: apsw.Connection, chain: bool) -> dict[str, Any]:
    entry = _entry(quick_check=health.quick_check(conn))
    problems = [] if entry["quick_check"] == "ok" else [f"quick_check: {entry['quick_check']}"]
    if chain:
        try:
            if not files.has_core_tables(conn):
                problems.append("not an agentbook store (its tables are missing)")
            else:
                meta = files.meta(conn)
                entry["class"], entry["name"] = meta.get("class"), meta.get("name")
                head = files.head(conn)
                entry["version"] = head.version if head else 0
                bad = verify_chain(conn)
                entry["first_bad_version"] = bad
                if bad is not None:
                    problems.append(f"history version {bad} does not match its hash chain "
                                    "(changed after it was written)")
                newest = files.last_history_version(conn)
                if newest is not None and newest != entry["version"]:
                    problems.append(f"the state says version {entry['version']} but the "
                                    f"history goes to {newest}")
        except apsw.Error as exc:
            problems.append(f"reading it failed: {type(exc).__name__}: {exc}")
    entry["ok"] = not problems
    entry["error"] = "; ".join(problems) or None
    return entry


@contextlib.contextmanager
def _reading(path: str) -> Iterator[apsw.Connection]:
    """A read-only connection; a copy when SQLite must first recover a WAL or journal."""
    if os.path.getsize(path) == 0:
        raise apsw.NotADBError("the file is empty (0 bytes)")
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(READ_BUSY_MS)  # (a running runtime's writer may checkpoint now)
    scratch = None
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except apsw.ReadOnlyError:  # a hot WAL or journal: recover it on a copy
            conn.close()
            scratch = tempfile.mkdtemp(prefix="agentbook-doctor-")
            base = os.path.basename(path)
            for suffix in ("", "-journal", "-wal"):
                if os.path.exists(path + suffix):
                    shutil.copyfile(path + suffix, os.path.join(scratch, base + suffix))
            conn = apsw.Connection(os.path.join(scratch, base))
        yield conn
    finally:
        conn.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _store_path(root: str, class_name: str, name: str) -> str:
    """Where the runtime finds agent (*class_name*, *name*)'s store (also one an older
    agentbook named: :meth:`~agentbook.store.catalog.Catalog.store_path`)."""
    from ..store import Catalog

    catalog = Catalog(root)
    try:
        return catalog.store_path(class_name, name)
    finally:
        catalog.close()


def _store_files(agents_dir: str) -> list[str]:
    if not os.path.isdir(agents_dir):
        return []
    out = []
    for class_dir in sorted(os.scandir(agents_dir), key=lambda e: e.name):
        if class_dir.is_dir():
            out += sorted(e.path for e in os.scandir(class_dir.path) if e.name.endswith(".db"))
    return out


def _quarantine_rows(catalog_path: str) -> list[tuple]:
    if not os.path.isfile(catalog_path):
        return []
    try:
        with _reading(catalog_path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema").fetchall()}
            if "quarantine" not in tables:
                return []
            return conn.execute("SELECT class, name, file, reason, ts FROM quarantine"
                                " ORDER BY class, name").fetchall()
    except apsw.Error:
        return []


def _created(path: str) -> float:
    try:
        with _reading(path) as conn:
            created = files.meta_value(conn, "created")
        return float(created) if created is not None else os.path.getmtime(path)
    except (apsw.Error, ValueError, OSError):
        return os.path.getmtime(path)
