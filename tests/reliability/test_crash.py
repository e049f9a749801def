"""SIGKILL a process running agents at random points; what it acknowledged must survive.

A child process (``tests/reliability/crash_child.py``) opens ``ab.Runtime(folder)`` on real files
(durability ``"normal"``) and sends ``Ledger`` agents an endless mix of single calls,
bursts that share one commit, handlers that suspend half-way and handlers that write
everything and then fail. It prints ``ack <agent> <id> <n>`` only after the awaited call
returned, i.e. after the commit. The parent kills it with SIGKILL at a random moment -
during interpreter start, during store creation and ``on_start``, or in the thick of the
messages - and then reads every store file itself (read-only ``apsw``), before the next
child reopens the same folder:

* every acknowledged message is applied exactly once, in the agent it was sent to, as
  the n-th message the ack reported;
* each message's effects are all there or none of them: its ``applied`` row, its
  ``parts`` rows, its history version and the state after it (a count, the last id and
  a running digest of every id so far) agree; versions are contiguous ``1..N`` and the
  stored state is the state of version N;
* no message appears twice (the tables have no unique key on the id, so a second
  application would show), none appears that was never sent, and no message whose
  handler failed left anything behind;
* ``PRAGMA quick_check`` is ``ok`` on every store file and on the catalog.

After each kill the versions committed since the last check are verified row by row
(and the last verified row must still be there); at the end every store is verified
again from version 1, every acknowledgement again, and a fresh ``ab.Runtime`` must read
the same state, version, rows and history through ``ref.state``, ``ref.sql`` and
``ref.history``. Un-acknowledged messages may or may not be applied (at most once).

Also printed, not asserted, because they lose or double no message: stray files left
by a store creation that was killed, and agents with committed versions that the
catalog does not list (``rt.agents()`` misses them).

Set ``AGENTBOOK_CRASH_SEED`` to replay a run with the same random choices.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest

import agentbook as ab

CHILD = Path(__file__).with_name("crash_child.py")
FIXED = ("a", "b", "c", "d")  # the agents crash_child.py uses in every cycle
APPLY_METHODS = frozenset({"apply", "apply_sync", "apply_slow"})
INITIAL_STATE = {"count": 0, "last": None, "digest": ""}

#: Where the kill lands: (phase, share of cycles). "early" counts from the spawn and
#: covers interpreter start and imports; the others count from the child's signal after
#: ``import agentbook``: "start" covers opening the runtime and the stores, creating new
#: stores and on_start (a few ms); "steady" lands among the messages.
PHASES = (("early", 0.2), ("start", 0.3), ("steady", 0.5))
START_WINDOW = 0.008
STEADY_WINDOW = 0.035

#: What must never happen; each is counted, printed and asserted to be zero.
PROBLEMS = ("lost", "duplicated", "half_written", "phantom", "failed_applied", "quick_check",
            "unreadable", "wrong")


def chain(digest: str, msg_id: str) -> str:
    """The running digest of the Ledger state (as in crash_child.py, computed here again)."""
    return hashlib.sha256(f"{digest}:{msg_id}".encode()).hexdigest()[:16]


# -- what the parent knows ------------------------------------------------------------------
@dataclass
class StoreSeen:
    """What was verified in one agent's store so far (its history is checked once per row)."""

    version: int = 0
    count: int = 0
    digest: str = ""
    last: str | None = None
    parts_rowid: int = 0
    parts_total: int = 0


