"""The time-travel side of :class:`~agentbook.ref.AgentRef`: ``at``, ``diff``, ``rewind``,
``fork``, ``replay``, ``prune``, ``verify`` and the widgets that show versions. Reads go
to the last commit on disk; ``rewind`` and ``prune`` wait their turn in the mailbox."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import apsw

from .. import jsonvalue
from ..errors import UsageError
from ..store import health
from ..store.history import state_at
from .mailbox import Envelope

if TYPE_CHECKING:
    import pandas as pd

    from ..travel.replay import ReplayResult
    from ..travel.versions import Diff, VersionView
    from .ref import AgentRef


class TimeTravelMixin:
    """Versions of one agent (mixed into ``ab.AgentRef``)."""

    def at(self, version: int) -> VersionView:
        """The agent as it was after *version* (read-only): ``.state``, ``.sql(...)``,
        ``.schedules()``. Negative versions count from the newest (-1 is the newest).
        A fork reaches back into its parent's versions."""
        from ..errors import VersionNotFoundError
        from ..travel.versions import VersionView

        try:
            return VersionView(self, version)
        except VersionNotFoundError:
            parent = self._parent()
            if parent is not None and isinstance(version, int) and 0 <= version < parent[1]:
                return parent[0].at(version)
            raise

    def diff(self, a: int, b: int | None = None, *, other: AgentRef | None = None) -> Diff:
        """What changed from version *a* to version *b* (default: the newest).

        With ``other=``, compares this agent at *a* with *other* at *b* (e.g. a fork made
        by :meth:`replay` against its original). Returns a :class:`~agentbook.timetravel.Diff`:
        ``.state`` is a JSON patch, ``.rows`` a DataFrame of row changes.
        """
        from ..travel.versions import Diff, changes_between, check_version, json_patch, rows_between

        if other is not None:
            left = self.at(a)
            right = other.at(other.version if b is None else b)
            rows = rows_between(left._db(), right._db())
            return Diff(f"{self.name}@{left.version}", f"{other.name}@{right.version}",
                        json_patch(left.state, right.state), rows)
        with self._reading() as conn:
            a = check_version(conn, a, repr(self))
            b = check_version(conn, -1 if b is None else b, repr(self))
            lo, hi = min(a, b), max(a, b)
            old, new = state_at(conn, a), state_at(conn, b)
            rows = changes_between(conn, lo, hi)
        return Diff(f"{self.name}@{a}", f"{self.name}@{b}",
                    json_patch(jsonvalue.loads(old), jsonvalue.loads(new)), rows)

    def rewind(self, version: int) -> Awaitable[dict]:
        """Put the agent back as it was after *version*: state, its tables, key-value data
        and schedules. Recorded as a new version (so it can be undone); nothing runs again;
        pending approvals requested since are cancelled. Waits its turn in the mailbox."""
        from ..travel.versions import check_version_type

        rt = self._ab_rt
        rt._check_open()
        version = check_version_type(version, repr(self))
        env = Envelope("_ab_rewind", (version,), {}, jsonvalue.dumps([version]), None,
                       rt.source, label="rewind")
        return rt._submit(self._ab_key, env)

    async def fork(self, name: str, at: int | None = None, *, schedules: bool = False) -> AgentRef:
        """A new agent *name* (same class) holding this agent as it was at version *at*
        (default: now). Schedules are copied only if asked; pending approvals and dead
        letters never."""
        from ..travel.replay import fork

        return await fork(self, name, at, schedules)

    async def replay(self, from_version: int, *, on: str | None = None,
                     overrides: dict[str, Any] | None = None, live: bool | set[str] = False,
                     to_version: int | None = None) -> ReplayResult:
        """Re-run this agent's recorded inputs from *from_version* on a fork named *on*.

        Journaled effects (``self.effect``) are served from the record unless *overrides*
        maps their key to a new function or value, or *live* names keys to call for real.
        Returns a :class:`~agentbook.replay.ReplayResult` (``.fork``, ``.frame()``,
        ``.identical``, ``.diff()``).
        """
        from ..travel.replay import replay

        return await replay(self, from_version, on=on, overrides=overrides, live=live,
                            to_version=to_version)

    async def prune(self, *, before: int | None = None, keep_last: int | None = None,
                    vacuum: bool = False) -> int:
        """Forget history older than version *before* (or keep only the last *keep_last*
        versions); time travel then reaches back to *before* and no further. ``vacuum``
        also gives the space back to the disk. Returns how many versions were dropped."""
        from .ops import prune_op

        if (before is None) == (keep_last is None):
            raise UsageError("pass exactly one of before= or keep_last=")
        if keep_last is not None:
            if keep_last < 1:
                raise UsageError("keep_last must be at least 1")
            before = max(0, self.version - keep_last + 1)
        rt = self._ab_rt
        rt._check_open()
        env = Envelope("prune", (), {}, "[]", None, rt.source,
                       op=lambda inst: prune_op(inst, before, vacuum))
        return await rt._submit(self._ab_key, env)

    def widget(self) -> Any:
        """A live inspector: state as a tree, recent events, schedules, pending approvals.
        It updates while the agent works, and costs nothing until it is made."""
        from ..widgets.inspector import inspector_widget

        return inspector_widget(self)

    def timeline(self) -> Any:
        """A widget to scrub through this agent's versions: state, the step's input and
        duration, and buttons to fork or rewind there."""
        from ..widgets.timeline import timeline_widget

        return timeline_widget(self)

    def verify(self) -> dict[str, Any]:
        """Check the agent's store: SQLite's integrity check and the history's hash chain.

        Returns ``{"ok": bool, "quick_check": str, "first_bad_version": int | None}``;
        ``quick_check`` is SQLite's message when a damaged page stops the check itself.

        Raises:
            StoreCorruptError: the store was quarantined (the message says where it went).
        """
        from ..store.chain import verify_chain

        bad = None
        with self._reading() as conn:
            check = health.quick_check(conn)
            try:
                bad = verify_chain(conn)
            except apsw.Error as exc:
                if check == "ok":
                    check = f"{type(exc).__name__}: {exc}"
        return {"ok": check == "ok" and bad is None, "quick_check": check,
                "first_bad_version": bad}

    def history_range(self) -> tuple[int, int]:
        """``(first, newest)``: the versions time travel can reach."""
        from ..travel.versions import bounds

        with self._reading(missing_ok=True) as conn:
            return (0, 0) if conn is None else bounds(conn)

    def _parent(self) -> tuple[AgentRef, int] | None:
        with self._reading(missing_ok=True) as conn:
            if conn is None:
                return None
            rows = conn.execute("SELECT value FROM _ab_meta WHERE key = 'parent'").fetchall()
        if not rows:
            return None
        parent = jsonvalue.loads(rows[0][0])
        return self._ab_rt.get(parent["class"], parent["name"]), parent["version"]

    def failures(self, limit: int = 100) -> pd.DataFrame:
        """Recent handlers of this agent that raised (nothing of them was kept)."""
        import pandas as pd

        rows = self._ab_rt.catalog.failures(*self._ab_key, limit)
        frame = pd.DataFrame.from_records(
            [(ts, m, json_or_none(a), json_or_none(k), s, d, e, v) for ts, m, a, k, s, d, e, v in rows],
            columns=["ts", "method", "args", "kwargs", "source", "duration_ms", "error",
                     "at_version"],
        )
        frame["ts"] = pd.to_datetime(frame["ts"].astype("float64"), unit="s", utc=True)
        return frame


def json_or_none(text: Any) -> Any:
    """A JSON column's value as plain Python (``None`` stays ``None``)."""
    return None if text is None else json.loads(text)
