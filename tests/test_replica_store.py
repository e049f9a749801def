"""store/replica.py: a replica follows its primary from the shipped history rows (each
version's changeset, state and schema), and a whole store moves as a snapshot. No Ray."""

from __future__ import annotations

import asyncio

import apsw
import pytest

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


# -- what a changeset leaves out: approvals, the outbox, the inbox's memory, events ------
_HOLD: dict[str, asyncio.Event] = {}


class Payer(ab.Agent):
    initial_state = {"paid": 0}

    @ab.callable
    async def ping(self) -> None:
        """(Wakes the agent: its store is open.)"""

    @ab.callable
    async def propose(self, amount: int) -> str:
        self.emit("proposed", amount=amount)
        self.ref(Payee, "p").send("hold", amount)
        approval = await self.request_approval("payout", {"amount": amount},
                                               summary=f"pay out {amount}")
        return approval.id

    async def payout(self, amount: int) -> int:
        self.set_state({"paid": self.state["paid"] + amount})
        return self.state["paid"]


class Payee(ab.Agent):
    initial_state = {"got": []}

    @ab.callable
    async def ping(self) -> None:
        """(Wakes the agent: its store is open.)"""

    @ab.callable
    async def hold(self, amount: int) -> None:
        await _HOLD["gate"].wait()  # (the sender's outbox row stays until this commits)
        self.set_state({"got": [*self.state["got"], amount]})


_SIDE = ("_ab_approvals", "_ab_outbox", "_ab_inbox_seen", "_ab_events", "_ab_state")


class _Follower:
    """A replica's copy of one agent, fed the way a Ray host feeds it (without Ray)."""

    def __init__(self, rt, key, path) -> None:
        self.rt, self.key = rt, key
        self.copy = AgentStore(str(path))
        self.version = self.events = 0
        self.stamp = self.applied = 0
        self.store = rt.instances[key].store
        replica.track_side(self.store.conn)

    def read(self) -> bytes:
        """The next shipment, as bytes (what changed since the last)."""
        conn = self.store.conn
        keys = replica.take_side_keys(conn)
        keys = None if self.version == 0 else keys  # (the first shipment: every row)
        self.stamp += 1
        side = replica.side_rows(conn, keys, self.events, self.stamp)
        version, _state, state_json = self.rt.instances[self.key].committed
        shipment = replica.versions_since(conn, self.key, self.version, version, state_json)
        self.version, self.events = version, side.events_upto
        return replica.encode([shipment._replace(side=side)])

    def apply(self, data: bytes) -> None:
        for shipment in replica.decode(data):
            replica.apply(self.copy.conn, shipment, self.applied)
            self.applied = max(self.applied, shipment.side.stamp)

    def tables(self, conn=None) -> dict:
        conn = conn or self.copy.conn
        return {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}"))) for t in _SIDE}


async def test_a_replica_carries_approvals_outbox_inbox_and_events(tmp_path):
    _HOLD["gate"] = asyncio.Event()
    rt = ab.Runtime(tmp_path / "primary")
    payer, payee = rt.get(Payer, "a"), rt.get(Payee, "p")
    await payer.ping()  # (opened: its untracked rows are followed from here)
    await payee.ping()
    a = _Follower(rt, payer._ab_key, tmp_path / "a.db")
    p = _Follower(rt, payee._ab_key, tmp_path / "p.db")
    a.apply(a.read())
    approval_id = await payer.propose(5)
    first = a.read()
    a.apply(first)
    a.apply(first)  # a retry changes nothing
    copy = a.tables()
    assert copy == a.tables(a.store.conn), "the copy has what the primary has"
    assert len(copy["_ab_outbox"]) == 1, "the send waits in the outbox (not delivered yet)"
    assert "'pending'" in copy["_ab_approvals"][0]
    assert any("'proposed'" in e for e in copy["_ab_events"])
    assert any("'approval:request" in e for e in copy["_ab_events"]), copy["_ab_events"]

    _HOLD["gate"].set()  # the receiver commits; its acknowledgement deletes the row
    await rt.settle()
    assert payee.state == {"got": [5]}
    p.apply(p.read())
    assert len(p.tables()["_ab_inbox_seen"]) == 1, "the receiver's copy remembers it ran it"
    assert await rt.approvals.approve(approval_id) == 5
    second = a.read()
    a.apply(second)
    copy = a.tables()
    assert copy == a.tables(a.store.conn)
    assert copy["_ab_outbox"] == [], "the delivered row's removal reached the copy"
    assert "'approved'" in copy["_ab_approvals"][0]

    a.apply(first)  # the first shipment again, late (after the decision): nothing goes back
    assert a.tables() == copy
    assert not replica.take_side_keys(a.store.conn), "every change was shipped"
    a.copy.close()
    p.copy.close()
    rt.close()


