"""Keeping the catalog's approval index true to the agents' stores.

The index (the catalog's ``approvals`` table) is what the inbox and the ``approvals`` view
read; each agent's ``_ab_approvals`` table is the truth. The index row of a request is
written before the agent's commit and a decision after it, so a crash in between leaves
a *phantom* (indexed as pending, never committed) or a *stale* row (indexed as pending,
decided in the store). Both are ``pending`` in the index, so only agents with pending
index rows are looked at (lazily, the first time the index is read in a process):

* a pending row whose store says otherwise takes the store's decision;
* a pending row the store does not hold is dropped, but only when nobody is writing
  that store (its write lock is free): a request still on its way to its commit, in
  this process or another, is left alone and looked at again next time.

A catalog that lost its approvals table (a new catalog next to existing agent files)
re-reads every store once. :data:`GUARDED` names the methods that approvals guard.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import apsw

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["GUARDED", "guard", "load_guarded", "reconcile", "scan_all", "sync"]

#: ``{class name: {method, ...}}``: methods some approval was requested for. Other agents
#: may not call them as messages: only an approval runs them.
GUARDED: dict[str, set[str]] = {}

_STORE_ROW = ("SELECT status, decided_by, decided_at, reason, error FROM _ab_approvals"
              " WHERE id = ?")
_ALL_ROWS = ("SELECT id, method, args, kwargs, summary, side_effects, created, expires, status,"
             " decided_by, decided_at, CASE WHEN status = 'failed' THEN error ELSE reason END"
             " FROM _ab_approvals ORDER BY created")


def guard(class_name: str, method: str) -> None:
    """Remember that *method* of *class_name* is guarded by approvals."""
    methods = GUARDED.get(class_name)
    if methods is None:
        GUARDED[class_name] = {method}
    else:
        methods.add(method)


def load_guarded(catalog: Catalog) -> None:
    """Learn the guarded methods from a catalog's index (a new process knows none)."""
    for class_name, method in catalog.conn.execute(
            "SELECT DISTINCT class, method FROM approvals"):
        guard(class_name, method)


def sync(catalog: Catalog) -> None:
    """What :meth:`Catalog.sync_approvals` does: a full scan if the index was lost, then
    :func:`reconcile` of the agents still to look at."""
    if catalog._approvals_scan:
        catalog._approvals_scan = False
        scan_all(catalog)
    try:
        catalog._approvals_recheck = reconcile(catalog, catalog._approvals_recheck)
    except apsw.Error:
        pass  # the index stays as it is; the stores are still the truth


def _open(catalog: Catalog, key: tuple[str, str]) -> apsw.Connection | None:
    from .catalog import agent_file

    path = os.path.join(catalog.root, agent_file(*key))
    if not os.path.exists(path):
        return None
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    conn.set_busy_timeout(0)
    return conn


def reconcile(catalog: Catalog, keys: set[tuple[str, str]] | None = None) -> set[tuple[str, str]]:
    """Bring the pending index rows of *keys* (``None``: every agent) in line with the
    stores. Returns the agents to look at again (a writer held their store)."""
    pending: dict[tuple[str, str], list[str]] = {}
    for approval_id, class_name, name in catalog.conn.execute(
            "SELECT id, class, name FROM approvals WHERE status = 'pending'"):
        if keys is None or (class_name, name) in keys:
            pending.setdefault((class_name, name), []).append(approval_id)
    again: set[tuple[str, str]] = set()
    updates: list[tuple] = []
    drops: list[tuple[str]] = []
    for key, ids in pending.items():
        try:
            conn = _open(catalog, key)
        except apsw.Error:
            continue  # unreadable (damaged, no permission): leave its rows as they are
        if conn is None:
            if catalog.quarantined(*key) is None:  # no store at all: nothing committed
                drops.extend((i,) for i in ids)
            continue
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
                idle = True
            except apsw.BusyError:
                idle = False
            for approval_id in ids:
                rows = conn.execute(_STORE_ROW, (approval_id,)).fetchall()
                if rows:
                    status, by, at, reason, error = rows[0]
                    if status != "pending":
                        updates.append((status, by, at, error if status == "failed" else reason,
                                        approval_id))
                elif idle:
                    drops.append((approval_id,))
                else:
                    again.add(key)
        except apsw.Error:
            pass
        finally:
            conn.close()
    if updates or drops:
        with catalog.conn:
            catalog.conn.executemany(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ?"
                " WHERE id = ? AND status = 'pending'", updates)
            catalog.conn.executemany("DELETE FROM approvals WHERE id = ? AND status = 'pending'",
                                     drops)
    return again


def scan_all(catalog: Catalog) -> int:
    """Index every approval held by any store the index does not know; returns how many
    were added."""
    added = 0
    for path in catalog.scan_files():
        try:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        except apsw.Error:
            continue
        try:
            meta = dict(conn.execute("SELECT key, value FROM _ab_meta").fetchall())
            rows = conn.execute(_ALL_ROWS).fetchall()
        except apsw.Error:
            continue
        finally:
            conn.close()
        if "class" not in meta or "name" not in meta:
            continue
        with catalog.conn:
            for row in rows:
                method = row[1]
                catalog.conn.execute(
                    "INSERT OR IGNORE INTO approvals(id, class, name, method, args, kwargs, summary,"
                    " side_effects, created, expires, status, decided_by, decided_at, reason)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (row[0], meta["class"], meta["name"], *row[1:]))
                added += catalog.conn.changes()
                guard(meta["class"], method)
    return added
