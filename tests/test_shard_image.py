"""store/shard_image.py: a shard's agents move as their store files and catalog rows (the
Ray backend's shard moves), and arrive whole - state, tables, a pending schedule, a pending
approval in the inbox, recorded failures - without a store being opened to pack them. No Ray."""

from __future__ import annotations

import subprocess
import sys

import apsw
import pytest

import agentbook as ab
from agentbook.store import shard_image

from .opened_files import sqlite_opens


class Till(ab.Agent):
    initial_state = {"n": 0}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS sales(id INTEGER PRIMARY KEY, amount INTEGER)")

    @ab.callable
    async def sell(self, amount: int) -> int:
        self.sql("INSERT INTO sales(amount) VALUES (?)", amount)
        self.set_state({"n": self.state["n"] + amount})
        return self.state["n"]

    @ab.callable
    async def later(self, seconds: float) -> None:
        await self.schedule(seconds, "sell", 100)

    @ab.callable
    async def propose(self, amount: int) -> str:
        return (await self.request_approval("refund", {"amount": amount},
                                            summary=f"refund {amount}")).id

    async def refund(self, amount: int) -> int:
        self.set_state({"n": self.state["n"] - amount})
        return self.state["n"]

    @ab.callable
    async def fail(self) -> None:
        raise ValueError("no")


async def test_a_shard_moves_as_files_and_catalog_rows(tmp_path, clock):
    old = ab.Runtime(tmp_path / "old", clock=clock)
    ref = old.get(Till, "t")
    await ref.sell(5)
    await ref.later(60)
    asked = await ref.propose(2)
    with pytest.raises(ValueError):
        await ref.fail()
    key = ("Till", "t")
    old.hibernate()
    old.closer.wait()
    with sqlite_opens() as opened:
        data = shard_image.image(old.path_of(key))
        blob = shard_image.pack(shard_image.ShardImage(
            [shard_image.AgentImage("Till", "t", data)], old.catalog.entries_of([key])))
    assert opened == [], "a closed store is read as a file, not opened"
    old.catalog.forget_entries([key])
    assert old.catalog.rows() == [] and old.catalog.timers() == []
    assert old.approvals.pending().empty, "the old runtime's inbox lets the approval go"
    old.close()

    moved = shard_image.unpack(blob)
    assert [(s.class_name, s.name) for s in moved.stores] == [("Till", "t")]
    assert shard_image.head_version(moved.stores[0].data) == 4  # (on_start, sell, later, propose)
    new = ab.Runtime(tmp_path / "new", clock=clock)
    shard_image.install(new.path_of(key), moved.stores[0].data)
    new.catalog.take_entries(moved.entries)
    new.close()  # (a runtime that starts over the moved files and rows)
    new = ab.Runtime(tmp_path / "new", clock=clock)
    try:
        ref = new.get(Till, "t")
        assert ref.state == {"n": 5}
        assert list(new.approvals.pending()["id"]) == [asked]
        assert len(ref.failures()) == 1
        await clock.advance(61)
        await new.settle()
        assert ref.state == {"n": 105}, "the schedule fired, once, where the agent is now"
        assert await new.approvals.approve(asked) == 103
        assert list(ref.sql("SELECT amount FROM sales ORDER BY id").amount) == [5, 100]
    finally:
        new.close()


def test_a_store_with_a_wal_is_copied_consistently(tmp_path):
    path = str(tmp_path / "s.db")
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)")
    try:  # (still open: the rows are in the WAL only)
        data = shard_image.image(path)
    finally:
        conn.close()
    target = str(tmp_path / "moved" / "s.db")
    shard_image.install(target, data)
    copy = apsw.Connection(target)
    try:
        assert copy.execute("SELECT sum(x) FROM t").fetchall() == [(3,)]
        assert copy.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    finally:
        copy.close()


async def test_a_shards_catalog_rows_are_only_its_agents_rows(tmp_path):
    """entries_of reads the moving agents' rows (by class and name), in each table, and
    leaves the other agents' rows - of the same class too - where they are."""
    rt = ab.Runtime(tmp_path / "s")
    try:
        moving, staying = rt.get(Till, "m"), rt.get(Till, "s")
        for ref in (moving, staying, moving):
            with pytest.raises(ValueError):
                await ref.fail()
        await moving.propose(1)
        await staying.propose(2)
        entries = rt.catalog.entries_of([("Till", "m"), ("Till", "m")])
        names = {table: part.column("name") for table, part in zip(entries._fields, entries, strict=True)}
        assert names == {"agents": ["m"], "timers": [], "approvals": ["m"],
                         "failures": ["m", "m"], "dead_letters": []}
        ids = entries.failures.column("id")
        assert ids == sorted(ids), "failures keep the order they were recorded in"
        rt.catalog.forget_entries([("Till", "m")])
        assert [r[1] for r in rt.catalog.rows()] == ["s"]
        assert len(staying.failures()) == 1
    finally:
        rt.close()