async def test_untracked_rows_ship_only_what_changed(tmp_path):
    """Shipments carry the rows that changed, not the tables: after 30 approvals, one
    more request ships one approval row (and its events)."""
    _HOLD["gate"] = asyncio.Event()
    _HOLD["gate"].set()
    rt = ab.Runtime(tmp_path / "primary")
    payer = rt.get(Payer, "a")
    await payer.ping()
    a = _Follower(rt, payer._ab_key, tmp_path / "a.db")
    for n in range(30):
        await payer.propose(n)
    await rt.settle()
    a.apply(a.read())
    assert len(a.tables()["_ab_approvals"]) == 30
    await payer.propose(99)
    await rt.settle()
    [shipment] = replica.decode(a.read())
    tables = {table: len(rows) for table, _columns, rows in shipment.side.upserts}
    assert tables["_ab_approvals"] == 1
    assert tables["_ab_events"] <= 3
    a.copy.close()
    rt.close()


def test_a_shipment_naming_another_table_is_refused(tmp_path):
    copy = AgentStore(str(tmp_path / "c.db"))
    side = replica.Side(1, [["_ab_history", ["version"], [[1]]]], [], None, 0)
    bad = replica.Shipment("C", "c", None, [], 0, "{}", side)
    with pytest.raises(ab.StoreError, match="untracked tables"):
        replica.apply(copy.conn, bad)
    assert copy.conn.execute("SELECT count(*) FROM _ab_history").fetchall() == [(0,)]
    copy.close()


def test_a_store_of_an_older_schema_is_read_and_checked_by_its_own_columns(tmp_path):
    """The untracked tables' columns are each open store's own: a store of an older
    schema (a column its migrations add later is missing) ships the columns it has, and a
    shipment naming a column it lacks is refused with the typed error, even after an
    up-to-date store of the same process was read."""
    new = AgentStore(str(tmp_path / "new.db"))
    replica.side_rows(new.conn, None, 0, 1)  # (an up-to-date store's columns read first)
    old = AgentStore(str(tmp_path / "old.db"))
    old.conn.execute("ALTER TABLE _ab_approvals DROP COLUMN requested_at_version")
    approval = ("INSERT INTO _ab_approvals(id, method, args, kwargs, nonce, digest, summary,"
                " side_effects, created, status{}) VALUES (?, 'm', '[]', '{{}}', 'n', 'd', 's',"
                " '[]', 0, 'pending'{})")
    old.conn.execute(approval.format("", ""), ("ap",))
    [(table, columns, rows)] = replica.side_rows(old.conn, None, 0, 1).upserts
    assert table == "_ab_approvals" and "requested_at_version" not in columns
    assert rows[0][columns.index("id")] == "ap"

    new.conn.execute(approval.format(", requested_at_version", ", 1"), ("n",))
    full = replica.side_rows(new.conn, None, 0, 2)
    shipment = replica.Shipment("C", "c", None, [], 0, "{}", full)
    with pytest.raises(ab.StoreError, match="names columns this store does not have"):
        replica.apply(old.conn, shipment)
    assert old.conn.execute("SELECT id FROM _ab_approvals").fetchall() == [("ap",)]
    replica.apply(new.conn, shipment)  # (the up-to-date store takes it)
    old.close()
    new.close()


def _approvals(path) -> list[str]:
    conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY
                           | apsw.SQLITE_OPEN_URI)
    try:
        return [r[0] for r in conn.execute("SELECT status FROM _ab_approvals")]
    finally:
        conn.close()


