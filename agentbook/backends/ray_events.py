"""Events of agents hosted on Ray, relayed to the driver's ``rt.events`` while someone
listens there (see :class:`EventRelay`); with nobody listening, hosts stay silent."""

from __future__ import annotations

import asyncio
import json as _json
from typing import TYPE_CHECKING, Any

from .. import jsonvalue

if TYPE_CHECKING:
    from .ray import RayRouter

__all__ = ["EventRelay", "event_encoder"]


class EventRelay:
    """On the driver: events of the agents on the hosts, while someone listens here.

    While the driver's ``rt.events`` has a subscriber, one long poll per host
    (``AgentHost.events``) brings that host's events over in batches, as JSON text, and
    they are emitted on the driver's bus with their own timestamps. The first subscriber
    starts a listening spell: each host is sent ``listen``, numbered like the messages, so
    it subscribes to its own bus before it takes in any message sent after the subscribe
    (a restarted host subscribes again on its next poll). When the last driver subscriber
    goes, the hosts are told to unsubscribe (``mute``), so with nobody listening a host's
    bus is inactive and events cost nothing there, as everywhere. Spells are numbered, so
    a late ``mute`` can't silence a newer spell. Host events arrive a little after the
    results of the calls that caused them, not in step with them.
    """

    def __init__(self, router: RayRouter) -> None:
        self.router = router
        self.bus = router.rt.events
        self.spell = 0
        self.tasks: list[asyncio.Task] = []
        self.bus.watch(self.changed)  # called when `active` may have changed

    def changed(self) -> None:
        if self.bus.active:
            self.poll()
        elif self.tasks:
            self.close(mute=True)

    def poll(self) -> None:
        """Start the polls if someone listens and they don't run (needs a running loop)."""
        if any(not t.done() for t in self.tasks) or not self.bus.active or self.router.rt.closed:
            return  # (polls that ended - e.g. on a bad payload - are started again)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the next message forwarded from a running loop
        self.spell += 1
        router = self.router
        for index in router.live_hosts():  # numbered like messages: in before the next one
            router.handle(index).listen.remote(router.sender, router.next_seq(index), self.spell)
        self.tasks = [asyncio.ensure_future(self._pump(i, self.spell))
                      for i in router.live_hosts()]

    def close(self, mute: bool = False) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        if mute:
            for index in self.router.live_hosts():
                try:
                    self.router.handle(index).mute.remote(self.spell)
                except Exception:  # a host that is gone holds no subscription
                    pass

    async def _pump(self, index: int, spell: int) -> None:
        bus = self.bus
        while bus.active and not self.router.rt.closed:
            try:
                text = await self.router.handle(index).events.remote(spell)
            except asyncio.CancelledError:
                raise
            except Exception:  # the host restarted: its next poll subscribes it again
                await asyncio.sleep(0.5)
                continue
            if text is None:  # muted: this spell is over
                return
            for type_, agent, name, payload, timestamp in _json.loads(text):
                if not bus.active:
                    return
                bus.emit(type_, agent, name, payload, timestamp / 1000)


def _event_default(value: Any) -> Any:
    """What an event payload holds that JSON doesn't: a secret as its redacted form (as
    ``jsonvalue`` writes it), anything else as its ``repr``."""
    try:
        return jsonvalue.redact_secret(value)
    except TypeError:
        return repr(value)


event_encoder = _json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                   default=_event_default)
