"""What every part of the Ray backend shares: an agent's shard, Ray itself, node folders."""

from __future__ import annotations

import os
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from ..errors import HostUnavailableError, UsageError

__all__ = ["Key", "actor_gone", "ask_restarting", "folder_id", "node_folder", "ray_module",
           "shard_of"]

Key = tuple[str, str]


def shard_of(key: Key, shards: int) -> int:
    """The virtual shard of an agent: stable across processes and runs."""
    return zlib.crc32(f"{key[0]}\x00{key[1]}".encode("utf-8", "surrogatepass")) % shards


def ray_module() -> Any:
    """Ray, imported when first needed (or a helpful error)."""
    try:
        import ray
    except ImportError:
        raise UsageError("the Ray backend needs Ray: pip install 'agentbook[ray]'") from None
    return ray


#: Ray's errors for a call whose actor died or is restarting (by name: Ray's exception
#: classes moved between versions, and this module does not import Ray).
_ACTOR_GONE = frozenset({"ActorDiedError", "ActorUnavailableError", "RayActorError"})


def actor_gone(exc: BaseException) -> bool:
    """Whether *exc* is Ray saying the actor called has died or is restarting."""
    return type(exc).__name__ in _ACTOR_GONE


def ask_restarting(ray: Any, call: Callable[[], Any], what: str, timeout: float = 60.0,
                   pause: float = 0.2) -> Any:
    """``ray.get(call())``, asked again while Ray says the actor is restarting (a host of a
    lost node, being started on another: its calls fail with ``ActorUnavailableError``
    until it is up) - for *timeout* seconds, then the typed error that says to try again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(call())
        except Exception as exc:
            if not actor_gone(exc):
                raise
            if time.monotonic() >= deadline:
                raise HostUnavailableError(f"{what} is restarting (its node was lost) and did "
                                           f"not answer within {timeout:g} s; try again in "
                                           "a moment") from None
        time.sleep(pause)


def node_folder(host_dir: str | None) -> str:
    """This node's folder: *host_dir* with ``{node}`` as this process's Ray node id (hex),
    or by default ``agentbook-<node>`` under the node's Ray temp dir."""
    ray = ray_module()
    node = ray.get_runtime_context().get_node_id()
    if host_dir is None:
        temp = None
        try:  # (the node's --temp-dir; Ray has no public getter for it)
            from ray._private import worker

            temp = worker._global_node.get_temp_dir_path()  # type: ignore[attr-defined]  # noqa: SLF001
        except Exception:
            pass
        host_dir = os.path.join(temp or os.path.join(os.path.sep, "tmp", "ray"), "agentbook-{node}")
    return os.path.abspath(os.path.expanduser(host_dir.replace("{node}", node)))


def folder_id(folder: str) -> str:
    """The id of a host's store folder (made on first use, in ``host.id``): a host back
    with another id has lost its stores (a lost disk, or another node)."""
    path = os.path.join(folder, "host.id")
    try:
        with open(path, encoding="utf-8") as fh:
            found = fh.read().strip()
        if found:
            return found
    except FileNotFoundError:
        pass
    made = uuid.uuid4().hex
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(made)
    os.replace(path + ".tmp", path)
    return made
