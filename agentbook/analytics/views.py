"""DuckDB views over every agent: ``rt.sql("SELECT ... FROM history ...")``.

The views are a *projection*: DuckDB tables in an in-process database (``rt.db``), caught up
from the agents' own SQLite stores before each query. Rows move through Arrow (DuckDB
cannot read SQLite files offline). Each agent has a watermark - the newest version
already projected - so a catch-up reads only what is new, and only from agents that
committed since the last one (plus, the first time, every agent in the catalog): in this
process, or in another one on the same folder (a store file's :func:`_signature` - its
and its WAL's size and time - says so without opening it).
:meth:`Analytics.rebuild` starts from scratch and gives the same result; so does a new
runtime on the same folder (a restart): everything in the views comes from the stores.

Views: ``agents``, ``history``, ``events``, ``schedules``, ``approvals``, ``dead_letters``,
``messages`` and ``tool_calls`` (filled by chat agents), ``workflows`` and ``workflow_steps``
(the runs of ``@ab.workflow`` methods and their journals), ``sweeps`` (the outcomes of
``ab.sweep``, one row per variant; they are not in the stores, so they last as long as the
runtime and a rebuild keeps them); and, once asked for with
:meth:`Analytics.table`, one view per name of the agents' own tables. They are for
reading: ``rt.sql`` refuses anything but queries.

* ``history`` rows are what ``ref.history()`` shows: ``state`` is the state after each
  version, also for versions that did not change it; failed calls (which made no version)
  are rows with ``outcome = 'error'`` and ``version`` NULL.
* ``events`` is every agent's event stream on record (see :mod:`agentbook.events` for what
  is kept, and ``ab.Runtime(events_keep=, events_max_age=)`` for how long), plus one
  ``rpc:error`` row per failed call (from the runtime's failure log), and one ``rpc`` and
  (when the state changed) one ``state:update`` row per committed call, derived from its
  history row. Its columns are ``type, agent, name, payload, timestamp, version, seq``
  (``seq`` orders what ``_ab_events`` keeps; it is NULL in the derived rows).
* An agent destroyed and made again under the same name is told apart by its history's
  hash chain: the views drop what they had of the old one at the next catch-up.
"""

from __future__ import annotations

import errno
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import LimitError, ReadOnlyError, SQLError, StoreError, UsageError
from ..progress import bar
from ..store import events as event_log
from ..store import fds, files, messages
from ..store.history import state_at

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
    type VARCHAR, agent VARCHAR, name VARCHAR, payload VARCHAR, timestamp TIMESTAMPTZ,
    version BIGINT, seq BIGINT);
