"""Chat turns in flight, on record in the catalog: what a restart finds interrupted.

A chat turn commits once, at its end, in the agent's own store; a process that dies before
that commit leaves nothing of it there. So that the next life knows a turn was cut short
(and says so, rather than forgetting it), each turn puts a row in the catalog's
``chat_turns`` table when it starts - its own small commit, outside the agent's
transaction - and deletes it after the turn's commit. A row whose owner (a runtime, in a
process) is gone is an interrupted turn; once its record is stored in the conversation
the row is kept as ``interrupted`` (what a reconnecting client is told) until the agent's
next turn supersedes it.

The rows belong to :mod:`agentbook.chat.turns`, which decides what they mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import apsw

from .sqlaccess import translate_error

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["ChatTurns", "TurnMark"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_turns(
    class TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    watermark INTEGER NOT NULL,
    asked_id TEXT,
    asked TEXT,
    reply TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    PRIMARY KEY (class, name, id)
) WITHOUT ROWID
"""
_COLS = "class, name, id, owner, watermark, asked_id, asked, reply, state, started"


class TurnMark(NamedTuple):
    """One row of ``chat_turns``: a turn that started and has not been seen to commit."""

    agent: str  # the class name
    name: str
    id: str  # the turn's (its stream's, a wire request's) id
    owner: str  # the runtime that ran it
    watermark: int  # the conversation's last seq when it started (more after: it committed)
    asked_id: str | None  # the user's message that started it (None: a continuation)
    asked: str | None  # its text
    reply: str  # the id its assistant message has (or gets, recorded as interrupted)
    state: str  # running | interrupted
    started: float  # wall clock, epoch s


class ChatTurns:
    """The ``chat_turns`` table of one catalog (made on first use)."""

    __slots__ = ("conn", "path")

    def __init__(self, catalog: Catalog) -> None:
        self.conn: apsw.Connection = catalog.conn
        self.path = catalog.path
        self._run(_SCHEMA, ())

    def _run(self, sql: str, args: tuple) -> list[tuple]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except apsw.ConnectionClosedError:  # (the runtime closed: its next life sorts it out)
            return []
        except apsw.Error as exc:
            raise translate_error(exc, self.path) from None

    def begin(self, mark: TurnMark, supersede: bool) -> None:
        """Put *mark* on record (committed at once); *supersede*: first drop the agent's
        ``interrupted`` rows (a later turn replaces their report)."""
        if supersede:
            self._run("DELETE FROM chat_turns WHERE class = ? AND name = ? AND state = "
                      "'interrupted'", (mark.agent, mark.name))
        self._run(f"INSERT OR REPLACE INTO chat_turns({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  mark)

    def end(self, agent: str, name: str, turn_id: str) -> None:
        """The turn committed (or failed, storing nothing): forget its row."""
        self._run("DELETE FROM chat_turns WHERE class = ? AND name = ? AND id = ?",
                  (agent, name, turn_id))

    def interrupted(self, agent: str, name: str, turn_id: str) -> None:
        """The turn's interruption is stored in its conversation: keep it as reported."""
        self._run("UPDATE chat_turns SET state = 'interrupted' WHERE class = ? AND name = ?"
                  " AND id = ?", (agent, name, turn_id))

    def marks(self, agent: str | None = None, name: str | None = None) -> list[TurnMark]:
        """The rows of one agent (or of all, without *agent*), oldest first."""
        if agent is None:
            rows = self._run(f"SELECT {_COLS} FROM chat_turns ORDER BY started", ())
        else:
            rows = self._run(f"SELECT {_COLS} FROM chat_turns WHERE class = ? AND name = ?"
                             " ORDER BY started", (agent, name))
        return [TurnMark._make(r) for r in rows]
