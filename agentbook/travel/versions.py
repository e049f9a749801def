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
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import apsw

from .. import jsonvalue
from ..errors import VersionNotFoundError
from ..store.agentstore import user_schema
from ..store.history import state_at
from ..store.schema import UNTRACKED_TABLES
from ..store.sqlaccess import sql_params

if TYPE_CHECKING:
    import pandas as pd

    from ..core.ref import AgentRef

__all__ = ["Diff", "VersionView", "json_patch"]

_URI_RO = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI


def _resolve(change_reason: int, change: Any) -> int:
    if change_reason in (apsw.SQLITE_CHANGESET_DATA, apsw.SQLITE_CHANGESET_CONFLICT):
        return apsw.SQLITE_CHANGESET_REPLACE
    return apsw.SQLITE_CHANGESET_OMIT


def bounds(conn: apsw.Connection, db: str = "main") -> tuple[int, int]:
    """``(first, head)``: the versions time travel can reach."""
    head_rows = conn.execute(f"SELECT version FROM {db}._ab_state WHERE id = 1").fetchall()
    head = head_rows[0][0] if head_rows else 0
    first_rows = conn.execute(f"SELECT value FROM {db}._ab_meta WHERE key = 'first_version'").fetchall()
    return (int(first_rows[0][0]) if first_rows else 0), head


def check_version_type(version: Any, who: str) -> int:
    """*version* as a plain int, or a :class:`VersionNotFoundError` (for a float - even
    ``inf`` or ``nan`` -, a bool, a string...) before anything else looks at it."""
    if isinstance(version, bool) or not isinstance(version, int):
        shown = repr(version) if isinstance(version, float) else type(version).__name__
        raise VersionNotFoundError(
            f"versions of {who} are whole numbers (-1 is the newest), not {shown}")
    return int(version)


def check_version(conn: apsw.Connection, version: Any, who: str, db: str = "main") -> int:
    """The version as an int, or a :class:`VersionNotFoundError` saying what exists."""
    version = check_version_type(version, who)
    first, head = bounds(conn, db)
    if version < 0:
        version = head + 1 + version  # -1 is head
    if version > head or version < first:
        pruned = " (older versions were pruned)" if first else ""
        shown = version if abs(version) < 2**63 else "that big"  # str() of a huge int raises
        raise VersionNotFoundError(
            f"{who} has no version {shown}: its history covers {first}..{head}{pruned}")
    return version


def _undo(conn: apsw.Connection, changesets: list[bytes], target: str,
          before_drop: Any = None) -> None:
    """Apply inverted *changesets* (newest first) and reconcile the schema to *target*."""
    _create_missing(conn, target, tables_only=True)
    for changes in changesets:
        for part in reversed(segments(changes)):
            apsw.Changeset.apply(apsw.Changeset.invert(part), conn, conflict=_resolve)
    _reconcile(conn, target, before_drop)


_FRAMED = b"\x00abseg"


def frame_segments(parts: list[bytes]) -> bytes:
    """One blob from changesets that can't be merged (a table's schema changed between)."""
    out = bytearray(_FRAMED)
    for part in parts:
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def segments(blob: bytes) -> list[bytes]:
    """The changesets in a version's ``changes`` blob, in the order they were recorded."""
    if not blob.startswith(_FRAMED):
        return [blob]
    parts, i = [], len(_FRAMED)
    while i < len(blob):
        size = int.from_bytes(blob[i:i + 4], "big")
        parts.append(blob[i + 4:i + 4 + size])
        i += 4 + size
    return parts


def _changesets_above(conn: apsw.Connection, version: int, db: str = "main") -> list[bytes]:
    return [row[0] for row in conn.execute(
        f"SELECT changes FROM {db}._ab_history WHERE version > ? AND changes IS NOT NULL"
        " ORDER BY version DESC", (version,)).fetchall()]


def undo_to(conn: apsw.Connection, version: int, before_drop: Any = None) -> None:
    """In a live store (inside a handler's transaction): put every tracked table back as it
    was at *version*, by applying the inverted changesets of the versions above it.
    *before_drop* is called before any DROP (the handler cuts its change capture there)."""
    _undo(conn, _changesets_above(conn, version), schema_at(conn, version), before_drop)


