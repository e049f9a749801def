"""The template new stores are written from has the schema of a store migrated step by
step, but for the groups made on first use (issue 20 made it smaller: 512-byte pages,
CREATE statements without comments, no chat, MCP or workflow tables and no schedule
look-up indexes until needed)."""

from __future__ import annotations

import apsw

from agentbook.store import groups
from agentbook.store.agentstore import _template
from agentbook.store.schema import LAZY_GROUPS, LAZY_INDEXES, LAZY_TABLES, MIGRATIONS, compact_sql, migrate


def _shape(conn: apsw.Connection) -> dict:
    """Every table's columns and every index's columns, keys and partial clause."""
    out = {}
    for type_, name, table, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name").fetchall():
        if type_ == "table":
            out[name] = (type_, conn.execute(f'PRAGMA table_xinfo("{name}")').fetchall(),
                         "WITHOUT ROWID" in (sql or "").upper())
        else:
            where = (sql or "").upper().partition(" WHERE ")[2]
            out[name] = (type_, table, conn.execute(f'PRAGMA index_xinfo("{name}")').fetchall(),
                         compact_sql(where))
    return out


def test_the_template_is_a_migrated_store_written_small(tmp_path):
    path = tmp_path / "t.db"
    path.write_bytes(_template())
    fresh = apsw.Connection(str(path))
    migrated = apsw.Connection(":memory:")
    migrate(migrated)
    lazy = {n: v for n, v in _shape(migrated).items()
            if n in LAZY_TABLES | LAZY_INDEXES or (v[0] == "index" and v[1] in LAZY_TABLES)}
    assert lazy and {n: v for n, v in _shape(migrated).items() if n not in lazy} == _shape(fresh)
    (tmp_path / "grown.db").write_bytes(_template())
    grown = apsw.Connection(str(tmp_path / "grown.db"))
    for group in LAZY_GROUPS:  # made on first use: then shaped as a migrated store's
        groups.create(grown, group)
    assert _shape(grown) == _shape(migrated)
    assert fresh.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS)
    names = [r[0] for r in fresh.execute("SELECT name FROM _ab_migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]
    assert fresh.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert fresh.execute("PRAGMA page_size").fetchall()[0][0] == 512
    assert fresh.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not any("--" in sql for (sql,) in fresh.execute(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL"))
    assert len(_template()) <= 23 * 512


def test_compact_sql_keeps_quoted_text():
    sql = "CREATE TABLE x(a TEXT DEFAULT 'a -- b  c', -- note\n   \"q  r\" INT)  "
    assert compact_sql(sql) == "CREATE TABLE x(a TEXT DEFAULT 'a -- b  c', \"q  r\" INT)"
