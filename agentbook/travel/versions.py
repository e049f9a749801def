"""Time travel: any version of any agent, exactly, at a cost that doesn't grow with history.

Every version's row changes are a SQLite session changeset in the agent's history (see
:mod:`agentbook.store.agentstore`); its state after is stored when it changed. So:

* ``ref.at(k).state`` is one indexed look-up;
* ``ref.at(k).sql(...)`` copies the agent's tables (not its history) into memory and
  applies the inverted changesets of versions ``head .. k+1``: the cost depends on the
  data and on the distance from head, not on how long the history is;
* ``ref.rewind(k)`` does the same in place, as a handler: the rewind is a new version
  whose own changeset undoes it again. Pending approvals requested after ``k`` are
  cancelled (approvals are never tracked, so none can be revived), and schedule
  occurrences that already ran after ``k`` are not run again;
* ``ref.diff(a, b)`` is a JSON patch of the state plus the rows the versions between
  changed.

Schema changes ride along: each version that changed the agent's schema stores the full
schema after it, and going back reconciles tables, indexes, views and triggers with it.

The SQL and the changeset mechanics are the store's (:mod:`agentbook.store.history`,
:mod:`agentbook.store.changesets`); this module is what they mean to a notebook: views
of a version, and diffs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw

from .. import jsonvalue
from ..store.changesets import materialize, segments
from ..store.history import bounds, changesets_between, check_version, check_version_type, state_at
from ..store.schema import UNTRACKED_TABLES
from ..store.sqlaccess import sql_params
from ..store.workflows import read_runs, read_steps, runs_frame, steps_frame

if TYPE_CHECKING:
    import pandas as pd

    from ..core.ref import AgentRef

__all__ = ["Diff", "VersionView", "bounds", "changes_between", "check_version",
           "check_version_type", "json_patch", "merge_patch", "rows_between", "schedules_frame"]


class VersionView:
    """The agent as it was at one version (read-only): ``.state``, ``.sql(...)``,
    ``.schedules()``, ``.workflows()``. Cheap to make; tables are copied only when first queried.

    Args:
        ref: The agent.
        version: The version (negative counts from the newest).
        conn: A read-only connection to the agent's last commit (the ref's), used only
            while the view is made.
        made: Instead of *conn*, for a view made elsewhere (by the Ray host owning the
            agent, *version* checked there): its state's JSON text, and what makes the
            in-memory copy of its tables.
    """

    def __init__(self, ref: AgentRef, version: int, conn: apsw.Connection | None,
                 made: tuple[str, Callable[[], apsw.Connection]] | None = None) -> None:
        self.ref = ref
        self._mem: apsw.Connection | None = None
        self._load: Callable[[], apsw.Connection] | None = None
        if conn is None and made is not None:  # made elsewhere (the Ray host owning it)
            self.version = version
            self._state_json: str | None = made[0]
            self._load = made[1]
            return
        assert conn is not None
        self.version = check_version(conn, version, repr(ref))
        self._state_json = state_at(conn, self.version)

    @property
    def state(self) -> Any:
        """The state after this version."""
        return jsonvalue.loads(self._state_json)

    def connection(self) -> apsw.Connection:
        """The in-memory copy of the agent's tables at this version, made on first use
        (what :meth:`sql` and :meth:`schedules` read; :meth:`close` frees it)."""
        if self._mem is None:
            if self._load is not None:
                self._mem = self._load()
                return self._mem
            rt = self.ref.runtime
            self._mem = materialize(rt.path_of(self.ref._ab_key), self.version, repr(self.ref))
        return self._mem

    def sql(self, query: str, *params: Any) -> pd.DataFrame:
        """A read-only query on the agent's own tables as they were at this version."""
        import pandas as pd

        from ..store import query_reader

        params = sql_params(params)  # type: ignore[assignment]
        conn = self.connection()
        conn.execute("PRAGMA query_only = ON")
        names, rows = query_reader(conn, query, params)
        return pd.DataFrame.from_records(rows, columns=names)

    def schedules(self) -> pd.DataFrame:
        """The schedules that were pending at this version."""
        from ..schedule.policy import select

        return schedules_frame(select(self.connection()))

    def workflows(self) -> pd.DataFrame:
        """The agent's workflow runs as they were at this version (``ref.workflows()``'s
        columns)."""
        return runs_frame(read_runs(self.connection()))

    def workflow_steps(self, run_id: str) -> pd.DataFrame:
        """The journal of workflow run *run_id* as it was at this version
        (``run.steps()``'s columns)."""
        return steps_frame(read_steps(self.connection(), run_id))

    def close(self) -> None:
        """Free the in-memory copy."""
        if self._mem is not None:
            self._mem.close()
            self._mem = None

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self.ref!r} at version {self.version}>"

    def _repr_html_(self) -> str:
        import html

        text = json.dumps(self.state, indent=1, ensure_ascii=False)[:600]
        return (f"<div><b>{html.escape(repr(self.ref))}</b> at version {self.version}"
                f"<pre>{html.escape(text)}</pre></div>")


