"""Finding the optional peers (LangGraph) of the suite.

Peers live in ``tests/bench/peers/`` of a source checkout so that their libraries stay
out of agentbook's dependencies. They are loaded by file path; set
``AGENTBOOK_BENCH_PEERS`` to a folder holding them when agentbook is installed without
its source tree.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_file", "load_peer", "peer_folder"]


def peer_folder() -> Path:
    """The folder the peer files are loaded from."""
    env = os.environ.get("AGENTBOOK_BENCH_PEERS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "tests" / "bench" / "peers"


def load_peer(name: str) -> ModuleType | str:
    """Import the peer module ``<name>_peer.py``.

    Returns:
        The module, or a one-sentence reason why the peer can't run (file not found, or
        its library is not installed); the caller skips the comparison with that reason.
    """
    path = peer_folder() / f"{name}_peer.py"
    if not path.is_file():
        return (f"the {name} peer ({path}) is not here: run from a source checkout, or set "
                "AGENTBOOK_BENCH_PEERS to the folder holding tests/bench/peers")
    module = load_file(f"_agentbook_bench_peer_{name}", path)
    if isinstance(module, str):
        return f"the {name} peer {module}"
    missing = getattr(module, "MISSING", None)
    return missing if missing else module


def load_file(module_name: str, path: Path) -> ModuleType | str:
    """Import the Python file *path* as *module_name* (once), or say why it failed."""
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return f"could not be loaded from {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        return f"failed to import: {type(exc).__name__}: {exc}"
    return module
