"""store/replica.py: a replica follows its primary from the shipped history rows (each
version's changeset, state and schema), and a whole store moves as a snapshot. No Ray."""

from __future__ import annotations

import apsw

import agentbook as ab
from agentbook.store import AgentStore, replica


class Ledger(ab.Agent):
    initial_state = {"n": 0}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, note TEXT)")

    @ab.callable
    async def add(self, note: str) -> int:
        self.sql("INSERT INTO rows(note) VALUES (?)", note)
        self.kv[note] = len(note)
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]

    @ab.callable
    async def reshape(self) -> None:
        self.sql("ALTER TABLE rows ADD COLUMN size INTEGER")
        self.sql("UPDATE rows SET size = length(note)")
        self.sql("CREATE TABLE tags(name TEXT PRIMARY KEY)")
        self.sql("INSERT INTO tags VALUES ('a'), ('b')")

    @ab.callable
    async def forget(self, note: str) -> None:
        self.sql("DELETE FROM rows WHERE note = ?", note)
        self.sql("DROP TABLE tags")


def _dump(path: str) -> dict:
    conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                           | apsw.SQLITE_OPEN_URI)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT IN ('_ab_events', '_ab_migrations') ORDER BY name")]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        conn.close()


async def test_a_replica_follows_its_primary_version_by_version(tmp_path):
    rt = ab.Runtime(tmp_path / "primary")
    ref = rt.get(Ledger, "l")
    copy = AgentStore(str(tmp_path / "copy.db"))
    shipped = 0

    def ship() -> None:
        nonlocal shipped
        inst = rt.instances[ref._ab_key]
        version, _state, state_json = inst.committed
        data = replica.encode([replica.versions_since(inst.store.conn, ref._ab_key, shipped,
                                                      version, state_json)])
        for shipment in replica.decode(data):  # (bytes in between, as between hosts)
            replica.apply(copy.conn, shipment)
            replica.apply(copy.conn, shipment)  # a retry changes nothing
        shipped = version

    for note in ("alpha", "beta"):
        await ref.add(note)
        ship()
    await ref.reshape()
    await ref.add("gamma")
    ship()
    await ref.forget("beta")
    ship()
    path = rt.path_of(ref._ab_key)
    rt.close()
    copy.close()
    primary, follower = _dump(path), _dump(str(tmp_path / "copy.db"))
    assert "tags" not in follower and follower["rows"] == ["(1, 'alpha', 5)", "(3, 'gamma', None)"]
    for table in ("rows", "_ab_kv", "_ab_history", "_ab_state", "_ab_meta"):
        assert follower[table] == primary[table], table


async def test_a_snapshot_restores_the_whole_store(tmp_path):
    rt = ab.Runtime(tmp_path / "a")
    ref = rt.get(Ledger, "s")
    await ref.add("one")
    await ref.add("two")
    path = rt.path_of(ref._ab_key)
    rt.close()
    blob = replica.pack([("Ledger", "s", replica.snapshot(path))])
    [(class_name, name, data)] = replica.unpack(blob)
    other = ab.Runtime(tmp_path / "b")
    target = other.path_of(("Ledger", "s"))
    replica.restore(target, data)
    other.catalog.add(class_name, name, target[len(other.root) + 1:], 0.0)
    moved = other.get(Ledger, "s")
    assert await moved.add("three") == 3
    assert list(moved.sql("SELECT note FROM rows ORDER BY id").note) == ["one", "two", "three"]
    other.close()
