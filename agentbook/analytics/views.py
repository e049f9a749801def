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

import gc
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import ReadOnlyError, SQLError
from ..store import files, messages

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

    from ..core.runtime import Runtime

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

#: The text columns of a history row travel packed in one JSON array per row (SQLite's
#: json_array, in C) and DuckDB unpacks them (json_extract_string, in C): one Python
#: object per row instead of nine, and one Arrow string column instead of nine (see
#: :func:`agentbook.store.files.packed_history`).
_TEXT_COLS = list(files.HISTORY_TEXT_COLUMNS)
_NUMBER_COLS = list(files.HISTORY_NUMBER_COLUMNS)
_UNPACK = ", ".join(f"'$[{i}]'" for i in range(len(_TEXT_COLS)))


class Analytics:
    """The DuckDB projection of one runtime (``rt.db``, ``rt.sql``)."""

    def __init__(self, rt: Runtime) -> None:
        import duckdb

        self.rt = rt
        self.db: duckdb.DuckDBPyConnection = duckdb.connect()
        self.db.execute(_DDL)
        # The views are the only data: no reading or writing of files, even by a query a
        # model wrote (and the setting can't be turned back on).
        self.db.execute("SET enable_external_access = false")
        self.db.execute("SET lock_configuration = true")
        self._marks: dict[Key, int] = {}
        self._failure_mark = 0
        self._events: list[tuple] = []
        self._unsubscribe: Any = None
        self._primed = False
        #: Per agent: ``(version, state, schedule rows)`` for the small views, read on the
        #: same connection as the agent's new history rows.
        self._small: dict[Key, tuple[Any, Any, list[tuple]]] = {}

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
        if not self._primed or rt.router is not None:  # commits elsewhere: look at all
            todo = [(c, n) for c, n, *_ in catalog]
            self._primed = True
        else:
            todo = [key for key in rt.dirty if key in known]
        rt.dirty.clear()
        gone = [key for key in self._marks if key not in known]
        for key in gone:
            self.db.execute("DELETE FROM history WHERE agent = ? AND name = ?", list(key))
            del self._marks[key]
        columns: dict[str, list] = {c: [] for c in [*_NUMBER_COLS, "packed"]}
        read: list[tuple[Key, int]] = []  # (agent, rows read), in the order of the rows
        added = 0
        progress = _Progress(len(todo)) if len(todo) > 200 else None
        chat: dict[str, list] = {"messages": [], "tool_calls": []}
        paused = gc.isenabled() and len(todo) > 1
        if paused:  # millions of row tuples: no cyclic GC passes over them while reading
            gc.disable()
        try:
            self._collect(todo, columns, read, chat, progress)
            added = len(columns["version"])
            if added:
                batch = _arrow_batch(columns, read)
                del columns
                self._append_history(batch)
        finally:
            if paused:
                gc.enable()
        self._chat_views(todo, chat)
        self._failures()
        self._small_views(catalog, todo, gone)
        if self._events:
            events, self._events = self._events, []
            table = pa.table({k: pa.array([e[i] for e in events]) for i, k in
                              enumerate(["type", "agent", "name", "payload", "timestamp"])})
            self.db.register("ab_events", table)
            self.db.execute("INSERT INTO events SELECT type, agent, name, payload,"
                            " to_timestamp(timestamp) FROM ab_events")
            self.db.unregister("ab_events")
        return added

    def _collect(self, todo: list[Key], columns: dict[str, list], read: list[tuple[Key, int]],
                 chat: dict[str, list], progress: _Progress | None) -> None:
        """Read the new history rows of *todo* into *columns* (one list per column)."""
        for i, key in enumerate(todo):
            rows = self._read_new(key, chat)
            if rows:
                self._marks[key] = rows[-1][0]
                read.append((key, len(rows)))
                for values, col in zip(zip(*rows, strict=True), columns.values(), strict=True):
                    col.extend(values)
            if progress is not None:
                progress.update(i + 1)
        if progress is not None:
            progress.close()

    def _read_new(self, key: Key, chat: dict[str, list]) -> list[tuple]:
        from ..store import open_reader

        path = self.rt.path_of(key)
        try:
            inst = self.rt.instances.get(key)
            if inst is not None and inst.store is not None:
                return self._read(inst.store.reader(), key, chat)
            conn = open_reader(path)
            try:
                return self._read(conn, key, chat)
            finally:
                conn.close()
        except Exception as exc:  # a damaged store is reported, not fatal
            self._small.pop(key, None)
            print(f"agentbook: skipped {key[0]}({key[1]!r}) in the views: {exc}", file=sys.stderr)
            return []

    def _read(self, conn: Any, key: Key, chat: dict[str, list]) -> list[tuple]:
        self._small[key] = _read_small(conn, key)
        rows = files.packed_history(conn, self._marks.get(key, -1))
        if rows:  # chat tables are small: take them whole for agents that changed
            chat["messages"] += [(*key, *r) for r in messages.read_messages(conn)]
            chat["tool_calls"] += [(*key, *r) for r in messages.read_tool_calls(conn)]
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
        try:  # t[1] .. t[9]: the text columns, in the order of _TEXT_COLS
            self.db.execute(
                "INSERT INTO history SELECT agent, name, version, to_timestamp(ts), t[1], t[2],"
                " t[3], t[4], duration_ms, t[5], t[6], t[7], t[8],"
                " CASE WHEN due IS NULL THEN NULL ELSE to_timestamp(due) END, t[9],"
                " CASE WHEN due IS NULL THEN NULL ELSE ts - due END"
                f" FROM (SELECT *, json_extract_string(packed, [{_UNPACK}]) AS t FROM ab_batch)")
        finally:
            self.db.unregister("ab_batch")

    def _failures(self) -> None:
        import pyarrow as pa

        rows = self.rt.catalog.conn.execute(
            "SELECT id, class, name, ts, method, args, kwargs, source, duration_ms, error"
            " FROM failures WHERE id > ? ORDER BY id", (self._failure_mark,)).fetchall()
        if not rows:
            return
        self._failure_mark = cast(int, rows[-1][0])
        cols = ["id", "agent", "name", "ts", "method", "args", "kwargs", "source", "duration_ms",
                "error"]
        table = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(cols)})
        self.db.register("ab_failures", table)
        self.db.execute(
            "INSERT INTO history SELECT agent, name, NULL, to_timestamp(ts), method, args, kwargs,"
            " source, duration_ms, 'error', error, NULL, NULL, NULL, NULL, NULL FROM ab_failures")
        self.db.unregister("ab_failures")

    def _small_views(self, catalog: list[tuple], todo: list, gone: list) -> None:
        """Views with one row per agent or schedule, from what :meth:`_read` kept for each
        agent; an agent not read yet (its store could not be opened) is tried here."""
        from ..store import open_reader

        rt = self.rt
        for key in gone:
            self._small.pop(key, None)
        if todo or gone:
            agents, scheds = [], []
            for class_name, name, _file, created, parent in catalog:
                key = (class_name, name)
                if key not in self._small:
                    try:
                        inst = rt.instances.get(key)
                        if inst is not None and inst.store is not None:
                            self._small[key] = _read_small(inst.store.reader(), key)
                        else:
                            conn = open_reader(rt.path_of(key))
                            try:
                                self._small[key] = _read_small(conn, key)
                            finally:
                                conn.close()
                    except Exception:
                        pass
                version, state_json, rows = self._small.get(key, (None, None, []))
                agents.append((class_name, name, version, created, parent, state_json))
                scheds.extend(rows)
            self._replace("agents", agents,
                          ["agent", "name", "version", "created", "parent", "state"],
                          "agent, name, version, to_timestamp(created), parent, state")
            self._replace("schedules", scheds, ["agent", "name", "id", "callback", "type", "due",
                                                "cron", "interval", "attempt", "occurrence",
                                                "payload", "last_error"],
                          'agent, name, id, callback, type, to_timestamp(due), cron, "interval",'
                          " attempt, occurrence, payload, last_error")
        self._catalog_views()

    def _catalog_views(self) -> None:
        rt = self.rt
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

    def _replace(self, table: str, rows: Sequence[tuple], cols: list[str], select: str) -> None:
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
        self._small.clear()
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