def schema_at(conn: apsw.Connection, version: int, db: str = "main") -> str:
    """The agent's schema JSON as of *version* (``"[]"`` before any table existed)."""
    rows = conn.execute(
        f"SELECT schema FROM {db}._ab_history WHERE version <= ? AND schema IS NOT NULL"
        " ORDER BY version DESC LIMIT 1", (version,)).fetchall()
    return rows[0][0] if rows else "[]"


def _create_missing(conn: apsw.Connection, target: str, tables_only: bool) -> None:
    have = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema").fetchall()}
    for type_, name, _table, sql in json.loads(target):
        if name not in have and (type_ == "table" or not tables_only):
            conn.execute(sql)


def _reconcile(conn: apsw.Connection, target: str, before_drop: Any = None) -> None:
    """Make the agent's schema objects exactly *target*. A table whose definition changed
    (ALTER TABLE) is rebuilt keeping the rows of the columns both definitions share."""
    want = {obj[1]: obj for obj in json.loads(target)}
    current = {obj[1]: obj for obj in json.loads(user_schema(conn))}
    rebuild: list[str] = []
    for name, (type_, _n, _t, sql) in current.items():
        if name in want and want[name][3] == sql:
            continue
        if before_drop is not None:
            before_drop()
        if type_ == "table" and name in want and want[name][0] == "table":
            conn.execute(f'ALTER TABLE "{name}" RENAME TO "_ab_rebuild_{name}"')
            rebuild.append(name)
            continue
        if type_ == "table":
            conn.execute(f'DELETE FROM "{name}"')  # recorded, so the rewind can be undone
        conn.execute(f'DROP {type_.upper()} IF EXISTS "{name}"')
    _create_missing(conn, target, tables_only=True)
    for name in rebuild:
        old_cols = [r[1] for r in conn.execute(f'PRAGMA table_info("_ab_rebuild_{name}")')]
        new_cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')}
        shared = ", ".join(f'"{c}"' for c in old_cols if c in new_cols)
        if shared:
            conn.execute(f'INSERT INTO "{name}"({shared}) SELECT {shared} FROM "_ab_rebuild_{name}"')
        if before_drop is not None:
            before_drop()
        conn.execute(f'DROP TABLE "_ab_rebuild_{name}"')
    _create_missing(conn, target, tables_only=False)


def _copy_table(mem: apsw.Connection, name: str, sql: str, src: str = "src") -> None:
    """Copy a table's rows, rowids included (rowid tables without a declared key need
    them for changesets to find their rows)."""
    if "WITHOUT ROWID" in sql.upper():
        mem.execute(f'INSERT INTO main."{name}" SELECT * FROM {src}."{name}"')
        return
    cols = ", ".join(f'"{r[1]}"' for r in mem.execute(f'PRAGMA {src}.table_info("{name}")'))
    mem.execute(f'INSERT INTO main."{name}"(rowid, {cols}) SELECT rowid, {cols} FROM {src}."{name}"')


