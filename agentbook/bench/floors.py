"""Floors: the work of each benchmark written by hand with the same libraries.

A floor is what a careful programmer would write without agentbook: ``apsw`` (the SQLite
binding agentbook itself uses), WAL mode, ``synchronous=NORMAL``, the same layout idea
(one state row per agent, one history row per message carrying the time, method,
arguments and the state after as JSON), and nothing else: no mailbox, no savepoints,
no change capture, no events. agentbook is measured against these in the same run.

Floors run synchronously (no event loop): they are the fastest honest way to do the
work, which is what a floor should be.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import OrderedDict, deque
from typing import Any, cast

import apsw

__all__ = ["HandAgent", "HandAlarms", "HandApproval", "HandCron", "HandRoundRobin",
           "LazyRegistry", "ReplayedSql", "create_hand_file"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history(
    version INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    method TEXT NOT NULL,
    args TEXT NOT NULL,
    state TEXT
);
"""
_UPDATE = "UPDATE state SET version = ?, state = ? WHERE id = 1"
_INSERT = "INSERT INTO history(version, ts, method, args, state) VALUES (?, ?, ?, ?, ?)"
_dumps = json.dumps


def _open(path: str, synchronous: str = "NORMAL") -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def create_hand_file(path: str, synchronous: str = "NORMAL") -> None:
    """Create one agent's file by hand: schema, state row, first history row; close it.

    This is the floor of agent creation (and of disk per agent).
    """
    conn = _open(path, synchronous)
    conn.execute(_SCHEMA)
    state = _dumps({"n": 1})
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO state(id, version, state) VALUES (1, 1, ?)", (state,))
    conn.execute(_INSERT, (1, time.time(), "inc", "[]", state))
    conn.execute("COMMIT")
    conn.close()


class HandAgent:
    """One agent as a single SQLite file, written by hand.

    Args:
        path: The SQLite file (created with the floor's schema).
        synchronous: ``"NORMAL"`` (durable against a killed process) or ``"FULL"``.
    """

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.conn = _open(path, synchronous)
        self.conn.execute(_SCHEMA)
        rows = cast(list[tuple[int, str]],
                    self.conn.execute("SELECT version, state FROM state").fetchall())
        if not rows:
            self.conn.execute("INSERT INTO state(id, version, state) VALUES (1, 0, ?)",
                              (_dumps({"n": 0}),))
            rows = [(0, _dumps({"n": 0}))]
        self.version: int = rows[0][0]
        self.state: dict[str, Any] = json.loads(rows[0][1])

    def messages(self, count: int) -> None:
        """*count* messages, each its own transaction: UPDATE state + INSERT history, COMMIT."""
        conn = self.conn
        execute = conn.execute
        args = _dumps([])
        for _ in range(count):
            self.state = {"n": self.state["n"] + 1}
            text = _dumps(self.state)
            self.version += 1
            execute("BEGIN IMMEDIATE")
            execute(_UPDATE, (self.version, text))
            execute(_INSERT, (self.version, time.time(), "inc", args, text))
            execute("COMMIT")

    def burst(self, count: int, batch: int) -> None:
        """*count* queued messages drained *batch* at a time, one commit per batch.

        Every message still gets its own history row (with the state after it); the
        state row is written once per batch.
        """
        execute = self.conn.execute
        queue = deque(("inc", _dumps([])) for _ in range(count))
        while queue:
            execute("BEGIN IMMEDIATE")
            text = ""
            for _ in range(min(batch, len(queue))):
                method, args = queue.popleft()
                self.state = {"n": self.state["n"] + 1}
                text = _dumps(self.state)
                self.version += 1
                execute(_INSERT, (self.version, time.time(), method, args, text))
            execute(_UPDATE, (self.version, text))
            execute("COMMIT")

    def close(self) -> None:
        """Close the file."""
        self.conn.close()


