"""The runtime catalog: which agents exist, where their files are, what failed.

The catalog is a convenience index (``catalog.db`` in the runtime's folder). The truth
is the agent files themselves: :meth:`Catalog.rebuild` recreates the index by reading
each file's metadata, so a lost or stale catalog costs nothing but a scan.

Failed handlers are journaled here rather than in the agent's own store: a handler that
raises leaves the agent's file exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from typing import Any, cast

import apsw

from . import catalog_entries
from .agentstore import _SYNC
from .approval_index import ApprovalIndex
from .approvals import INDEX_COLUMNS, IndexedApproval
from .sqlaccess import translate_error

__all__ = ["Catalog", "agent_file", "class_name_problem", "folded", "legacy_agent_file"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents(
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    created REAL NOT NULL,
    parent TEXT,
    PRIMARY KEY (class, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures(
    id INTEGER PRIMARY KEY,
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    ts REAL NOT NULL,
    method TEXT NOT NULL,
    args TEXT,
    kwargs TEXT,
    source TEXT,
    duration_ms REAL,
    error TEXT,
    at_version INTEGER
);
CREATE INDEX IF NOT EXISTS failures_by_agent ON failures(class, name, ts);
-- The earliest time each agent may have something due. Never later than the truth
-- (written before the agent's commit when a schedule moves earlier), so a restart wakes
-- every agent that has work; a stale, too-early entry only costs one spurious wake.
CREATE TABLE IF NOT EXISTS timers(
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    due REAL NOT NULL,
    PRIMARY KEY (class, name)
) WITHOUT ROWID;
-- An index of the approvals kept in the agents' own stores, for the inbox. Written
-- before the agent's commit when requested, after it when decided; the stores are the
-- truth, and pending rows are checked against them (agentbook.store.approval_index).
CREATE TABLE IF NOT EXISTS approvals(
    id TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    summary TEXT NOT NULL,
    side_effects TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS approvals_by_status ON approvals(status, created);
CREATE INDEX IF NOT EXISTS approvals_by_method ON approvals(class, method);
-- Which host (on the Ray backend) may open the agents of each shard.
CREATE TABLE IF NOT EXISTS leases(
    shard INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    ts REAL NOT NULL
);
-- Agents whose store was found damaged and moved aside.
CREATE TABLE IF NOT EXISTS quarantine(
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    reason TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (class, name)
) WITHOUT ROWID;
-- An index of the dead letters kept in the agents' own stores.
CREATE TABLE IF NOT EXISTS dead_letters(
    id TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    callback TEXT NOT NULL,
    payload TEXT,
    type TEXT,
    attempts INTEGER,
    error TEXT,
    failed_at REAL
) WITHOUT ROWID;
"""


#: File names Windows reserves for devices, with any extension (``CON``, ``con.txt``...).
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                       *(f"lpt{i}" for i in range(10))})
#: What a folder name (a class name) may not hold anywhere: path separators, characters
#: Windows refuses, control characters, lone surrogates.
_BAD_FOLDER_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]|[\ud800-\udfff]')
_MAX_CLASS = 100


def _reserved(stem: str) -> bool:
    """Whether Windows reserves *stem* (``CON``, ``aux.x``, ``Com1 ``...) as a file name."""
    return stem.split(".")[0].rstrip(" ").lower() in _RESERVED


def class_name_problem(class_name: object) -> str | None:
    """Why *class_name* can't name an agent class's folder (``None``: it can)."""
    if not isinstance(class_name, str) or not class_name:
        return "it is empty" if class_name == "" else "it is not a string"
    if len(class_name) > _MAX_CLASS:
        return f"it is longer than {_MAX_CLASS} characters"
    if _BAD_FOLDER_CHARS.search(class_name):
        return 'it holds a path separator, a control character or one of <>:"|?*'
    if class_name in (".", ".."):
        return "it is a path"
    if class_name[-1] in ". " or class_name[0] == " ":
        return "it starts with a space or ends with a dot or a space"
    if _reserved(class_name):
        return "Windows reserves it as a device name"
    return None