def _read_small(conn: Any, key: Key) -> tuple[Any, Any, list[tuple]]:
    """An agent's row of the ``agents`` view (version, state) and its ``schedules`` rows."""
    from ..schedule.policy import select

    head = files.head(conn)
    version, state_json = (head.version, head.state) if head else (None, None)
    scheds = [(*key, s.id, s.callback, s.type, s.due, s.cron, s.interval, s.attempt,
               s.occurrence, json.dumps(s.payload), s.last_error) for s in select(conn)]
    return version, state_json, scheds


def _arrow_batch(columns: dict[str, list], read: list[tuple[Key, int]]) -> Any:
    """The rows read, as an Arrow table; ``agent`` and ``name`` are dictionary-encoded
    (one entry per agent, not one string per row)."""
    import numpy as np
    import pyarrow as pa

    counts = np.array([n for _, n in read], dtype=np.int64)
    classes = sorted({key[0] for key, _ in read})
    which = {c: i for i, c in enumerate(classes)}
    per_agent = np.arange(len(read), dtype=np.int32)
    class_of = np.array([which[key[0]] for key, _ in read], dtype=np.int32)
    real = pa.float64()
    return pa.table({
        "agent": pa.DictionaryArray.from_arrays(pa.array(np.repeat(class_of, counts)),
                                                pa.array(classes, pa.string())),
        "name": pa.DictionaryArray.from_arrays(pa.array(np.repeat(per_agent, counts)),
                                               pa.array([key[1] for key, _ in read], pa.string())),
        "version": pa.array(columns["version"], pa.int64()),
        "ts": pa.array(columns["ts"], real),
        "duration_ms": pa.array(columns["duration_ms"], real),
        "due": pa.array(columns["due"], real),
        "packed": pa.array(columns["packed"], pa.string()),
    })


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
