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
re-reads every store once.

The index also knows which methods approvals guard (:meth:`ApprovalIndex.is_guarded`): a
method some approval was requested for runs only when a person approves it, never as a
message from another agent. Each runtime's catalog has its own :class:`ApprovalIndex`
(``catalog.approval_index``), learned from the catalog when it opens, so two runtimes in
one process never share guards and a new process knows what the last one guarded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import apsw

from . import approvals as rows

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["ApprovalIndex"]

Key = tuple[str, str]
#: One placeholder per column of :data:`~agentbook.store.approvals.INDEX_COLUMNS`.
_MARKS = f"({','.join('?' * len(rows.IndexedApproval._fields))})"


class ApprovalIndex:
    """The approval index of one catalog: guarded methods, and keeping the index true.

    Args:
        catalog: The catalog whose ``approvals`` table this keeps (its connection, folder
            and quarantine list are used; the catalog is passed in, never imported, so the
            catalog can own this object without an import cycle).
        rescan: The catalog's approvals table is new but agent files exist: index every
            store once, on the first read.
    """

    __slots__ = ("catalog", "guarded", "recheck", "rescan")

    def __init__(self, catalog: Catalog, *, rescan: bool) -> None:
        self.catalog = catalog
        #: ``{class name: {method, ...}}``: methods some approval was requested for. Other
        #: agents may not call them as messages: only an approval runs them.
        self.guarded: dict[str, set[str]] = {}
        #: Agents whose pending index rows to check against their stores on the next read
        #: (``None``: every agent; an empty set: nothing to check).
        self.recheck: set[Key] | None = None
        #: Index every store once on the next read (the index was lost or rebuilt).
        self.rescan = rescan
        self.load_guarded()

    # -- guarded methods ----------------------------------------------------------------
    def guard(self, class_name: str, method: str) -> None:
        """Remember that *method* of *class_name* is guarded by approvals."""
        methods = self.guarded.get(class_name)
        if methods is None:
            self.guarded[class_name] = {method}
        else:
            methods.add(method)

    def is_guarded(self, class_name: str, method: str) -> bool:
        """Whether an approval was ever requested for *method* of *class_name* (then only an
        approval may run it)."""
        return method in self.guarded.get(class_name, ())

    def load_guarded(self) -> None:
        """Learn the guarded methods from the catalog's index (a new process knows none)."""
        for class_name, method in self.catalog.conn.execute(
                "SELECT DISTINCT class, method FROM approvals"):
            self.guard(str(class_name), str(method))

    # -- keeping the index true ---------------------------------------------------------
    @property
    def stale(self) -> bool:
        """Whether the index may disagree with the stores (read it through :meth:`sync`)."""
        return self.rescan or self.recheck != set()

    def sync(self) -> None:
        """A full scan if the index was lost, then :meth:`reconcile` of the agents still to
        look at."""
        if self.rescan:
            self.rescan = False
            self.scan_all()
        try:
            self.recheck = self.reconcile(self.recheck)
        except apsw.Error:
            pass  # the index stays as it is; the stores are still the truth

    def reconcile(self, keys: set[Key] | None = None) -> set[Key]:
        """Bring the pending index rows of *keys* (``None``: every agent) in line with the
        stores. Returns the agents to look at again (a writer held their store)."""
        catalog = self.catalog
        pending: dict[Key, list[str]] = {}
        for approval_id, class_name, name in catalog.conn.execute(
                "SELECT id, class, name FROM approvals WHERE status = 'pending'"):
            key = (str(class_name), str(name))
            if keys is None or key in keys:
                pending.setdefault(key, []).append(str(approval_id))
        again: set[Key] = set()
        updates: list[tuple] = []
        drops: list[tuple[str]] = []
        for key, ids in pending.items():
            try:
                conn = self._open(key)
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
                    found = rows.decision(conn, approval_id)
                    if found is not None:
                        if found.status != "pending":
                            updates.append((found.status, found.by, found.at, found.reason,
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
                catalog.conn.executemany(
                    "DELETE FROM approvals WHERE id = ? AND status = 'pending'", drops)
        return again

    def scan_all(self) -> int:
        """Index every approval held by any store the index does not know; returns how many
        were added."""
        catalog = self.catalog
        added = 0
        for path in catalog.scan_files():
            try:
                conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            except apsw.Error:
                continue
            try:
                meta = {str(k): str(v) for k, v in
                        conn.execute("SELECT key, value FROM _ab_meta").fetchall()}
                if "class" not in meta or "name" not in meta:
                    continue
                found = rows.index_rows(conn, meta["class"], meta["name"])
            except apsw.Error:
                continue
            finally:
                conn.close()
            with catalog.conn:
                for row in found:
                    catalog.conn.execute(
                        f"INSERT OR IGNORE INTO approvals({rows.INDEX_COLUMNS}) VALUES {_MARKS}", row)
                    added += catalog.conn.changes()
                    self.guard(row.agent, row.method)
        return added

    def take_in(self, key: Key, conn: apsw.Connection) -> int:
        """Index the approvals of a store that came here from elsewhere (a replica
        promoted to owner): each as the store has it, pending or decided. Returns how
        many it holds."""
        found = rows.index_rows(conn, *key)
        if found:
            with self.catalog.conn:
                self.catalog.conn.executemany(
                    f"INSERT OR REPLACE INTO approvals({rows.INDEX_COLUMNS}) VALUES {_MARKS}", found)
            for row in found:
                self.guard(row.agent, row.method)
        return len(found)

    def _open(self, key: Key) -> apsw.Connection | None:
        path = self.catalog.store_path(*key)
        if not os.path.exists(path):
            return None
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.set_busy_timeout(0)
        return conn
