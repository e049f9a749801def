"""``ref.bisect(predicate)``: when did it go wrong?

A binary search over an agent's versions for the first one where *predicate* holds, like
``git bisect`` over commits. Each step makes one :class:`~agentbook.travel.versions.VersionView`
(``ref.at(k)``) and asks the predicate about it; reading ``v.state`` is one indexed
look-up, ``v.sql(...)`` copies the tables at that version into memory (and the copy is
freed right after). So a history of ``n`` versions costs ``2 + ceil(log2(n))`` views at
most: 16 for 10 000 versions.

The search assumes the predicate is *monotonic*: false up to some version, true from it
on (a balance that went negative and stayed so). If it is not, the answer is still a
version where the predicate holds and held not at the version before - a point where it
*became* true - but not necessarily the first such point; ``result.checked`` lists what
was asked, and a linear scan (``[k for k in range(...) if pred(ref.at(k))]``) finds them all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UsageError, VersionNotFoundError
from ..store.history import HistoryRow

if TYPE_CHECKING:
    from ..core.ref import AgentRef
    from .versions import Diff, VersionView

__all__ = ["BisectResult", "Checked", "bisect"]


class Checked(NamedTuple):
    """One question bisect asked: did the predicate hold at this version?"""

    version: int
    held: bool


class BisectResult:
    """What :func:`bisect` found.

    Attributes:
        version: The first version where the predicate holds (``None`` if it holds nowhere
            in the range searched).
        row: That version's history row (method, arguments, source, timing, outcome,
            result, state after; ``None`` when not found).
        diff: What that version changed: the diff from the version before it (``None``
            when not found, or when it is the first version of the range).
        checked: Every version the predicate was asked about, in order (how many
            versions were materialized).
        lo, hi: The range searched.
    """

    def __init__(self, ref: AgentRef, version: int | None, row: HistoryRow | None,
                 diff: Diff | None, checked: list[Checked], lo: int, hi: int) -> None:
        self.ref, self.version, self.row, self.diff = ref, version, row, diff
        self.checked, self.lo, self.hi = checked, lo, hi

    @property
    def found(self) -> bool:
        """Whether some version in the range satisfies the predicate."""
        return self.version is not None

    def at(self) -> VersionView:
        """The agent at the version found (``ref.at(result.version)``).

        Raises:
            UsageError: nothing was found.
        """
        if self.version is None:
            raise UsageError("bisect found no version where the predicate holds; widen lo/hi "
                             "or check the predicate on ref.at(-1)")
        return self.ref.at(self.version)

    def _headline(self) -> str:
        asked = f"{len(self.checked)} versions checked"
        if self.version is None:
            return (f"<BisectResult {self.ref!r}: the predicate holds at no version in "
                    f"{self.lo}..{self.hi} ({asked})>")
        row = self.row
        what = f" by {row.method}({_args(row)}) from {row.source}" if row is not None else ""
        return (f"<BisectResult {self.ref!r}: first at version {self.version}{what} "
                f"({asked} of {self.lo}..{self.hi})>")

    def __repr__(self) -> str:
        if self.diff is None:
            return self._headline()
        return self._headline() + "\n" + repr(self.diff)

    def _repr_html_(self) -> str:
        import html

        out = f"<div><b>{html.escape(self._headline())}</b>"
        if self.diff is not None:
            out += self.diff._repr_html_()
        return out + "</div>"


def _args(row: HistoryRow) -> str:
    text = (row.args or "[]")[1:-1]
    if row.kwargs:
        text += (", " if text else "") + row.kwargs[1:-1]
    return text if len(text) <= 60 else text[:57] + "..."


async def bisect(ref: AgentRef, predicate: Callable[[VersionView], Any], lo: int | None,
                 hi: int | None, rows: Callable[[int], HistoryRow | None]) -> BisectResult:
    """The first version of *ref* in ``lo .. hi`` (default: all it can reach) where
    *predicate* (sync or async, given ``ref.at(k)``) holds. *rows* reads one version's
    history row.

    Raises:
        UsageError: *predicate* is not callable, or returned something that is neither
            true nor false (a DataFrame: compare a value of it instead).
        VersionNotFoundError: *lo* or *hi* is outside the history.
    """
    if not callable(predicate):
        raise UsageError("bisect needs a predicate: a function of a version view, e.g. "
                         "lambda v: v.state['balance'] < 0")
    first, head = ref.history_range()
    lo = first if lo is None else _inside(ref, lo, first, head, "lo")
    hi = head if hi is None else _inside(ref, hi, first, head, "hi")
    if lo > hi:
        raise UsageError(f"bisect's lo ({lo}) is above its hi ({hi}); swap them")
    checked: list[Checked] = []

    async def holds(k: int) -> bool:
        view = ref.at(k)
        try:
            answer = predicate(view)
            if inspect.isawaitable(answer):
                answer = await answer
            try:
                held = bool(answer)
            except (ValueError, TypeError):
                raise UsageError(
                    f"bisect's predicate returned a {type(answer).__name__}, which is neither "
                    "true nor false; return a comparison, e.g. "
                    "v.sql('SELECT count(*) AS n FROM t').n[0] > 3") from None
        finally:
            view.close()
        checked.append(Checked(k, held))
        return held

    if not await holds(hi):
        return BisectResult(ref, None, None, None, checked, lo, hi)
    if lo == hi or await holds(lo):
        found = lo
    else:
        good, bad = lo, hi  # holds(good) is false, holds(bad) is true
        while bad - good > 1:
            mid = (good + bad) // 2
            if await holds(mid):
                bad = mid
            else:
                good = mid
        found = bad
    diff = ref.diff(found - 1, found) if found > first else None
    return BisectResult(ref, found, rows(found), diff, checked, lo, hi)


def _inside(ref: AgentRef, version: Any, first: int, head: int, what: str) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise VersionNotFoundError(f"bisect's {what} is a version (a whole number), not "
                                   f"{type(version).__name__}")
    k = head + 1 + version if version < 0 else version
    if not first <= k <= head:
        raise VersionNotFoundError(f"{ref!r} has no version {version} ({what}=): its history "
                                   f"covers {first}..{head}")
    return k