# -- diffs --------------------------------------------------------------------------------
def json_patch(old: Any, new: Any, path: str = "") -> list[dict]:
    """An RFC 6902 JSON patch (add / remove / replace) turning *old* into *new*."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict] = []
        for key in old:
            sub = f"{path}/{_escape(key)}"
            if key not in new:
                ops.append({"op": "remove", "path": sub})
            else:
                ops.extend(json_patch(old[key], new[key], sub))
        for key in new:
            if key not in old:
                ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": new[key]})
        return ops
    if isinstance(old, list) and isinstance(new, list):
        ops = []
        common = min(len(old), len(new))
        for i in range(common):
            ops.extend(json_patch(old[i], new[i], f"{path}/{i}"))
        for i in range(common, len(new)):
            ops.append({"op": "add", "path": f"{path}/{i}", "value": new[i]})
        for i in range(len(old) - 1, common - 1, -1):
            ops.append({"op": "remove", "path": f"{path}/{i}"})
        return ops
    if type(old) is type(new) and old == new:
        return []
    return [{"op": "replace", "path": path, "value": new}]


def merge_patch(target: Any, patch: Any) -> Any:
    """*target* with the RFC 7386 JSON merge *patch* applied (neither is changed): an
    object merges key by key, ``None`` (JSON ``null``) removes a key, anything else
    replaces what was there whole (lists included)."""
    if not isinstance(patch, dict):
        return jsonvalue.thaw(patch)
    out = dict(jsonvalue.thaw(target)) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


#: Agentbook tables that hold the agent's own data, shown in a diff under these labels; the
#: other ``_ab_`` tables (chat messages, tool calls, workflow journals, dead letters...) are
#: the framework's bookkeeping and are shown only with ``internals=True``.
_FRIENDLY = {"_ab_kv": "key-value", "_ab_schedules": "schedules"}
#: How a row change reads in a diff (SQLite's session ops -> what happened to the row).
_OPS = {"insert": "added", "delete": "removed", "update": "changed"}
#: Rows shown per table in a repr (the DataFrames hold them all).
_SHOWN = 5


class Diff:
    """What changed between two versions (``ref.diff(a, b)``).

    Attributes:
        a: The older side, ``"name@version"``.
        b: The newer side.
        state: The state's changes, an RFC 6902 JSON patch (a list of ``{"op", "path",
            "value"}``).
        rows: Every row change, one per changed row: ``table``, ``op`` (``insert``,
            ``delete``, ``update``), ``old``, ``new``; agentbook's own ``_ab_`` tables
            included (key-value data, schedules, chat and workflow bookkeeping).
        internals: Whether the repr and :meth:`changes` show the ``_ab_`` bookkeeping tables
            too (``ref.diff(a, b, internals=True)`` or :meth:`with_internals`). Key-value data
            and schedules are the agent's own data and always shown.
    """

    def __init__(self, a: str, b: str, state: list[dict], rows: pd.DataFrame,
                 internals: bool = False) -> None:
        self.a, self.b, self.state, self.rows = a, b, state, rows
        self.internals = internals

    @property
    def empty(self) -> bool:
        """Whether nothing changed."""
        return not self.state and self.rows.empty

    def with_internals(self, internals: bool = True) -> Diff:
        """The same diff, showing (or hiding) agentbook's ``_ab_`` bookkeeping tables."""
        return Diff(self.a, self.b, self.state, self.rows, internals)

    def changes(self) -> pd.DataFrame:
        """The row changes this diff shows: :attr:`rows` without the ``_ab_`` bookkeeping
        tables unless :attr:`internals` (key-value data and schedules always stay)."""
        if self.internals or self.rows.empty:
            return self.rows
        keep = [_visible(t) for t in self.rows["table"]]
        return self.rows[keep].reset_index(drop=True)

    def tables(self) -> pd.DataFrame:
        """Per table shown: how many rows were ``added``, ``removed`` and ``changed``."""
        import pandas as pd

        counts: dict[str, dict[str, int]] = {}
        for table, op in zip(self.changes()["table"], self.changes()["op"], strict=True):
            per = counts.setdefault(table, {"added": 0, "removed": 0, "changed": 0})
            per[_OPS.get(op, "changed")] += 1
        return pd.DataFrame.from_records(
            [(t, c["added"], c["removed"], c["changed"]) for t, c in counts.items()],
            columns=["table", "added", "removed", "changed"])

    def __repr__(self) -> str:
        lines = [f"<Diff {self.a} -> {self.b}: {_count(len(self.state), 'state change')}, "
                 f"{_count(len(self.changes()), 'row change')}>"]
        for op in self.state[:20]:
            lines.append("  state " + _op_text(op))
        if len(self.state) > 20:
            lines.append(f"  ... {len(self.state) - 20} more state changes (diff.state)")
        rows = self.changes()
        for table, added, removed, changed in self.tables().itertuples(index=False):
            lines.append(f"  {_label(table)}: {added} added, {removed} removed, {changed} changed")
            part = rows[rows["table"] == table]
            for op, old, new in list(zip(part["op"], part["old"], part["new"], strict=True))[:_SHOWN]:
                lines.append(f"    {_OPS.get(op, op)} {_row_text(op, old, new)}")
            if len(part) > _SHOWN:
                lines.append(f"    ... {len(part) - _SHOWN} more (diff.changes())")
        hidden = len(self.rows) - len(rows)
        if hidden:
            lines.append(f"  ({hidden} changes to agentbook's own tables hidden: "
                         "diff.with_internals() shows them)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        esc = html.escape
        out = [f"<div><b>{esc(self.a)} &rarr; {esc(self.b)}</b>"]
        if self.empty:
            out.append(" <i>nothing changed</i>")
        if self.state:
            out.append("<div>state</div><ul style='margin:0'>")
            out += [f"<li><code>{esc(_op_text(op))}</code></li>" for op in self.state[:200]]
            out.append("</ul>")
        rows = self.changes()
        for table, added, removed, changed in self.tables().itertuples(index=False):
            out.append(f"<div>{esc(_label(table))}: {added} added, {removed} removed, "
                       f"{changed} changed</div><ul style='margin:0'>")
            part = rows[rows["table"] == table]
            for op, old, new in list(zip(part["op"], part["old"], part["new"], strict=True))[:50]:
                out.append(f"<li>{esc(_OPS.get(op, op))} <code>"
                           f"{esc(_row_text(op, old, new))}</code></li>")
            out.append("</ul>")
        hidden = len(self.rows) - len(rows)
        if hidden:
            out.append(f"<div><i>{hidden} changes to agentbook's own tables hidden "
                       "(diff.with_internals())</i></div>")
        return "".join(out) + "</div>"


def _visible(table: str) -> bool:
    return not table.startswith("_ab_") or table in _FRIENDLY


def _label(table: str) -> str:
    return f"({_FRIENDLY[table]})" if table in _FRIENDLY else table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _short_json(value: Any, limit: int = 120) -> str:
    try:
        text = json.dumps(jsonvalue.thaw(value), ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _op_text(op: dict) -> str:
    if "value" in op:
        return f"{op['op']} {op['path'] or '/'} = {_short_json(op['value'])}"
    return f"{op['op']} {op['path'] or '/'}"


def _row_text(op: str, old: Any, new: Any) -> str:
    if op == "insert":
        return _short_json(new)
    if op == "delete":
        return _short_json(old)
    # an update: a changeset's new side holds only the columns that changed (the others
    # read as None there), so they are shown with the old values filled in
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        new = [o if n is None else n for o, n in zip(old, new, strict=True)]
    return f"{_short_json(old)} -> {_short_json(new)}"


def changes_between(conn: apsw.Connection, a: int, b: int) -> pd.DataFrame:
    """Row changes of versions ``a+1 .. b`` of one agent, merged per row."""
    import pandas as pd

    changesets = changesets_between(conn, a, b)
    records = []
    if changesets:
        builder = apsw.ChangesetBuilder()
        for changes in changesets:
            for part in segments(changes):
                builder.add(part)
        merged = builder.output()
        for change in apsw.Changeset.iter(merged):
            if change.name in UNTRACKED_TABLES:
                continue
            records.append((change.name, str(change.op).lower(), _vals(change.old),
                            _vals(change.new)))
    return pd.DataFrame.from_records(records, columns=["table", "op", "old", "new"])


def _vals(values: Any) -> Any:
    if values is None:
        return None
    return [None if v is apsw.no_change else v for v in values]


def rows_between(left: apsw.Connection, right: apsw.Connection) -> pd.DataFrame:
    """Row differences between two materialized databases (for diffs across agents)."""
    import pandas as pd

    tables = _own_tables(left) | _own_tables(right)
    records: list[tuple[str, str, list | None, list | None]] = []
    for table in sorted(tables):
        a = _table_rows(left, table)
        b = _table_rows(right, table)
        for row in sorted(a - b, key=repr):
            records.append((table, "delete", list(row), None))
        for row in sorted(b - a, key=repr):
            records.append((table, "insert", None, list(row)))
    return pd.DataFrame.from_records(records, columns=["table", "op", "old", "new"])


def _own_tables(conn: apsw.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_ab\\_%' ESCAPE '\\'"
    ).fetchall()}


def _table_rows(conn: apsw.Connection, table: str) -> set:
    try:
        return set(conn.execute(f'SELECT * FROM "{table}"').fetchall())
    except apsw.SQLError:
        return set()


def schedules_frame(items: list) -> pd.DataFrame:
    """A DataFrame of :class:`~agentbook.schedule.policy.Schedule` records (``ref.schedules()``
    and ``ref.at(k).schedules()`` show the same columns)."""
    import pandas as pd

    return pd.DataFrame.from_records(
        [(s.id, s.callback, s.type, pd.Timestamp(s.time), s.cron, s.interval,
          jsonvalue.thaw(s.payload), s.attempt, s.occurrence, s.last_error) for s in items],
        columns=["id", "callback", "type", "time", "cron", "interval", "payload", "attempt",
                 "occurrence", "last_error"],
    )
