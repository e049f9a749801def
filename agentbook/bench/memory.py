"""What hibernated agents cost: process memory, disk, and how fast they are created.

Each side runs in a fresh child process (``python -m agentbook.bench.memory``) so its
memory baseline is clean:

* **agentbook**: a file runtime; N agents each get one durable message (``await
  ref.inc()``, in concurrent chunks), then ``rt.hibernate()``. The runtime stays open.
* **floor**: N agent files written by hand (:func:`~agentbook.bench.floors.create_hand_file`)
  while a :class:`~agentbook.bench.floors.LazyRegistry` keeps each name and state in memory.

Memory is the RSS delta over N after ``gc.collect()`` and ``malloc_trim(0)`` (so that
free memory glibc keeps from the creation burst is not counted as agents); the delta
before trimming and the delta in Python's allocated blocks are reported too. Disk is the
allocated size of the runtime folder (agent files and catalog) over N.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

__all__ = ["measure", "run_child"]

_CHUNK = 100


def _rss() -> int:
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as fh:  # Linux without psutil
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def _trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _settled() -> dict[str, int]:
    gc.collect()
    raw = _rss()
    _trim()
    return {"raw": raw, "rss": _rss(), "blocks": sys.getallocatedblocks()}


def _disk(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _progress(show: bool, side: str, n: int) -> Any:
    """A bar for creating *n* agents (on a terminal; nothing when piped), or ``None``.

    It runs in the child, one line below the suite's own bar."""
    if not show:
        return None
    from ..progress import bar

    return bar(n, f"  {side}", unit="agents", position=1)


async def _agentbook_side(n: int, folder: str, show: bool) -> dict[str, Any]:
    import agentbook as ab

    from .agents import BenchCounter

    path = os.path.join(folder, "rt")
    rt = ab.Runtime(path, durability="normal")
    await rt.get(BenchCounter, "warm").inc()
    rt.hibernate()
    progress = _progress(show, "agentbook agents", n)  # (tqdm loaded before the baseline)
    disk0 = _disk(path)
    before = _settled()
    t0 = time.perf_counter()
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        await asyncio.gather(*(rt.get(BenchCounter, f"agent-{i}").inc()
                               for i in range(start, stop)))
        if progress is not None:
            progress.update(stop - start)
    elapsed = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    hibernated = rt.hibernate()
    after = _settled()
    out = {"rate": n / elapsed, "disk": (_disk(path) - disk0) / n, "hibernated": hibernated}
    out.update({k: (after[k] - before[k]) / n for k in before})
    await rt.aclose()
    return out


def _floor_side(n: int, folder: str, show: bool) -> dict[str, Any]:
    from .floors import LazyRegistry, create_hand_file

    path = os.path.join(folder, "agents")
    os.makedirs(path, exist_ok=True)
    registry = LazyRegistry()
    progress = _progress(show, "floor agents", n)
    before = _settled()
    t0 = time.perf_counter()
    for i in range(n):
        name = f"agent-{i}"
        create_hand_file(os.path.join(path, name + ".db"))
        registry.add("BenchCounter", name, {"n": 1})
        if progress is not None and ((i + 1) % _CHUNK == 0 or i + 1 == n):
            progress.update((i + 1) - progress.n)
    elapsed = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    after = _settled()
    out = {"rate": n / elapsed, "disk": _disk(path) / n, "agents": len(registry.agents)}
    out.update({k: (after[k] - before[k]) / n for k in before})
    return out


def run_child(side: str, n: int, folder: str, show: bool = False) -> dict[str, Any]:
    """Measure one side (``"agentbook"`` or ``"floor"``) in a fresh Python process."""
    os.makedirs(folder, exist_ok=True)
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "agentbook.bench.memory", side, str(n), folder,
           "1" if show else "0"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} memory child exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n: int, floor_n: int, folder: str,
            show: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(agentbook, floor)`` figures per agent for *n* agentbook agents and *floor_n*
    floor agents (the floor's figures per agent do not depend on the count; creating
    files is disk-bound, so a smaller floor saves minutes). Children run one by one."""
    mine = run_child("agentbook", n, os.path.join(folder, "agentbook"), show)
    floor = run_child("floor", floor_n, os.path.join(folder, "floor"), show)
    return mine, floor


def _main(argv: list[str]) -> None:
    side, n, folder, show = argv[0], int(argv[1]), argv[2], argv[3] == "1"
    if side == "agentbook":
        out = asyncio.run(_agentbook_side(n, folder, show))
    elif side == "floor":
        out = _floor_side(n, folder, show)
    else:
        raise SystemExit(f"unknown side {side!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1:])
