"""Results of the benchmark suite: one :class:`Result` per figure, a table and JSON.

Every figure is reported next to its floor (the same work written by hand with the same
libraries, or a peer such as LangGraph) and the ratio of the two measured in one run,
because absolute numbers on a shared two-core machine move by 2x between runs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Result", "Target", "format_number", "format_table", "to_json", "write_json"]


@dataclass(frozen=True)
class Target:
    """What a figure must reach: ``ratio >= 0.5``, ``value <= 1024`` ...

    Attributes:
        of: ``"ratio"`` or ``"value"``.
        op: ``">="`` or ``"<="``.
        limit: The threshold.
    """

    of: str
    op: str
    limit: float

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        """Whether the figure meets the target (``None`` when it could not be measured)."""
        x = ratio if self.of == "ratio" else value
        if x is None or not math.isfinite(x):
            return None
        return x >= self.limit if self.op == ">=" else x <= self.limit

    def __str__(self) -> str:
        return f"{self.of} {self.op} {self.limit:g}"


@dataclass
class Result:
    """One figure of the suite.

    Attributes:
        name: Stable identifier (``durable_msgs``, ``burst_send`` ...).
        value: agentbook's figure (median of the rounds), or ``None`` when skipped.
        unit: Unit of ``value`` and ``floor``.
        floor: The floor's or peer's figure, same unit.
        ratio: agentbook against the floor, the median of per-round ratios.
        target: What the figure must reach, or ``None`` for figures only reported.
        rounds: How many interleaved rounds were measured.
        note: What exactly was measured, in a few words.
        skipped: Why the figure is missing (e.g. an optional peer isn't installed).
        samples: Raw per-round values ``(agentbook, floor)``, for the JSON output.
    """

    name: str
    value: float | None
    unit: str
    floor: float | None
    ratio: float | None
    target: Target | None = None
    rounds: int = 0
    note: str = ""
    skipped: str | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        """Whether the target is met (``None``: no target, or nothing measured)."""
        return None if self.target is None else self.target.check(self.value, self.ratio)

    @classmethod
    def from_rounds(cls, name: str, unit: str, pairs: Sequence[tuple[float, float]],
                    target: Target | None = None, note: str = "") -> Result:
        """Build a result from interleaved ``(agentbook, floor)`` rounds (medians)."""
        ratios = [a / b for a, b in pairs if b]
        return cls(
            name=name,
            value=statistics.median(a for a, _ in pairs),
            unit=unit,
            floor=statistics.median(b for _, b in pairs),
            ratio=statistics.median(ratios) if ratios else math.nan,
            target=target,
            rounds=len(pairs),
            note=note,
            samples=[(float(a), float(b)) for a, b in pairs],
        )

    @classmethod
    def skip(cls, name: str, unit: str, reason: str, target: Target | None = None) -> Result:
        """A figure that could not be measured, with the reason."""
        return cls(name=name, value=None, unit=unit, floor=None, ratio=None, target=target,
                   skipped=reason)


def format_number(x: float | None) -> str:
    """Three significant figures with a k/M suffix: ``29.9 k``, ``1.21 M``, ``0.0612``."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.3g} M"
    if ax >= 1e4:
        return f"{x / 1e3:.3g} k"
    if ax >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def format_table(results: Sequence[Result], quick: bool = False) -> str:
    """A plain-text table: name, value, unit, floor, ratio, target, met.

    With *quick* (tiny sizes, figures that mean nothing) ``met`` says ``n/a``: no target
    is judged on them."""
    header = ("name", "value", "unit", "floor", "ratio", "target", "met")
    rows = [header]
    notes = []
    for r in results:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        if quick and r.target is not None:
            met = "n/a"
        if r.skipped:
            met = "skip"
            notes.append(f"  {r.name}: skipped - {r.skipped}")
        ratio = "-" if r.ratio is None else f"{r.ratio:.3g}x"
        rows.append((r.name, format_number(r.value), r.unit, format_number(r.floor), ratio,
                     str(r.target) if r.target else "-", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 3, 4}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def to_json(results: Sequence[Result], quick: bool = False) -> dict[str, dict[str, Any]]:
    """``{name: {"value", "unit", "floor", "ratio", "target", "met", ...}}``; with *quick*
    ``met`` is ``None`` (no target is judged on tiny sizes)."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        data = asdict(r)
        name = data.pop("name")
        data["target"] = str(r.target) if r.target else None
        data["met"] = None if quick else r.met
        out[name] = data
    return out


def write_json(results: Sequence[Result], path: str, quick: bool = False) -> None:
    """Write :func:`to_json` of *results* to *path* (strict JSON: no NaN)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with open(path, "w", encoding="utf-8") as fh:
        json.dump(clean(to_json(results, quick)), fh, indent=2)
        fh.write("\n")