@dataclass
class Tally:
    """Everything the children said and everything found in the stores."""

    sent: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (agent, parts)
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (agent, n)
    failed: set[str] = field(default_factory=set)  # failing calls that raised as expected
    applied: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (agent, n)
    stores: dict[str, StoreSeen] = field(default_factory=dict)
    problems: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    uncreated: int = 0  # times a store was found created but never committed (killed then)
    checked_on_a_copy: int = 0  # files that needed a rollback or WAL recovery first
    leftovers: list[str] = field(default_factory=list)  # stray files in the store folder
    uncatalogued: list[str] = field(default_factory=list)  # committed agents the catalog lacks

    def problem(self, kind: str, text: str) -> None:
        self.problems[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {text}")


def read_child_output(text: str, tally: Tally) -> list[str]:
    """Record the child's complete lines; returns the ids acknowledged in this cycle."""
    new_acks = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):  # cannot happen with one write(2) per line, but be sure
            continue
        word, agent, msg_id, rest = [*line.split(maxsplit=3), "", "", ""][:4]
        rest = rest.strip()
        if word == "send":
            tally.sent[msg_id] = (agent, int(rest))
        elif word == "ack":
            if msg_id in tally.acked or msg_id.startswith("x"):
                tally.problem("wrong", f"{msg_id} acknowledged twice or despite failing")
            tally.acked[msg_id] = (agent, int(rest))
            new_acks.append(msg_id)
        elif word == "fail":
            tally.failed.add(msg_id)
        else:
            tally.problem("wrong", f"child reported: {line.strip()}")
    return new_acks


