"""The template new stores are written from has the schema of a store migrated step by
step (issue 20 made it smaller: 512-byte pages, CREATE statements without comments)."""

from __future__ import annotations

import apsw

from agentbook.store.agentstore import _migrate, _template
from agentbook.store.schema import MIGRATIONS, compact_sql


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
    _migrate(migrated)
    assert _shape(fresh) == _shape(migrated)
    assert fresh.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS)
    names = [r[0] for r in fresh.execute("SELECT name FROM _ab_migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]
    assert fresh.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert fresh.execute("PRAGMA page_size").fetchall()[0][0] == 512
    assert fresh.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not any("--" in sql for (sql,) in fresh.execute(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL"))
    assert len(_template()) <= 20 * 1024


def test_compact_sql_keeps_quoted_text():
    sql = "CREATE TABLE x(a TEXT DEFAULT 'a -- b  c', -- note\n   \"q  r\" INT)  "
    assert compact_sql(sql) == "CREATE TABLE x(a TEXT DEFAULT 'a -- b  c', \"q  r\" INT)"
