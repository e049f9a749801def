"""Portable agents: ``ref.export(path)`` and ``rt.import_agent(path, name=)``.

A workshop attendee hands the teacher "the agent that misbehaved" as one file; the
teacher imports it into their own runtime and bisects, diffs and replays it there. The
file is a SQLite database (see :mod:`agentbook.store.export` for what is in it and what
is left out: never a secret, never a pending approval); after export -> import the
history, every ``at(k)`` and every ``diff(a, b)`` are the same as the original's, and the
history's hash chain still verifies.

Importing is all or nothing, like a fork: the file is checked first (label, SQLite's
integrity check, hash chain), then the new store is written whole under a temporary name
and published with one link, so a failure leaves no agent behind.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any

from ..errors import AgentFileError, OwnedElsewhereError, UsageError
from ..store import AgentStore, lease, open_reader
from ..store.export import ExportInfo, check_export, install_export, write_export
from .replay import wake_for_workflows

if TYPE_CHECKING:
    from ..core.ref import AgentRef

__all__ = ["ExportInfo", "export_agent", "import_agent"]


def export_agent(ref: AgentRef, path: str | os.PathLike, overwrite: bool, agentbook: str
                 ) -> ExportInfo:
    """Write *ref*'s last commit to *path* (see :func:`agentbook.store.export.write_export`)."""
    rt = ref.runtime
    rt.check_open()
    source = rt.path_of(ref._ab_key)
    if not os.path.exists(source):
        raise UsageError(f"{ref!r} has no history yet to export: it is created by its first "
                         "message")
    dest = os.fspath(path)
    if os.path.isdir(dest):
        raise UsageError(f"{dest} is a folder; pass a file path, e.g. {dest}/agent.abagent")
    if os.path.exists(dest) and not overwrite:
        raise AgentFileError(f"{dest} already exists; export to another path, or pass "
                             "overwrite=True")
    if not overwrite:
        return write_export(source, dest, rt.clock.now(), agentbook)
    tmp = f"{dest}.{secrets.token_hex(6)}.new"
    try:
        info = write_export(source, tmp, rt.clock.now(), agentbook)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return info


async def import_agent(rt: Any, path: str | os.PathLike, name: str | None,
                       replace: bool) -> AgentRef:
    """Bring the export at *path* into *rt* as agent *name* (default: its name there)."""
    rt.check_open()
    shown = os.fspath(path)
    info = check_export(shown)  # (before anything is written)
    name = info.name if name is None else name
    if not isinstance(name, str) or not name:
        raise UsageError("an imported agent needs a name: a non-empty string")
    target: AgentRef = rt.get(info.class_name, name)
    new_path = rt.path_of(target._ab_key)
    exists = target._ab_key in rt.instances or os.path.exists(new_path)
    if exists and not replace:
        raise UsageError(f"an agent {info.class_name}({name!r}) already exists; import "
                         "under another name= or pass replace=True to put this one in its "
                         "place")
    # The new store is made whole first, under a temporary name: if that fails, nothing
    # changed (an agent it would replace is still there).
    tmp = _prepare(rt, shown, target, new_path)
    try:
        if exists:
            await target.destroy()
        held = None
        if not rt.memory:
            try:
                held = lease.take(rt.catalog.lock_path(info.class_name, name),
                                  f"{info.class_name}({name!r})")
            except OwnedElsewhereError:
                if os.path.exists(new_path):
                    raise UsageError(f"an agent {info.class_name}({name!r}) already exists; "
                                     "import under another name=") from None
                raise
        try:
            _publish(rt, tmp, info, target, new_path)
        finally:
            if held is not None:  # (an import that made no store leaves no lock file)
                held.release(remove=not os.path.exists(new_path))
    finally:
        _remove(tmp)
    reader = open_reader(new_path)
    try:
        wake_for_workflows(rt, target._ab_key, reader)
    finally:
        reader.close()
    if rt.events.active:
        rt.emit_event("timetravel:import", target._ab_key,
                      {"file": os.path.basename(shown), "from": f"{info.class_name}/{info.name}",
                       "head": info.head})
    return target


def _prepare(rt: Any, path: str, target: AgentRef, new_path: str) -> str:
    """The agent's store, written whole under a temporary name next to *new_path*."""
    class_name, name = target._ab_key
    os.makedirs(os.path.dirname(new_path), exist_ok=True)
    tmp = f"{new_path}.import-{secrets.token_hex(6)}.tmp"
    try:
        install_export(path, tmp, class_name, name, rt.clock.now())
        store = AgentStore(tmp, rt.durability)  # (brings an older file's schema up to date)
        try:
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            store.close()
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _publish(rt: Any, tmp: str, info: ExportInfo, target: AgentRef, new_path: str) -> None:
    """Publish the prepared store under its name with one link (never over another)."""
    class_name, name = target._ab_key
    if os.path.exists(new_path):
        raise UsageError(f"an agent {class_name}({name!r}) already exists; import under "
                         "another name=")
    rt.catalog.add(class_name, name, os.path.relpath(new_path, rt.catalog.root), rt.clock.now(),
                   f"import:{info.class_name}/{info.name}@{info.head}")
    try:
        try:
            os.link(tmp, new_path)
        except FileExistsError:
            raise UsageError(f"an agent {class_name}({name!r}) already exists; import under "
                             "another name=") from None
        except OSError:
            if os.path.exists(new_path):
                raise UsageError(f"an agent {class_name}({name!r}) already exists; import "
                                 "under another name=") from None
            os.replace(tmp, new_path)
    except BaseException:
        if not os.path.exists(new_path):
            rt.catalog.remove(class_name, name)
        raise


def _remove(tmp: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(tmp + suffix)
        except FileNotFoundError:
            pass
