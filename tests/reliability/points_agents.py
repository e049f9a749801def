"""The agent of the crash-point tests, and a checker that proves a store is whole.

``RelPoints`` writes a little of everything per message (rows in two tables, a key-value
entry, a schedule row, the state), runs scheduled callbacks and an approval-gated method.
:func:`check_store` replays the store's own history into a model of what the tables must
hold and compares: any store that holds part of a version - or a version without its
rows - is reported. Imported by the tests (``tests.reliability.points_agents``) and by
the child process (``points_child.py``, as a top-level module).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import agentbook as ab

INITIAL = {"count": 0, "ids": [], "fired": [], "paid": []}


class RelPoints(ab.Agent):
    initial_state = INITIAL

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS applied(id TEXT NOT NULL, version INTEGER NOT NULL)")
        self.sql("CREATE TABLE IF NOT EXISTS parts(id TEXT NOT NULL, part INTEGER NOT NULL)")
        self.sql("CREATE TABLE IF NOT EXISTS fired(label TEXT NOT NULL, occurrence TEXT NOT NULL)")
        self.sql("CREATE TABLE IF NOT EXISTS paid(order_id TEXT NOT NULL)")

    @ab.callable
    async def apply(self, msg_id: str, parts: int = 2) -> int:
        n = self.state["count"] + 1
        self.sql("INSERT INTO applied VALUES (?, ?)", msg_id, self.version + 1)
        for part in range(parts):
            self.sql("INSERT INTO parts VALUES (?, ?)", msg_id, part)
        self.kv[msg_id] = n
        await self.schedule(10**6, "later", msg_id)
        self.set_state({**self.state, "count": n, "ids": [*self.state["ids"], msg_id]})
        return n

    async def later(self, msg_id: str) -> None:
        raise AssertionError("never due within a test")

    @ab.callable
    async def plan(self) -> list[str]:
        once = await self.schedule(60, "fired", "once")
        every = await self.schedule_every(60, "fired", "every")
        return [once.id, every.id]

    async def fired(self, label: str) -> None:
        self.sql("INSERT INTO fired VALUES (?, ?)", label, self.occurrence.id)
        self.set_state({**self.state, "fired": [*self.state["fired"], label]})

    @ab.callable
    async def ask(self, order_id: str) -> str:
        approval = await self.request_approval("pay", {"order_id": order_id},
                                               summary=f"pay {order_id}", expires_in=3600)
        return approval.id

    async def pay(self, order_id: str) -> str:
        self.sql("INSERT INTO paid VALUES (?)", order_id)
        self.set_state({**self.state, "paid": [*self.state["paid"], order_id]})
        return f"paid {order_id}"


def _model_tables(model: dict) -> dict[str, Any]:
    return {
        "applied": sorted(model["applied"]),
        "parts": sorted(model["parts"]),
        "kv": sorted(model["kv"].items()),
        "later": sorted(model["later"]),
        "fired": sorted(model["fired"]),
        "paid": sorted(model["paid"]),
    }


def check_conn(conn: Any) -> list[str]:
    """Problems with one ``RelPoints`` store (empty: the store is exactly one version)."""
    problems = []
    state_rows = conn.execute("SELECT version, state FROM _ab_state").fetchall()
    history = conn.execute(
        "SELECT version, method, args, kwargs, outcome, state, source FROM _ab_history"
        " ORDER BY version").fetchall()
    if not state_rows:
        if history:
            problems.append(f"no _ab_state row but {len(history)} history rows")
        return problems
    version, state_json = state_rows[0]
    versions = [r[0] for r in history]
    if versions != list(range(1, len(versions) + 1)):
        problems.append(f"versions are not 1..n: {versions}")
    if (versions[-1] if versions else 0) != version:
        problems.append(f"_ab_state says version {version}, history ends at {versions[-1:]}")
    model: dict[str, Any] = {"applied": [], "parts": [], "kv": {}, "later": [], "fired": [],
                             "paid": [], "state": copy.deepcopy(INITIAL)}
    snapshots = {0: copy.deepcopy(model)}
    for v, method, args, kwargs, outcome, row_state, source in history:
        args = json.loads(args) if args else []
        kwargs = json.loads(kwargs) if kwargs else {}
        if outcome != "ok":
            problems.append(f"version {v} has outcome {outcome}")
        elif method == "apply":
            msg_id = args[0] if args else kwargs["msg_id"]
            parts = args[1] if len(args) > 1 else kwargs.get("parts", 2)
            st = model["state"]
            n = st["count"] + 1
            model["applied"].append((msg_id, v))
            model["parts"] += [(msg_id, p) for p in range(parts)]
            model["kv"][msg_id] = json.dumps(n)
            model["later"].append(json.dumps(msg_id))
            model["state"] = {**st, "count": n, "ids": [*st["ids"], msg_id]}
        elif method == "fired":
            st = model["state"]
            model["fired"].append(args[0])
            model["state"] = {**st, "fired": [*st["fired"], args[0]]}
        elif method == "pay":
            order = kwargs.get("order_id", args[0] if args else None)
            st = model["state"]
            model["paid"].append(order)
            model["state"] = {**st, "paid": [*st["paid"], order]}
            if not source.startswith("approval:"):
                problems.append(f"version {v}: pay ran without an approval ({source})")
        elif method == "rewind":
            model = copy.deepcopy(snapshots[args[0]])
        elif method not in ("on_start", "plan", "ask"):
            problems.append(f"version {v}: unexpected method {method}")
        snapshots[v] = copy.deepcopy(model)
        if row_state is not None and json.loads(row_state) != model["state"]:
            problems.append(f"version {v} recorded state {row_state}, the model says {model['state']}")
    if json.loads(state_json) != model["state"]:
        problems.append(f"stored state {state_json} is not the state of version {version}")
    have_tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    if version and not {"applied", "parts", "fired", "paid"} <= have_tables:
        problems.append("a committed version without on_start's tables")
        return problems
    if not version:
        return problems
    actual = {
        "applied": sorted(conn.execute("SELECT id, version FROM applied").fetchall()),
        "parts": sorted(conn.execute("SELECT id, part FROM parts").fetchall()),
        "kv": sorted(conn.execute("SELECT key, value FROM _ab_kv").fetchall()),
        "later": sorted(r[0] for r in conn.execute(
            "SELECT payload FROM _ab_schedules WHERE callback = 'later'").fetchall()),
        "fired": sorted(r[0] for r in conn.execute("SELECT label FROM fired").fetchall()),
        "paid": sorted(r[0] for r in conn.execute("SELECT order_id FROM paid").fetchall()),
    }
    want = _model_tables(model)
    want["applied"] = sorted(tuple(x) for x in want["applied"])
    want["parts"] = sorted(tuple(x) for x in want["parts"])
    want["kv"] = sorted(tuple(x) for x in want["kv"])
    for table, rows in actual.items():
        rows = [tuple(r) if isinstance(r, (list, tuple)) else r for r in rows]
        if rows != want[table]:
            problems.append(f"{table} holds {rows}, the history says {want[table]}")
    occurrences = [r[0] for r in conn.execute("SELECT occurrence FROM fired").fetchall()]
    if len(occurrences) != len(set(occurrences)):
        problems.append(f"an occurrence ran twice: {sorted(occurrences)}")
    approved = conn.execute("SELECT id, status FROM _ab_approvals").fetchall()
    ran = [r[6].split(":", 1)[1] for r in history if r[1] == "pay"]
    for approval_id, status in approved:
        if ran.count(approval_id) > 1:
            problems.append(f"approval {approval_id} ran {ran.count(approval_id)} times")
        if (status == "approved") != (approval_id in ran):
            problems.append(f"approval {approval_id} is {status}; its method ran {ran.count(approval_id)}x")
    return problems