class HandApproval(HandAgent):
    """A durable approval written by hand: three commits per round trip.

    1. the request: a pending approval row (the exact arguments, under a SHA-256 digest)
       and a history row;
    2. the decision: the row is marked approved, only if it is still pending;
    3. the approved method: the state row, a history row and the approval's result.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS approvals(id TEXT PRIMARY KEY, method TEXT,"
                          " args TEXT, digest TEXT, status TEXT, decided_by TEXT,"
                          " decided_at REAL, result TEXT)")
        self.count = 0

    def round_trip(self, amount: int = 1) -> int:
        """Request, approve, run ``refund(amount)``; returns the new total."""
        import hashlib

        execute = self.conn.execute
        self.count += 1
        approval_id = f"ap-{self.count}"
        args = _dumps({"amount": amount})
        digest = hashlib.sha256(f"refund{args}".encode()).hexdigest()
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO approvals(id, method, args, digest, status) VALUES (?,?,?,?,'pending')",
                (approval_id, "refund", args, digest))
        self.version += 1
        execute(_INSERT, (self.version, time.time(), "propose", args, None))
        execute("COMMIT")
        execute("BEGIN IMMEDIATE")
        execute("UPDATE approvals SET status = 'approved', decided_by = ?, decided_at = ?"
                " WHERE id = ? AND status = 'pending'", ("bench", time.time(), approval_id))
        execute("COMMIT")
        execute("BEGIN IMMEDIATE")
        method, stored, check = cast(tuple[str, str, str], execute(
            "SELECT method, args, digest FROM approvals WHERE id = ?", (approval_id,)).fetchall()[0])
        if hashlib.sha256(f"{method}{stored}".encode()).hexdigest() != check:
            raise RuntimeError("tampered approval")
        self.state = {"n": self.state["n"] + json.loads(stored)["amount"]}
        text = _dumps(self.state)
        self.version += 1
        execute(_UPDATE, (self.version, text))
        execute(_INSERT, (self.version, time.time(), method, stored, text))
        execute("UPDATE approvals SET result = ? WHERE id = ?", (str(self.state["n"]), approval_id))
        execute("COMMIT")
        return self.state["n"]


class HandRoundRobin:
    """Many agents, one file each, at most *max_open* files open (least recently used
    closed first), one transaction per message.

    Args:
        folder: Where the files live (created).
        count: How many agents.
        max_open: How many files may be open at once (the runtime's ``max_open``).
    """

    def __init__(self, folder: str, count: int, max_open: int) -> None:
        os.makedirs(folder, exist_ok=True)
        self.paths = [os.path.join(folder, f"agent-{i}.db") for i in range(count)]
        for path in self.paths:
            create_hand_file(path)
        self.max_open = max_open
        self.open: OrderedDict[int, list[Any]] = OrderedDict()

    def _get(self, i: int) -> list[Any]:
        entry = self.open.get(i)
        if entry is not None:
            self.open.move_to_end(i)
            return entry
        conn = apsw.Connection(self.paths[i], flags=apsw.SQLITE_OPEN_READWRITE)
        conn.execute("PRAGMA synchronous=NORMAL")
        version, text = cast(tuple[int, str],
                             conn.execute("SELECT version, state FROM state").fetchall()[0])
        entry = self.open[i] = [conn, version, json.loads(text)]
        while len(self.open) > self.max_open:
            _, (old, _, _) = self.open.popitem(last=False)
            old.close()
        return entry

    def messages(self, count: int, start: int = 0) -> None:
        """*count* messages to agents ``start, start+1, ...`` (modulo the agent count)."""
        n_agents = len(self.paths)
        args = _dumps([])
        for k in range(start, start + count):
            entry = self._get(k % n_agents)
            conn = entry[0]
            entry[2] = {"n": entry[2]["n"] + 1}
            text = _dumps(entry[2])
            entry[1] += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_UPDATE, (entry[1], text))
            conn.execute(_INSERT, (entry[1], time.time(), "inc", args, text))
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every open file."""
        for conn, _, _ in self.open.values():
            conn.close()
        self.open.clear()


class HandCron(HandRoundRobin):
    """The durable floor of a day of cron firings: every agent's job fires every five
    minutes, each firing its own transaction in the agent's file (UPDATE state + INSERT
    history, COMMIT), at most *max_open* files open (least recently used closed first).

    With more agents due at one instant than *max_open*, the files are visited in the same
    order every five minutes, so each firing opens its file, commits and (*max_open*
    firings later) closes it: open, commit one versioned row, close, per firing.
    """

    def day(self, ticks: int, now: float) -> float:
        """*ticks* instants five minutes apart after *now*, every agent firing at each;
        returns the last instant."""
        n_agents = len(self.paths)
        args = _dumps([])
        for _ in range(ticks):
            now += 300.0
            for i in range(n_agents):
                entry = self._get(i)
                conn = entry[0]
                entry[2] = {"n": entry[2]["n"] + 1, "last": now}
                text = _dumps(entry[2])
                entry[1] += 1
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_UPDATE, (entry[1], text))
                conn.execute(_INSERT, (entry[1], time.time(), "tick", args, text))
                conn.execute("COMMIT")
        return now

    def fired(self) -> int:
        """Firings committed so far, read back from every file (closes them all)."""
        self.close()
        total = 0
        for path in self.paths:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            (text,) = cast(tuple[str], conn.execute("SELECT state FROM state").fetchall()[0])
            total += json.loads(text)["n"] - 1  # (create_hand_file's first message)
            conn.close()
        return total


