"""Chat turns in flight, and the ones a restart found cut short.

A turn commits once, at its end; a process killed before that leaves nothing of it in the
agent's store - and, by itself, no trace that it ever ran. So every turn puts a mark on
record in the catalog (:mod:`agentbook.store.chatturns`) as it starts, in a commit of its
own (in the event loop's next turn: off the time to first token), and removes it after the
turn's commit (at once if the turn failed: a failure stores
nothing and its caller hears of it). A mark left by an earlier life of the runtime is an
interrupted turn. The next handler of that agent that touches the conversation - a new
turn, or :meth:`~agentbook.chat.agent.ChatAgent._ab_recover_turns`, which the serve path
and the chat widget send when they find one - stores it:

- the user's message that started it (if that is not stored), and
- an empty assistant message named :data:`INTERRUPTED` (``ref.messages()`` shows it;
  over the wire it is an assistant UIMessage with no parts and ``metadata.interrupted``;
  the model never sees it).

Nothing of what the turn had said is stored - never half a turn. The mark is then kept as
*interrupted* until the agent's next turn: it is what a reconnecting client's resume probe
is answered with (Cloudflare's terminal record: ``resuming``, then after the ack an error
frame whose text is :data:`INTERRUPTED_TEXT`). A turn whose mark outlived its commit (the
process died in between) is recognized by the conversation having grown past the mark's
*watermark*, and only its mark is dropped.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..envelope import Envelope
from ..store import messages as stored
from ..store.chatturns import ChatTurns, TurnMark
from .ui import INTERRUPTED

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..store import AgentStore

__all__ = ["AFTER_COMMIT", "INTERRUPTED", "INTERRUPTED_TEXT", "TurnLog", "TurnMark", "begin", "end",
           "log_of", "recover", "settle", "store_interrupted", "unrecovered"]

Key = tuple[str, str]

#: What a client is told of an interrupted turn (the error of its resumed stream).
INTERRUPTED_TEXT = ("The turn was interrupted: the agent's process stopped before it finished, "
                    "and nothing of its answer was stored. Send the message again.")
#: The ``ctx.events`` kind whose payload is called after the commit (agentbook.serve.gate).
AFTER_COMMIT = "connection:send"


class TurnLog:
    """The turn marks of one runtime (one owner id per runtime, so per process life)."""

    __slots__ = ("catalog", "left", "owner", "reported", "table")

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.owner = secrets.token_hex(8)
        self.table: ChatTurns | None = None
        #: Marks of turns an earlier life left running, by agent, until stored.
        self.left: dict[Key, list[TurnMark]] = {}
        #: The interrupted turn last reported per agent, until its next turn.
        self.reported: dict[Key, TurnMark] = {}

    def open(self) -> ChatTurns:
        """The table (on first use: what earlier lives left is read)."""
        if self.table is None:
            self.table = ChatTurns(self.catalog)
            for mark in self.table.marks():
                if mark.owner == self.owner:
                    continue
                key = (mark.agent, mark.name)
                if mark.state == "running":
                    self.left.setdefault(key, []).append(mark)
                else:
                    self.reported[key] = mark
        return self.table


_logs: weakref.WeakKeyDictionary[Any, TurnLog] = weakref.WeakKeyDictionary()


def log_of(rt: Any) -> TurnLog:
    """The turn log of runtime *rt*."""
    log = _logs.get(rt)
    if log is None:
        log = _logs[rt] = TurnLog(rt.catalog)
    return log


def unrecovered(rt: Any) -> list[Key]:
    """The agents whose turns an earlier life of *rt*'s folder left unfinished and that
    are not stored as interrupted yet."""
    log = log_of(rt)
    log.open()
    return list(log.left)


def store_interrupted(rt: Any, key: Key) -> Any:
    """Send agent *key* the message that stores the turns an earlier life left unfinished
    as interrupted (:meth:`~agentbook.chat.agent.ChatAgent._ab_recover_turns`); its
    future (how many it stored)."""
    env = Envelope.call("_ab_recover_turns", (), source=rt.source, label="recover_turns")
    return rt.submit(key, env)


def recover(log: TurnLog, key: Key, ctx: HandlerContext, store: AgentStore,
            now: float) -> tuple[list[TurnMark], list[TurnMark]]:
    """Inside a handler of agent *key* that is about to touch its conversation: store the
    turns an earlier life left unfinished as interrupted (see the module's docstring).
    Returns ``(the marks looked at, those stored as interrupted)`` for :func:`settle`
    after the commit; a dict look-up when there are none."""
    log.open()
    if key not in log.left:
        return [], []
    marks = [m for m in log.open().marks(*key) if m.owner != log.owner and m.state == "running"]
    found: list[TurnMark] = []
    for mark in marks:
        if stored.last_seq(store) > mark.watermark:  # it committed; its mark outlived it
            continue
        ctx.capture(store)
        if mark.asked_id and mark.asked is not None \
                and not stored.has_message(store, mark.asked_id):
            stored.add_message(store, mark.asked_id, "user", mark.asked, None, None, None, now)
        if not stored.has_message(store, mark.reply):
            stored.add_message(store, mark.reply, "assistant", "", None, None, INTERRUPTED, now)
        found.append(mark)
    if not marks:  # (another process ran and finished them)
        log.left.pop(key, None)
    return marks, found


def settle(log: TurnLog, key: Key, marks: list[TurnMark], found: list[TurnMark],
           superseded: bool) -> None:
    """After the commit of :func:`recover`'s handler: the marks of the turns stored as
    interrupted stay as their report (unless a new turn of the same handler supersedes
    it); the others go."""
    table = log.open()
    log.left.pop(key, None)
    for mark in marks:
        if mark in found and not superseded:
            table.interrupted(*key, mark.id)
            log.reported[key] = mark._replace(state="interrupted")
        else:
            table.end(*key, mark.id)


def begin(log: TurnLog, key: Key, store: AgentStore, turn_id: str, asked_id: str | None,
          asked: str | None, reply: str) -> TurnMark:
    """A turn starts: its mark goes on record, committed in the next turn of the event
    loop - before anything else that loop turn runs, but after the turn's first frames
    (the commit is off the time to first token; a process killed in between, within
    microseconds of the start, leaves no mark and so no report)."""
    table = log.open()
    supersede = log.reported.pop(key, None) is not None
    mark = TurnMark(key[0], key[1], turn_id, log.owner, stored.last_seq(store), asked_id, asked,
                    reply, "running", time.time())
    asyncio.get_running_loop().call_soon(table.begin, mark, supersede)
    return mark


def end(log: TurnLog, key: Key, ctx: HandlerContext, mark: TurnMark, failed: bool) -> None:
    """The turn's work is done: its mark goes after the commit (at once if it *failed*:
    nothing of it will commit), in a later turn of the event loop than its
    :func:`begin`'s write (so always after it) and than the turn's last frames."""
    table = log.open()
    loop = asyncio.get_running_loop()
    if failed:
        loop.call_soon(table.end, *key, mark.id)
    else:
        ctx.events.append((AFTER_COMMIT, lambda: loop.call_soon(table.end, *key, mark.id)))
