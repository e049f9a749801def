"""Sizes and timing helpers shared by the benchmarks: interleaved rounds, rates, checks."""

from __future__ import annotations

import gc
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Side", "Sizes", "check", "interleave", "rate"]

#: One side of a comparison: a function returning a figure, or an awaitable of one.
Side = Callable[[], "float | Awaitable[float]"]


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does (``Sizes.full()`` or ``Sizes.quick()``)."""

    rounds: int
    durable_n: int
    langgraph_rounds: int
    langgraph_n: int
    burst_n: int
    rr_agents: int
    rr_open: int
    rr_n: int
    rr_rounds: int
    memory_agents: int
    memory_floor_agents: int
    events_rounds: int
    events_n: int
    import_rounds: int
    warmup: bool = True
    progress: bool = True

    @classmethod
    def full(cls) -> Sizes:
        """The sizes of the issue (a few minutes in all)."""
        return cls(rounds=7, durable_n=4000, langgraph_rounds=5, langgraph_n=300,
                   burst_n=10_000, rr_agents=1000, rr_open=256, rr_n=1000, rr_rounds=5,
                   memory_agents=100_000, memory_floor_agents=20_000, events_rounds=21,
                   events_n=4000, import_rounds=9)

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes that only check every benchmark still runs (a few seconds)."""
        return cls(rounds=2, durable_n=100, langgraph_rounds=2, langgraph_n=10,
                   burst_n=300, rr_agents=30, rr_open=8, rr_n=60, rr_rounds=2,
                   memory_agents=2000, memory_floor_agents=2000, events_rounds=2,
                   events_n=100, import_rounds=2, warmup=False, progress=False)


def rate(count: int, t0: float) -> float:
    """*count* operations since ``t0 = time.perf_counter()``, per second."""
    return count / max(time.perf_counter() - t0, 1e-9)


async def _call(side: Side) -> float:
    gc.collect()
    value = side()
    if inspect.isawaitable(value):
        value = await value
    return float(value)  # type: ignore[arg-type]


async def interleave(a: Side, b: Side, rounds: int,
                     warmup: bool = True) -> list[tuple[float, float]]:
    """Run *a* and *b* alternately, *rounds* times each; returns ``[(a_i, b_i), ...]``.

    Round *i* runs ``a`` then ``b`` when *i* is even and ``b`` then ``a`` when it is odd.
    With *warmup*, one untimed round of each comes first.
    """
    if warmup:
        await _call(a)
        await _call(b)
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            x = await _call(a)
            y = await _call(b)
        else:
            y = await _call(b)
            x = await _call(a)
        pairs.append((x, y))
    return pairs


def check(ok: bool, what: str) -> None:
    """Raise unless *ok*: a benchmark that did not do its work must not report a figure."""
    if not ok:
        raise RuntimeError(f"benchmark sanity check failed: {what}")