CREATE TABLE IF NOT EXISTS messages(
    agent VARCHAR, name VARCHAR, seq BIGINT, id VARCHAR, role VARCHAR, content VARCHAR,
    tool_calls VARCHAR, tool_call_id VARCHAR, tool_name VARCHAR, ts TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS tool_calls(
    agent VARCHAR, name VARCHAR, id VARCHAR, tool VARCHAR, args VARCHAR, result VARCHAR,
    error VARCHAR, duration_ms DOUBLE, cached BOOLEAN, ts TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS workflows(
    agent VARCHAR, name VARCHAR, id VARCHAR, method VARCHAR, args VARCHAR, kwargs VARCHAR,
    status VARCHAR, created TIMESTAMPTZ, updated TIMESTAMPTZ, result VARCHAR, error VARCHAR,
    steps BIGINT);
CREATE TABLE IF NOT EXISTS workflow_steps(
    agent VARCHAR, name VARCHAR, run VARCHAR, seq BIGINT, step VARCHAR, kind VARCHAR,
    status VARCHAR, attempts BIGINT, started TIMESTAMPTZ, ended TIMESTAMPTZ,
    until TIMESTAMPTZ, approval VARCHAR, result VARCHAR, error VARCHAR,
    duration_s DOUBLE, version BIGINT);
CREATE TABLE IF NOT EXISTS sweeps(
    sweep VARCHAR, agent VARCHAR, name VARCHAR, from_version BIGINT, variant VARCHAR,
    fork VARCHAR, steps BIGINT, diverged BIGINT, first_diverged BIGINT, errors BIGINT,
    model_calls BIGINT, state VARCHAR, metrics VARCHAR);
"""

#: The text columns of a history row travel packed in one JSON array per row (SQLite's
#: json_array, in C) and DuckDB unpacks them (json_extract_string, in C): one Python
#: object per row instead of nine, and one Arrow string column instead of nine (see
#: :func:`agentbook.store.files.packed_history`).
_TEXT_COLS = list(files.HISTORY_TEXT_COLUMNS)
_PLAIN_COLS = list(files.HISTORY_PLAIN_COLUMNS)
#: The views an agent's own table may not be named like (see Analytics.table).
_BUILT_IN = ("history", "agents", "schedules", "approvals", "dead_letters", "events",
             "messages", "tool_calls", "workflows", "workflow_steps")
#: Views filled from outside the stores (rebuild keeps them); reserved names too.
_KEPT = ("sweeps",)
#: Stands for "no state known" in a history batch, so filling forward never carries one
#: agent's state into another's rows.
_NO_STATE = "\x00"
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
        #: Per agent: the hash chain at its mark (who the projected history belongs to).
        self._chains: dict[Key, str | None] = {}
        #: Per agent: the newest event ``seq`` projected, and the oldest one still stored.
        self._event_marks: dict[Key, int] = {}
        self._event_first: dict[Key, int] = {}
        self._failure_mark = 0
        self._primed = False
        #: Per agent: its store file's :func:`_signature` before its last read (commits
        #: made by other processes show as a changed signature), and the file's path.
        self._seen: dict[Key, tuple | None] = {}
        self._paths: dict[Key, str] = {}
        #: Filled while reading, used by one catch-up: the state before each agent's new
        #: history rows, its new events, agents whose projection must go (made again), and
        #: agents whose oldest events were pruned.
        self._seeds: dict[Key, str | None] = {}
        self._new_events: list[tuple] = []
        #: Per history row read by this catch-up: did its handler change the state?
        self._changed: list[bool] = []
        self._stale: list[Key] = []
        self._pruned: list[tuple[str, str, int]] = []
        #: The agents' own tables asked for with table(): view name -> table name.
        self._tables: dict[str, str] = {}
        #: Per agent: ``(version, state, schedule rows)`` for the small views, read on the
        #: same connection as the agent's new history rows.
        self._small: dict[Key, tuple[Any, Any, list[tuple]]] = {}
        #: Per agent: its workflow runs and steps (rows of the two workflow views).
        self._flows: dict[Key, tuple[list[tuple], list[tuple]]] = {}
        #: On a Ray host feeding the driver's views: what each catch-up changed, in order
        #: (``(what, table, rows or keys)``; see agentbook.backends.ray_reads), and which
        #: agents are this host's (the others in its folder are another host's).
        self.journal: list[tuple[str, str, Any]] | None = None
        self.owned: Callable[[Key], bool] | None = None

    # -- catching up --------------------------------------------------------------------
    def catch_up(self) -> int:
        """Bring every view up to date; returns how many history rows were added."""

        rt = self.rt
        if rt.reads is not None:  # the stores are on Ray hosts: they send what changed
            return cast(int, rt.reads.catch_up(self))
        catalog = rt.catalog.rows()
        if self.owned is not None:
            catalog = [row for row in catalog if self.owned((row[0], row[1]))]
        known = {(c, n) for c, n, *_ in catalog}
        if not self._primed or (rt.router is not None and self.owned is None):
            # commits elsewhere: look at all
            todo = [(c, n) for c, n, *_ in catalog]
            self._primed = True
            seen = {key: self._signature(key) for key in todo}
        else:  # what committed here, and stores another process changed since last read
            seen = {}
            for c, n, *_ in catalog:
                key = (c, n)
                sig = self._signature(key)
                if key in rt.dirty or sig is _UNSETTLED or sig != self._seen.get(key, _UNSETTLED):
                    seen[key] = sig
            todo = list(seen)
        rt.dirty.clear()
        gone = [key for key in {*self._marks, *self._event_marks} if key not in known]
        for key in {*self._seen, *self._paths} - known:
            self._seen.pop(key, None)
            self._paths.pop(key, None)
        self._forget(gone)
        columns: dict[str, list] = {c: [] for c in [*_PLAIN_COLS, "packed"]}
        self._changed.clear()
        read: list[tuple[Key, int]] = []  # (agent, rows read), in the order of the rows
        added = 0
        # many agents: a bar (a widget in a notebook, a line on a terminal) after half a second
        progress = (bar(len(todo), "catching up", unit="agents", delay=0.5)
                    if len(todo) > 200 else None)
        chat: dict[str, list] = {"messages": [], "tool_calls": []}
        paused = gc.isenabled() and len(todo) > 1
        if paused:  # millions of row tuples: no cyclic GC passes over them while reading
            gc.disable()
        try:
            self._collect(todo, columns, read, chat, progress)
            self._forget(self._stale, keep_marks=True)
            self._stale = []
            added = len(columns["version"])
            if added:
                batch = _arrow_batch(columns, read, self._changed)
                del columns
                self._append_history(batch)
        finally:
            if paused:
                gc.enable()
        self._chat_views(todo, chat)
        self._event_view()
        self._failures()
        self._small_views(catalog, todo, gone)
        self._workflow_views(catalog, todo, gone)
        self._table_views(todo)
        self._seen.update(seen)  # (a read that raised is tried again next time)
        return added

    def _signature(self, key: Key) -> tuple | None:
        """:func:`_signature` of agent *key*'s store file (its path found once)."""
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = self.rt.path_of(key)
        sig = _signature(path)
        if sig is None:  # not there (yet): where is it now?
            self._paths[key] = self.rt.path_of(key)
            if self._paths[key] != path:
                sig = _signature(self._paths[key])
        return sig

    def _forget(self, keys: Sequence[Key], keep_marks: bool = False) -> None:
        """Drop what the views hold of *keys* (agents gone, or made again: then their
        marks, already reset by :meth:`_read`, stay)."""
        if not keys:
            return
        import pyarrow as pa

        arrow = pa.table({"agent": pa.array([k[0] for k in keys], pa.string()),
                          "name": pa.array([k[1] for k in keys], pa.string())})
        self.db.register("ab_gone", arrow)
        try:
            for table in ("history", "events", "messages", "tool_calls",
                          *(f'"{view}"' for view in self._tables)):
                self.db.execute(f"DELETE FROM {table} WHERE (agent, name) IN"
                                " (SELECT (agent, name) FROM ab_gone)")
        finally:
            self.db.unregister("ab_gone")
        if self.journal is not None:
            self.journal.append(("forget", "", [list(k) for k in keys]))
        if not keep_marks:
            for key in keys:
                for marks in (self._marks, self._chains, self._event_marks, self._event_first):
                    marks.pop(key, None)

    def _event_view(self) -> None:
        """Append the events read by this catch-up; drop the ones the stores pruned."""
        import pyarrow as pa

        if self._pruned:
            pruned, self._pruned = self._pruned, []
            arrow = pa.table({"agent": pa.array([p[0] for p in pruned], pa.string()),
                              "name": pa.array([p[1] for p in pruned], pa.string()),
                              "first": pa.array([p[2] for p in pruned], pa.int64())})
            self.db.register("ab_pruned", arrow)
            try:
                self.db.execute("DELETE FROM events e USING ab_pruned p WHERE e.agent = p.agent"
                                " AND e.name = p.name AND e.seq < p.first")
            finally:
                self.db.unregister("ab_pruned")
            if self.journal is not None:
                self.journal.append(("prune", "events", arrow))
        if not self._new_events:
            return
        rows, self._new_events = self._new_events, []
        cols = ["agent", "name", "seq", "version", "ts", "type", "payload"]
        types = [pa.string(), pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.string(),
                 pa.string()]
        arrow = pa.table({c: pa.array([r[i] for r in rows], t)
                          for i, (c, t) in enumerate(zip(cols, types, strict=True))})
        self.db.register("ab_events", arrow)
        try:
            self._added("INSERT INTO events SELECT type, agent, name, payload,"
                        " to_timestamp(ts), version, seq FROM ab_events", "events")
        finally:
            self.db.unregister("ab_events")

    def _collect(self, todo: list[Key], columns: dict[str, list], read: list[tuple[Key, int]],
                 chat: dict[str, list], progress: Any) -> None:
        """Read the new history rows of *todo* into *columns* (one list per column)."""
        try:
            self._collect_rows(todo, columns, read, chat, progress)
        finally:
            if progress is not None:
                progress.close()

    def _collect_rows(self, todo: list[Key], columns: dict[str, list],
                      read: list[tuple[Key, int]], chat: dict[str, list],
                      progress: Any) -> None:
        states = columns["state"]
        for key in todo:
            rows = self._read_new(key, chat)
            if rows:
                self._marks[key] = rows[-1][0]
                read.append((key, len(rows)))
                first = len(states)
                for values, col in zip(zip(*rows, strict=True), columns.values(), strict=True):
                    col.extend(values)
                # a row holds a state only when its handler changed it: its state:update event
                self._changed.extend(s is not None for s in states[first:])
                if states[first] is None:  # the state before: carried into unchanged rows
                    seed = self._seeds.pop(key, None)
                    states[first] = _NO_STATE if seed is None else seed
            if progress is not None:
                progress.update(1)

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
            _unless_out_of_files(exc)
            self._small.pop(key, None)
            print(f"agentbook: skipped {key[0]}({key[1]!r}) in the views: {exc}", file=sys.stderr)
            return []

    def _read(self, conn: Any, key: Key, chat: dict[str, list]) -> list[tuple]:
        before = self._small.get(key)
        self._small[key] = small = _read_small(conn, key)
        mark = self._marks.get(key, -1)
        if mark >= 0 and (small[0] is None or small[0] < mark
                          or files.chain_at(conn, mark) != self._chains.get(key)):
            # not the history projected so far: destroyed and made again (or pruned past
            # the mark): project this agent again from scratch
            self._stale.append(key)
            for marks in (self._marks, self._chains, self._event_marks, self._event_first):
                marks.pop(key, None)
            mark, before = -1, None
        rows = files.packed_history(conn, mark)
        if rows:
            self._chains[key] = files.chain_at(conn, rows[-1][0])
            if rows[0][4] is None:  # its state is the one before it
                self._seeds[key] = (before[1] if before is not None and before[0] == mark
                                    else state_at(conn, rows[0][0]))
            # chat tables are small: take them whole for agents that changed
            chat["messages"] += [(*key, *r) for r in messages.read_messages(conn)]
            chat["tool_calls"] += [(*key, *r) for r in messages.read_tool_calls(conn)]
        self._read_events(conn, key)
        return rows

    def _read_events(self, conn: Any, key: Key) -> None:
        span = event_log.bounds(conn)
        if span is None:
            return
        mark = self._event_marks.get(key, 0)
        if span[1] < mark:  # fewer events than projected: a new store under the old name
            if key not in self._stale:
                self._stale.append(key)
            mark = 0
            self._event_first.pop(key, None)
        if span[0] > self._event_first.get(key, 0):
            if mark:
                self._pruned.append((*key, span[0]))
            self._event_first[key] = span[0]
        if span[1] > mark:
            self._new_events += [(*key, *r) for r in event_log.read_after(conn, mark)]
            self._event_marks[key] = span[1]

    def _chat_views(self, keys: list[Key], chat: dict[str, list]) -> None:
        import pyarrow as pa

        touched = {(r[0], r[1]) for rows in chat.values() for r in rows}
        for key in touched:
            for table in ("messages", "tool_calls"):
                self.db.execute(f"DELETE FROM {table} WHERE agent = ? AND name = ?", list(key))
        if self.journal is not None and touched:
            for table in ("messages", "tool_calls"):
                self.journal.append(("delete", table, [list(k) for k in touched]))
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
                self._added(f"INSERT INTO {table} SELECT {select} FROM ab_chat", table)
            finally:
                self.db.unregister("ab_chat")

    def _append_history(self, batch: Any) -> None:
        self.db.register("ab_batch", batch)
        try:  # t[1] .. t[8]: the text columns, in the order of _TEXT_COLS
            self._added(
                "INSERT INTO history SELECT agent, name, version, to_timestamp(ts), t[1], t[2],"
                " t[3], t[4], duration_ms, t[5], t[6], t[7], state,"
                " CASE WHEN due IS NULL THEN NULL ELSE to_timestamp(due) END, t[8],"
                " CASE WHEN due IS NULL THEN NULL ELSE ts - due END"
                f" FROM (SELECT *, json_extract_string(packed, [{_UNPACK}]) AS t FROM ab_batch)",
                "history")
            # A committed call's rpc and state:update events are its history row, seen as
            # events (the live events' shapes): derived here instead of written twice.
            self._added(
                "INSERT INTO events SELECT kind, agent, name, CASE kind WHEN 'rpc' THEN"
                " json_object('method', t[1], 'version', version, 'source', t[4])::VARCHAR"
                " ELSE json_object('state', json(state), 'source', t[4], 'version', version)"
                "::VARCHAR END, to_timestamp(ts), version, NULL FROM (SELECT *,"
                f" json_extract_string(packed, [{_UNPACK}]) AS t FROM ab_batch),"
                " (VALUES ('rpc'), ('state:update')) kinds(kind)"
                " WHERE t[5] = 'ok' AND t[1] <> 'on_start' AND (kind = 'rpc' AND due IS NULL"
                " OR kind = 'state:update' AND changed)", "events")
        finally:
            self.db.unregister("ab_batch")

    def _added(self, insert: str, table: str) -> None:
        """Run *insert* (rows into *table*); a journal keeps the rows it added."""
        if self.journal is None:
            self.db.execute(insert)
        else:
            self.journal.append(("append", table,
                                 self.db.sql(f"{insert} RETURNING *").to_arrow_table()))

    def _failures(self) -> None:
        import pyarrow as pa

        rows = self.rt.catalog.conn.execute(
            "SELECT id, class, name, ts, method, args, kwargs, source, duration_ms, error"
            " FROM failures WHERE id > ? ORDER BY id", (self._failure_mark,)).fetchall()
        if not rows:
            return
        self._failure_mark = cast(int, rows[-1][0])
        if self.owned is not None:
            rows = [r for r in rows if self.owned((str(r[1]), str(r[2])))]
            if not rows:
                return
        cols = ["id", "agent", "name", "ts", "method", "args", "kwargs", "source", "duration_ms",
                "error"]
        table = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(cols)})
        self.db.register("ab_failures", table)
        try:
            self._added(
                "INSERT INTO history SELECT agent, name, NULL, to_timestamp(ts), method, args,"
                " kwargs, source, duration_ms, 'error', error, NULL, NULL, NULL, NULL, NULL"
                " FROM ab_failures", "history")
            # a failed call is on record as its rpc:error event too (the live event's shape)
            self._added(
                "INSERT INTO events SELECT 'rpc:error', agent, name, json_object('method', method,"
                " 'error', CASE WHEN contains(error, ': ') THEN error[length(split_part(error,"
                " ': ', 1)) + 3:] ELSE error END, 'type', split_part(error, ': ', 1),"
                " 'source', source)::VARCHAR, to_timestamp(ts), NULL, NULL FROM ab_failures",
                "events")
        finally:
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
                    except Exception as exc:
                        _unless_out_of_files(exc)
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

    def _workflow_views(self, catalog: list[tuple], todo: list, gone: list) -> None:
        """The ``workflows`` and ``workflow_steps`` views: the runs and journals of the
        agents that committed since the last catch-up are read again."""
        from ..store import open_reader
        from ..store.workflows import read_runs, read_steps

        if not (todo or gone):
            return
        rt = self.rt
        for key in gone:
            self._flows.pop(key, None)
        for key in todo:
            try:
                inst = rt.instances.get(key)
                own = inst is not None and inst.store is not None
                conn = inst.store.reader() if own else open_reader(rt.path_of(key))  # type: ignore[union-attr]
                try:
                    runs, steps = read_runs(conn), read_steps(conn)
                finally:
                    if not own:
                        conn.close()
            except Exception as exc:
                _unless_out_of_files(exc)
                continue
            self._flows[key] = ([(*key, *r) for r in runs], [(*key, *s) for s in steps])
        known = {(c, n) for c, n, *_ in catalog}
        runs_rows = [r for key, (rs, _) in self._flows.items() if key in known for r in rs]
        step_rows = [s for key, (_, ss) in self._flows.items() if key in known for s in ss]
        self._replace("workflows", runs_rows,
                      ["agent", "name", "id", "method", "args", "kwargs", "status", "created",
                       "updated", "result", "error", "steps"],
                      "agent, name, id, method, args, kwargs, status, to_timestamp(created),"
                      " to_timestamp(updated), result, error, steps")
        self._replace("workflow_steps", step_rows,
                      ["agent", "name", "run", "seq", "step", "kind", "status", "attempts",
                       "started", "ended", "until", "approval", "wake", "result", "error",
                       "version"],
                      "agent, name, run, seq, step, kind, status, attempts,"
                      " to_timestamp(started), to_timestamp(ended), to_timestamp(until),"
                      " approval, result, error, ended - started, version")

    def _catalog_views(self) -> None:
        rt = self.rt
        approvals = rt.catalog.approvals(None)
        letters = rt.catalog.dead_letters()
        if self.owned is not None:
            approvals = [r for r in approvals if self.owned((r[1], r[2]))]
            letters = [r for r in letters if self.owned((r[1], r[2]))]
        self._replace("approvals", approvals,
                      ["id", "agent", "name", "method", "args", "kwargs", "summary",
                       "side_effects", "created", "expires", "status", "decided_by",
                       "decided_at", "reason"],
                      "id, agent, name, method, args, kwargs, summary, side_effects,"
                      " to_timestamp(created), to_timestamp(expires), status, decided_by,"
                      " to_timestamp(decided_at), reason")
        self._replace("dead_letters", letters,
                      ["id", "agent", "name", "callback", "payload", "type", "attempts", "error",
                       "failed_at"],
                      "id, agent, name, callback, payload, type, attempts, error,"
                      " to_timestamp(failed_at)")

    def _replace(self, table: str, rows: Sequence[tuple], cols: list[str], select: str) -> None:
        self.db.execute(f"DELETE FROM {table}")
        if self.journal is not None:
            self.journal.append(("replace", table, None))
        self._insert(table, rows, cols, select)

    def _insert(self, table: str, rows: Sequence[tuple], cols: list[str], select: str) -> None:
        import pyarrow as pa

        if not rows:
            return
        arrow = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(cols)})
        self.db.register("ab_rows", arrow)
        try:
            self._added(f"INSERT INTO {table} SELECT {select} FROM ab_rows", table)
        finally:
            self.db.unregister("ab_rows")

    def rebuild(self) -> int:
        """Drop the projection and build it again from the stores."""
        if self.rt.reads is not None:
            return cast(int, self.rt.reads.rebuild(self))
        for table in (*_BUILT_IN, *(f'"{view}"' for view in self._tables)):
            self.db.execute(f"DELETE FROM {table}")
        for marks in (self._marks, self._chains, self._event_marks, self._event_first,
                      self._small, self._seeds, self._flows):
            marks.clear()
        self._new_events, self._stale, self._pruned = [], [], []
        self._failure_mark = 0
        self._primed = False
        return self.catch_up()

    # -- sweeps -------------------------------------------------------------------------
    def add_sweep(self, sweep: str, agent: str, name: str, from_version: int,
                  frame: pd.DataFrame, metrics: list[str]) -> None:
        """Add the outcome of one ``ab.sweep`` (its DataFrame) to the ``sweeps`` view: the
        state and the metrics as JSON text."""
        rows = [(sweep, agent, name, from_version, r["variant"], r["fork"], int(r["steps"]),
                 int(r["diverged"]),
                 None if r["first_diverged"] is None else int(r["first_diverged"]),
                 int(r["errors"]), int(r["model_calls"]), json.dumps(r["state"]),
                 json.dumps({m: r[m] for m in metrics}, default=str))
                for r in frame.astype(object).where(frame.notna(), None).to_dict("records")]
        cols = ["sweep", "agent", "name", "from_version", "variant", "fork", "steps",
                "diverged", "first_diverged", "errors", "model_calls", "state", "metrics"]
        self._insert("sweeps", rows, cols, ", ".join(cols))

    # -- the agents' own tables ---------------------------------------------------------
    def table(self, name: str, *, as_: str | None = None) -> pd.DataFrame:
        """Make the agents' own tables named *name* one view, and return it.

        The view (``as_``, by default *name*) holds the rows of every agent that has such a
        table, with ``agent`` and ``name`` columns first (an agent's own ``agent`` or
        ``name`` column shows as ``agent_1``/``name_1``). Columns are matched by name; an
        agent without one of them has NULL there, and a column whose type differs between
        agents takes a type that holds both (often VARCHAR). From then on it is caught up
        with the other views, so ``rt.sql("SELECT agent, name, sum(total) FROM orders GROUP
        BY ALL")`` works across agents. An agent's table is read whole whenever the agent
        committed since the last catch-up.

        Raises:
            UsageError: the view name is one of the built-in views, or not a plain name.
        """
        view = as_ or name
        if self.rt.reads is not None:
            raise UsageError("rt.analytics.table() is not available on a Ray runtime with "
                             "host_dir= yet (the agents' tables are on the hosts' nodes): "
                             "query each agent with ref.sql(...)")
        if not isinstance(name, str) or not name or name.startswith(("_ab_", "sqlite_")):
            raise UsageError(f"{name!r} is not a name of an agent's own table")
        if view in _BUILT_IN or view in _KEPT or not view.isidentifier():
            raise UsageError(
                f"the view can't be called {view!r} (a built-in view, or not a plain name);"
                f" pick another with rt.analytics.table({name!r}, as_='...')")
        if self._tables.get(view) != name:
            self.catch_up()  # (so the next catch-up reads only what is new for it, too)
            self._tables[view] = name
            self.db.execute(f'DROP TABLE IF EXISTS "{view}"')
            self._fill_table(view, name, [(c, n) for c, n, *_ in self.rt.catalog.rows()],
                             fresh=True)
        return self.sql(f'SELECT * FROM "{view}"')

    def _table_views(self, todo: list[Key]) -> None:
        if todo:
            for view, name in self._tables.items():
                self._fill_table(view, name, todo, fresh=False)

    def _fill_table(self, view: str, name: str, keys: list[Key], fresh: bool) -> None:
        """Read table *name* of the agents *keys* (whole) into the view *view*."""
        import pyarrow as pa

        from ..store import open_reader

        parts = []
        for key in keys:
            try:
                inst = self.rt.instances.get(key)
                if inst is not None and inst.store is not None:
                    part = _own_table(inst.store.reader(), key, name)
                else:
                    conn = open_reader(self.rt.path_of(key))
                    try:
                        part = _own_table(conn, key, name)
                    finally:
                        conn.close()
            except Exception as exc:  # a damaged store is reported, not fatal
                _unless_out_of_files(exc)
                print(f"agentbook: skipped {key[0]}({key[1]!r}) in view {view}: {exc}",
                      file=sys.stderr)
                continue
            if part is not None:
                parts.append(part)
        exists = self.db.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                                 [view]).fetchall()[0][0]
        if not exists:
            self.db.execute(f'CREATE TABLE "{view}"(agent VARCHAR, name VARCHAR)')
        if not fresh:
            arrow = pa.table({"agent": pa.array([k[0] for k in keys], pa.string()),
                              "name": pa.array([k[1] for k in keys], pa.string())})
            self.db.register("ab_keys", arrow)
            try:
                self.db.execute(f'DELETE FROM "{view}" WHERE (agent, name) IN'
                                " (SELECT (agent, name) FROM ab_keys)")
            finally:
                self.db.unregister("ab_keys")
        if not parts:
            return
        for i, part in enumerate(parts):
            self.db.register(f"ab_part{i}", part)
        try:
            union = " UNION ALL BY NAME ".join(
                [f'SELECT * FROM "{view}"',
                 *(f"SELECT * FROM ab_part{i}" for i in range(len(parts)))])
            self.db.execute(f'CREATE OR REPLACE TABLE "{view}" AS {union}')
        finally:
            for i in range(len(parts)):
                self.db.unregister(f"ab_part{i}")

    # -- queries ------------------------------------------------------------------------
    def sql(self, query: str, params: Any = None) -> pd.DataFrame:
        """Catch up, then run a read-only query; returns a DataFrame.

        Read-only by structure, not by keywords: DuckDB's own parser says what each
        statement is (a query, ``EXPLAIN`` of a query, or a ``PRAGMA``; nothing else), and the
        query runs in a read-only transaction, so nothing it does can write to the views.
        """
        import duckdb

        try:
            statements = self.db.extract_statements(query)
        except duckdb.Error as exc:
            raise SQLError(_short(exc)) from None
        for statement in statements:
            kind = _statement_kind(statement)
            if kind not in ("SELECT", "PRAGMA"):
                raise ReadOnlyError(
                    f"rt.sql only reads ({kind} refused): the views are a projection of the "
                    "agents' stores; change agents through their handlers")
        try:
            self.catch_up()
            self.db.execute("BEGIN TRANSACTION READ ONLY")
            try:
                return self.db.execute(query, params).df()
            finally:
                self.db.execute("ROLLBACK")
        except duckdb.TransactionException as exc:
            if "read-only" in str(exc):
                raise ReadOnlyError(f"rt.sql only reads: {_short(exc)}") from None
            raise SQLError(_short(exc)) from None
        except duckdb.Error as exc:
            raise SQLError(_short(exc)) from None
        except OSError as exc:  # (never a raw OSError: out of descriptors is a LimitError)
            if exc.errno in (errno.EMFILE, errno.ENFILE) or fds.exhausted():
                raise fds.exhausted_error() from None
            raise StoreError(f"rt.sql could not read the stores: {exc}") from None