# -- reading one store ----------------------------------------------------------------------
@contextmanager
def reading(path: Path, tally: Tally) -> Iterator[apsw.Connection]:
    """A read-only connection to *path*, or, when SQLite must first roll back a hot
    journal or recover a WAL index that a killed writer left (which takes write access),
    a read-write connection to a copy: the parent never writes the stores it checks."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    scratch = None
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except apsw.ReadOnlyError:  # SQLITE_READONLY_ROLLBACK or _RECOVERY
            conn.close()
            scratch = Path(tempfile.mkdtemp(prefix="crash-check-"))
            for suffix in ("", "-journal", "-wal", "-shm"):
                if path.with_name(path.name + suffix).exists():
                    shutil.copy(path.with_name(path.name + suffix), scratch)
            conn = apsw.Connection(str(scratch / path.name))
            tally.checked_on_a_copy += 1
        yield conn
    finally:
        conn.close()
        if scratch is not None:
            shutil.rmtree(scratch)


def quick_check(conn: apsw.Connection) -> str:
    return "; ".join(r[0] for r in conn.execute("PRAGMA quick_check").fetchall())


def check_store(path: Path, agent: str, tally: Tally, seen: StoreSeen) -> StoreSeen:
    """Check one agent's store: everything up to ``seen`` is assumed verified, every newer
    version is checked against its rows and its state. Returns what is verified now."""
    try:
        with reading(path, tally) as conn:
            result = quick_check(conn)
            if result != "ok":
                tally.problem("quick_check", f"{path.name}: {result}")
                return seen
            return _check_rows(conn, agent, tally, seen)
    except apsw.Error as exc:  # e.g. a store file cut short while it was created
        tally.problem("unreadable", f"{path.name}: {type(exc).__name__}: {exc}")
        return seen


def _one(conn: apsw.Connection, sql: str, *params: object) -> tuple:
    rows = conn.execute(sql, params).fetchall()
    return rows[0] if rows else ()


def _check_rows(conn: apsw.Connection, agent: str, tally: Tally, seen: StoreSeen) -> StoreSeen:
    def half(text: str) -> StoreSeen:
        tally.problem("half_written", f"{agent}: {text}")
        return seen

    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    state_row = _one(conn, "SELECT version, state FROM _ab_state WHERE id = 1")
    n_history = _one(conn, "SELECT count(*) FROM _ab_history")[0]
    version, state_json = state_row or (0, None)
    if version < seen.version:
        tally.problem("lost", f"{agent}: version went back from {seen.version} to {version}")
        return seen
    if version == 0:  # killed while the store was created: nothing of it may be committed
        tally.uncreated += 1
        if n_history or {"applied", "parts"} & tables:
            return half(f"version 0, but {n_history} history rows and tables {sorted(tables)}")
        if state_json is not None and json.loads(state_json) != INITIAL_STATE:
            return half(f"version 0 with state {state_json}")
        return seen
    lo, hi = _one(conn, "SELECT min(version), max(version) FROM _ab_history")
    if n_history != version or (lo, hi) != (1, version):
        return half(f"versions are not 1..{version}: {n_history} rows from {lo} to {hi}")
    if not {"applied", "parts"} <= tables:
        return half(f"version {version} committed without on_start's tables")

    # What was verified before must still be there.
    if seen.count:
        old = _one(conn, "SELECT id, digest FROM applied WHERE seq = ?", seen.count)
        if old != (seen.last, seen.digest):
            tally.problem("lost", f"{agent}: applied row {seen.count} changed to {old}")
            return seen
    n_applied, max_seq = _one(conn, "SELECT count(*), coalesce(max(seq), 0) FROM applied")
    if n_applied != max_seq:
        return half(f"applied rows are not numbered 1..{n_applied} (max {max_seq})")

    history = conn.execute(
        "SELECT version, method, args, outcome, state FROM _ab_history WHERE version > ?"
        " ORDER BY version", (seen.version,)).fetchall()
    applied = conn.execute(
        "SELECT seq, id, digest FROM applied WHERE seq > ? ORDER BY seq", (seen.count,)).fetchall()
    parts: dict[str, list[int]] = collections.defaultdict(list)
    parts_rowid = seen.parts_rowid
    for rowid, msg_id, part in conn.execute(
            "SELECT rowid, id, part FROM parts WHERE rowid > ? ORDER BY rowid", (seen.parts_rowid,)):
        parts[msg_id].append(part)
        parts_rowid = rowid

    count, digest, last = seen.count, seen.digest, seen.last
    parts_total = seen.parts_total
    new_ids = []
    applied_iter = iter(applied)
    for v, method, args_json, outcome, row_state in history:
        if method == "on_start":  # creates the tables once; never changes the state
            if row_state is not None or outcome != "ok":
                return half(f"version {v} (on_start) changed the state or failed")
            continue
        if method not in APPLY_METHODS or outcome != "ok":
            return half(f"version {v} is {method!r} with outcome {outcome!r}")
        msg_id, n_parts = json.loads(args_json)
        count, digest, last = count + 1, chain(digest, msg_id), msg_id
        want_state = {"count": count, "last": msg_id, "digest": digest}
        if row_state is None or json.loads(row_state) != want_state:
            return half(f"version {v} ({msg_id}) has state {row_state}, want {want_state}")
        row = next(applied_iter, None)
        if row != (count, msg_id, digest):
            return half(f"version {v} ({msg_id}) has applied row {row}, want {count}")
        if parts.pop(msg_id, []) != list(range(n_parts)):
            return half(f"version {v} ({msg_id}) lacks some of its {n_parts} parts rows")
        parts_total += n_parts
        new_ids.append((msg_id, count))
    extra = next(applied_iter, None)
    if extra is not None:
        return half(f"applied row {extra} has no version in the history")
    if parts:
        return half(f"parts rows of {sorted(parts)} have no version of their own")
    if json.loads(state_json) != ({"count": count, "last": last, "digest": digest}
                                  if count else INITIAL_STATE):
        return half(f"stored state {state_json} is not the state of version {version}")
    n_parts_total = _one(conn, "SELECT count(*) FROM parts")[0]
    if n_parts_total != parts_total:
        return half(f"{n_parts_total} parts rows, the applied messages account for {parts_total}")

    for msg_id, n in new_ids:
        if msg_id in tally.applied:
            tally.problem("duplicated", f"{msg_id} applied in {agent} and {tally.applied[msg_id]}")
        tally.applied[msg_id] = (agent, n)
        if msg_id.startswith("x"):
            tally.problem("failed_applied", f"{msg_id} raised, yet its effects are in {agent}")
        elif tally.sent.get(msg_id, (None,))[0] != agent:
            tally.problem("phantom", f"{msg_id} applied in {agent}, sent: {tally.sent.get(msg_id)}")
    return StoreSeen(version, count, digest, last, parts_rowid, parts_total)


def check_stores(folder: Path, names: list[str], tally: Tally) -> None:
    """Check the catalog and the stores of *names* (all stores when *names* is empty)."""
    try:
        with reading(folder / "catalog.db", tally) as conn:
            result = quick_check(conn)
            if result != "ok":
                tally.problem("quick_check", f"catalog.db: {result}")
    except apsw.Error as exc:
        tally.problem("unreadable", f"catalog.db: {type(exc).__name__}: {exc}")
    base = folder / "agents" / "Ledger"
    paths = [base / f"{n}.db" for n in names] if names else sorted(base.glob("*.db"))
    for path in paths:
        if path.exists():
            key = path.stem
            tally.stores[key] = check_store(path, key, tally, tally.stores.get(key, StoreSeen()))


def check_acks(ids: list[str], tally: Tally) -> None:
    """Every acknowledged id is applied, in the agent it was sent to, as the n it reported."""
    for msg_id in ids:
        want = tally.acked[msg_id]
        have = tally.applied.get(msg_id)
        if have is None:
            tally.problem("lost", f"{msg_id} was acknowledged by {want[0]} but is not applied")
        elif have != want:
            tally.problem("half_written", f"{msg_id} acknowledged as {want}, applied as {have}")


# -- running the children -------------------------------------------------------------------
@dataclass
class Run:
    """How the kills went."""

    cycles: int = 0
    kills: collections.Counter = field(default_factory=collections.Counter)
    import_times: list[float] = field(default_factory=list)
    seconds: float = 0.0


def run_one_child(folder: Path, cycle: int, seed: int, rng: random.Random, run: Run,
                  work: Path) -> str:
    """Start the child, SIGKILL it at a random moment, return what it printed."""
    phase = rng.choices([p for p, _ in PHASES], [w for _, w in PHASES])[0]
    estimate = statistics.median(run.import_times[-20:]) if run.import_times else 0.07
    delay = {"early": rng.uniform(0, estimate * 1.2), "start": rng.uniform(0, START_WINDOW),
             "steady": rng.uniform(0, STEADY_WINDOW)}[phase]
    out_path, err_path = work / "child.out", work / "child.err"
    r, w = os.pipe()
    child = None
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, str(CHILD), str(folder), str(cycle), str(seed), str(w)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(w,))
        os.close(w)
        w = -1
        died = False
        if phase != "early":  # count the delay from the child's signal after the imports
            if os.read(r, 1):
                run.import_times.append(time.monotonic() - t0)
                t0 = time.monotonic()
            else:
                died = True
        deadline = t0 + delay
        while not died and (left := deadline - time.monotonic()) > 0:
            # The random kill delay itself; wakes early only if the child dies (EOF).
            if select.select([r], [], [], left)[0]:
                died = not os.read(r, 1)
    finally:
        if child is not None:
            child.send_signal(signal.SIGKILL)  # does nothing if it has ended already
            child.wait()
        os.close(r)
        if w >= 0:
            os.close(w)
    if child.returncode != -signal.SIGKILL:
        pytest.fail(f"cycle {cycle}: the child ended by itself (exit {child.returncode}) "
                    f"before it was killed:\n{err_path.read_text()[-3000:]}")
    run.kills[phase] += 1
    return out_path.read_text()


def crash_cycles(tmp_path: Path, cycles: int) -> tuple[Tally, Run]:
    """Run *cycles* kill-and-check cycles on one store folder, then check everything again."""
    seed = int(os.environ.get("AGENTBOOK_CRASH_SEED", random.randrange(2**32)))
    print(f"\ncrash test seed {seed} (set AGENTBOOK_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    folder = tmp_path / "store"
    tally, run = Tally(), Run()
    started = time.monotonic()

    def fail_if_any(where: str) -> None:
        if tally.problems:
            pytest.fail(f"seed {seed}, {where}: {dict(tally.problems)}\n"
                        + "\n".join(tally.examples))

    for cycle in range(cycles):
        text = run_one_child(folder, cycle, rng.randrange(2**32), rng, run, tmp_path)
        run.cycles += 1
        new_acks = read_child_output(text, tally)
        if folder.joinpath("catalog.db").exists():
            check_stores(folder, [*FIXED, f"n{cycle // 3}"], tally)
        check_acks(new_acks, tally)
        fail_if_any(f"after cycle {cycle}")

    # At the end: every store verified again from version 1, every ack checked again.
    tally.stores.clear()
    tally.applied.clear()
    check_stores(folder, [], tally)
    check_acks(list(tally.acked), tally)
    for msg_id in tally.failed:
        if msg_id in tally.applied:
            tally.problem("failed_applied", f"{msg_id} raised, yet it is applied")
    fail_if_any("in the final check")
    look_for_leftovers(folder, tally)
    check_through_a_fresh_runtime(folder, tally)
    fail_if_any("reading through a fresh ab.Runtime")
    run.seconds = time.monotonic() - started
    return tally, run


def look_for_leftovers(folder: Path, tally: Tally) -> None:
    """Files that are not stores (a killed store creation's temporary file), and agents
    whose store has committed versions but which the catalog does not list. Reported,
    not asserted: neither loses or doubles a message (see the module docstring)."""
    base = folder / "agents" / "Ledger"
    tally.leftovers = sorted(p.name for p in base.iterdir()
                             if not p.name.endswith((".db", ".db-wal", ".db-shm")))
    with reading(folder / "catalog.db", tally) as conn:
        listed = {r[0] for r in conn.execute("SELECT name FROM agents WHERE class = 'Ledger'")}
    tally.uncatalogued = sorted(n for n, seen in tally.stores.items()
                                if seen.version and n not in listed)


def check_through_a_fresh_runtime(folder: Path, tally: Tally) -> None:
    """The public reads of a reopened runtime agree with what was found in the files."""
    rt = ab.Runtime(folder)
    try:
        for name, seen in tally.stores.items():
            if seen.version == 0:
                continue  # created but never committed: there is nothing to read yet
            ref = rt.get("Ledger", name)
            want_state = ({"count": seen.count, "last": seen.last, "digest": seen.digest}
                          if seen.count else INITIAL_STATE)
            if ref.version != seen.version or dict(ref.state) != want_state:
                tally.problem("half_written", f"{name}: ref.version/state disagree with the file")
            rows = ref.sql("SELECT count(*) AS n, max(seq) AS top FROM applied")
            if (rows.n[0], rows.top[0] if seen.count else 0) != (seen.count, seen.count):
                tally.problem("half_written", f"{name}: ref.sql sees {rows.to_dict('records')}")
            newest = ref.history(limit=1, failures=False)
            if int(newest.version[0]) != seen.version:
                tally.problem("half_written", f"{name}: ref.history starts at {newest.version[0]}")
    finally:
        rt.close()


def report(tally: Tally, run: Run) -> dict[str, int]:
    applied_unacked = sum(1 for i in tally.applied if i not in tally.acked)
    figures = {
        "cycles": run.cycles,
        "acknowledged": len(tally.acked),
        "sent": len(tally.sent),
        "applied": len(tally.applied),
        "applied_unacknowledged": applied_unacked,
        "failed_as_expected": len(tally.failed),
        "stores": len(tally.stores),
        "found_uncreated": tally.uncreated,
        "checked_on_a_copy": tally.checked_on_a_copy,
        "leftover_files": len(tally.leftovers),
        "uncatalogued": len(tally.uncatalogued),
        **{f"killed_{phase}": run.kills[phase] for phase, _ in PHASES},
    }
    for kind in PROBLEMS:
        figures[kind] = tally.problems[kind]
    print(f"crash test in {run.seconds:.1f} s: "
          + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def assert_nothing_lost_or_doubled(figures: dict[str, int], cycles: int) -> None:
    assert figures["cycles"] == cycles
    assert figures["acknowledged"] > 0
    assert figures["applied"] >= figures["acknowledged"]
    assert figures["failed_as_expected"] > 0
    for kind in PROBLEMS:
        assert figures[kind] == 0, kind
    for phase, _ in PHASES:
        assert figures[f"killed_{phase}"] > 0, phase


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.crash
def test_every_acknowledged_message_survives_sigkill_exactly_once(tmp_path: Path, figure) -> None:
    tally, run = crash_cycles(tmp_path, cycles=200)
    figures = report(tally, run)
    figure("sigkill_fast", **figures)
    assert_nothing_lost_or_doubled(figures, 200)


@pytest.mark.crash
@pytest.mark.soak
def test_a_thousand_sigkills_lose_and_double_nothing(tmp_path: Path, figure) -> None:
    # Skipped unless -m soak (tests/reliability/conftest.py); about 2 minutes.
    tally, run = crash_cycles(tmp_path, cycles=1000)
    figures = report(tally, run)
    figure("sigkill_soak", **figures)
    assert_nothing_lost_or_doubled(figures, 1000)