async def test_a_moved_shards_replica_follows_the_new_owner_whenever_its_process_started(
        tmp_path):
    """A shard moves (epoch 1 -> 2) and its replica stays: the copy takes the moved file,
    then the new owner's untracked rows - even though the new owner's process started
    before the old one's, so its own count of shipments is lower - and refuses a late
    retry of the old owner's (which, a seeding, would start the copy over)."""
    from agentbook.backends.replication import Replicator
    from agentbook.backends.shard_leases import ShardLeases
    from agentbook.backends.shards import shard_of
    from agentbook.store import shard_image

    _HOLD["gate"] = asyncio.Event()
    _HOLD["gate"].set()
    rt = ab.Runtime(tmp_path / "primary")
    payer = rt.get(Payer, "a")
    await payer.ping()
    key = payer._ab_key
    shard = shard_of(key, 8)

    def primary(index: int, epoch: int) -> Replicator:  # (its stamps; it ships nothing)
        leases = ShardLeases(index, 8)
        leases.grant(shard, epoch)
        return Replicator(rt, leases, lambda _i: None, wait=False)

    new_owner = primary(2, epoch=2)  # (started first: its count is the lower one)
    old_owner = primary(0, epoch=1)
    assert new_owner.stamp < old_owner.stamp
    kept = ab.Runtime(tmp_path / "replica")
    copy = Replicator(kept, ShardLeases(1, 8), lambda _i: None, wait=False)
    feed = _Follower(rt, key, tmp_path / "unused.db")
    feed.copy.close()

    def shipment(owner: Replicator) -> bytes:
        feed.stamp = owner.next_stamp(key) - 1  # (_Follower.read counts one up)
        return feed.read()

    seed = shipment(old_owner)  # every row, from the start
    assert await copy.apply(0, {}, seed) == []
    asked = await payer.propose(5)
    await rt.settle()
    late = shipment(old_owner)  # the pending approval
    assert await copy.apply(0, {}, late) == []
    assert _approvals(kept.path_of(key)) == ["pending"]

    copy.install_copy(key, shard_image.image(rt.path_of(key)), epoch=2)  # the move
    assert await rt.approvals.approve(asked) == 5
    assert await copy.apply(2, {}, shipment(new_owner)) == []
    assert _approvals(kept.path_of(key)) == ["approved"], "the new owner's decision is kept"
    assert await copy.apply(0, {}, late) == []  # the old owner's retry, arriving late
    assert _approvals(kept.path_of(key)) == ["approved"], "nothing of it went back"
    for again in (late, seed):  # under the old epoch, as hosts send them: refused
        with pytest.raises(ab.LeaseLostError, match="newer owner"):
            await copy.apply(0, {shard: 1}, again)
    assert _approvals(kept.path_of(key)) == ["approved"], "the moved copy was kept"
    copy.close_copy(key)
    kept.close()
    rt.close()


class _HeldReplica:
    """A replica host's handle (without Ray) whose replicate calls wait for *gate*."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate, self.calls = gate, 0
        self.replicate = self

    async def remote(self, _sender, _epochs, _data) -> list:
        self.calls += 1
        await self.gate.wait()
        return []


async def test_caught_up_waits_for_the_shipping_rounds_and_gives_up_at_its_deadline(tmp_path):
    """A drain waits (Replicator.caught_up) until what was to ship has reached the
    replica: it returns when the round's shipment is answered, and False at once when
    its deadline has passed with the shipment still on its way."""
    from agentbook.backends.replication import Replicator
    from agentbook.backends.shard_leases import ShardLeases
    from agentbook.backends.shards import shard_of

    rt = ab.Runtime(tmp_path / "primary")
    payer = rt.get(Payer, "a")
    await payer.ping()
    key = payer._ab_key
    leases = ShardLeases(0, 8)
    leases.grant(shard_of(key, 8), 1)
    leases.view = {"owners": [0] * 8, "epochs": [1] * 8, "replicas": [1] * 8, "lease": 30.0}
    gate = asyncio.Event()
    replica = _HeldReplica(gate)
    shipper = Replicator(rt, leases, lambda _i: replica, wait=False)
    shipper.seed({shard_of(key, 8)})
    for _ in range(1_000):  # (turns of the event loop until the first shipment is sent)
        if replica.calls:
            break
        await asyncio.sleep(0)
    assert replica.calls == 1, "seeding the replica sent the agent's shipment"
    assert await shipper.caught_up(0) is False, "past its deadline: it says so at once"
    waiting = asyncio.ensure_future(shipper.caught_up(60))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not waiting.done(), "the shipment is still on its way"
    gate.set()
    assert await asyncio.wait_for(waiting, 30) is True
    assert shipper.shipped[(1, key)] == payer.version
    rt.close()
