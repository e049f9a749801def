"""The file of an exported agent: its store, minus what must not leave, plus a label.

An export is a plain SQLite file (no pickle, readable with any SQLite tool): the agent's
store as of its last commit - state, its own tables, key-value data, schedules, workflow
journals and the full history with its changesets and hash chain - copied with
``VACUUM INTO`` (one consistent snapshot, never waiting for a running handler), then:

* the untracked tables that are not the agent's record are emptied: ``_ab_secrets``
  (secrets never leave), ``_ab_approvals`` (a pending approval belongs to the people of
  the runtime it was asked in), ``_ab_outbox`` and ``_ab_inbox_seen`` (messages in
  flight) and ``_ab_events`` (the event stream); tracked tables stay whole, so every
  version materializes exactly as it did;
* the link to a parent agent is dropped (the parent is not in the file; the history
  starts at the fork's first version);
* ``_ab_export`` (key, value) says what the file is: ``format``, ``format_version``,
  ``class``, ``name``, ``head``, ``exported_at``, ``agentbook``;
* a final ``VACUUM`` rewrites every page, so no byte of what was emptied stays in the
  file's free space, and the journal mode becomes ``DELETE``: one self-contained file.

Importing (:func:`check_export`, :func:`install_export`) checks the label, SQLite's
integrity check and the history's hash chain before anything is written.
"""

from __future__ import annotations

import os
import secrets
from typing import NamedTuple, cast

import apsw

from ..errors import AgentFileError
from . import health
from .chain import verify_chain
from .history import bounds, newest_state, state_at
from .schema import MIGRATIONS

__all__ = ["FORMAT", "FORMAT_VERSION", "ExportInfo", "check_export", "install_export",
           "write_export"]

#: What ``_ab_export.format`` says in every export.
FORMAT = "agentbook-agent"
#: Raised when the file's layout changes; an older agentbook refuses a newer file.
FORMAT_VERSION = 1
#: Untracked tables emptied in an export (see the module docstring).
LEFT_OUT = ("_ab_secrets", "_ab_approvals", "_ab_outbox", "_ab_inbox_seen", "_ab_events")


class ExportInfo(NamedTuple):
    """What an export file holds, from its label."""

    class_name: str
    name: str
    #: The newest version in the file, and the oldest one time travel reaches.
    head: int
    first: int
    exported_at: float
    agentbook: str