def _statement_kind(statement: Any) -> str:
    """What a parsed statement is, by DuckDB's parser: its type, and for ``EXPLAIN [ANALYZE]
    [(options)] <statement>`` the type of the statement explained (``EXPLAIN ANALYZE``
    runs it)."""
    import duckdb

    kind = statement.type.name
    if kind != "EXPLAIN":
        return kind
    text = statement.query
    tokens = duckdb.tokenize(text)
    depth, start = 0, None
    for i, (pos, token) in enumerate(tokens):
        word = text[pos:tokens[i + 1][0] if i + 1 < len(tokens) else len(text)].strip()
        if depth == 0 and i > 0 and word.upper() not in ("ANALYZE", "(") \
                and token.name != "comment":
            start = pos
            break
        depth += word.count("(") - word.count(")")
    if start is None:
        return "EXPLAIN"
    try:
        inner = duckdb.extract_statements(text[start:])
    except duckdb.Error:
        return "EXPLAIN"
    if len(inner) != 1:
        return "EXPLAIN"
    return "SELECT" if inner[0].type.name == "SELECT" else f"EXPLAIN {inner[0].type.name}"


#: How long ago a store file must have changed for its size and time to be trusted: a
#: later change then shows as a later time. File systems keep coarse times (a clock tick;
#: up to 2 s on FAT), so a file changed more recently is read at each catch-up.
_SETTLED_NS = 2_000_000_000
#: The signature of a store file changed within :data:`_SETTLED_NS`.
_UNSETTLED: tuple = ("unsettled",)


