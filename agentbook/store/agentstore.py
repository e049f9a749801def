"""One agent's durable store: a single SQLite file, like a Durable Object's database.

Layout and why: each agent owns one SQLite file (``agents/<Class>/<name>.db``) in WAL
mode. Its state, its own tables (named as the agent likes), its key-value data, its
schedules and its history live in that one file, so everything a handler writes commits
in one SQLite transaction, atomically, with no cross-file protocol. A hibernated agent
is one closed file and costs no memory; 100 000 agents are 100 000 small files (512-byte
pages, and the chat, MCP and workflow tables and the schedule look-up indexes made only
when first written, keep a new store at 12 KB: see :mod:`agentbook.store.groups`). New
stores are written from a pre-built template (one file write instead of a dozen DDL
statements), which keeps creation cheap.

Writes happen on one connection (the agent's mailbox is the only writer). Reads from
outside (``ref.sql``, ``ref.history``) use a second, read-only connection that sees the
last commit and never waits for a running handler.

Every version's row changes are captured with SQLite's session extension (through
``apsw``): an invertible changeset per version, the basis of rewind and fork.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from dataclasses import replace
from typing import Any, cast

import apsw

from ..errors import StoreCorruptError, StoreError, StoreReadOnlyError
from . import events as event_log
from . import groups as lazy_groups
from . import health
from .chain import link_rows
from .schema import LAZY_INDEXES, LAZY_TABLES, MIGRATIONS, UNTRACKED_TABLES, compact_sql, migrate
from .secrets import Secrets
from .sqlaccess import (
    _BAD_INPUT,
    READONLY_LIMITS,
    QueryLimits,
    open_reader,
    readonly_authorizer,
    run_limited,
    translate_error,
    user_authorizer,
)

__all__ = ["AgentStore"]

_OPEN_RW = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
_SYNC = {"normal": "NORMAL", "full": "FULL", "off": "OFF"}
#: The agent's own SQL in its handler: no limits (it is the agent's code, not a model's).
_NO_LIMITS = QueryLimits()
_template_cache: bytes | None = None


_INSERT_HISTORY = (
    "INSERT INTO _ab_history(version, ts, method, args, kwargs, source, duration_ms, outcome,"
    " error, result, state, changes, schema, due, occurrence, effects, chain)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
#: The rows of a group but its last: their group's link is on its last row.
_INSERT_UNLINKED = (
    "INSERT INTO _ab_history(version, ts, method, args, kwargs, source, duration_ms, outcome,"
    " error, result, state, changes, schema, due, occurrence, effects)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


def _template() -> bytes:
    """Bytes of an empty store with every migration applied, in WAL mode.

    Its schema is that of a store migrated one step at a time, written small (measured
    with dbstat, issue 20): 512-byte pages, because every internal table and index takes
    a page even when empty, and each CREATE statement's text compacted
    (:func:`~agentbook.store.schema.compact_sql`), because ``sqlite_schema`` keeps it and
    the migrations' comments made it 13 of the store's 39 KB pages; the
    :data:`~agentbook.store.schema.LAZY_GROUPS` are left out (made on first use: 40 pages
    -> 23). 39 KB -> 11.5 KB; the page size costs nothing measurable on durable messages
    or bursts (ratio ~1.0).
    """
    global _template_cache
    if _template_cache is None:
        full = apsw.Connection(":memory:")
        migrate(full)
        objects = cast(list[tuple[str, str, str]], full.execute(
            "SELECT name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid"
        ).fetchall())
        applied = full.execute("SELECT name, applied FROM _ab_migrations").fetchall()
        conn = apsw.Connection(":memory:")
        conn.execute("PRAGMA page_size=512")
        with conn:
            for name, table, sql in objects:
                if table not in LAZY_TABLES and name not in LAZY_INDEXES:
                    conn.execute(compact_sql(sql))
            conn.executemany("INSERT INTO _ab_migrations(name, applied) VALUES (?, ?)", applied)
            conn.execute(f"PRAGMA user_version={_pragma_int(full, 'user_version')}")
        full.close()
        data = bytearray(conn.serialize("main"))
        conn.close()
        data[18] = data[19] = 2  # file format 2 = WAL
        _template_cache = bytes(data)
    return _template_cache


def _pragma_int(conn: apsw.Connection, name: str) -> int:
    """The value of an integer pragma (``user_version``, ``page_size``, ...)."""
    return cast(int, conn.execute(f"PRAGMA {name}").fetchall()[0][0])


def _track_table(name: str) -> bool:
    return name not in UNTRACKED_TABLES


class AgentStore:
    """The durable store of one agent.

    Args:
        path: The SQLite file.
        durability: ``"normal"`` (survives a killed process), ``"full"`` (also survives
            an OS crash, fsync on every commit) or ``"off"`` (ephemeral stores).
    """

    __slots__ = ("_batch", "_chain", "_events", "_events_floor", "_grew", "_groups", "_pending",
                 "_reader", "_sp", "broken", "conn", "durability", "events_retention", "lost",
                 "path", "query_seconds")

    def __init__(self, path: str, durability: str = "normal") -> None:
        self.path = path
        self.durability = durability
        self._reader: apsw.Connection | None = None
        self._chain: str | None = None  # hash of the newest history row, when known
        #: The message savepoint: 0 none, 1 wanted (opened before the first write), 2 open.
        self._sp = 0
        #: History rows appended but not yet inserted: they go in with one executemany
        #: before the commit, or before anything else writes (see :meth:`_flush`).
        self._pending: list[tuple] = []
        #: Event rows appended but not yet inserted (they go in with the history rows).
        self._events: list[tuple] = []
        self._events_floor = 0
        #: How much of the event stream is kept (the runtime sets its events_keep/max_age).
        self.events_retention = event_log.Retention()
        #: The typed error that made this store unusable while it was open (it went
        #: read-only or was found damaged): the mailbox then closes it.
        self.broken: Exception | None = None
        #: The error after which SQLite rolled back the running batch's transaction.
        self.lost: Exception | None = None
        #: Inside a batch (between begin and commit/rollback).
        self._batch = False
        #: The time budget of one read-only query (``None``: no budget).
        self.query_seconds: float | None = None  # (the runtime sets its max_query_seconds)
        #: The lazy groups the store has (:mod:`agentbook.store.groups`); ``None``: not
        #: looked at yet (the first need reads ``sqlite_schema`` once).
        self._groups: set[str] | None = None
        #: Whether a group was created since the last commit (a rollback may take it back).
        self._grew = False
        fresh = health.check_file(path)  # (a file too short to be a database is damage)
        try:
            if fresh:  # (another process may have made it since: then it is not fresh)
                fresh = _create_exclusively(path, _template())
            self.conn = apsw.Connection(path, flags=_OPEN_RW)
            if self.conn.readonly("main"):  # SQLite fell back to read-only: say so now
                self.conn.close()
                raise health.read_only(path)
            self.conn.set_busy_timeout(5_000)
            self.conn.execute(f"PRAGMA synchronous={_SYNC[durability]}")
            if not fresh and _pragma_int(self.conn, "user_version") < len(MIGRATIONS):
                migrate(self.conn)
        except apsw.Error as exc:
            self.close()
            raise translate_error(exc, path) from None

    def translate(self, exc: BaseException) -> BaseException:
        """The typed error of *exc*, an ``apsw`` error met while this store was in use.

        Read-only and damage errors also mark the store :attr:`broken` - damage only if
        SQLite's own check of the store agrees (a corrupt error may also come from a
        malformed changeset, or from another connection a handler opened)."""
        err = translate_error(exc, self.path)
        if isinstance(err, StoreReadOnlyError) or (
                isinstance(err, StoreCorruptError) and health.confirm_damage(self.conn)):
            self.broken = err
        if isinstance(err, StoreError) and self._batch and not self.conn.in_transaction:
            self.lost = err  # (inside a batch: SQLite rolled all of it back)
        return err

    def set_size_cap(self, max_bytes: int | None) -> None:
        """Cap the file's size (a full cap raises :class:`StoreFullError`)."""
        if max_bytes:
            page = _pragma_int(self.conn, "page_size")
            pages = max(32, max_bytes // page)
            self.conn.execute(f"PRAGMA max_page_count = {int(pages)}")

    # -- identity and state -------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """The store's metadata (class, name, created, parent, ...)."""
        rows = cast(list[tuple[str, str]],
                    self.conn.execute("SELECT key, value FROM _ab_meta").fetchall())
        return dict(rows)

    def set_meta(self, items: dict[str, str]) -> None:
        """Write metadata rows (inside the caller's transaction)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO _ab_meta(key, value) VALUES (?, ?)", list(items.items())
        )

    def load_state(self) -> tuple[int, str] | None:
        """``(version, state_json)`` of the last commit, or ``None`` for a new store."""
        rows = cast(list[tuple[int, str]], self.conn.execute(
            "SELECT version, state FROM _ab_state WHERE id = 1").fetchall())
        return (rows[0][0], rows[0][1]) if rows else None

    def write_state(self, version: int, state_json: str) -> None:
        """Record the current version and state (inside the caller's transaction)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO _ab_state(id, version, state) VALUES (1, ?, ?)",
            (version, state_json),
        )

    # -- tables made on first use (agentbook.store.groups) ------------------------------
    def has_group(self, group: str) -> bool:
        """Whether the store has the lazy group *group* (``"chat"``, ``"mcp"``,
        ``"schedule_keys"``, ``"workflows"``): without it, its tables read as empty. A set
        look-up once the store's groups are known (one read of ``sqlite_schema`` on the
        first call)."""
        groups = self._groups
        if groups is None:
            groups = self._groups = lazy_groups.present(self.conn)
        return group in groups

    def ensure_group(self, group: str) -> None:
        """Make sure the store has *group*'s tables before a write to them: created whole
        in the running transaction (inside the message's savepoint, so a message that
        fails takes them back), with their bookkeeping row."""
        if self.has_group(group):
            return
        self._check_batch()
        if self._pending or self._events:
            self._flush()
        if self._sp == 1:
            self._open_savepoint()
        lazy_groups.create(self.conn, group)
        assert self._groups is not None
        self._groups.add(group)
        self._grew = True

    def recheck_groups(self) -> None:
        """After a rollback (of a transaction or to a savepoint): a group created since the
        last commit may be gone again, so the next need looks at the schema again."""
        if self._grew:
            self._groups = None
            self._grew = False

    @property
    def secrets(self) -> Secrets:
        """The store's secrets (``_ab_secrets``, untracked: never in history or a fork)."""
        return Secrets(self)

    # -- transactions -------------------------------------------------------------------
    def begin(self) -> None:
        """Start the write transaction of a batch of messages."""
        self.lost = None
        self.conn.execute("BEGIN IMMEDIATE")
        self._batch = True

    def _check_batch(self) -> None:
        """Inside a batch SQLite rolled back (a full disk, an I/O error), nothing may be
        written any more: it would commit on its own, outside every transaction."""
        if self._batch and not self.conn.in_transaction:
            raise self.lost_error()

    def lost_error(self) -> Exception:
        """Why the running batch was lost (SQLite rolled it back after an error)."""
        return self.lost or StoreError(
            f"the store lost its transaction ({self.path}): SQLite rolled it back after an "
            "error; nothing of this batch was kept: send the messages again")

    def savepoint(self, lazy: bool = False) -> None:
        """Open the savepoint of one message inside the batch.

        *lazy*: open it only if the message writes through :meth:`internal` or
        :meth:`user_sql_dicts`; a handler that changes nothing but its state (kept in
        memory until the batch commits) and its history row never needs one, and a failed
        statement undoes itself.
        """
        if lazy:
            self._sp = 1
        else:
            self._open_savepoint()

    def _open_savepoint(self) -> None:
        self._check_batch()
        if self._pending or self._events:  # earlier messages' rows stay out of this savepoint
            self._flush()
        self.conn.execute("SAVEPOINT ab_msg")
        self._sp = 2

    def _flush(self) -> None:
        """Insert the history and event rows appended so far (one statement for each),
        the history rows under one hash-chain link (:func:`~agentbook.store.chain.link_rows`:
        one row's link is the chain's usual one; a burst's rows share one)."""
        self._check_batch()
        rows, self._pending = self._pending, []
        events, self._events = self._events, []
        try:
            if rows:
                prev = self._chain
                if prev is None:
                    found = cast(list[tuple[str | None]], self.conn.execute(
                        "SELECT chain FROM _ab_history ORDER BY version DESC LIMIT 1").fetchall())
                    prev = (found[0][0] or "") if found else ""
                link = link_rows(prev, rows)
                if len(rows) > 1:
                    self.conn.executemany(_INSERT_UNLINKED, rows[:-1])
                self.conn.execute(_INSERT_HISTORY, (*rows[-1], link))
                self._chain = link
            if events:
                self._events_floor = event_log.write(self.conn, events, self.events_retention,
                                                     self._events_floor)
        except BaseException:
            # some rows of acknowledged-to-be messages may be in, some not: nothing of
            # this batch may commit (the mailbox fails it all: see in_transaction)
            self._chain = None
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def release(self) -> None:
        """Keep one message's writes (they commit with the batch)."""
        if self._sp == 2:
            if not self.conn.in_transaction:  # SQLite rolled the batch back; the handler went on
                self._sp = 0
                self._check_batch()
            self.conn.execute("RELEASE ab_msg")
        self._sp = 0

    def rollback_message(self) -> None:
        """Undo one message's writes, keeping the rest of the batch."""
        opened, self._sp = self._sp == 2, 0
        if opened:  # (rows appended before it opened were inserted first: see _open_savepoint)
            self._chain = None
            self._pending.clear()
            self._events.clear()
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO ab_msg")
                self.conn.execute("RELEASE ab_msg")
            self.recheck_groups()

    def commit(self) -> None:
        """Make the batch durable."""
        if self._pending or self._events:
            self._flush()
        self.conn.execute("COMMIT")
        self._batch = False
        self._grew = False

    def rollback(self) -> None:
        """Undo the whole batch (SQLite may already have rolled back after an I/O error)."""
        self._chain = None
        self._sp = 0
        self._pending.clear()
        self._events.clear()
        self._batch = False
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.recheck_groups()

    def schema_version(self) -> int:
        """SQLite's schema cookie: changes whenever any table or index is created or dropped."""
        return _pragma_int(self.conn, "schema_version")

    def user_schema(self) -> str:
        """The agent's own tables, indexes, views and triggers, as JSON
        ``[[type, name, table, sql], ...]`` in creation order."""
        return user_schema(self.conn)

    def total_changes(self) -> int:
        """Rows changed on the writer connection since it opened."""
        return self.conn.total_changes()

    # -- changesets ---------------------------------------------------------------------
    def start_capture(self) -> apsw.Session:
        """Start recording row changes to every tracked table."""
        session = apsw.Session(self.conn, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.table_filter(_track_table)
        session.attach(None)
        return session

    @staticmethod
    def finish_capture(session: apsw.Session) -> bytes | None:
        """The changeset recorded since :meth:`start_capture` (``None`` when empty)."""
        try:
            data = session.changeset()
        finally:
            session.close()
        return data or None

    # -- history ------------------------------------------------------------------------
    def append_history(self, row: tuple) -> None:
        """Add one version row: (version, ts, method, args, kwargs, source, duration_ms,
        outcome, error, result, state, changes, schema, due, occurrence, effects) - a
        :class:`~agentbook.store.history.HistoryRow` or a plain tuple of the same values.
        It is inserted (and linked into the hash chain) with the rows appended after it,
        before the commit or before anything else writes (see :meth:`_flush`)."""
        self._pending.append(row if type(row) is tuple else tuple(row))

    def append_events(self, rows: list[tuple]) -> None:
        """Add event rows ``(version, ts, type, payload)``
        (:class:`~agentbook.store.events.EventRow`): they are inserted with the batch's
        history rows, and a message rolled back takes its own with it."""
        self._events.extend(rows)

    # -- the agent's own SQL ------------------------------------------------------------
    def user_sql_dicts(self, query: str, params: Any, readonly: bool = False) -> list[dict[str, Any]]:
        """Run the agent's own SQL on the writer connection, inside its transaction.

        Returns the rows as dicts. The authorizer keeps it to the agent's own tables (and,
        *readonly*, to queries).
        """
        conn = self.conn
        if not readonly:
            try:  # (the batch's history rows go in first, then this message's savepoint)
                self._check_batch()
                if self._sp == 1:
                    self._open_savepoint()
                elif self._pending or self._events:
                    self._flush()
            except apsw.Error as exc:
                raise self.translate(exc) from None
        conn.authorizer = readonly_authorizer if readonly else user_authorizer
        # (SQL a model wrote: a time budget, and caps on the values and rows it makes)
        limits = replace(READONLY_LIMITS, seconds=self.query_seconds) if readonly else _NO_LIMITS
        try:
            names, rows = run_limited(conn, query, params, limits)
            return [dict(zip(names, row, strict=True)) for row in rows]
        except (apsw.Error, *_BAD_INPUT) as exc:
            failure: BaseException = exc
        finally:
            conn.authorizer = None
        # (translated with the authorizer and the budget off: it may check the store)
        if isinstance(failure, apsw.Error):
            raise self.translate(failure) from None
        raise translate_error(failure, self.path) from None

    def internal(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run agentbook's own SQL on the writer connection (history rows appended so far
        go in first, so it sees them)."""
        self._check_batch()
        if self._pending or self._events:
            self._flush()
        if self._sp == 1 and not query.startswith("SELECT"):
            self._open_savepoint()
        return self.conn.execute(query, params).fetchall()

    # -- reads from outside -------------------------------------------------------------
    def reader(self) -> apsw.Connection:
        """A read-only connection that sees the last commit."""
        if self._reader is None:
            self._reader = open_reader(self.path)
        return self._reader

    # -- life ---------------------------------------------------------------------------
    def close(self, checkpoint: bool = True) -> None:
        """Close both connections (a running transaction is rolled back). *checkpoint*
        ``False``: leave the WAL as it is (the next open, or a later checkpoint, takes it
        in) instead of checkpointing it into the database."""
        for conn in (self._reader, getattr(self, "conn", None)):
            if conn is not None:
                try:
                    if not checkpoint:
                        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
                    conn.close(True)
                except apsw.Error:
                    pass
        self._reader = None

    def __repr__(self) -> str:
        return f"<AgentStore {self.path}>"


def user_schema(conn: apsw.Connection, db: str = "main") -> str:
    """JSON ``[[type, name, table, sql], ...]`` of the agent's own schema objects."""
    import json

    rows = conn.execute(
        f"SELECT type, name, tbl_name, sql FROM {db}.sqlite_schema WHERE sql IS NOT NULL"
        " AND name NOT LIKE '\\_ab\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    return json.dumps([list(r) for r in rows])


def _create_exclusively(path: str, data: bytes) -> bool:
    """Publish a new store file whole, unless one is there already; whether this call made
    it. A full disk or a read-only folder becomes its typed error.

    The bytes go to a temporary file of this call's own (``~<file>~<random>.tmp``), which
    is then linked to *path*: a link never replaces a file, so a store another process
    made in the meantime (and may have committed to) is kept, never overwritten. No
    partial file stays behind; a temporary file left by a killed process is removed by a
    later creation once it is a minute old.
    """
    folder = os.path.dirname(path) or "."
    base = os.path.basename(path)
    tmp: str | None = None
    try:
        os.makedirs(folder, exist_ok=True)
        _remove_leftovers(folder, base)
        fh = None
        while fh is None:  # (a random name of its own: taken only by a 48-bit coincidence)
            tmp = os.path.join(folder, f"~{base}~{secrets.token_hex(6)}.tmp")
            try:
                fh = open(tmp, "xb")  # noqa: SIM115 - closed just below
            except FileExistsError:
                tmp = None
        with fh:
            fh.write(data)
        made = str(tmp)
        try:
            os.link(made, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if os.path.exists(path):  # no hard links on this file system (FAT, some mounts):
                return False          # rename (Windows refuses to replace; elsewhere the
            os.rename(made, path)     # lease makes this process the only creator)
            tmp = None
        return True
    except OSError as exc:
        raise health.os_error(exc, path) from None
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


#: The name this had before creation became exclusive (kept for the tests that use it).
_write_atomically = _create_exclusively

#: Errors of ``os.link`` on a file system without hard links.
_NO_LINKS = frozenset(getattr(errno, n) for n in ("EPERM", "EXDEV", "EMLINK", "ENOSYS", "ENOTSUP",
                                                 "EOPNOTSUPP", "EACCES") if hasattr(errno, n))
_LEFTOVER_AGE = 60.0


#: Folders whose leftovers this process removed already (one scan per folder: a scan
#: per creation made creating n agents in one folder cost O(n^2)).
_swept: set[str] = set()


def _remove_leftovers(folder: str, base: str) -> None:
    """Remove the temporary files of store creations that a killed process left in
    *folder* (a minute old: one that is younger may still be being written); once per
    folder and process (*base*, the store being created now, is not needed for that)."""
    if folder in _swept:
        return
    _swept.add(folder)
    try:
        entries = [e for e in os.scandir(folder)
                   if e.name.startswith("~") and e.name.endswith(".tmp")
                   and e.name.count("~") == 2]
    except OSError:
        _swept.discard(folder)
        return
    cutoff = time.time() - _LEFTOVER_AGE
    for entry in entries:
        try:
            if entry.stat().st_mtime < cutoff:
                os.remove(entry.path)
        except OSError:
            pass
