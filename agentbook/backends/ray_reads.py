"""Reads through owners: on a Ray runtime whose hosts keep their stores on their own nodes
(``host_dir=``), the driver opens no store file; the host that owns an agent answers.

* :class:`HostReads` is the hosts' side (``AgentHost`` inherits it): ``read`` runs one read
  of one agent with the host's ordinary in-process reads (so the answer is the one a local
  runtime gives), ``read_all`` the runtime-wide lists (agents, workflow runs, the approval
  inbox), ``feed`` the changes of the host's own DuckDB projection since the driver's cursor.
* :class:`OwnerReads` is the driver's side, installed as ``rt.reads``: ``AgentRef``'s reads,
  the approval inbox, ``rt.agents()``/``rt.workflows()``/``rt.dead_letters()`` and the
  DuckDB views consult it
  instead of the files when it is there (a local runtime has ``rt.reads = None`` and
  reads its files as always).

What travels: JSON text for values and for the rows of ``sql`` and ``history`` (the driver
makes their DataFrames with the functions a local read uses; blobs tagged), other DataFrames
and projection rows as Arrow IPC bytes, ``ref.at(k)``'s tables as a SQLite image
(``serialize``) the driver opens in memory. Never a pickled object. JSON columns of a
DataFrame (lists, dicts, mixed values) travel as JSON text and come back as the same Python
values; column names and pandas dtypes ride in the Arrow schema's metadata.

The views (``rt.sql``): each host keeps a projection of the agents it owns, caught up
incrementally as a local runtime's is, and records what each catch-up changed (rows
appended, agents forgotten, small views replaced). On ``rt.sql`` the driver asks every host
for its changes since its cursor and applies them to that host's schema (``host0.history``
...); the views are ``UNION ALL`` of the hosts' tables. A restarted host starts a new
projection (a new incarnation): the driver drops what it had from it and takes it whole.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, cast

from .. import jsonvalue
from ..errors import HostUnavailableError, LeaseLostError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from ..analytics.views import Analytics
    from ..core.ref import AgentRef
    from ..core.runtime import Runtime
    from ..store.approvals import IndexedApproval
    from ..store.workflows import RunRow
    from ..travel.versions import Diff, VersionView
    from .ray import RayRouter

__all__ = ["HostReads", "OwnerReads", "decode_frame", "encode_frame"]

Key = tuple[str, str]

#: Reads of one agent a host answers with a DataFrame: the ``AgentRef`` method run.
_FRAMES = ("schedules", "workflows", "messages", "failures")
#: Reads of one agent a host answers with a JSON value.
_VALUES = ("version", "history_range", "verify")
#: Versions a host keeps materialized for ``ref.at(k)`` (their SQLite images are reused).
_VIEWS_KEPT = 8
#: How often a read refused by the host the driver took for the agent's owner is asked
#: again, each time of the owner by the coordinator's shard map as it is then.
_REASKS = 2
#: Schema metadata keys of an encoded frame.
_NAMES, _JSON, _EXTRA = b"agentbook.names", b"agentbook.json", b"agentbook.extra"
#: The built-in views the hosts feed (``sweeps`` stays the driver's own).
_FED = ("history", "agents", "schedules", "approvals", "dead_letters", "events", "messages",
        "tool_calls", "workflows", "workflow_steps")
#: The tables an agent forgotten by a host's projection is deleted from.
_FORGET = ("history", "events", "messages", "tool_calls")


# -- what travels ---------------------------------------------------------------------------
def _tagged(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"\x00b64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} does not travel")


def _untagged(obj: dict) -> Any:
    if len(obj) == 1 and "\x00b64" in obj:
        return base64.b64decode(obj["\x00b64"])
    return obj


def dumps(value: Any) -> str:
    """JSON text of *value* (bytes, as SQL parameters and blobs may be, tagged)."""
    return json.dumps(value, default=_tagged, allow_nan=True)


def loads(text: str) -> Any:
    """The value :func:`dumps` wrote."""
    return json.loads(text, object_hook=_untagged)


def encode_frame(frame: pd.DataFrame, extra: Any = None) -> bytes:
    """A DataFrame as Arrow IPC bytes: columns by position, their names and the pandas
    dtypes in the metadata, object columns that are not all text (or all bytes) as JSON
    text; *extra* (JSON) rides along in the metadata too."""
    import pandas as pd
    import pyarrow as pa

    cols, objects, as_json = {}, [], []
    for i in range(len(frame.columns)):
        series = frame.iloc[:, i]
        if series.dtype == object:
            objects.append(i)
            kinds = {type(v) for v in series if v is not None}
            if kinds and not (kinds <= {str} or kinds <= {bytes}):
                as_json.append(i)
                series = series.map(lambda v: None if v is None else dumps(v))
        cols[f"c{i}"] = series.reset_index(drop=True)
    table = pa.Table.from_pandas(pd.DataFrame(cols, index=range(len(frame))),
                                 preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_NAMES] = dumps(list(frame.columns)).encode()
    meta[_JSON] = dumps([objects, as_json]).encode()
    if extra is not None:
        meta[_EXTRA] = dumps(extra).encode()
    return _arrow_bytes(table.replace_schema_metadata(meta))


def decode_frame(data: bytes) -> tuple[pd.DataFrame, Any]:
    """The DataFrame :func:`encode_frame` wrote, and its *extra*."""
    import pandas as pd
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    meta = table.schema.metadata or {}
    frame = table.to_pandas()
    objects, as_json = loads(meta[_JSON].decode())
    for i in objects:  # (text comes back as pandas' str dtype: make it objects again)
        json_column = i in as_json
        frame[f"c{i}"] = pd.Series([_object(v, json_column) for v in frame.iloc[:, i]],
                                   dtype=object, index=frame.index)
    frame.columns = loads(meta[_NAMES].decode())
    extra = loads(meta[_EXTRA].decode()) if _EXTRA in meta else None
    return frame, extra


def _object(value: Any, json_column: bool) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return loads(value) if json_column else value


def _arrow_bytes(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _pack(header: Any, parts: list[bytes]) -> bytes:
    """One answer: a JSON header and binary parts, each after its length."""
    head = json.dumps({"header": header, "sizes": [len(p) for p in parts]}).encode()
    return b"".join([struct.pack("<I", len(head)), head, *parts])


def _unpack(data: bytes) -> tuple[Any, list[bytes]]:
    (size,) = struct.unpack_from("<I", data)
    head = json.loads(data[4:4 + size])
    parts, at = [], 4 + size
    for n in head["sizes"]:
        parts.append(data[at:at + n])
        at += n
    return head["header"], parts


# -- the hosts' side --------------------------------------------------------------------
class _HostState:
    """What a host keeps for the driver's reads."""

    def __init__(self) -> None:
        #: ``ref.at(k)`` views lately asked for: (agent, version, newest version) -> view.
        self.views: OrderedDict[tuple[Key, int, int], VersionView] = OrderedDict()
        #: The host's own DuckDB projection, made at the driver's first ``rt.sql``.
        self.projection: Analytics | None = None
        #: Which projection the batches below belong to (a new one after a restart).
        self.incarnation = uuid.uuid4().hex
        #: The batches of changes the driver has not confirmed yet: (number, changes).
        self.batches: list[tuple[int, list[tuple[str, str, Any]]]] = []
        self.batch = 0


