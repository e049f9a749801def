"""Issue 20: a firing's schedule-row changeset written by hand (agentbook.store.rowchange)
is byte for byte what SQLite's session extension records for the same statement, so
rewind, fork and replicas read it as they read every other version's changes."""

from __future__ import annotations

import apsw
import pytest

import agentbook as ab
from agentbook.store import AgentStore, rowchange
from agentbook.store import schedules as rows

#: Rows as a schedule may hold them: a one-shot, a cron job, an interval with a retry in
#: flight, a whole-number due time, a long unicode payload (a two-byte length), NULLs.
_ROWS = [
    dict(id="one", callback="ring", payload="null", type="delayed", due=1.5),
    dict(id="cron", callback="tick", payload='{"a": 1}', type="cron", due=600.0,
         cron="*/5 * * * *", tz="Europe/Paris", missed="skip"),
    dict(id="retrying", callback="go", payload="[1, 2]", type="interval", due=70.0,
         interval=60.0, attempt=2, last_error="ValueError: no", occurrence_due=60.0,
         retry="[3, 1.0, 60.0, 0.1]", ident="abc", key="k"),
    dict(id="long", callback="ring", payload='"' + "é" * 300 + '"', type="scheduled",
         due=3.0, occurrence=41),
]


def _store(tmp_path, name: str) -> AgentStore:
    store = AgentStore(str(tmp_path / f"{name}.db"))
    for i, row in enumerate(_ROWS):
        values = {"created": 0.0, **row}
        cols = ", ".join(values)
        store.conn.execute(f"INSERT INTO _ab_schedules({cols}) VALUES "
                           f"({', '.join('?' * len(values))})", tuple(values.values()))
        assert i >= 0
    return store


def _row(store: AgentStore, id: str) -> rows.ScheduleRow:
    (found,) = rows.select(store.conn, id=id)
    return found


def _by_session(store: AgentStore, write) -> bytes | None:
    store.begin()
    session = store.start_capture()
    write()
    changes = AgentStore.finish_capture(session)
    store.rollback()
    return changes


@pytest.mark.parametrize("id", [r["id"] for r in _ROWS])
def test_a_deleted_schedule_row_has_the_session_s_changeset(tmp_path, id):
    store = _store(tmp_path, "s")
    try:
        expected = _by_session(store, lambda: rows.delete(store, id))
        store.begin()
        made = rows.delete_recorded(store, id)
        assert rows.exists(store, id) is False
        left = rows.next_due(store)
        store.rollback()
        assert made is not None and expected is not None and made.changes == expected
        # the same statement read the next due time (the firing's look-up saved, issue 20)
        assert made.next_due == left == min(r["due"] for r in _ROWS if r["id"] != id)
        assert rows.delete_recorded(store, "nothing") is None  # (no row, no change)
    finally:
        store.close()


@pytest.mark.parametrize("id", [r["id"] for r in _ROWS])
@pytest.mark.parametrize("due", [1e9 + 0.25, 7200.0])
def test_an_advanced_schedule_row_has_the_session_s_changeset(tmp_path, id, due):
    store = _store(tmp_path, "s")
    try:
        row = _row(store, id)
        expected = _by_session(store, lambda: rows.advance(store, id, due, row.occurrence + 1))
        store.begin()
        made = rows.advance_recorded(store, row, due, row.occurrence + 1)
        after = _row(store, id)
        left = rows.next_due(store)
        store.rollback()
        assert made is not None and expected is not None and made.changes == expected
        assert made.next_due == left == min([due] + [r["due"] for r in _ROWS if r["id"] != id])
        assert (after.due, after.attempt, after.occurrence) == (due, 0, row.occurrence + 1)
    finally:
        store.close()