def test_importing_agentbook_does_not_import_the_shard_move_code():
    """Shard images and replica shipments are for the Ray backend's moves: a plain
    ``import agentbook`` (a notebook's first cell) does not pay for them."""
    code = ("import sys, agentbook; print(sorted(m for m in sys.modules if m in "
            "('agentbook.store.shard_image', 'agentbook.store.replica', "
            "'agentbook.store.changesets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("sync", [True, False])
def test_a_store_installed_with_durability_full_is_synced_and_so_is_its_rename(
        tmp_path, monkeypatch, sync):
    """durability='full': the file's bytes, then its folder (the rename into place) reach
    the disk; otherwise neither is synced."""
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    shard_image.install(str(tmp_path / "agents" / "a.db"), b"bytes", sync)
    assert (tmp_path / "agents" / "a.db").read_bytes() == b"bytes"
    assert synced == (["file", "folder"] if sync else [])


async def test_a_moving_agents_timer_held_in_memory_travels_with_it(tmp_path, clock):
    """add_timers puts the due time the runtime holds into the moving rows when the
    catalog's timer index has none for the agent yet, and keeps a row that is there."""
    from agentbook.store.catalog_entries import add_timers

    rt = ab.Runtime(tmp_path / "s", clock=clock)
    try:
        await rt.get(Till, "t").later(60)
        await rt.get(Till, "u").sell(1)
        entries = rt.catalog.entries_of([("Till", "t"), ("Till", "u")])
        [indexed] = entries.timers.rows
        add_timers(entries, {("Till", "t"): 1.0, ("Till", "u"): 5.0, ("Till", "v"): None})
        columns = entries.timers.columns
        rows = [dict(zip(columns, row, strict=True)) for row in entries.timers.rows]
        assert rows[0] == dict(zip(columns, indexed, strict=True)), "the index's row is kept"
        assert rows[1:] == [{"class": "Till", "name": "u", "due": 5.0}]
    finally:
        rt.close()


#: A shard image as the code before CatalogEntries packed it (a dict of tables written
#: as JSON by hand): one agent's row and an approval, no store files.
_OLD_IMAGE_HEAD = (
    b'{"stores":[],"entries":{"agents":{"columns":["class","name","file","created","parent"],'
    b'"rows":[["Till","o","Till/o.db",1.5,null]]},"timers":{"columns":["class","name","due"],'
    b'"rows":[["Till","o",9.0]]},"approvals":{"columns":["id","class","name","method"],'
    b'"rows":[["ap-1","Till","o","refund"]]},"failures":{"columns":[],"rows":[]},'
    b'"dead_letters":{"columns":[],"rows":[]}}}')


def test_a_shard_image_packed_before_catalog_entries_were_typed_still_loads():
    """The typed entries pack to the very JSON the untyped dict did: an image made by a
    host of the older code unpacks (its rows read by column name) and packs back to the
    same bytes."""
    blob = len(_OLD_IMAGE_HEAD).to_bytes(8, "big") + _OLD_IMAGE_HEAD
    shard = shard_image.unpack(blob)
    assert shard.entries.agents.column("name") == ["o"]
    assert shard.entries.timers.column("due") == [9.0]
    assert shard.entries.approvals.column("method") == ["refund"]
    assert shard.entries.failures.rows == [] and shard.entries.dead_letters.rows == []
    assert shard_image.pack(shard) == blob
    only = shard.entries.agents_only()
    assert only.agents == shard.entries.agents and only.approvals.rows == []


async def test_moved_catalog_rows_are_taken_up_by_column_name(tmp_path):
    """take_entries writes the columns this catalog knows, by name, whatever their order
    in the image, and guards the approvals' methods."""
    from agentbook.store.catalog_entries import CatalogEntries

    rt = ab.Runtime(tmp_path / "s")
    try:
        ref = rt.get(Till, "m")
        asked = await ref.propose(3)
        entries = rt.catalog.entries_of([("Till", "m")]).to_json()
        rt.catalog.forget_entries([("Till", "m")])
        for part in entries.values():  # (the columns in another order, and one unknown)
            part["columns"] = [*reversed(part["columns"]), "added_later"]
            part["rows"] = [[*reversed(row), "x"] for row in part["rows"]]
        rt.catalog.take_entries(CatalogEntries.from_json(entries))
        assert [r[1] for r in rt.catalog.rows()] == ["m"]
        assert list(rt.approvals.pending()["id"]) == [asked]
    finally:
        rt.close()
