"""DuckDB views over every agent: ``rt.sql("SELECT ... FROM history ...")``.

The views are a *projection*: DuckDB tables in an in-process database (``rt.db``), caught up
from the agents' own SQLite stores before each query. Rows move through Arrow (DuckDB
cannot read SQLite files offline). Each agent has a watermark - the newest version
already projected - so a catch-up reads only what is new, and only from agents that
committed since the last one (plus, the first time, every agent in the catalog).
:meth:`Analytics.rebuild` starts from scratch and gives the same result.

Views: ``agents``, ``history``, ``events`` (while ``rt.capture_events()`` is on),
``schedules``, ``approvals``, ``dead_letters``, ``messages`` and ``tool_calls`` (filled by
chat agents). They are for reading: ``rt.sql`` refuses anything but queries.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from .errors import ReadOnlyError, SQLError

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

    from .runtime import Runtime

__all__ = ["Analytics"]

Key = tuple[str, str]

_DDL = """
CREATE TABLE IF NOT EXISTS history(
    agent VARCHAR, name VARCHAR, version BIGINT, ts TIMESTAMPTZ, method VARCHAR, args VARCHAR,
    kwargs VARCHAR, source VARCHAR, duration_ms DOUBLE, outcome VARCHAR, error VARCHAR,
    result VARCHAR, state VARCHAR, due TIMESTAMPTZ, occurrence VARCHAR, lateness_s DOUBLE);
CREATE TABLE IF NOT EXISTS agents(
    agent VARCHAR, name VARCHAR, version BIGINT, created TIMESTAMPTZ, parent VARCHAR,
    state VARCHAR);
CREATE TABLE IF NOT EXISTS schedules(
    agent VARCHAR, name VARCHAR, id VARCHAR, callback VARCHAR, type VARCHAR, due TIMESTAMPTZ,
    cron VARCHAR, "interval" DOUBLE, attempt BIGINT, occurrence BIGINT, payload VARCHAR,
    last_error VARCHAR);
CREATE TABLE IF NOT EXISTS approvals(
    id VARCHAR, agent VARCHAR, name VARCHAR, method VARCHAR, args VARCHAR, kwargs VARCHAR,
    summary VARCHAR, side_effects VARCHAR, created TIMESTAMPTZ, expires TIMESTAMPTZ,
    status VARCHAR, decided_by VARCHAR, decided_at TIMESTAMPTZ, reason VARCHAR);