def _signature(path: str) -> tuple | None:
    """What changes whenever a store file gets a commit, from any process, in two ``stat``
    calls (no SQLite, no file opened): inode, size and modification time of the file and
    of its WAL, which each commit writes (an empty WAL, as a reader leaves it, holds
    nothing: only the file counts then). :data:`_UNSETTLED` while one of them changed in
    the last :data:`_SETTLED_NS`, so a second change within the file system's clock tick
    is not missed. ``None``: no file there."""
    import os

    try:
        db = os.stat(path)
    except OSError:
        return None
    try:
        wal = os.stat(path + "-wal")
    except OSError:
        wal = None
    sig: tuple = (db.st_ino, db.st_size, db.st_mtime_ns)
    newest = db.st_mtime_ns
    if wal is not None and wal.st_size:
        sig += (wal.st_ino, wal.st_size, wal.st_mtime_ns)
        newest = max(newest, wal.st_mtime_ns)
    return _UNSETTLED if time.time_ns() - newest < _SETTLED_NS else sig


def _read_small(conn: Any, key: Key) -> tuple[Any, Any, list[tuple]]:
    """An agent's row of the ``agents`` view (version, state) and its ``schedules`` rows."""
    from ..schedule.policy import select

    head = files.head(conn)
    version, state_json = (head.version, head.state) if head else (None, None)
    scheds = [(*key, s.id, s.callback, s.type, s.due, s.cron, s.interval, s.attempt,
               s.occurrence, json.dumps(s.payload), s.last_error) for s in select(conn)]
    return version, state_json, scheds