def materialize(path: str, version: int, who: str) -> apsw.Connection:
    """An in-memory database holding the agent's tracked tables as they were at *version*.

    Only the tables are copied (not the history), so the cost follows the agent's data and
    the distance from head, not the length of its history. The source is only read.
    """
    mem = apsw.Connection(":memory:", flags=_URI_RO)
    mem.execute("ATTACH DATABASE ? AS src", (f"file:{path}?mode=ro",))
    try:
        mem.execute("BEGIN")  # one snapshot of the source for everything below
        version = check_version(mem, version, who, "src")
        objects = mem.execute(
            "SELECT type, name, tbl_name, sql FROM src.sqlite_schema WHERE sql IS NOT NULL"
            " AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall()
        tracked = [o for o in objects if o[2] not in UNTRACKED_TABLES]
        for type_, name, _t, sql in tracked:
            if type_ == "table":
                mem.execute(sql)
                _copy_table(mem, name, sql)
        for type_, _name, _t, sql in tracked:
            if type_ != "table":
                mem.execute(sql)
        changesets = _changesets_above(mem, version, "src")
        target = schema_at(mem, version, "src")
        mem.execute("COMMIT")
        mem.execute("DETACH DATABASE src")
        _undo(mem, changesets, target)
    except BaseException:
        mem.close()
        raise
    return mem


class VersionView:
    """The agent as it was at one version (read-only): ``.state``, ``.sql(...)``,
    ``.schedules()``. Cheap to make; tables are copied only when first queried."""

    def __init__(self, ref: AgentRef, version: int) -> None:
        self.ref = ref
        self._mem: apsw.Connection | None = None
        with ref._reading() as conn:
            self.version = check_version(conn, version, repr(ref))
            self._state_json = state_at(conn, self.version)

    @property
    def state(self) -> Any:
        """The state after this version."""
        return jsonvalue.loads(self._state_json)

    def _db(self) -> apsw.Connection:
        if self._mem is None:
            rt = self.ref.runtime
            self._mem = materialize(rt.path_of(self.ref._ab_key), self.version, repr(self.ref))
        return self._mem

    def sql(self, query: str, *params: Any) -> pd.DataFrame:
        """A read-only query on the agent's own tables as they were at this version."""
        import pandas as pd

        from ..store import query_reader

        params = sql_params(params)  # type: ignore[assignment]
        conn = self._db()
        conn.execute("PRAGMA query_only = ON")
        names, rows = query_reader(conn, query, params)
        return pd.DataFrame.from_records(rows, columns=names)

    def schedules(self) -> pd.DataFrame:
        """The schedules that were pending at this version."""
        from ..core.ref import schedules_frame
        from ..schedule.policy import select

        return schedules_frame(select(self._db()))

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


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


class Diff:
    """What changed between two versions: ``state`` (a JSON patch) and ``rows`` (one row
    per changed table row: table, op, old, new)."""

    def __init__(self, a: str, b: str, state: list[dict], rows: pd.DataFrame) -> None:
        self.a, self.b, self.state, self.rows = a, b, state, rows

    @property
    def empty(self) -> bool:
        """Whether nothing changed."""
        return not self.state and self.rows.empty

    def __repr__(self) -> str:
        return (f"<Diff {self.a} -> {self.b}: {len(self.state)} state changes, "
                f"{len(self.rows)} row changes>")

    def _repr_html_(self) -> str:
        import html

        patch = html.escape(json.dumps(jsonvalue.thaw(self.state), indent=1, ensure_ascii=False))
        return (f"<div><b>{html.escape(self.a)} &rarr; {html.escape(self.b)}</b>"
                f"<pre>{patch}</pre>{self.rows.to_html(index=False)}</div>")


def changes_between(conn: apsw.Connection, a: int, b: int) -> pd.DataFrame:
    """Row changes of versions ``a+1 .. b`` of one agent, merged per row."""
    import pandas as pd

    rows = conn.execute(
        "SELECT changes FROM _ab_history WHERE version > ? AND version <= ? AND changes IS NOT NULL"
        " ORDER BY version", (a, b)).fetchall()
    records = []
    if rows:
        builder = apsw.ChangesetBuilder()
        for (changes,) in rows:
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

    tables = {r[0] for r in left.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_ab\\_%' ESCAPE '\\'"
    ).fetchall()} | {r[0] for r in right.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_ab\\_%' ESCAPE '\\'"
    ).fetchall()}
    records = []
    for table in sorted(tables):
        a = _table_rows(left, table)
        b = _table_rows(right, table)
        for row in sorted(a - b, key=repr):
            records.append((table, "delete", list(row), None))
        for row in sorted(b - a, key=repr):
            records.append((table, "insert", None, list(row)))
    return pd.DataFrame.from_records(records, columns=["table", "op", "old", "new"])


def _table_rows(conn: apsw.Connection, table: str) -> set:
    try:
        return set(conn.execute(f'SELECT * FROM "{table}"').fetchall())
    except apsw.SQLError:
        return set()
