"""A rotated or deleted secret leaves no copy in the store's free space (issue 18): the
secrets table is written with SQLite's ``secure_delete``, so the bytes of an old value are
overwritten, not just unlinked, and a checkpointed store file no longer holds them."""

from __future__ import annotations

import apsw

import agentbook as ab

OLD = "sk-OLD-canary-7f3a9c1e5b2d4a60"
GONE = "sk-GONE-canary-1d2e3f4a5b6c7d8e"
NEW = "sk-NEW-value-0000000000000000"
#: The handler takes a value's index, not the value (call arguments are on record).
VALUES = [OLD, GONE, NEW]


class SecretKeeper(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def put(self, key: str, which: int) -> None:
        self.secrets[key] = VALUES[which]
        self.set_state({"n": self.state["n"] + 1})

    @ab.callable
    async def drop(self, key: str) -> None:
        del self.secrets[key]
        self.set_state({"n": self.state["n"] + 1})

    @ab.callable
    async def has(self, key: str) -> int | None:
        return VALUES.index(self.secrets[key].reveal()) if key in self.secrets else None


def _file_bytes(path: str) -> bytes:
    conn = apsw.Connection(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with open(path + "-wal", "rb") as fh:
            data += fh.read()
    except FileNotFoundError:
        pass
    return data


async def test_rotated_and_deleted_secrets_leave_no_bytes_in_the_file(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "s", clock=clock)
    keeper = rt.get(SecretKeeper, "k")
    await keeper.put("api", 0)
    await keeper.put("other", 1)
    await keeper.put("api", 2)        # rotated
    await keeper.drop("other")        # deleted
    assert await keeper.has("api") == 2 and await keeper.has("other") is None
    path = rt.path_of(keeper._ab_key)
    await rt.aclose()
    data = _file_bytes(path)
    assert NEW.encode() in data       # (the check can see a live secret)
    assert OLD.encode() not in data
    assert GONE.encode() not in data