def _own_table(conn: Any, key: Key, table: str) -> Any:
    """An agent's own table *table* as an Arrow table with ``agent`` and ``name`` first
    (``None`` when the agent has no such table)."""
    import pyarrow as pa

    if table not in files.user_tables(conn):
        return None
    names, rows = files.table_rows(conn, table)
    cols: dict[str, Any] = {"agent": pa.array([key[0]] * len(rows), pa.string()),
                            "name": pa.array([key[1]] * len(rows), pa.string())}
    for i, col in enumerate(names):
        label = col
        while label in cols:
            label = f"{label}_1"
        values = [r[i] for r in rows]
        try:
            cols[label] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # SQLite lets a column mix types
            cols[label] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(cols)


def _filled(states: list) -> Any:
    """The ``state`` column of a history batch with the state of rows that did not change
    it carried forward (each agent's first row holds its state, or :data:`_NO_STATE`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pc.fill_null_forward(pa.array(states, pa.string()))
    if _NO_STATE in states:
        column = pc.if_else(pc.equal(column, _NO_STATE), pa.scalar(None, pa.string()), column)
    return column


def _arrow_batch(columns: dict[str, list], read: list[tuple[Key, int]],
                 changed: list[bool]) -> Any:
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
        "state": _filled(columns["state"]),
        "changed": pa.array(changed, pa.bool_()),
        "packed": pa.array(columns["packed"], pa.string()),
    })


def _unless_out_of_files(exc: Exception) -> None:
    """A store that could not be read is skipped, unless the process ran out of file
    descriptors: then the views would silently miss agents, so that is an error."""
    if isinstance(exc, LimitError):
        raise exc
    if fds.exhausted():
        raise fds.exhausted_error() from None


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