def write_export(source: str, dest: str, exported_at: float, agentbook: str) -> ExportInfo:
    """Write the export of the store at *source* to *dest* (which must not exist), through a
    temporary file beside it: *dest* appears whole or not at all."""
    tmp = f"{dest}.{secrets.token_hex(6)}.tmp"
    staged = f"{tmp}-staged"
    try:
        reader = apsw.Connection(f"file:{source}?mode=ro",
                                 flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            reader.set_busy_timeout(5_000)
            reader.execute("VACUUM INTO ?", (staged,))
        finally:
            reader.close()
        conn = apsw.Connection(staged)
        try:
            conn.execute("PRAGMA secure_delete = ON")
            with conn:
                meta = dict(cast("list[tuple[str, str]]", conn.execute(
                    "SELECT key, value FROM _ab_meta").fetchall()))
                for table in LEFT_OUT:
                    conn.execute(f"DELETE FROM {table}")
                conn.execute("DELETE FROM _ab_meta WHERE key = 'parent'")
                first, head = bounds(conn)
                info = ExportInfo(meta.get("class", ""), meta.get("name", ""), head, first,
                                  exported_at, agentbook)
                conn.execute("CREATE TABLE _ab_export(key TEXT PRIMARY KEY, value TEXT)"
                             " WITHOUT ROWID")
                conn.executemany("INSERT INTO _ab_export VALUES (?, ?)", [
                    ("format", FORMAT), ("format_version", str(FORMAT_VERSION)),
                    ("class", info.class_name), ("name", info.name), ("head", str(head)),
                    ("first", str(first)), ("exported_at", repr(exported_at)),
                    ("agentbook", agentbook), ("parent", meta.get("parent") or "")])
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("VACUUM INTO ?", (tmp,))  # every page new: nothing emptied remains
        finally:
            conn.close()
        _publish(tmp, dest)
        return info
    finally:
        for path in (tmp, staged, f"{staged}-journal", f"{staged}-wal", f"{staged}-shm"):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def _publish(tmp: str, dest: str) -> None:
    try:
        os.link(tmp, dest)  # (fails rather than replace a file that appeared meanwhile)
    except FileExistsError:
        raise AgentFileError(f"{dest} already exists; export to another path, or pass "
                             "overwrite=True") from None
    except OSError:
        os.replace(tmp, dest)


def check_export(path: str) -> ExportInfo:
    """The label of the export at *path*, after checking that it is one agentbook can read
    whole: an agentbook export, of a format this version knows, that SQLite finds intact
    and whose history matches its hash chain.

    Raises:
        AgentFileError: it is not, and the message says why and what to do.
    """
    shown = os.fspath(path)
    if not os.path.isfile(path):
        raise AgentFileError(f"{shown} is not a file; pass the path ref.export() wrote")
    try:
        conn = apsw.Connection(f"file:{path}?mode=ro&immutable=1",
                               flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as exc:
        raise AgentFileError(f"{shown} can't be opened ({exc}); pass the path ref.export() "
                             "wrote") from None
    try:
        try:
            label = dict(cast("list[tuple[str, str]]", conn.execute(
                "SELECT key, value FROM _ab_export").fetchall()))
        except apsw.Error:
            raise AgentFileError(
                f"{shown} is not an agentbook export (no _ab_export label: it may be another "
                "SQLite file, or not SQLite at all); make one with ref.export(path)") from None
        if label.get("format") != FORMAT:
            raise AgentFileError(f"{shown} is not an agentbook agent export (its label says "
                                 f"{label.get('format')!r}); make one with ref.export(path)")
        if int(label.get("format_version", "0")) > FORMAT_VERSION:
            raise AgentFileError(
                f"{shown} was written by a newer agentbook ({label.get('agentbook')}, format "
                f"{label.get('format_version')}); upgrade agentbook to import it")
        migrations = cast("int", conn.execute("PRAGMA user_version").fetchall()[0][0])
        if migrations > len(MIGRATIONS):
            raise AgentFileError(f"{shown} holds a store from a newer agentbook "
                                 f"({label.get('agentbook')}); upgrade agentbook to import it")
        check = health.quick_check(conn)
        if check != "ok":
            raise AgentFileError(f"{shown} is damaged (SQLite: {check}); export the agent "
                                 "again from its runtime")
        bad = verify_chain(conn)
        if bad is not None:
            raise AgentFileError(f"{shown} is damaged: its history no longer matches its hash "
                                 f"chain from version {bad}; export the agent again")
        first, head = bounds(conn)
        newest = newest_state(conn)
        if newest is None or newest != state_at(conn, head) or head != cast("int", conn.execute(
                "SELECT coalesce(max(version), 0) FROM _ab_history").fetchall()[0][0]):
            raise AgentFileError(f"{shown} is damaged: its newest state does not match its "
                                 "history; export the agent again")
        return ExportInfo(label.get("class", ""), label.get("name", ""), head, first,
                          float(label.get("exported_at", "0")), label.get("agentbook", ""))
    except AgentFileError:
        raise
    except (apsw.Error, ValueError) as exc:
        raise AgentFileError(f"{shown} is damaged or not an agentbook export ({exc}); export "
                             "the agent again with ref.export(path)") from None
    finally:
        conn.close()


def install_export(path: str, tmp: str, class_name: str, name: str, created: float) -> None:
    """Copy the export at *path* (checked: :func:`check_export`) to *tmp*, as the store of
    agent (*class_name*, *name*): the label goes, the identity is the new one. *tmp* is
    the caller's to publish (or remove)."""
    with open(path, "rb") as src, open(tmp, "xb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    conn = apsw.Connection(tmp)
    try:
        with conn:
            conn.execute("DROP TABLE _ab_export")
            conn.executemany("INSERT OR REPLACE INTO _ab_meta(key, value) VALUES (?, ?)",
                             [("class", class_name), ("name", name), ("created", repr(created))])
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