class HandAlarms:
    """The floor of many schedules due at one instant on awake agents (issue 20): one
    open file per agent with a ``schedules`` table; at the due instant each agent in
    turn starts its callback (the lateness is taken there, as agentbook's
    ``occurrence`` callbacks take it) and commits the firing in one transaction: SELECT
    the due rows, DELETE the row, UPDATE state, INSERT history, COMMIT.

    It shows what serial durable firings cost on this machine: the k-th agent's callback
    starts after k-1 commits, whatever runs them.
    """

    def __init__(self, folder: str, count: int) -> None:
        os.makedirs(folder, exist_ok=True)
        self.conns: list[apsw.Connection] = []
        self.states: list[list[Any]] = []
        for i in range(count):
            path = os.path.join(folder, f"alarm-{i}.db")
            create_hand_file(path)
            conn = _open(path)
            conn.execute("CREATE TABLE IF NOT EXISTS schedules(id TEXT PRIMARY KEY,"
                         " callback TEXT NOT NULL, due REAL NOT NULL)")
            conn.execute("CREATE INDEX IF NOT EXISTS schedules_due ON schedules(due)")
            self.conns.append(conn)
            self.states.append([1, {"rings": 0}])

    def arm(self, at: float) -> None:
        """Every agent schedules one ``ring`` at epoch second *at* (a commit each)."""
        for i, conn in enumerate(self.conns):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO schedules(id, callback, due) VALUES (?, 'ring', ?)",
                         (f"s-{i}-{at!r}", at))
            conn.execute("COMMIT")

    def ring(self, at: float) -> list[float]:
        """Wait for *at*, then fire every agent's due row; each firing's lateness (ms)."""
        time.sleep(max(0.0, at - time.time()))
        late = []
        args = _dumps([])
        for conn, entry in zip(self.conns, self.states, strict=True):
            conn.execute("BEGIN IMMEDIATE")
            rows = cast(list[tuple[str, str, float]], conn.execute(
                "SELECT id, callback, due FROM schedules WHERE due <= ? ORDER BY due",
                (time.time(),)).fetchall())
            for sid, _callback, due in rows:
                late.append((time.time() - due) * 1000)
                entry[1] = {"rings": entry[1]["rings"] + 1}
                text = _dumps(entry[1])
                entry[0] += 1
                conn.execute("DELETE FROM schedules WHERE id = ?", (sid,))
                conn.execute(_UPDATE, (entry[0], text))
                conn.execute(_INSERT, (entry[0], time.time(), "ring", args, text))
            conn.execute("COMMIT")
        return sorted(late)

    def close(self) -> None:
        """Close every file."""
        for conn in self.conns:
            conn.close()
        self.conns.clear()


def _open_now(conn: apsw.Connection) -> bool:
    try:
        conn.filename  # noqa: B018 (raises once closed)
    except apsw.ConnectionClosedError:
        return False
    return True