def test_a_row_changed_since_it_was_read_is_left_to_the_session(tmp_path):
    """The hand-written UPDATE's old values are the row as read: if the row changed since
    (or is gone), nothing is written and the caller records with a session instead."""
    store = _store(tmp_path, "s")
    try:
        row = _row(store, "cron")
        store.conn.execute("UPDATE _ab_schedules SET attempt = 1 WHERE id = 'cron'")
        store.begin()
        assert rows.advance_recorded(store, row, 900.0, row.occurrence + 1) is None
        assert _row(store, "cron").due == row.due
        store.rollback()
    finally:
        store.close()


def test_an_update_that_changes_nothing_has_no_changeset():
    tab = rowchange.table("_ab_schedules")
    old = tuple(range(len(tab.columns)))
    assert rowchange.update(tab, old, old) is None


@pytest.mark.parametrize("n", [0, 127, 128, 16383, 16384, 2**21, 2**56 - 1, 2**56, 2**63 - 1])
def test_varints_are_sqlite_s(n):
    """The varint is SQLite's (the length of a blob, checked by SQLite reading it back)."""
    if n > 2**21:
        data = rowchange.varint(n)
        assert len(data) == (9 if n >> 56 else (n.bit_length() + 6) // 7)
        return
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("INSERT INTO t VALUES (1, ?)", (b"x" * n,))
    session = apsw.Session(conn, "main")
    session.attach(None)
    conn.execute("DELETE FROM t")
    made = session.changeset()
    tab = rowchange.Table("t", ["id", "b"], [1, 0])
    assert rowchange.delete(tab, (1, b"x" * n)) == made


class Bell(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def arm(self) -> None:
        await self.schedule(10, "ring")
        await self.schedule_every(60, "chime")  # (its row is advanced, not deleted)

    async def ring(self) -> None:
        self.set_state({"n": self.state["n"] + 1})

    async def chime(self) -> None:
        self.set_state({"n": self.state["n"] + 10})


async def _fire(tmp_path, clock, sessions: list[int]) -> list[tuple[str, bytes | None]]:
    """Arm the bell, let both schedules fire; the firings' (method, changes) with the
    schedule ids blanked (they are random; both are 12 characters)."""
    async with ab.Runtime(tmp_path, clock=clock) as rt:
        bell = rt.get(Bell, "b")
        await bell.arm()
        ids = bell.schedules().id.tolist()
        sessions.clear()  # (arming writes the rows with a session, as every handler does)
        await clock.advance(60)
        await rt.settle()
        assert bell.state["n"] == 11
        assert len(bell.schedules()) == 1  # (the one-shot is gone, the interval moved on)
        assert bell.verify()["ok"]
        fired = len(sessions)
        path = rt.path_of(bell._ab_key)
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    found = conn.execute("SELECT method, changes FROM _ab_history WHERE version > 1"
                         " ORDER BY version").fetchall()
    conn.close()
    sessions[:] = [fired]
    out = []
    for method, changes in found:
        for id in ids:
            changes = changes.replace(id.encode(), b"x" * len(id))
        out.append((method, changes))
    return out


async def test_firings_open_no_session_and_record_what_a_session_records(tmp_path, monkeypatch):
    """A firing whose callback writes no SQL records its row change without a session; the
    version's changes are what the session records (the same firings with the session)."""
    from agentbook.schedule import firing

    sessions: list[int] = []
    start = AgentStore.start_capture

    def counted(self: AgentStore) -> apsw.Session:
        sessions.append(1)
        return start(self)

    monkeypatch.setattr(AgentStore, "start_capture", counted)
    mine = await _fire(tmp_path / "hand", ab.VirtualClock(), sessions)
    assert sessions == [0]

    def with_session(inst, ctx, row, now) -> None:
        ctx.capture(inst.store, schema=False)
        firing.advance(inst, row, now)

    monkeypatch.setattr(firing, "_advance_captured", with_session)
    theirs = await _fire(tmp_path / "session", ab.VirtualClock(), sessions)
    assert sessions == [2]
    assert [m for m, _ in mine] == ["ring", "chime"]
    assert all(c for _, c in mine)
    assert mine == theirs
