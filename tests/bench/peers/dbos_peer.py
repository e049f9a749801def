"""The DBOS peer of ``agentbook bench``: durable workflow steps with DBOS Transact on SQLite.

DBOS Transact (``pip install dbos``, 3.4) checkpoints a workflow's status and each step's
output in its *system database*; here a SQLite file in the bench's temporary folder, on an
engine of our own that keeps DBOS's connection settings (``IMMEDIATE`` transactions, a busy
timeout, foreign keys) and adds WAL with ``synchronous=NORMAL`` - the durability agentbook's
``durability="normal"`` gives (DBOS's default on SQLite, a rollback journal with
``synchronous=FULL``, also survives an OS crash and is about twice as slow here).

The workload mirrors agentbook's: a workflow of *steps* steps, each step one tiny durable
write. A DBOS step's output is checkpointed in the same commit that records the step, so
the step ``bump(n) -> n + 1`` makes its write durable with nothing beyond its own
checkpoint: one commit per step, like agentbook's ``step.do`` whose ``self.set_state``
commits with the step's journal record. (A step writing to a SQLite table of its own would
cost DBOS a second commit per step; the comparison leaves DBOS that advantage.)

Workflows are plain synchronous ``@DBOS.workflow`` functions called one after another
(DBOS's fastest path here: ``DBOS.start_workflow`` from many threads is slower on SQLite).
Inputs and outputs go through DBOS's portable JSON serializer, not its pickle default.
DBOS's logs are silenced (level ``ERROR``) and :meth:`DBOSPeer.close` shuts it down
(``DBOS.destroy``: its threads stop) so the next peer can launch a fresh one.

The suite loads this file by path (it lives under ``tests/`` so DBOS stays an optional
extra: ``pip install 'agentbook[bench]'``). Without DBOS, :data:`MISSING` says why and the
suite skips the comparison.
"""

from __future__ import annotations

import logging
import time
from typing import Any

try:
    import sqlalchemy as sa
    from dbos import DBOS, DBOSPortableJSONSerializer
except ImportError as exc:  # pragma: no cover - depends on the environment
    MISSING: str | None = (
        f"DBOS Transact is not installed ({exc.name or exc}); "
        "pip install 'agentbook[bench]' to compare against it"
    )
else:
    MISSING = None

__all__ = ["MISSING", "DBOSPeer"]

if MISSING is None:
    @DBOS.step()
    def bump(n: int) -> int:
        """The step: the counter's next value (its checkpoint is the durable write)."""
        return n + 1

    @DBOS.workflow()
    def counted(steps: int) -> int:
        """A workflow of *steps* steps, each bumping the counter it got from the last."""
        n = 0
        for _ in range(steps):
            n = bump(n)
        return n


def _engine(path: str) -> Any:
    """A SQLAlchemy engine on *path*: DBOS's own SQLite settings, plus WAL and NORMAL."""
    engine = sa.create_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"  # (as DBOS's own engine does)
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


class DBOSPeer:
    """A launched DBOS with its system database on a SQLite file.

    Only one DBOS can be alive in a process: close a peer before making the next.

    Args:
        path: The system database's SQLite file.
        as_shipped: DBOS's own SQLite settings (a rollback journal, ``synchronous=FULL``:
            what a DBOS user gets) instead of WAL and ``NORMAL``.

    Raises:
        RuntimeError: DBOS is not installed (the message says how to install it).
    """

    def __init__(self, path: str, *, as_shipped: bool = False) -> None:
        if MISSING is not None:
            raise RuntimeError(MISSING)
        logging.getLogger("dbos").setLevel(logging.ERROR)
        self.engine = None if as_shipped else _engine(path)
        config: dict[str, Any] = {
            "name": "agentbook-bench",
            "system_database_url": f"sqlite:///{path}",
            "log_level": "ERROR",
            "serializer": DBOSPortableJSONSerializer(),
        }
        if self.engine is not None:  # (as shipped: DBOS's own SQLite engine and settings)
            config["system_database_engine"] = self.engine
        DBOS(config=config)
        try:
            DBOS.launch()
        except BaseException:
            self.close()
            raise

    def run(self, workflows: int, steps: int) -> float:
        """Run *workflows* workflows of *steps* steps one after another; steps per second."""
        t0 = time.perf_counter()
        for _ in range(workflows):
            if counted(steps) != steps:
                raise RuntimeError("a DBOS workflow did not run every step")
        return workflows * steps / max(time.perf_counter() - t0, 1e-9)

    def close(self) -> None:
        """Shut DBOS down (its threads stop) and dispose of the engine."""
        DBOS.destroy(destroy_registry=False)  # (the next DBOS() finds the workflow again)
        if self.engine is not None:
            self.engine.dispose()
