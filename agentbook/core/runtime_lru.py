"""Hibernation: which agents stay awake. At most ``max_open`` stores are open; opening
one more hibernates the least recently used idle agent, and a sweep every
``hibernate_after`` seconds hibernates the ones idle that long (their files are closed
and nothing of them stays in memory). Mixed into :class:`~agentbook.runtime.Runtime`."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mailbox import Instance

Key = tuple[str, str]


class HibernationMixin:
    """The open-store LRU and the idle sweep of a runtime (mixed into ``ab.Runtime``)."""

    _open: OrderedDict[Key, Instance]
    _instances: dict[Key, Instance]
    _sweep_handle: asyncio.TimerHandle | None
    _mcp: Any

    def _opened(self, inst: Instance) -> None:
        self._open[inst.key] = inst
        excess = len(self._open) - self.max_open
        if excess > 0:  # the least recently used idle ones go (no copy of the open list)
            victims = []
            for other in self._open.values():
                if other is not inst and not other.busy:
                    victims.append(other)
                    if len(victims) == excess:
                        break
            for other in victims:
                self._hibernate(other)
        if self._sweep_handle is None and not self.memory and self.hibernate_after > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._sweep_handle = loop.call_later(self.hibernate_after, self._sweep)

    def _idle(self, inst: Instance) -> None:
        if inst.key in self._open:
            self._open.move_to_end(inst.key)
        elif not inst.queue and inst.store is None:
            self._instances.pop(inst.key, None)

    def _sweep(self) -> None:
        self._sweep_handle = None
        if self.closed:
            return
        cutoff = time.monotonic() - self.hibernate_after
        for inst in list(self._open.values()):
            if inst.last_used < cutoff and not inst.busy:
                self._hibernate(inst)
        if self._open:
            loop = asyncio.get_running_loop()
            self._sweep_handle = loop.call_later(self.hibernate_after, self._sweep)

    def _hibernate(self, inst: Instance) -> None:
        if self._mcp is not None:
            self._mcp.close_agent(inst.key)
        inst.close()
        self._open.pop(inst.key, None)
        if not inst.busy:
            self._instances.pop(inst.key, None)
        if self.events.active:
            self._emit("agent:hibernate", inst.key, {"version": inst.committed[0]})