class HostReads:
    """What a Ray host answers to the driver's reads (``AgentHost`` inherits it)."""

    rt: Runtime
    _ab_reads: _HostState | None = None

    async def settle(self, again: bool = False) -> None:
        """What a host does before answering (``AgentHost`` learns its shards; *again*:
        asks the shard map anew)."""

    async def _ready(self) -> None:
        """Settle, then refuse to answer while this host does not know whose the shards
        are (restarted, its first lease renewal not through yet): it would read as empty."""
        await self.settle()
        if not self.rt.router.knows_owners():
            raise HostUnavailableError("this host has restarted and has not learned its "
                                       "shards yet; read again in a moment")

    def _reads_state(self) -> _HostState:
        if self._ab_reads is None:
            self._ab_reads = _HostState()
        return self._ab_reads

    async def read(self, kind: str, class_name: str, name: str, args_json: str) -> str | bytes:
        """One read of agent ``(class_name, name)``: JSON text, or a frame's Arrow bytes."""
        await self._ready()
        key = (class_name, name)
        rt = self.rt
        if not rt.owns(key):
            await self.settle(again=True)  # (its shard may have come here since)
            if not rt.owns(key):
                raise LeaseLostError(f"{class_name}({name!r}) is not hosted on this Ray host "
                                     "now (its shard moved or was promoted elsewhere); read "
                                     "it again")
        ref = rt.get(class_name, name)
        args, kwargs = loads(args_json)
        if kind == "sql_rows":  # (the driver makes the DataFrame, as a local read does)
            from ..core.ref import sql_rows

            query, params, timeout, max_bytes = args
            return dumps(sql_rows(ref, query, tuple(params), timeout, max_bytes))
        if kind == "history_records":
            from ..core.ref import history_records

            return dumps(history_records(ref, *args))
        if kind in _FRAMES:
            return encode_frame(getattr(ref, kind)(*args, **kwargs))
        if kind == "state":  # JSON text as stored ("": none yet, the class's initial state)
            inst = rt.instances.get(key)
            if inst is not None and inst.store is not None:
                return jsonvalue.dumps(inst.committed[1])
            from ..store.history import newest_state

            with self._conn(key) as conn:
                text = None if conn is None else newest_state(conn)
            return text or ""
        if kind in _VALUES:
            value = getattr(ref, kind)
            return dumps(value(*args, **kwargs) if callable(value) else value)
        if kind == "at":
            view = self._view(ref, args[0])
            return dumps([view.version, jsonvalue.dumps(view.state)])
        if kind == "at_image":
            return self._view(ref, args[0]).connection().serialize("main")
        if kind == "diff":
            diff = ref.diff(*args, **kwargs)
            return encode_frame(diff.rows, [diff.a, diff.b, diff.state, diff.internals])
        if kind == "parent":
            parent = self._parent(key)
            return dumps(parent)
        if kind in ("workflow_run", "workflow_steps"):
            from ..store.workflows import read_run, read_steps, steps_frame

            with self._conn(key) as conn:
                if kind == "workflow_run":
                    row = None if conn is None else read_run(conn, args[0])
                    return dumps(None if row is None else list(row))
                steps = [] if conn is None else read_steps(conn, args[0])
            return encode_frame(steps_frame(steps))
        raise UsageError(f"a Ray host has no read {kind!r}")

    async def read_all(self, kind: str, args_json: str) -> str | bytes:
        """A runtime-wide read of this host's agents (``agents``, ``workflows``: frames;
        ``approvals``, ``approval``, ``dead_letters``: JSON rows of the catalog)."""
        await self._ready()
        import pandas as pd

        rt = self.rt
        args = loads(args_json)
        if kind in ("agents", "workflows"):
            frame = rt.agents(*args) if kind == "agents" else rt.workflows()
            agent = frame["class" if kind == "agents" else "agent"]
            mine = [rt.owns((c, n)) for c, n in zip(agent, frame["name"], strict=True)]
            return encode_frame(frame.loc[pd.Series(mine, index=frame.index, dtype=bool)]
                                .reset_index(drop=True))
        if kind == "approvals":
            rows = [list(r) for r in rt.catalog.approvals(args[0]) if rt.owns((r[1], r[2]))]
            return dumps(rows)
        if kind == "dead_letters":
            return dumps([list(r) for r in rt.catalog.dead_letters() if rt.owns((r[1], r[2]))])
        if kind == "approval":
            row = rt.catalog.approval(args[0])
            return dumps(None if row is None or not rt.owns((row[1], row[2])) else list(row))
        raise UsageError(f"a Ray host has no read {kind!r}")

    async def feed(self, incarnation: str, cursor: int, rebuild: bool = False) -> bytes:
        """The changes of this host's DuckDB projection since the driver's *cursor* (the
        number of the last batch of changes it applied, from *incarnation*)."""
        await self._ready()
        from ..analytics.views import Analytics

        state = self._reads_state()
        if rebuild and state.projection is not None:  # a new projection: taken whole
            self._ab_reads = state = _HostState()
        if state.projection is None:
            state.projection = Analytics(self.rt)
            state.projection.journal, state.projection.owned = [], self.rt.owns
        if incarnation == state.incarnation:  # what the driver applied, it won't ask again
            state.batches = [b for b in state.batches if b[0] > cursor]
        projection = state.projection
        projection.catch_up()
        if projection.journal:
            state.batch += 1
            state.batches.append((state.batch, projection.journal))
            projection.journal = []
        header: list[Any] = []
        parts: list[bytes] = []
        for _number, changes in state.batches:
            for what, table, data in changes:
                if data is None or isinstance(data, list):  # (nothing, or agents' keys)
                    header.append([what, table, data])
                else:  # rows: an Arrow table, sent as IPC bytes
                    header.append([what, table, len(parts)])
                    parts.append(_arrow_bytes(data))
        return _pack({"incarnation": state.incarnation, "cursor": state.batch,
                      "ops": header}, parts)

    def _view(self, ref: AgentRef, version: int) -> VersionView:
        """``ref.at(version)`` on this host, kept for a while (its tables are copied once)."""
        from ..travel.versions import VersionView

        views = self._reads_state().views
        head = ref.version
        found = views.get((ref._ab_key, version, head))
        if found is not None:
            views.move_to_end((ref._ab_key, version, head))
            return found
        with self._conn(ref._ab_key, missing_ok=False) as conn:
            view = VersionView(ref, version, conn)
        views[(ref._ab_key, version, head)] = view
        if len(views) > _VIEWS_KEPT:
            views.popitem(last=False)[1].close()
        return view

    def _parent(self, key: Key) -> list | None:
        from ..store.history import meta_value

        with self._conn(key) as conn:
            text = None if conn is None else meta_value(conn, "parent")
        if text is None:
            return None
        parent = jsonvalue.loads(text)
        return [parent["class"], parent["name"], parent["version"]]

    @contextmanager
    def _conn(self, key: Key, missing_ok: bool = True) -> Iterator[Any]:
        """A read-only connection to *key*'s last commit on this host (``None``: no store)."""
        from ..errors import AgentNotFoundError
        from ..store import health, open_reader

        rt = self.rt
        inst = rt.instances.get(key)
        if inst is not None and inst.store is not None and not inst.fresh:
            yield inst.store.reader()
            return
        path = rt.path_of(key)
        if health.check_file(path):
            if not missing_ok:
                raise AgentNotFoundError(f"{key[0]}({key[1]!r}) has no store yet: it is "
                                         "created by its first message")
            yield None
            return
        conn = open_reader(path)
        try:
            yield conn
        finally:
            conn.close()


