"""IPython magics: ``%load_ext agentbook`` gives ``%agents`` and ``%%sql``.

Both work on the runtime made most recently in this kernel (or ``ab.runtime()``).
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

__all__ = ["AgentbookMagics", "load_ipython_extension"]


def _runtime() -> Any:
    from ..core.runtime import current_runtime

    return current_runtime()


@magics_class
class AgentbookMagics(Magics):
    """``%agents`` lists agents; ``%%sql`` runs DuckDB over the runtime's views."""

    @line_magic
    def agents(self, line: str) -> Any:
        """``%agents [Class]``: the agents of the current runtime, as a DataFrame."""
        return _runtime().agents(line.strip() or None)

    @cell_magic
    def sql(self, line: str, cell: str) -> Any:
        """``%%sql``: the cell is a DuckDB query over ``agents``, ``history``, ``events``,
        ``schedules``, ``approvals``, ``dead_letters``, ``messages``, ``tool_calls``.
        ``%%sql name`` also stores the DataFrame in the variable ``name``."""
        frame = _runtime().sql(cell)
        target = line.strip()
        if target and self.shell is not None:
            self.shell.user_ns[target] = frame
        return frame


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext agentbook``)."""
    ipython.register_magics(AgentbookMagics)