def folded(name: str) -> str:
    """*name* as a case-insensitive (and normalizing) file system compares it."""
    import unicodedata

    return unicodedata.normalize("NFC", name).casefold()


def agent_file(class_name: str, name: str) -> str:
    """Path of an agent's store, relative to the runtime folder.

    Names that are plain (letters, digits, ``.``, ``_``, ``-``; up to 100 characters) stay
    visible, so a person can find ``agents/Support/alice.db``. File names are unique even
    where the file system ignores case (macOS, Windows): a plain name with capitals gets
    the positions of its capitals after a ``~`` (``Alice`` -> ``Alice~1.db``, ``ALICE`` ->
    ``ALICE~1f.db``, next to ``alice.db``). Any other name - and any name Windows reserves
    for a device, like ``con`` - is stored under a hash of itself (the real name is inside
    the file).
    """
    if _SAFE_NAME.fullmatch(name) and not name.endswith(".tmp") and not _reserved(name):
        capitals = sum(1 << i for i, ch in enumerate(name) if "A" <= ch <= "Z")
        stem = f"{name}~{capitals:x}" if capitals else name
    else:
        stem = _hashed(name)
    return os.path.join("agents", class_name, stem + ".db")


def legacy_agent_file(class_name: str, name: str) -> str:
    """Where :func:`agent_file` put a store before file names were unique under case
    folding (plain names as they are): such stores are still found there."""
    if _SAFE_NAME.fullmatch(name) and not name.endswith(".tmp"):
        return os.path.join("agents", class_name, name + ".db")
    return os.path.join("agents", class_name, _hashed(name) + ".db")


def _hashed(name: str) -> str:
    return "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _holds(path: str, class_name: str, name: str) -> bool:
    """Whether the store file at *path* is agent (*class_name*, *name*)'s."""
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            meta: dict[str, str] = dict(cast("list[tuple[str, str]]", conn.execute(
                "SELECT key, value FROM _ab_meta WHERE key IN ('class', 'name')").fetchall()))
        finally:
            conn.close()
    except apsw.Error:
        return False
    return meta.get("class") == class_name and meta.get("name") == name