# -- the driver's side ------------------------------------------------------------------
class OwnerReads:
    """The driver's reads on a Ray runtime whose stores live on the hosts' nodes
    (``rt.reads``): each goes to the host that owns the agent, one Ray call."""

    def __init__(self, router: RayRouter) -> None:
        self.router = router
        #: Per host: ``(incarnation, cursor)`` of the projection changes applied.
        self._cursors: dict[int, tuple[str, int]] = {}
        self._views_made = False

    # -- plumbing -------------------------------------------------------------------------
    def _get(self, ref: Any) -> Any:
        import ray  # (installed: the router it reads through runs on it)

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
            raise HostUnavailableError("the host owning this agent is restarting; read "
                                       "again in a moment") from None

    def _ask(self, key: Key, kind: str, args: tuple, kwargs: dict | None = None) -> Any:
        text = dumps([list(args), kwargs or {}])
        router = self.router
        for attempt in range(_REASKS + 1):
            index = router.host_of(key)
            try:
                return self._get(router.handle(index).read.remote(kind, key[0], key[1], text))
            except HostUnavailableError as exc:
                # Not that host's agent now (a failover or a move this process has not
                # heard of: no message went there since), or that host is restarting after
                # its node was lost and the agent was promoted elsewhere: the owner, by the
                # map as it is (a restarting owner: read again in a moment).
                if attempt == _REASKS or router.coordinator is None:
                    raise
                router.refresh()
                if not isinstance(exc, LeaseLostError) and router.host_of(key) == index:
                    raise
        raise AssertionError("unreachable")

    def _everywhere(self, kind: str, *args: Any) -> list[Any]:
        router = self.router
        text = dumps(list(args))
        hosts = router.live_hosts()
        asked = [router.handle(i).read_all.remote(kind, text) for i in hosts]
        answers, owners = [], None
        for i, ref in zip(hosts, asked, strict=True):
            try:
                answers.append(self._get(ref))
            except HostUnavailableError:
                # A host restarting after its node was lost: if its shards were promoted
                # to their replicas, its agents answer from there (it owns none now).
                if router.coordinator is None:
                    raise
                if owners is None:
                    router.refresh()
                    owners = set(router.owners or ())
                if i in owners:
                    raise
        if not answers:
            raise HostUnavailableError("every host is restarting; read again in a moment")
        return answers

    # -- one agent --------------------------------------------------------------------------
    def value(self, ref: AgentRef, kind: str, *args: Any) -> Any:
        """A JSON read of *ref* (``state``, ``version``, ``history_range``, ``verify``)."""
        text = self._ask(ref._ab_key, kind, args)
        if kind != "state":
            return loads(text)
        if text:
            return jsonvalue.loads(text)
        cls = ref.runtime.class_for(ref.class_name)  # (the driver knows the class)
        return cls.initial_state if cls is not None else None

    def frame(self, ref: AgentRef, kind: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """A DataFrame read of *ref*: the ``AgentRef`` method *kind* run by its owner."""
        return decode_frame(self._ask(ref._ab_key, kind, args, kwargs))[0]

    def sql_rows(self, ref: AgentRef, query: str, params: tuple, timeout: float | None,
                 max_bytes: int | None) -> tuple[list[str], list[tuple]]:
        """``ref.sql``'s column names and rows, from its owner (JSON, blobs tagged)."""
        names, rows = loads(self._ask(ref._ab_key, "sql_rows",
                                      (query, list(params), timeout, max_bytes)))
        return names, rows

    def history_records(self, ref: AgentRef, *args: Any) -> list[tuple]:
        """``ref.history``'s rows (:func:`agentbook.core.ref.history_records`), from its
        owner."""
        return cast(list, loads(self._ask(ref._ab_key, "history_records", args)))

    def at(self, ref: AgentRef, version: int) -> VersionView:
        """``ref.at(version)``: the state now, the tables (a SQLite image) on first query."""
        from ..travel.versions import VersionView

        found, state_json = loads(self._ask(ref._ab_key, "at", (version,)))

        def image() -> Any:
            import apsw

            conn = apsw.Connection(":memory:")
            conn.deserialize("main", self._ask(ref._ab_key, "at_image", (found,)))
            return conn

        return VersionView(ref, found, None, (state_json, image))

    def parent(self, ref: AgentRef) -> tuple[str, str, int] | None:
        """The agent *ref* was forked from, and the version it was forked at."""
        found = loads(self._ask(ref._ab_key, "parent", ()))
        return None if found is None else (found[0], found[1], found[2])

    def diff(self, ref: AgentRef, a: int, b: int | None, internals: bool) -> Diff:
        """``ref.diff(a, b)`` (one agent), made by its owner."""
        from ..travel.versions import Diff

        rows, (left, right, state, shown) = decode_frame(
            self._ask(ref._ab_key, "diff", (a, b), {"internals": internals}))
        return Diff(left, right, state, rows, shown)

    def workflow_run(self, ref: AgentRef, run_id: str) -> RunRow | None:
        """The run *run_id* of *ref*, as of its last commit."""
        from ..store.workflows import RunRow

        row = loads(self._ask(ref._ab_key, "workflow_run", (run_id,)))
        return None if row is None else RunRow(*row)

    def workflow_steps(self, ref: AgentRef, run_id: str) -> pd.DataFrame:
        """The journal of run *run_id* of *ref*."""
        return decode_frame(self._ask(ref._ab_key, "workflow_steps", (run_id,)))[0]

    def refuse(self, what: str) -> NoReturn:
        """Something that needs the agent's store file here, where there is none."""
        raise UsageError(
            f"{what} needs the agent's store file in this process, and on this Ray runtime "
            "the stores live on the hosts' nodes (host_dir=): run it where the store is (in "
            "a handler of the agent), or use a runtime over one folder")

    # -- every agent ------------------------------------------------------------------------
    def agents(self, class_name: str | None) -> pd.DataFrame:
        """``rt.agents()``: every host's agents, oldest first."""
        import pandas as pd

        frames = [decode_frame(b)[0] for b in self._everywhere("agents", class_name)]
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.sort_values("created", kind="stable").reset_index(drop=True)
        frame["version"] = frame["version"].astype("Int64")
        return frame

    def workflows(self) -> pd.DataFrame:
        """``rt.workflows()``: every host's workflow runs."""
        import pandas as pd

        frames = [decode_frame(b)[0] for b in self._everywhere("workflows")]
        found = [f for f in frames if len(f)]
        return pd.concat(found, ignore_index=True) if found else frames[0]

    def approvals(self, status: str | None) -> list[IndexedApproval]:
        """The approval index's rows with *status* on every host, in the order requested."""
        from ..store.approvals import IndexedApproval

        rows = [IndexedApproval(*r) for text in self._everywhere("approvals", status)
                for r in loads(text)]
        rows.sort(key=lambda r: r.created)
        return rows

    def dead_letters(self) -> list[tuple]:
        """``rt.dead_letters()``'s rows from every host, oldest first."""
        rows = [tuple(r) for text in self._everywhere("dead_letters") for r in loads(text)]
        rows.sort(key=lambda r: (r[8], r[0]))  # (failed_at, id: the catalog's order)
        return rows

    def approval(self, approval_id: str) -> IndexedApproval | None:
        """One approval by id, from the host of its agent."""
        from ..store.approvals import IndexedApproval

        for text in self._everywhere("approval", approval_id):
            row = loads(text)
            if row is not None:
                return IndexedApproval(*row)
        return None

    # -- the views ----------------------------------------------------------------------------
    def catch_up(self, analytics: Analytics, rebuild: bool = False) -> int:
        """Apply every host's projection changes to the driver's views; returns how many
        history rows were added."""
        import pyarrow as pa

        db = analytics.db
        router = self.router
        if not self._views_made:
            self._make_views(db)
        for i in router.gone & set(self._cursors):  # removed: its agents are elsewhere now
            for table in _FED:
                db.execute(f"DELETE FROM host{i}.{table}")
            del self._cursors[i]
        asked, live = [], router.live_hosts()
        for i in live:
            incarnation, cursor = self._cursors.get(i, ("", 0))
            asked.append(router.handle(i).feed.remote(incarnation, cursor, rebuild))
        added = 0
        for i, data in zip(live, self._get(asked), strict=True):
            header, parts = _unpack(data)
            schema = f"host{i}"
            if self._cursors.get(i, ("",))[0] != header["incarnation"]:
                for table in _FED:  # a new projection there: take it whole
                    db.execute(f"DELETE FROM {schema}.{table}")
            for what, table, data_at in header["ops"]:
                rows = None if not isinstance(data_at, int) else pa.ipc.open_stream(
                    parts[data_at]).read_all()
                if what == "replace":
                    db.execute(f"DELETE FROM {schema}.{table}")
                if what == "forget" or what == "delete":
                    keys = pa.table({"agent": [k[0] for k in data_at],
                                     "name": [k[1] for k in data_at]})
                    db.register("ab_keys", keys)
                    try:
                        for name in (_FORGET if what == "forget" else (table,)):
                            db.execute(f"DELETE FROM {schema}.{name} WHERE (agent, name) IN"
                                       " (SELECT (agent, name) FROM ab_keys)")
                    finally:
                        db.unregister("ab_keys")
                elif what == "prune":
                    db.register("ab_pruned", rows)
                    try:
                        db.execute(f"DELETE FROM {schema}.events e USING ab_pruned p WHERE"
                                   " e.agent = p.agent AND e.name = p.name AND e.seq < p.first")
                    finally:
                        db.unregister("ab_pruned")
                elif rows is not None:  # append, replace
                    db.register("ab_rows", rows)
                    try:
                        db.execute(f"INSERT INTO {schema}.{table} SELECT * FROM ab_rows")
                    finally:
                        db.unregister("ab_rows")
                    if table == "history" and what == "append":
                        added += rows.num_rows
            self._cursors[i] = (header["incarnation"], header["cursor"])
        return added

    def rebuild(self, analytics: Analytics) -> int:
        """Every host's projection made again from its stores."""
        return self.catch_up(analytics, rebuild=True)

    def _make_views(self, db: Any) -> None:
        """Per host a schema with the views' tables; the views are their union."""
        for i in range(self.router.hosts):
            db.execute(f"CREATE SCHEMA IF NOT EXISTS host{i}")
            for table in _FED:
                db.execute(f"CREATE TABLE host{i}.{table} AS SELECT * FROM main.{table} LIMIT 0")
        for table in _FED:
            union = " UNION ALL ".join(f"SELECT * FROM host{i}.{table}"
                                       for i in range(self.router.hosts))
            db.execute(f"DROP TABLE main.{table}")
            db.execute(f"CREATE VIEW main.{table} AS {union}")
        self._views_made = True
