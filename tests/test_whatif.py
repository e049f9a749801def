"""What-if tools (issue 22): bisect, diffs that read well, forks with a patched state,
portable agents (export / import) and sweeps of variants over a replay."""

from __future__ import annotations

import os

import pandas as pd
import pytest

import agentbook as ab
from agentbook.travel import versions


class Account(ab.Agent):
    initial_state = {"balance": 100, "log": []}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS moves(id INTEGER PRIMARY KEY, amount INT)")

    @ab.callable
    async def move(self, amount: int) -> int:
        self.sql("INSERT INTO moves(amount) VALUES (?)", amount)
        self.set_state({**self.state, "balance": self.state["balance"] + amount})
        self.kv["last"] = str(amount)
        return self.state["balance"]


def count_views(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every VersionView made from now on (one per materialized version)."""
    made: list[int] = []
    real = versions.VersionView.__init__

    def counting(self, ref, version, conn):
        real(self, ref, version, conn)
        made.append(self.version)

    monkeypatch.setattr(versions.VersionView, "__init__", counting)
    return made


# -- bisect --------------------------------------------------------------------------------
async def test_bisect_finds_the_first_bad_version_of_10_000_in_at_most_20_views(
        rt, monkeypatch):
    ref = rt.get(Account, "big")
    await ref.move(0)  # v2 (v1 is on_start)
    bad_step = 7_321
    for i in range(3, 10_001):
        await ref.call("move", -1 if i == bad_step else 0)
    assert ref.version == 10_000
    # balance 100 until bad_step, 99 from there: "below 100" first holds at bad_step
    made = count_views(monkeypatch)
    result = await ref.bisect(lambda v: v.state["balance"] < 100)
    assert result.version == bad_step
    assert len(made) <= 20 and len(result.checked) == len(made)
    assert result.row.method == "move" and result.row.args == "[-1]"
    assert result.diff.state == [{"op": "replace", "path": "/balance", "value": 99}]
    assert "first at version 7321" in repr(result)


async def test_bisect_takes_sql_predicates_async_predicates_and_bounds(rt):
    ref = rt.get(Account, "sql")
    for amount in (5, 5, 5, 5, 5, 5):
        await ref.move(amount)  # v2..v7: one more row each

    async def many_rows(v):
        return v.sql("SELECT count(*) AS n FROM moves").n[0] >= 4

    # (version 0 is before on_start made the table: start at 1)
    assert (await ref.bisect(lambda v: v.sql("SELECT count(*) AS n FROM moves").n[0] >= 4,
                             lo=1)).version == 5
    assert (await ref.bisect(many_rows, lo=1)).version == 5
    assert (await ref.bisect(many_rows, lo=6)).version == 6
    nothing = await ref.bisect(lambda v: v.state["balance"] < 0)
    assert not nothing.found and nothing.version is None and nothing.diff is None
    assert "holds at no version" in repr(nothing)
    with pytest.raises(ab.UsageError, match="swap"):
        await ref.bisect(many_rows, lo=6, hi=3)
    with pytest.raises(ab.VersionNotFoundError, match="covers 0..7"):
        await ref.bisect(many_rows, hi=99)
    with pytest.raises(ab.UsageError, match="neither true nor false"):
        await ref.bisect(lambda v: v.sql("SELECT * FROM moves"), lo=1)
    with pytest.raises(ab.UsageError, match="needs a predicate"):
        await ref.bisect("balance < 0")  # type: ignore[arg-type]


# -- diff ----------------------------------------------------------------------------------
async def test_a_diff_reads_as_state_changes_and_rows_per_table_hiding_internals(rt):
    ref = rt.get(Account, "d")
    await ref.move(5)
    await ref.move(-7)
    diff = ref.diff(1, 3)
    text = repr(diff)
    assert "state replace /balance = 98" in text
    assert "moves: 2 added, 0 removed, 0 changed" in text
    assert "(key-value): 1 added" in text
    assert "_ab_" not in text
    assert set(diff.rows.table) == {"moves", "_ab_kv"}  # .rows is unchanged for old callers
    assert list(diff.tables().table) == ["moves", "_ab_kv"] or \
        set(diff.tables().table) == {"moves", "_ab_kv"}
    html = diff._repr_html_()
    assert "moves" in html and "/balance" in html
    assert ref.diff(1, 3, internals=True).internals
    assert repr(ref.diff(3, 3)).startswith("<Diff d@3 -> d@3: 0 state changes, 0 row changes>")


# -- fork with a patched state ---------------------------------------------------------------
def test_merge_patch_follows_rfc_7386():
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": None}}
    assert versions.merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {}}
    assert versions.merge_patch({"a": 1}, [1]) == [1]
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # unchanged


async def test_a_fork_with_a_patch_starts_from_the_patched_state_and_goes_on_from_there(rt):
    ref = rt.get(Account, "p")
    await ref.move(10)   # v2: 110
    await ref.move(-50)  # v3: 60
    await ref.move(-70)  # v4: -10
    fork = await ref.fork("p-rich", at=2, patch={"balance": 1000, "log": None, "vip": True})
    assert fork.version == 2
    assert fork.state == {"balance": 1000, "vip": True}
    assert fork.at(2).state == fork.state
    assert fork.sql("SELECT amount FROM moves").amount.tolist() == [10]  # the tables at v2
    row = fork.history(limit=1).iloc[0]
    assert row.method == "fork" and row.kwargs == {"patch": {"balance": 1000, "log": None,
                                                             "vip": True}}
    assert ref.at(2).state == {"balance": 110, "log": []}  # the original is untouched
    assert await fork.move(-50) == 950
    assert fork.verify()["ok"]
    # replay from a patched state: the same inputs, another start
    result = await ref.replay(3, on="p-replayed", patch={"balance": 500})
    assert result.fork.state["balance"] == 500 - 50 - 70
    assert not result.identical


async def test_a_patch_that_is_not_json_is_refused_before_anything_is_written(rt):
    ref = rt.get(Account, "bad")
    await ref.move(1)
    with pytest.raises(ab.JSONValueError, match=r"patch\['when'\]"):
        await ref.fork("bad-fork", patch={"when": object()})
    assert not os.path.exists(rt.path_of(("Account", "bad-fork")))
    fork = await ref.fork("bad-fork", patch={"ok": 1})  # the name is still free
    assert fork.state["ok"] == 1


# -- portable agents -------------------------------------------------------------------------
SECRET = "sk-export-canary-" + os.urandom(6).hex()  # given as an ab.Secret
SECRET_RAW = "sk-export-raw-" + os.urandom(6).hex()  # a plain string put in self.secrets


class Keeper(Account):
    @ab.callable
    async def keep(self, key: ab.Secret) -> None:
        self.secrets["api"] = key
        self.secrets["raw"] = SECRET_RAW
        await self.schedule(3600, "later", {"why": "check"})

    async def later(self, payload) -> None:
        pass


def same_history(a: ab.AgentRef, b: ab.AgentRef) -> None:
    cols = ["version", "ts", "method", "args", "kwargs", "source", "outcome", "result", "state"]
    left, right = a.history(limit=1000), b.history(limit=1000)
    pd.testing.assert_frame_equal(left[cols], right[cols])


async def test_export_then_import_keeps_history_at_and_diff_and_never_a_secret(
        rt, tmp_path, clock):
    ref = rt.get(Keeper, "alice")
    await ref.move(5)
    await ref.keep(ab.Secret(SECRET, "api"))
    await ref.move(-7)
    rt.hibernate()  # (the store's pages on disk, WAL checkpointed)
    with open(rt.path_of(("Keeper", "alice")), "rb") as fh:
        original = fh.read()
    assert SECRET_RAW.encode() in original  # (where it is meant to live: _ab_secrets)
    info = ref.export(tmp_path / "alice.abagent")
    assert (info.class_name, info.name, info.head) == ("Keeper", "alice", 4)
    data = (tmp_path / "alice.abagent").read_bytes()
    assert data.startswith(b"SQLite format 3\x00")
    assert SECRET.encode() not in data and SECRET_RAW.encode() not in data

    other = ab.Runtime(tmp_path / "elsewhere", clock=clock)
    try:
        copy = await other.import_agent(tmp_path / "alice.abagent", name="alice-copy")
        assert copy.class_name == "Keeper" and copy.version == ref.version
        same_history(ref, copy)
        assert copy.at(0).state == ref.at(0).state
        for k in range(1, ref.version + 1):
            assert copy.at(k).state == ref.at(k).state
            assert copy.at(k).sql("SELECT * FROM moves").equals(ref.at(k).sql("SELECT * FROM moves"))
        for a, b in [(0, 4), (1, 3), (2, 4)]:
            assert repr(copy.diff(a, b)).replace("alice-copy", "alice") == repr(ref.diff(a, b))
            assert copy.diff(a, b).rows.equals(ref.diff(a, b).rows)
        assert copy.schedules().callback.tolist() == ["later"]
        assert copy.verify() == {"ok": True, "quick_check": "ok", "first_bad_version": None}
        assert await copy.move(1) == 99  # it runs there
        assert copy.verify()["ok"]
        for path in (tmp_path / "elsewhere").rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
                assert SECRET_RAW.encode() not in path.read_bytes(), path
        # a name clash is refused unless asked
        with pytest.raises(ab.UsageError, match="replace=True"):
            await other.import_agent(tmp_path / "alice.abagent", name="alice-copy")
        again = await other.import_agent(tmp_path / "alice.abagent", name="alice-copy",
                                         replace=True)
        assert again.version == 4
    finally:
        await other.aclose()
    # agentbook doctor --check-stores finds every store there sound, hash chains included
    from agentbook.cli.doctor import check_stores, exit_status

    report = check_stores(tmp_path / "elsewhere")
    assert exit_status(report) == 0, report
    assert {e["name"] for e in report if e["kind"] == "store"} == {"alice-copy"}
    with pytest.raises(ab.AgentFileError, match="overwrite=True"):
        ref.export(tmp_path / "alice.abagent")
    assert ref.export(tmp_path / "alice.abagent", overwrite=True).head == 4


async def test_importing_a_foreign_or_damaged_file_says_what_to_do_and_writes_nothing(
        rt, tmp_path):
    ref = rt.get(Account, "src")
    for amount in range(40):
        await ref.move(amount)
    good = tmp_path / "good.abagent"
    ref.export(good)
    (tmp_path / "text.abagent").write_text("hello")
    import apsw
    plain = apsw.Connection(str(tmp_path / "plain.db"))
    plain.execute("CREATE TABLE t(x)")
    plain.close()
    damaged = tmp_path / "damaged.abagent"
    data = bytearray(good.read_bytes())
    spots = [i for i in range(len(data)) if data.startswith(b'"balance":', i)]
    assert len(spots) > 30  # (one per history row, mostly)
    spot = spots[len(spots) // 2]
    data[spot + 10:spot + 11] = b"7" if data[spot + 10:spot + 11] != b"7" else b"8"
    damaged.write_bytes(bytes(data))
    cases = [(tmp_path / "missing.abagent", "not a file"),
             (tmp_path / "text.abagent", "not an agentbook export|can't be opened|damaged"),
             (tmp_path / "plain.db", "not an agentbook export"),
             (damaged, "hash chain|damaged")]
    before = sorted(p.name for p in (tmp_path / "store").rglob("*"))
    for path, message in cases:
        with pytest.raises(ab.AgentFileError, match=message):
            await rt.import_agent(path, name="imported")
    assert sorted(p.name for p in (tmp_path / "store").rglob("*")) == before
    assert rt.get(Account, "imported").history().empty
    assert "imported" not in set(rt.sql("SELECT name FROM agents").name)
    imported = await rt.import_agent(good, name="imported")  # the name is still free
    assert imported.state == ref.state


async def test_a_replacing_import_that_fails_keeps_the_agent_it_would_replace(
        rt, tmp_path, monkeypatch):
    ref = rt.get(Account, "kept")
    await ref.move(3)
    path = tmp_path / "kept.abagent"
    ref.export(path)
    exported = ref.version
    await ref.move(4)
    before = (ref.version, ref.state)
    from agentbook.travel import portable

    def full_disk(*_args, **_kwargs):
        raise ab.StoreFullError("the disk is full (a test)")

    monkeypatch.setattr(portable, "install_export", full_disk)
    with pytest.raises(ab.StoreFullError):
        await rt.import_agent(path, name="kept", replace=True)
    assert (ref.version, ref.state) == before, "the old agent is untouched"
    assert not [p for p in (tmp_path / "store").rglob("*.tmp")], "no temporary file left"
    monkeypatch.undo()
    assert (await rt.import_agent(path, name="kept", replace=True)).version == exported


# -- sweeps ----------------------------------------------------------------------------------
class Trader(ab.Agent):
    """Asks a model at every tick and acts on the answer."""

    initial_state = {"cash": 0, "said": ""}

    @ab.callable
    async def tick(self, price: int) -> str:
        answer = await self.effect("model", ab.models.builtin().complete,
                                   [{"role": "user", "content": f"buy or sell at {price}?"}])
        text = answer["content"]
        move = price if "buy" in text else -price if "sell" in text else 0
        self.set_state({"cash": self.state["cash"] + move, "said": text[:30]})
        return text


def variants(steps: int) -> dict:
    return {"buy": ab.models.scripted(["buy"] * steps),
            "sell": {"overrides": {"model": ab.models.scripted(["sell"] * steps)}},
            "hold": {"overrides": {"model": ab.models.scripted(["wait"] * steps)},
                     "patch": {"cash": 1000}},
            "recorded": None}


async def test_a_sweep_of_model_variants_over_200_steps_is_deterministic(rt):
    ref = rt.get(Trader, "t")
    for i in range(200):
        await ref.tick(i % 10)
    assert ref.version == 200
    runs = []
    for run in range(2):
        frame = await ab.sweep(ref, 1, variants(200), prefix=f"t-{run}",
                               metrics={"cash": lambda f: f.state["cash"],
                                        "rows": lambda f: len(f.history(limit=500))})
        runs.append(frame)
    cols = ["variant", "steps", "diverged", "first_diverged", "errors", "model_calls", "state",
            "cash", "rows"]
    pd.testing.assert_frame_equal(runs[0][cols], runs[1][cols])
    by = runs[0].set_index("variant")
    total = sum(i % 10 for i in range(200))
    assert by.loc["buy", "cash"] == total and by.loc["sell", "cash"] == -total
    assert by.loc["hold", "cash"] == 1000 and by.loc["hold", "state"]["said"] == "wait"
    assert list(by.steps) == [200] * 4 and list(by.model_calls) == [200] * 4
    assert by.loc["recorded", "diverged"] == 0 and by.loc["recorded", "state"] == ref.state
    assert by.loc["buy", "fork"] == "t-0-buy"
    assert rt.get(Trader, "t-0-hold").at(0).state == {"cash": 1000, "said": ""}
    seen = rt.sql("SELECT variant, count(*) AS n, min(steps) AS steps FROM sweeps"
                  " GROUP BY variant ORDER BY variant")
    assert seen.variant.tolist() == ["buy", "hold", "recorded", "sell"]
    assert seen.n.tolist() == [2] * 4
    assert rt.sql("SELECT metrics->>'cash' AS c FROM sweeps WHERE variant = 'buy'"
                  ).c.tolist() == [str(total)] * 2


async def test_a_sweep_refuses_bad_variants_before_forking_anything(rt):
    ref = rt.get(Trader, "bad")
    await ref.tick(1)
    with pytest.raises(ab.UsageError, match="needs variants"):
        await ab.sweep(ref, 1, {})
    with pytest.raises(ab.UsageError, match="overrides, patch and live"):
        await ab.sweep(ref, 1, {"x": {"model": ab.models.builtin()}})
    with pytest.raises(ab.UsageError, match="give a model"):
        await ab.sweep(ref, 1, {"x": "gpt-5"})
    with pytest.raises(ab.UsageError, match="not a function"):
        await ab.sweep(ref, 1, {"x": None}, metrics={"cash": "state.cash"})
    with pytest.raises(ab.VersionNotFoundError):
        await ab.sweep(ref, 9, {"x": None})
    assert set(rt.sql("SELECT name FROM agents").name) == {"bad"}
