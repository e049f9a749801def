"""Draining and removing Ray hosts (node-local stores): ``rt.remove_hosts(n)`` and
``rt.drain_node(node_id)``, the other side of ``rt.add_hosts(n)``.

Draining a host, on the driver, while traffic goes on:

1. The coordinator marks it draining (it takes no new shard or replica) and gives the
   replicas it keeps to other hosts; their owners seed them (ship every agent from its
   first version), and the drain waits until they have, so no acknowledged version lives
   only on the leaving host's copies.
2. Each shard it owns moves, whole, to the live host with the fewest shards
   (``AgentHost.hand_over``: fenced, files and catalog rows shipped through Ray's object
   store to the new owner and its replica, a new epoch). Calls to a moving shard are
   refused before they commit and re-routed by the driver; schedules, approvals,
   workflows and the outbox move with their agent and fire once, on the new owner.
3. The coordinator forgets the host; every other host renews (so none routes to it any
   more); the host, taking the driver's calls in order, closes its runtime and deletes its
   folder (nothing in it is anyone's truth now); the driver stops it, and Ray does not
   restart it. A folder it could not delete (all of it) is logged as a warning on the
   driver, naming the host, its node, the folder and why: delete it by hand.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .shards import actor_gone, ray_module

if TYPE_CHECKING:
    from .ray import RayRouter

__all__ = ["check_leaving", "delete_folder", "drain_host", "hosts_on"]

log = logging.getLogger("agentbook.ray")


def delete_folder(folder: str) -> str:
    """Delete *folder* and everything in it, as far as it goes; returns what was left and
    why (``""``: nothing is left)."""
    failed: list[str] = []

    def note(path: str, exc: BaseException) -> None:
        if not failed:  # (the first reason; the folders above it fail after it)
            failed.append(f"{path} ({type(exc).__name__}: {exc})")

    if sys.version_info >= (3, 12):  # (onerror is deprecated there)
        shutil.rmtree(folder, onexc=lambda _func, path, exc: note(path, exc))
    else:
        shutil.rmtree(folder, onerror=lambda _func, path, info: note(path, info[1]))
    if not os.path.exists(folder):
        return ""
    return f"{folder} is left: {failed[0] if failed else 'it came back'}"


def hosts_on(router: RayRouter, node: str) -> list[int]:
    """The live hosts on Ray node *node* (hex id); a typed error for an unknown node."""
    ray = ray_module()
    if not isinstance(node, str) or not node:
        raise UsageError(f"node_id is a Ray node id (hex text), not {node!r}")
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    if node not in alive:
        raise UsageError(f"no live Ray node has the id {node!r}; the live ones: "
                         f"{', '.join(sorted(alive))} (ray.nodes(), or `ray status`)")
    live = router.serving_hosts()
    places = ray.get([router.handle(i).hello.remote() for i in live])
    return [i for i, hello in zip(live, places, strict=True) if hello["node"] == node]


def check_leaving(router: RayRouter, leaving: list[int]) -> None:
    """Refuse to remove every host (someone has to own the shards)."""
    left = [i for i in router.serving_hosts() if i not in leaving]
    if not left:
        raise UsageError(
            f"removing {'host' if len(leaving) == 1 else 'hosts'} "
            f"{', '.join(map(str, leaving))} would leave no host to own the shards; "
            "add a host first (rt.add_hosts(1)) or close the runtime")


def drain_host(router: RayRouter, index: int, leaving: set[int]) -> list[dict[str, Any]]:
    """Move everything host *index* owns or keeps to the hosts not *leaving*, then stop
    it. Returns the moves (``shard``, ``from``, ``to``, ``agents``, ``bytes``,
    ``seconds``)."""
    ray = ray_module()
    coordinator = router.coordinator
    view = ray.get(coordinator.drain.remote(index))
    stay = [i for i in router.live_hosts() if i not in leaving and i not in view["dead"]]
    # the leaving host's replicas: re-seeded on other hosts before it goes
    ray.get([router.handle(i).replicas_caught_up.remote() for i in stay])
    moves = []
    for shard, owner in enumerate(view["owners"]):
        if owner != index:
            continue
        view = ray.get(coordinator.view.remote())
        to = min(stay, key=lambda h: (view["owners"].count(h), h))
        began = time.perf_counter()
        done = ray.get(router.handle(index).hand_over.remote(shard, to))
        moves.append({"shard": shard, "from": index, "to": to, **done,
                      "seconds": time.perf_counter() - began})
    ray.get(coordinator.remove.remote(index))
    ray.get([router.handle(i).renew.remote() for i in stay])  # (none routes to it now)
    router.refresh()
    handle = router.handle(index)
    try:
        left = ray.get(handle.retire.remote(router.sender, router.next_seq(index)))
    except Exception as exc:  # (it was lost meanwhile: nothing of it to stop)
        if not actor_gone(exc):
            raise
        left = ""
    if left:
        log.warning("host %d left files behind %s; delete them by hand (nothing in them "
                    "is needed: its agents moved)", index, left)
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # (gone already)
        pass
    router.forget_host(index)
    return moves