class Catalog:
    """Index of the agents in one runtime folder."""

    def __init__(self, root: str, durability: str = "normal", *, on_disk: bool = True) -> None:
        self.root = root
        #: ``on_disk=False``: the catalog lives in memory and nothing is written under
        #: *root* (a Ray driver whose agents' stores are on the hosts' nodes).
        self.path = os.path.join(root, "catalog.db") if on_disk else ":memory:"
        try:
            if on_disk:
                os.makedirs(root, exist_ok=True)
            self.conn = apsw.Connection(self.path)
            self.conn.set_busy_timeout(10_000)  # several processes may share a catalog
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={_SYNC[durability]}")
            # IMMEDIATE: another process opening the folder at the same moment waits for
            # this one (a read that turns into a write would fail at once instead)
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self._upgrade()
                fresh = not self.conn.execute(
                    "SELECT 1 FROM sqlite_schema WHERE name = 'approvals'").fetchall()
                self.conn.execute(_SCHEMA)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            #: The approval index: guarded methods, and its checks against the stores (a
            #: new approvals table next to existing agent files re-reads every store).
            self.approval_index = ApprovalIndex(
                self, rescan=fresh and on_disk and os.path.isdir(os.path.join(root, "agents")))
        except apsw.Error as exc:
            raise translate_error(exc, self.path) from None
        except OSError as exc:  # the folder can't be made: read-only, full, ...
            from .health import os_error

            raise os_error(exc, root) from None

    def _upgrade(self) -> None:
        """Catalogs from before approvals kept their request order had a WITHOUT ROWID
        approvals table: rebuild it as a rowid table (same rows)."""
        rows = self.conn.execute(
            "SELECT sql FROM sqlite_schema WHERE name = 'approvals'").fetchall()
        if rows and "WITHOUT ROWID" in str(rows[0][0]).upper():
            self.conn.execute("ALTER TABLE approvals RENAME TO approvals_old")
            self.conn.execute("DROP INDEX IF EXISTS approvals_by_status")
            self.conn.execute(_SCHEMA)
            self.conn.execute("INSERT INTO approvals SELECT * FROM approvals_old ORDER BY created")
            self.conn.execute("DROP TABLE approvals_old")

    def add(self, class_name: str, name: str, file: str, created: float, parent: str | None = None) -> None:
        """Record a new agent."""
        try:
            self.conn.execute(  # (a known agent keeps its row; its file is where it is)
                "INSERT INTO agents(class, name, file, created, parent) VALUES (?,?,?,?,?)"
                " ON CONFLICT(class, name) DO UPDATE SET file = excluded.file",
                (class_name, name, file, created, parent),
            )
        except apsw.Error as exc:
            raise translate_error(exc, self.path) from None

    def remove(self, class_name: str, name: str) -> None:
        """Forget an agent."""
        self.conn.execute("DELETE FROM agents WHERE class = ? AND name = ?", (class_name, name))

    def entries_of(self, keys: list[tuple[str, str]]) -> catalog_entries.CatalogEntries:
        """Every catalog row of the agents *keys* (their row, timers, approvals, failures,
        dead letters), to move with them to another runtime (see :mod:`.catalog_entries`)."""
        return catalog_entries.entries_of(self.conn, keys)

    def take_entries(self, entries: catalog_entries.CatalogEntries) -> None:
        """Take up another catalog's rows of agents that moved here (one transaction);
        the methods their approvals guard are guarded here too."""
        catalog_entries.take_entries(self.conn, entries, self.path)
        part = entries.approvals
        if part.rows:
            for class_name, method in zip(part.column("class"), part.column("method"),
                                          strict=True):
                self.approval_index.guard(class_name, method)

    def forget_entries(self, keys: list[tuple[str, str]]) -> None:
        """Delete every catalog row of the agents *keys* (they moved away)."""
        catalog_entries.forget_entries(self.conn, keys, self.path)

    def rows(self, class_name: str | None = None) -> list[tuple]:
        """``(class, name, file, created, parent)`` for every known agent."""
        if class_name is None:
            return self.conn.execute(
                "SELECT class, name, file, created, parent FROM agents ORDER BY created"
            ).fetchall()
        return self.conn.execute(
            "SELECT class, name, file, created, parent FROM agents WHERE class = ? ORDER BY created",
            (class_name,),
        ).fetchall()

    def count(self) -> int:
        """How many agents are known."""
        return cast(int, self.conn.execute("SELECT count(*) FROM agents").fetchall()[0][0])

    def record_failure(self, row: tuple) -> None:
        """Journal one failed handler (class, name, ts, method, args, kwargs, source,
        duration_ms, error, at_version)."""
        try:
            self.conn.execute(
                "INSERT INTO failures(class, name, ts, method, args, kwargs, source, duration_ms,"
                " error, at_version) VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
        except Exception:
            pass  # a full disk (or a bad byte) must not turn one failure into two

    def failures(self, class_name: str, name: str, limit: int = 100) -> list[tuple]:
        """The agent's most recent failures, newest first."""
        return self.conn.execute(
            "SELECT ts, method, args, kwargs, source, duration_ms, error, at_version FROM failures"
            " WHERE class = ? AND name = ? ORDER BY ts DESC, id DESC LIMIT ?",
            (class_name, name, limit),
        ).fetchall()

    # -- timers and dead letters --------------------------------------------------------
    def timers(self) -> list[tuple[str, str, float]]:
        """Every ``(class, name, due)`` of the timer index."""
        return cast("list[tuple[str, str, float]]",
                    self.conn.execute("SELECT class, name, due FROM timers").fetchall())

    def set_timers(self, rows: list[tuple[str, str, float | None]]) -> None:
        """Write timer index entries (``due=None`` removes one), in one transaction."""
        try:
            with self.conn:
                for class_name, name, due in rows:
                    if due is None:
                        self.conn.execute("DELETE FROM timers WHERE class = ? AND name = ?",
                                          (class_name, name))
                    else:
                        self.conn.execute("INSERT OR REPLACE INTO timers VALUES (?, ?, ?)",
                                          (class_name, name, due))
        except apsw.Error as exc:
            raise translate_error(exc, self.path) from None

    # -- the approval index (rows are IndexedApproval, in its column order) -------------
    _APPROVAL_COLS = INDEX_COLUMNS

    def store_path(self, class_name: str, name: str) -> str:
        """Where the store of agent (*class_name*, *name*) is (it may not exist yet): its
        file under :func:`agent_file`, or a store made under the older naming
        (:func:`legacy_agent_file`) that holds this very agent."""
        rel = agent_file(class_name, name)
        path = os.path.join(self.root, rel)
        old = legacy_agent_file(class_name, name)
        if old == rel or os.path.exists(path):
            return path
        legacy = os.path.join(self.root, old)
        if os.path.exists(legacy) and _holds(legacy, class_name, name):
            return legacy
        return path

    def lock_path(self, class_name: str, name: str) -> str:
        """The lock file of agent (*class_name*, *name*)'s lease (see
        :mod:`agentbook.store.lease`): next to its store, named by :func:`agent_file`
        wherever the store is, so every process locks the same file."""
        return os.path.join(self.root, agent_file(class_name, name) + ".lock")

    def class_folders(self) -> list[str]:
        """The class folders under ``agents/`` (as the file system spells them)."""
        try:
            return [e.name for e in os.scandir(os.path.join(self.root, "agents")) if e.is_dir()]
        except OSError:
            return []

    def index_approval(self, row: IndexedApproval) -> None:
        """Index a requested approval; its method is guarded from now on."""
        self.approval_index.guard(row[1], row[3])
        try:
            with self.conn:
                self.conn.execute(
                    f"INSERT OR IGNORE INTO approvals({self._APPROVAL_COLS})"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        except apsw.Error as exc:
            raise translate_error(exc, self.path) from None

    def sync_approvals(self) -> None:
        """Check the index against the stores where it may be wrong (after a crash): once
        per catalog, then only agents that were busy writing at the time."""
        self.approval_index.sync()

    def decide_approval(self, approval_id: str, status: str, by: str | None, at: float | None,
                        reason: str | None) -> None:
        """Record a decision in the index."""
        with self.conn:
            self.conn.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ?"
                " WHERE id = ?", (status, by, at, reason, approval_id))

    def drop_approval(self, approval_id: str) -> None:
        """Forget an index entry whose approval never committed."""
        self.conn.execute("DELETE FROM approvals WHERE id = ?", (approval_id,))

    def approvals(self, status: str | None = None,
                  pending_only: bool = False) -> list[IndexedApproval]:
        """Index rows, oldest first."""
        if self.approval_index.stale:
            self.sync_approvals()
        if pending_only or status == "pending":
            found = self.conn.execute(
                f"SELECT {self._APPROVAL_COLS} FROM approvals WHERE status = 'pending'"
                " ORDER BY created, rowid").fetchall()
        elif status is None:
            found = self.conn.execute(
                f"SELECT {self._APPROVAL_COLS} FROM approvals ORDER BY created, rowid").fetchall()
        else:
            found = self.conn.execute(
                f"SELECT {self._APPROVAL_COLS} FROM approvals WHERE status = ?"
                " ORDER BY created, rowid", (status,)).fetchall()
        return [IndexedApproval._make(row) for row in found]

    def approval(self, approval_id: str, sync: bool = True) -> IndexedApproval | None:
        """One index row, or ``None`` (also for an id that is not a string)."""
        if not isinstance(approval_id, str):
            return None
        if sync and self.approval_index.stale:
            self.sync_approvals()
        try:
            rows = self.conn.execute(f"SELECT {self._APPROVAL_COLS} FROM approvals WHERE id = ?",
                                     (approval_id,)).fetchall()
        except UnicodeError:  # a lone surrogate: no id looks like that
            return None
        return IndexedApproval._make(rows[0]) if rows else None

    def add_dead_letters(self, rows: list[tuple]) -> None:
        """Index dead letters: (id, class, name, callback, payload, type, attempts, error,
        failed_at)."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?,?,?,?,?,?)", rows
            )

    def dead_letters(self) -> list[tuple]:
        """All indexed dead letters, oldest first."""
        return self.conn.execute(
            "SELECT id, class, name, callback, payload, type, attempts, error, failed_at"
            " FROM dead_letters ORDER BY failed_at, id"
        ).fetchall()

    def dead_letter(self, letter_id: str) -> tuple | None:
        """``(class, name)`` of one dead letter, or ``None``."""
        rows = self.conn.execute(
            "SELECT class, name FROM dead_letters WHERE id = ?", (letter_id,)
        ).fetchall()
        return rows[0] if rows else None

    def remove_dead_letter(self, letter_id: str) -> None:
        """Forget one dead letter in the index."""
        self.conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))

    def take_leases(self, shards: list[int], host: str) -> None:
        """Make *host* the holder of *shards* (a restarted host takes its shards back)."""
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                                  [(s, host, time.time()) for s in shards])

    def lease_holder(self, shard: int) -> str | None:
        """The host holding *shard*."""
        rows = self.conn.execute("SELECT host FROM leases WHERE shard = ?", (shard,)).fetchall()
        return cast("str | None", rows[0][0]) if rows else None

    def quarantine(self, class_name: str, name: str, file: str, reason: str, ts: float) -> None:
        """Record that an agent's store was moved aside."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?,?,?)",
                              (class_name, name, file, reason, ts))

    def quarantined(self, class_name: str, name: str) -> tuple | None:
        """``(file, reason, ts)`` if the agent's store is quarantined."""
        rows = self.conn.execute("SELECT file, reason, ts FROM quarantine WHERE class = ? AND"
                                 " name = ?", (class_name, name)).fetchall()
        return rows[0] if rows else None

    def release(self, class_name: str, name: str) -> None:
        """Forget a quarantine (after the store was restored)."""
        self.conn.execute("DELETE FROM quarantine WHERE class = ? AND name = ?",
                          (class_name, name))

    def scan_files(self) -> Iterator[str]:
        """Every agent store file under the runtime folder."""
        base = os.path.join(self.root, "agents")
        if not os.path.isdir(base):
            return
        for class_dir in sorted(os.scandir(base), key=lambda e: e.name):
            if not class_dir.is_dir():
                continue
            for entry in os.scandir(class_dir.path):
                if entry.name.endswith(".db"):
                    yield entry.path

    def rebuild(self) -> int:
        """Recreate the agent index from the store files (and index any approval they hold
        that the approval index lacks); returns how many agents were found."""
        found = 0
        with self.conn:
            self.conn.execute("DELETE FROM agents")
            for path in self.scan_files():
                try:
                    reader = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
                    meta: dict[str, Any] = dict(cast(
                        "list[tuple[str, Any]]",
                        reader.execute("SELECT key, value FROM _ab_meta").fetchall()))
                    reader.close()
                except apsw.Error:
                    continue
                if "class" not in meta or "name" not in meta:
                    continue
                rel = os.path.relpath(path, self.root)
                self.conn.execute(
                    "INSERT OR REPLACE INTO agents(class, name, file, created, parent) VALUES (?,?,?,?,?)",
                    (meta["class"], meta["name"], rel, float(meta.get("created", time.time())),
                     meta.get("parent")),
                )
                found += 1
        self.approval_index.rescan = True
        return found

    def close(self) -> None:
        """Close the catalog."""
        try:
            self.conn.close(True)
        except apsw.Error:
            pass
