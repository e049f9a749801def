"""Progress bars for long work (a catch-up over many agents, the demo, the benchmarks).

One place decides how progress shows, with ``tqdm``:

* in a notebook (a Jupyter kernel, Voila, VS Code): a widget (``tqdm.auto``);
* in a terminal: one line, redrawn in place;
* piped or redirected (a log file, CI): nothing at all - a pipe gets no bar lines.

``tqdm`` is imported when a bar is made, so ``import agentbook`` does not load it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, TextIO

__all__ = ["bar", "in_kernel"]


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (where a bar is a widget)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def bar(total: float | None, desc: str, *, unit: str = "it", leave: bool = False,
        delay: float = 0.0, file: TextIO | None = None, **options: Any) -> Any:
    """A ``tqdm`` progress bar: a widget in a notebook, a redrawn line on a terminal,
    silent when the output is not a terminal.

    Args:
        total: How many steps make the whole (``None``: unknown).
        desc: What is being done, in a few words ("catching up").
        unit: What a step is ("agents", "%").
        leave: Keep the finished bar on screen (the default removes it).
        delay: Show the bar only once the work has taken this many seconds.
        file: Where a terminal bar is drawn (default: ``sys.stderr``).
        options: More ``tqdm`` keyword arguments.

    Returns:
        A ``tqdm`` object: ``update(n)``, ``set_description(text)``, ``close()``; it is
        also a context manager.
    """
    if in_kernel():
        return _bar_class(notebook=True)(total=total, desc=desc, unit=unit, leave=leave,
                                         delay=delay, **options)
    out = sys.stderr if file is None else file
    return _bar_class(notebook=False)(total=total, desc=desc, unit=unit, leave=leave,
                                      delay=delay, file=out, disable=None, dynamic_ncols=True,
                                      **options)


@functools.cache
def _bar_class(notebook: bool) -> type:
    """``tqdm.auto.tqdm`` (notebook) or ``tqdm.tqdm`` without tqdm's monitor thread (it
    would start with the first bar, even a silent one, and wake every 10 s for good)."""
    if notebook:
        from tqdm.auto import tqdm as base
    else:
        from tqdm import tqdm as base
    return type("Bar", (base,), {"monitor_interval": 0, "__module__": __name__})
