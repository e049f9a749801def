"""``agentbook doctor``: is this environment ready for agentbook, and if not, what to do.

Each check gives ``(ok, what, detail, fix)``; a failed *required* check makes the command
exit 1. Nothing is installed or changed: it only looks.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from importlib import metadata
from typing import Any

__all__ = ["check_environment", "format_checks", "verdict_line"]

# (distribution, the extra that brings it, what it is for)
_OPTIONAL = [
    ("openai", "models", "OpenAI and OpenAI-compatible models"),
    ("anthropic", "models", "Anthropic models"),
    ("google-genai", "models", "Gemini models"),
    ("starlette", "serve", "rt.serve(): agents over HTTP and WebSocket"),
    ("uvicorn", "serve", "rt.serve()"),
    ("websockets", "serve", "ab.connect()"),
    ("mcp", "mcp", "MCP servers and clients"),
    ("ray", "ray", "ab.Runtime(backend='ray')"),
]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_environment(path: str = ".agentbook") -> list[dict[str, Any]]:
    """Run every check; returns one dict per check (``ok``, ``required``, ``what``,
    ``detail``, ``fix``)."""
    out: list[dict[str, Any]] = []

    def add(ok: bool, what: str, detail: str, fix: str = "", required: bool = True) -> None:
        out.append({"ok": ok, "required": required, "what": what, "detail": detail,
                    "fix": "" if ok else fix})

    py = sys.version_info
    add(py >= (3, 10), "Python", f"{py.major}.{py.minor}.{py.micro}",
        "use Python 3.10 or newer")
    kernel = _version("ipykernel")
    add(kernel is not None and _tuple(kernel) >= (7, 4), "ipykernel", kernel or "not installed",
        "pip install 'ipykernel>=7.4' (top-level await in cells and background tasks between "
        "cells need it; Binder's image pins an older one)")
    widgets = _version("ipywidgets")
    add(widgets is not None and _tuple(widgets) >= (8,), "ipywidgets", widgets or "not installed",
        "pip install 'ipywidgets>=8'")
    lab = _version("jupyterlab") or _version("notebook") or _version("voila")
    add(lab is not None, "a widgets front end", (lab and f"found ({lab})") or "none found",
        "pip install jupyterlab (or notebook 7, or voila) to click the approval inbox",
        required=False)
    apsw_version = _version("apsw")
    has_session = False
    if apsw_version:
        import apsw

        has_session = hasattr(apsw, "Session")
    add(bool(apsw_version) and has_session, "apsw with SQLite sessions",
        apsw_version or "not installed", "pip install -U apsw (time travel needs its sessions)")
    add(_writable(path), "store folder writable", _store_folder(path),
        f"make {path} writable, or pass another folder to ab.Runtime(path)")
    for dist, extra, purpose in _OPTIONAL:
        version = _version(dist)
        add(version is not None, f"{dist} (optional)", version or f"not installed: {purpose}",
            f"pip install 'agentbook[{extra}]'", required=False)
    node = _which("node")
    add(node is not None, "node (optional)", node or "not found: the npm client tests",
        "apt-get install nodejs (only the tests that use Cloudflare's npm client need it)",
        required=False)
    return out


def _store_folder(path: str) -> str:
    """The store folder, and whether it exists yet (a runtime creates it on first use)."""
    folder = os.path.abspath(path)
    if os.path.isdir(folder):
        return folder
    if os.path.exists(folder):
        return f"{folder} (not a folder)"
    parent = _existing_parent(folder)
    return (f"{folder} (does not exist yet; ab.Runtime({path!r}) creates it"
            + (f" in {parent})" if parent else ")"))


def _existing_parent(folder: str) -> str | None:
    """The nearest folder above *folder* that exists."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return folder if os.path.isdir(folder) else None


def _writable(path: str) -> bool:
    """Whether a runtime could write its store at *path*: the folder, when it exists,
    or else the nearest folder above it that does (where it would be created)."""
    folder = os.path.abspath(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        return False
    found = _existing_parent(folder)
    if found is None:
        return False
    folder = found
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _which(program: str) -> str | None:
    import shutil

    return shutil.which(program)


def format_checks(checks: list[dict[str, Any]], verdict: bool = True) -> str:
    """The checks as lines a person reads: ok / FIX / note, and what to do; with *verdict*,
    a last line that says whether agentbook is ready."""
    lines = []
    for check in checks:
        mark = "ok  " if check["ok"] else ("FIX " if check["required"] else "note")
        lines.append(f"{mark}  {check['what']}: {check['detail']}")
        if check["fix"]:
            lines.append(f"      -> {check['fix']}")
    if verdict:
        lines.append(verdict_line(checks))
    return "\n".join(lines)


def verdict_line(checks: list[dict[str, Any]], stores_bad: int = 0) -> str:
    """"agentbook is ready." or what is left to fix: failed required *checks*, and
    *stores_bad* stores that are damaged or quarantined."""
    failed = sum(1 for c in checks if c["required"] and not c["ok"])
    parts = []
    if failed:
        parts.append(f"{failed} thing{'s' if failed != 1 else ''} to fix (see FIX above)")
    if stores_bad:
        parts.append(f"{stores_bad} store{'s' if stores_bad != 1 else ''} damaged or "
                     "quarantined (see above)")
    return "agentbook is ready." if not parts else "; ".join(parts) + "."


def importable(module: str) -> bool:
    """Whether *module* can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None
