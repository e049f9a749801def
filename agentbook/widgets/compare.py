"""What differs between two versions of agents, as named rows: what the diff widget shows.

Each side is read through time travel (``ref.at(v)``, a :class:`~agentbook.travel.versions.VersionView`):
its state, and its tables as they were (the in-memory copy ``view.connection()``), with the
store's read helpers for the workflow journal. Rows are matched by primary key (by ``rowid``
in a table without one), so a row both sides hold with other values is *changed*, not
removed and added again.

Two versions of one agent compare only the tables the versions between them changed (read
from their changesets, ``ref.diff(a, b)``): a step that changed no table costs no copy at
all. An agent against another (a fork against its parent) compares every table; the cost
follows the agents' data, not their history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ..errors import AgentbookError
from ..store.schema import INTERNAL_PREFIX
from ..store.workflows import read_runs, read_steps
from ..travel.versions import json_patch

if TYPE_CHECKING:
    import apsw

    from ..core.ref import AgentRef
    from ..store.workflows import RunRow, StepRow
    from ..travel.versions import VersionView

__all__ = ["KV_TABLE", "Comparison", "RunDiff", "TableDiff", "compare"]

#: The agent's key-value data (``self.kv``): shown with its own tables, under its own name.
KV_TABLE = f"{INTERNAL_PREFIX}kv"
#: The internal tables the schedules and workflow sections already show in their own words.
_SCHEDULES = f"{INTERNAL_PREFIX}schedules"
_WORKFLOWS = (f"{INTERNAL_PREFIX}workflows", f"{INTERNAL_PREFIX}workflow_steps")
#: The columns of a schedule compared and shown (``ref.schedules()``'s, minus the id).
SCHEDULE_COLUMNS = ["callback", "type", "time", "cron", "interval", "payload", "attempt",
                    "occurrence", "last_error"]


class TableDiff(NamedTuple):
    """The rows of one table that differ: ``added`` (only on the right), ``removed`` (only
    on the left), ``changed`` (``(left row, right row)`` pairs with the same key)."""

    table: str
    columns: list[str]
    added: list[tuple]
    removed: list[tuple]
    changed: list[tuple[tuple, tuple]]

    @property
    def empty(self) -> bool:
        """Whether the table is the same on both sides."""
        return not (self.added or self.removed or self.changed)


class RunDiff(NamedTuple):
    """A workflow run that differs: its row on each side (``None``: not there) and its
    steps that differ, as ``(left step, right step)`` pairs (``None``: not there)."""

    run: str
    old: RunRow | None
    new: RunRow | None
    steps: list[tuple[StepRow | None, StepRow | None]]


@dataclass
class Comparison:
    """Everything that differs between two versions (left and right).

    Attributes:
        old_state: The state on the left.
        new_state: The state on the right.
        state: The JSON patch turning the left state into the right one.
        tables: The agent's own tables that differ.
        kv: The key-value data's differences (``None``: the same).
        schedules: The pending schedules that differ, keyed by id (``None``: the same).
        workflows: The workflow runs that differ.
        internal: agentbook's own tables that differ, when asked for (else empty).
    """

    old_state: Any
    new_state: Any
    state: list[dict]
    tables: list[TableDiff] = field(default_factory=list)
    kv: TableDiff | None = None
    schedules: TableDiff | None = None
    workflows: list[RunDiff] = field(default_factory=list)
    internal: list[TableDiff] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether both sides hold the same agent data (internal tables aside)."""
        return not (self.state or self.tables or self.kv or self.schedules or self.workflows)


def compare(left: VersionView, right: VersionView, *, internals: bool = False) -> Comparison:
    """What differs from *left* to *right* (two versions, of one agent or of two).

    Args:
        left: The version on the left.
        right: The version on the right.
        internals: Also compare agentbook's own tables (schedules, journals... as stored).
    """
    old, new = left.state, right.state
    result = Comparison(old, new, json_patch(old, new))
    changed = _changed_tables(left, right)
    if changed is not None and not changed:
        return result  # one agent, and no table changed in between: nothing to copy
    a, b = left.connection(), right.connection()
    for table in sorted(_tables(a) | _tables(b)):
        if changed is not None and table not in changed:
            continue
        own = not table.startswith(INTERNAL_PREFIX)
        if not (own or internals or table == KV_TABLE):
            continue
        diff = _table_diff(a, b, table)
        if diff.empty:
            continue
        if own:
            result.tables.append(diff)
        else:
            if table == KV_TABLE:
                result.kv = diff
            if internals:
                result.internal.append(diff)
    if changed is None or _SCHEDULES in changed:
        result.schedules = _schedules_diff(left, right)
    if changed is None or changed.intersection(_WORKFLOWS):
        result.workflows = _workflows_diff(a, b)
    return result