class ReplayedSql:
    """SQLite's own share of agentbook's work: the statements agentbook's connections ran
    (text and bindings, in order), replayed by hand on copies of their files taken before
    they ran, with nothing around them. agentbook's time over this floor is what its runtime
    adds to the SQL it needs (issue 20's profile of a firing).

    Record with :meth:`watch` (every connection opened from then on is known) and
    :meth:`copy` + :meth:`recording`; then :meth:`replay`.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.conns: list[apsw.Connection] = []
        self.copies: dict[str, str] = {}
        self.log: list[tuple[str, str, Any]] = []

    def watch(self) -> None:
        """Know every SQLite connection opened from now on (``apsw.connection_hooks``)."""
        apsw.connection_hooks.append(self.conns.append)

    def unwatch(self) -> None:
        """Stop knowing new connections."""
        if self.conns.append in apsw.connection_hooks:
            apsw.connection_hooks.remove(self.conns.append)

    def _live(self) -> list[apsw.Connection]:
        """The connections still open (a copy: the copies' own connections join it)."""
        self.conns[:] = [conn for conn in self.conns if _open_now(conn)]
        return list(self.conns)

    def copy(self, part: str) -> int:
        """Copy every open file whose path contains *part* (SQLite's backup: a consistent
        copy); returns how many."""
        for conn in self._live():
            name = conn.filename
            if part not in name or name in self.copies:
                continue
            target = os.path.join(self.folder, f"copy-{len(self.copies)}.db")
            dest = apsw.Connection(target)
            dest.execute("PRAGMA synchronous=OFF")  # (a copy to replay, not to keep)
            with dest.backup("main", conn, "main") as backup:
                backup.step()
            dest.close()
            self.copies[name] = target
        return len(self.copies)

    def recording(self, on: bool) -> None:
        """Record (or stop recording) the statements the copied files' connections run."""
        def trace(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
            self.log.append((cursor.connection.filename, sql, bindings))
            return True
        for conn in self._live():
            if conn.filename in self.copies:
                conn.exec_trace = trace if on else None

    def replay(self) -> tuple[int, float, float]:
        """Replay the recorded statements on fresh copies of the copies, each connection
        warmed first (the same statements once, rolled back: statement and page caches as
        agentbook's had them; and a write that changes nothing, so the WAL is under way).
        Stops knowing new connections. Returns ``(statements, wall seconds, CPU seconds)``."""
        self.unwatch()
        mine: dict[str, apsw.Connection] = {}
        for name, source in self.copies.items():
            target = source[:-3] + "-replay.db"
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(target + suffix):
                    os.remove(target + suffix)
            shutil.copyfile(source, target)
            conn = mine[name] = _open(target)
            for n, sql, bindings in self.log:
                if n == name:
                    conn.execute("ROLLBACK" if sql == "COMMIT" else sql, bindings).fetchall()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # a write that changes nothing, so the WAL is under way as agentbook's were (a
            # new WAL's first commit writes and syncs its header)
            (version,) = cast(tuple[int], conn.execute("PRAGMA user_version").fetchall()[0])
            conn.execute(f"PRAGMA user_version = {version:d}")
        log = [(mine[name].execute, sql, bindings) for name, sql, bindings in self.log]
        t0, c0 = time.perf_counter(), time.process_time()
        for execute, sql, bindings in log:
            execute(sql, bindings).fetchall()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for conn in mine.values():
            conn.close()
        return len(log), wall, cpu

    def close(self) -> None:
        """Forget the connections and the log (the copies stay in the folder)."""
        self.unwatch()
        self.conns.clear()
        self.log.clear()


class LazyRegistry:
    """The memory floor: agents known by name with their state, nothing else in memory.

    The cheapest in-memory representation of an idle actor (a name and its state), the
    "lazy actor" line of BENCH.md. A hibernated agentbook agent should cost no more.
    """

    def __init__(self) -> None:
        self.agents: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, class_name: str, name: str, state: dict[str, Any]) -> None:
        """Remember one agent."""
        self.agents[(class_name, name)] = state