CREATE TABLE IF NOT EXISTS dead_letters(
    id VARCHAR, agent VARCHAR, name VARCHAR, callback VARCHAR, payload VARCHAR, type VARCHAR,
    attempts BIGINT, error VARCHAR, failed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS events(
    type VARCHAR, agent VARCHAR, name VARCHAR, payload VARCHAR, timestamp TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS messages(
    agent VARCHAR, name VARCHAR, seq BIGINT, id VARCHAR, role VARCHAR, content VARCHAR,
    tool_calls VARCHAR, tool_call_id VARCHAR, tool_name VARCHAR, ts TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS tool_calls(
    agent VARCHAR, name VARCHAR, id VARCHAR, tool VARCHAR, args VARCHAR, result VARCHAR,
    error VARCHAR, duration_ms DOUBLE, cached BOOLEAN, ts TIMESTAMPTZ);
"""

_HISTORY_SQL = ("SELECT version, ts, method, args, kwargs, source, duration_ms, outcome, error,"
                " result, state, due, occurrence FROM _ab_history WHERE version > ?"
                " ORDER BY version")
_HISTORY_COLS = ["version", "ts", "method", "args", "kwargs", "source", "duration_ms", "outcome",
                 "error", "result", "state", "due", "occurrence"]


class Analytics:
    """The DuckDB projection of one runtime (``rt.db``, ``rt.sql``)."""

    def __init__(self, rt: Runtime) -> None:
        import duckdb

        self.rt = rt
        self.db: duckdb.DuckDBPyConnection = duckdb.connect()
        self.db.execute(_DDL)
        self._marks: dict[Key, int] = {}
        self._failure_mark = 0
        self._events: list[tuple] = []
        self._unsubscribe: Any = None
        self._primed = False

    # -- events ---------------------------------------------------------------------------
    def capture_events(self, on: bool = True) -> None:
        """Start (or stop) copying observability events into the ``events`` view."""
        if on and self._unsubscribe is None:
            self._unsubscribe = self.rt.events.subscribe(self._on_event)
        elif not on and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, event: dict) -> None:
        self._events.append((event["type"], event["agent"], event["name"],
                             json.dumps(event["payload"], default=str), event["timestamp"] / 1000))

    # -- catching up --------------------------------------------------------------------
    def catch_up(self) -> int:
        """Bring every view up to date; returns how many history rows were added."""
        import pyarrow as pa

        rt = self.rt
        catalog = rt.catalog.rows()
        known = {(c, n) for c, n, *_ in catalog}
        if not self._primed or rt._router is not None:  # commits elsewhere: look at all
            todo = [(c, n) for c, n, *_ in catalog]
            self._primed = True
        else:
            todo = [key for key in rt._dirty if key in known]
        rt._dirty.clear()
        gone = [key for key in self._marks if key not in known]
        for key in gone:
            self.db.execute("DELETE FROM history WHERE agent = ? AND name = ?", list(key))
            del self._marks[key]
        columns: dict[str, list] = {c: [] for c in ["agent", "name", *_HISTORY_COLS]}
        added = 0
        progress = _Progress(len(todo)) if len(todo) > 200 else None
        chat: dict[str, list] = {"messages": [], "tool_calls": []}
        for i, key in enumerate(todo):
            rows = self._read_new(key, chat)
            if rows:
                added += len(rows)
                self._marks[key] = rows[-1][0]
                columns["agent"].extend([key[0]] * len(rows))
                columns["name"].extend([key[1]] * len(rows))
                for col, values in zip(_HISTORY_COLS, zip(*rows, strict=True), strict=True):
                    columns[col].extend(values)
            if progress is not None:
                progress.update(i + 1)
        if progress is not None:
            progress.close()
        if added:
            batch = pa.table({k: pa.array(v) if k not in ("args", "kwargs", "result", "state",
                                                               "error", "occurrence")
                              else pa.array(v, pa.string()) for k, v in columns.items()})
            self._append_history(batch)
        self._chat_views(todo, chat)
        self._failures()
        self._small_views(catalog)
        if self._events:
            events, self._events = self._events, []
            table = pa.table({k: pa.array([e[i] for e in events]) for i, k in
                              enumerate(["type", "agent", "name", "payload", "timestamp"])})
            self.db.register("ab_events", table)
            self.db.execute("INSERT INTO events SELECT type, agent, name, payload,"
                            " to_timestamp(timestamp) FROM ab_events")
            self.db.unregister("ab_events")
        return added

    def _read_new(self, key: Key, chat: dict[str, list]) -> list[tuple]:
        from .store import open_reader

        path = self.rt._path_of(key)
        try:
            inst = self.rt._instances.get(key)
            if inst is not None and inst.store is not None:
                return self._read(inst.store.reader(), key, chat)
            conn = open_reader(path)
            try:
                return self._read(conn, key, chat)
            finally:
                conn.close()
        except Exception as exc:  # a damaged store is reported, not fatal
            print(f"agentbook: skipped {key[0]}({key[1]!r}) in the views: {exc}", file=sys.stderr)
            return []

    def _read(self, conn: Any, key: Key, chat: dict[str, list]) -> list[tuple]:
        rows = conn.execute(_HISTORY_SQL, (self._marks.get(key, -1),)).fetchall()
        if rows:  # chat tables are small: take them whole for agents that changed
            chat["messages"] += [(*key, *r) for r in conn.execute(
                "SELECT seq, id, role, content, tool_calls, tool_call_id, name, ts FROM"
                " _ab_messages ORDER BY seq").fetchall()]
            chat["tool_calls"] += [(*key, *r) for r in conn.execute(
                "SELECT id, tool, args, result, error, duration_ms, cached, ts FROM"
                " _ab_tool_calls").fetchall()]
        return rows

    def _chat_views(self, keys: list[Key], chat: dict[str, list]) -> None:
        import pyarrow as pa

        touched = {(r[0], r[1]) for rows in chat.values() for r in rows}
        for key in touched:
            for table in ("messages", "tool_calls"):
                self.db.execute(f"DELETE FROM {table} WHERE agent = ? AND name = ?", list(key))
        specs = {
            "messages": (["agent", "name", "seq", "id", "role", "content", "tool_calls",
                          "tool_call_id", "tool_name", "ts"],
                         "agent, name, seq, id, role, content, tool_calls, tool_call_id,"
                         " tool_name, to_timestamp(ts)"),
            "tool_calls": (["agent", "name", "id", "tool", "args", "result", "error",
                            "duration_ms", "cached", "ts"],
                           "agent, name, id, tool, args, result, error, duration_ms,"
                           " cached::BOOLEAN, to_timestamp(ts)"),
        }
        for table, rows in chat.items():
            if not rows:
                continue
            cols, select = specs[table]
            arrow = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(cols)})
            self.db.register("ab_chat", arrow)
            try:
                self.db.execute(f"INSERT INTO {table} SELECT {select} FROM ab_chat")
            finally:
                self.db.unregister("ab_chat")

    def _append_history(self, batch: Any) -> None:
        self.db.register("ab_batch", batch)
        try:
            self.db.execute(
                "INSERT INTO history SELECT agent, name, version, to_timestamp(ts), method, args,"
                " kwargs, source, duration_ms, outcome, error, result, state,"
                " CASE WHEN due IS NULL THEN NULL ELSE to_timestamp(due) END, occurrence,"
                " CASE WHEN due IS NULL THEN NULL ELSE ts - due END FROM ab_batch")
        finally:
            self.db.unregister("ab_batch")

    def _failures(self) -> None:
        import pyarrow as pa

        rows = self.rt.catalog.conn.execute(
            "SELECT id, class, name, ts, method, args, kwargs, source, duration_ms, error"
            " FROM failures WHERE id > ? ORDER BY id", (self._failure_mark,)).fetchall()
        if not rows:
            return
        self._failure_mark = rows[-1][0]
        cols = ["id", "agent", "name", "ts", "method", "args", "kwargs", "source", "duration_ms",
                "error"]
        table = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(cols)})
        self.db.register("ab_failures", table)
        self.db.execute(
            "INSERT INTO history SELECT agent, name, NULL, to_timestamp(ts), method, args, kwargs,"
            " source, duration_ms, 'error', error, NULL, NULL, NULL, NULL, NULL FROM ab_failures")
        self.db.unregister("ab_failures")

    def _small_views(self, catalog: list[tuple]) -> None:
        """Views with one row per agent, approval or schedule: rebuilt each time."""
        from .scheduler import select
        from .store import open_reader

        rt = self.rt
        agents, scheds = [], []
        for class_name, name, _file, created, parent in catalog:
            key = (class_name, name)
            inst = rt._instances.get(key)
            try:
                if inst is not None and inst.store is not None:
                    conn, close = inst.store.reader(), False
                else:
                    conn, close = open_reader(rt._path_of(key)), True
                try:
                    state = conn.execute("SELECT version, state FROM _ab_state").fetchall()
                    for s in select(conn):
                        scheds.append((class_name, name, s.id, s.callback, s.type, s.due, s.cron,
                                       s.interval, s.attempt, s.occurrence,
                                       json.dumps(s.payload), s.last_error))
                finally:
                    if close:
                        conn.close()
            except Exception:
                state = []
            version, state_json = state[0] if state else (None, None)
            agents.append((class_name, name, version, created, parent, state_json))
        self._replace("agents", agents, ["agent", "name", "version", "created", "parent", "state"],
                      "agent, name, version, to_timestamp(created), parent, state")
        self._replace("schedules", scheds, ["agent", "name", "id", "callback", "type", "due",
                                            "cron", "interval", "attempt", "occurrence", "payload",
                                            "last_error"],
                      'agent, name, id, callback, type, to_timestamp(due), cron, "interval",'
                      " attempt, occurrence, payload, last_error")
        approvals = rt.catalog.approvals(None)
        self._replace("approvals", approvals,
                      ["id", "agent", "name", "method", "args", "kwargs", "summary",
                       "side_effects", "created", "expires", "status", "decided_by",
                       "decided_at", "reason"],
                      "id, agent, name, method, args, kwargs, summary, side_effects,"
                      " to_timestamp(created), to_timestamp(expires), status, decided_by,"
                      " to_timestamp(decided_at), reason")
        self._replace("dead_letters", rt.catalog.dead_letters(),
                      ["id", "agent", "name", "callback", "payload", "type", "attempts", "error",
                       "failed_at"],
                      "id, agent, name, callback, payload, type, attempts, error,"
                      " to_timestamp(failed_at)")

    def _replace(self, table: str, rows: list[tuple], cols: list[str], select: str) -> None:
        import pyarrow as pa

        self.db.execute(f"DELETE FROM {table}")
        if not rows:
            return
        arrow = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(cols)})
        self.db.register("ab_rows", arrow)
        try:
            self.db.execute(f"INSERT INTO {table} SELECT {select} FROM ab_rows")
        finally:
            self.db.unregister("ab_rows")

    def rebuild(self) -> int:
        """Drop the projection and build it again from the stores."""
        for table in ("history", "agents", "schedules", "approvals", "dead_letters", "messages",
                      "tool_calls"):
            self.db.execute(f"DELETE FROM {table}")
        self._marks.clear()
        self._failure_mark = 0
        self._primed = False
        return self.catch_up()

    # -- queries ------------------------------------------------------------------------
    def sql(self, query: str, params: Any = None) -> pd.DataFrame:
        """Catch up, then run a read-only query; returns a DataFrame."""
        import duckdb

        try:
            statements = self.db.extract_statements(query)
        except duckdb.Error as exc:
            raise SQLError(_short(exc)) from None
        for statement in statements:
            if statement.type.name not in ("SELECT", "EXPLAIN", "PRAGMA"):
                raise ReadOnlyError(
                    f"rt.sql only reads ({statement.type.name} refused): the views are a "
                    "projection of the agents' stores; change agents through their handlers")
        self.catch_up()
        try:
            return self.db.execute(query, params).df()
        except duckdb.Error as exc:
            raise SQLError(_short(exc)) from None


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Progress:
    """A progress bar: a widget in a notebook, a line on stderr in a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.monotonic()
        self.bar: Any = None
        self.last = 0.0
        if "ipykernel" in sys.modules:
            try:
                import ipywidgets
                from IPython.display import display

                self.bar = ipywidgets.IntProgress(max=total, description="catching up")
                display(self.bar)
            except Exception:
                self.bar = None

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.value = done
            return
        if not sys.stderr.isatty():
            return
        now = time.monotonic()
        if now - self.last > 0.5 or done == self.total:
            self.last = now
            sys.stderr.write(f"\ragentbook: catching up {done}/{self.total} agents")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif time.monotonic() - self.start > 0.5 and sys.stderr.isatty():
            sys.stderr.write("\n")
