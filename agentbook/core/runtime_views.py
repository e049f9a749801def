"""What a runtime shows: ``rt.agents()``, the approval inbox, DuckDB views (``rt.sql``,
``rt.db``), plots, and the serve path. Mixed into :class:`~agentbook.runtime.Runtime`;
everything heavy (pandas, DuckDB, matplotlib, Starlette) is imported on first use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..approve.inbox import Approvals
from ..errors import AgentbookError

if TYPE_CHECKING:
    import pandas as pd

    from .agent import Agent


class ViewsMixin:
    """Tables, views, plots and serving of a runtime (mixed into ``ab.Runtime``)."""

    def agents(self, cls: type[Agent] | str | None = None) -> pd.DataFrame:
        """One row per agent: class, name, created, version, awake, parent."""
        import pandas as pd

        from ..store import open_reader
        from .runtime import _class_name

        rows = []
        for class_name, name, file, created, parent in self.catalog.rows(
            None if cls is None else _class_name(cls)
        ):
            inst = self._instances.get((class_name, name))
            if inst is not None and inst.store is not None:
                version = inst.committed[0]
            else:
                try:
                    conn = open_reader(os.path.join(self.root, file))
                    version = conn.execute("SELECT version FROM _ab_state").fetchall()[0][0]
                    conn.close()
                except (AgentbookError, IndexError):
                    version = None
            rows.append((class_name, name, pd.Timestamp(created, unit="s", tz="UTC"), version,
                         inst is not None and inst.store is not None, parent))
        frame = pd.DataFrame(rows, columns=["class", "name", "created", "version", "awake", "parent"])
        frame["version"] = frame["version"].astype("Int64")
        return frame

    @property
    def approvals(self) -> Approvals:
        """The approval inbox: displayed, a widget with Approve / Reject buttons;
        ``.pending()``, ``.approve(id)``, ``.reject(id, reason)``, ``.history()`` in code."""
        if self._approvals is None:
            self._approvals = Approvals(self)
        return self._approvals

    @property
    def db(self) -> Any:
        """The DuckDB connection holding the views (``agents``, ``history``, ``events``,
        ``schedules``, ``approvals``, ``dead_letters``, ``messages``, ``tool_calls``).
        Call :meth:`sql` (or ``rt.analytics.catch_up()``) to bring them up to date."""
        return self.analytics.db

    @property
    def analytics(self) -> Any:
        """The DuckDB projection behind :attr:`db` and :meth:`sql`."""
        if self._analytics is None:
            from ..analytics.views import Analytics

            self._analytics = Analytics(self)
        return self._analytics

    def sql(self, query: str, params: Any = None) -> pd.DataFrame:
        """Run a DuckDB query over every agent's history, state, schedules, approvals and
        events (caught up first); returns a DataFrame.

        Example:
            >>> rt.sql("SELECT agent, method, quantile_cont(duration_ms, .99) AS p99"
            ...        " FROM history GROUP BY ALL")  # doctest: +SKIP
        """
        return self.analytics.sql(query, params)

    def serve(self, port: int = 0, *, host: str = "127.0.0.1", token: str | None = None,
              allow_remote: bool = False, mcp: bool = False, **options: Any) -> Any:
        """Serve the agents over HTTP and WebSocket (Cloudflare's agents protocol), in the
        background on the running event loop; returns a handle with ``url``, ``token``
        and ``stop()``. Binds 127.0.0.1 unless ``allow_remote=True`` (and a token).
        ``mcp=True`` also serves each agent's callable methods as MCP tools."""
        from ..serve import serve

        return serve(self, port=port, host=host, token=token, allow_remote=allow_remote,
                     mcp=mcp, **options)

    def capture_events(self, on: bool = True) -> None:
        """Copy observability events into the ``events`` view from now on (or stop)."""
        self.analytics.capture_events(on)

    @property
    def plot(self) -> Any:
        """Matplotlib figures of what the agents did: ``rt.plot.schedule()``, ..."""
        from ..analytics.plots import Plots

        return Plots(self)