def _changed_tables(left: VersionView, right: VersionView) -> set[str] | None:
    """The tables the versions between *left* and *right* changed, when both are versions
    of one agent held in its own history; ``None`` when every table must be compared."""
    ref: AgentRef = left.ref
    if right.ref != ref:
        return None
    first, head = ref.history_range()
    if not (first <= left.version <= head and first <= right.version <= head):
        return None  # (a fork's versions before the fork are its parent's)
    try:
        rows = ref.diff(left.version, right.version).rows
    except AgentbookError:
        return None
    return {str(t) for t in rows["table"]} if len(rows) else set()


def _tables(conn: apsw.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\'")}


def _rows(conn: apsw.Connection, table: str) -> tuple[list[str], dict[tuple, tuple]]:
    """The columns of *table* and its rows by key (``([], {})`` when it doesn't exist)."""
    info = [(str(name), int(cast("int", pk))) for name, pk in conn.execute(
        "SELECT name, pk FROM pragma_table_info(?)", (table,))]
    if not info:
        return [], {}
    columns = [name for name, _pk in info]
    keys = [columns.index(name) for name, pk in sorted(info, key=lambda r: r[1]) if pk]
    quoted = '"' + table.replace('"', '""') + '"'
    if keys:
        found = conn.execute(f"SELECT * FROM {quoted}").fetchall()
        return columns, {tuple(row[i] for i in keys): tuple(row) for row in found}
    found = conn.execute(f"SELECT rowid, * FROM {quoted}").fetchall()
    return columns, {(row[0],): tuple(row[1:]) for row in found}


def _table_diff(a: apsw.Connection, b: apsw.Connection, table: str) -> TableDiff:
    old_columns, old = _rows(a, table)
    new_columns, new = _rows(b, table)
    columns = new_columns or old_columns
    if old_columns and new_columns and old_columns != new_columns:  # the schema changed
        return TableDiff(table, columns, [new[k] for k in sorted(new, key=repr)],
                         [old[k] for k in sorted(old, key=repr)], [])
    added = [new[k] for k in sorted(new.keys() - old.keys(), key=repr)]
    removed = [old[k] for k in sorted(old.keys() - new.keys(), key=repr)]
    changed = [(old[k], new[k]) for k in sorted(old.keys() & new.keys(), key=repr)
               if old[k] != new[k]]
    return TableDiff(table, columns, added, removed, changed)


def _schedules_diff(left: VersionView, right: VersionView) -> TableDiff | None:
    def by_id(view: VersionView) -> dict[str, tuple]:
        frame = view.schedules()
        return {str(r["id"]): tuple(_plain(r[c]) for c in SCHEDULE_COLUMNS)
                for r in frame.to_dict("records")}

    old, new = by_id(left), by_id(right)
    diff = TableDiff(
        "schedules", SCHEDULE_COLUMNS,
        [new[k] for k in sorted(new.keys() - old.keys())],
        [old[k] for k in sorted(old.keys() - new.keys())],
        [(old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]])
    return None if diff.empty else diff


def _plain(value: Any) -> Any:
    """A DataFrame cell as a plain value (NaN and NaT become ``None``, times ISO text)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "isoformat"):
        return None if str(value) == "NaT" else value.isoformat()
    return value


def _workflows_diff(a: apsw.Connection, b: apsw.Connection) -> list[RunDiff]:
    old_runs = {r.id: r for r in read_runs(a)}
    new_runs = {r.id: r for r in read_runs(b)}
    old_steps = {(s.run, s.seq): s for s in read_steps(a)}
    new_steps = {(s.run, s.seq): s for s in read_steps(b)}
    found = []
    for run in sorted(old_runs.keys() | new_runs.keys(),
                      key=lambda r: ((old_runs.get(r) or new_runs[r]).created, r)):
        keys = sorted({k for k in old_steps.keys() | new_steps.keys() if k[0] == run})
        steps = [(old_steps.get(k), new_steps.get(k)) for k in keys
                 if old_steps.get(k) != new_steps.get(k)]
        old, new = old_runs.get(run), new_runs.get(run)
        if steps or old != new:
            found.append(RunDiff(run, old, new, steps))
    return found
