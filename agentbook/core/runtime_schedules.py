"""The scheduling side of a runtime: dead letters, ``settle``, and what the timer and the
mailbox call when scheduled work is due or fails. Mixed into
:class:`~agentbook.runtime.Runtime`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..schedule.firing import TICK
from .mailbox import Envelope

if TYPE_CHECKING:
    import pandas as pd

Key = tuple[str, str]


class SchedulesMixin:
    """Dead letters and scheduled work of a runtime (mixed into ``ab.Runtime``)."""

    def dead_letters(self) -> pd.DataFrame:
        """Scheduled and queued work that failed every attempt, across all agents."""
        import pandas as pd

        frame = pd.DataFrame.from_records(
            self.catalog.dead_letters(),
            columns=["id", "agent", "name", "callback", "payload", "type", "attempts", "error",
                     "failed_at"],
        )
        frame["payload"] = [jsonvalue.loads(p) for p in frame["payload"]]
        frame["failed_at"] = pd.to_datetime(frame["failed_at"].astype("float64"), unit="s", utc=True)
        return frame

    async def retry_dead_letter(self, letter_id: str) -> None:
        """Queue a dead letter's work again on its agent (a fresh set of attempts)."""
        await self._dead_letter_op(letter_id, "_ab_retry_dead_letter", "retry_dead_letter")

    async def drop_dead_letter(self, letter_id: str) -> None:
        """Forget a dead letter for good."""
        await self._dead_letter_op(letter_id, "_ab_drop_dead_letter", "drop_dead_letter")

    async def _dead_letter_op(self, letter_id: str, method: str, label: str) -> None:
        from ..schedule.policy import ScheduleError

        self._check_open()
        where = self.catalog.dead_letter(letter_id)
        if where is None:
            raise ScheduleError(f"no dead letter has id {letter_id!r}; see rt.dead_letters()")
        env = Envelope(method, (letter_id,), {}, jsonvalue.dumps([letter_id]), None, self.source,
                       label=label)
        await self._submit(tuple(where), env)
        self.catalog.remove_dead_letter(letter_id)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until no agent has work running or queued (at most *timeout* real seconds).

        ``VirtualClock.advance`` calls this after each timer, so simulated time only moves
        on once the work due at the current instant is done.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._router is not None:
            await self._router.settle()
        while True:
            for _ in range(2):
                await asyncio.sleep(0)
            tasks = [i.task for i in self._instances.values() if i.task is not None]
            if not tasks:
                if any(i.queue for i in self._instances.values()):
                    continue
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.wait(tasks, timeout=remaining)

    def _tick(self, key: Key) -> None:
        """The timer says *key* has something due: wake it with a tick message."""
        if not self._owns(key):
            return
        inst = self._instances.get(key)
        if inst is not None and any(e.method == TICK for e in inst.queue):
            return
        self._enqueue(key, Envelope(TICK, (), {}, "[]", None, "timer"))

    def _scheduled_failure(self, key: Key, outcome: Any) -> None:
        label, letter = outcome.recorded
        env = outcome.env
        if letter is not None:
            self.catalog.add_dead_letters([letter])
        if self.events.active:
            self._emit_scheduled("retry" if label == "retry" else "error", key, env,
                                 outcome.version, str(outcome.value))

    def _emit_scheduled(self, what: str, key: Key, env: Envelope, version: int,
                        error: str | None = None) -> None:
        row = env.sched
        kind = "queue" if row[3] == "queue" else "schedule"
        payload = {"id": row[0], "callback": row[1], "type": row[3], "due": row[4],
                   "occurrence": f"{row[0]}:{row[9]}", "attempt": row[8] + 1, "version": version}
        if error is not None:
            payload["error"] = error
        self._emit(f"{kind}:{what}", key, payload)
