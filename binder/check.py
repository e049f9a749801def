"""Check an environment built from ``binder/requirements.txt`` alone, as Binder builds it.

    python -m venv /tmp/binder && /tmp/binder/bin/pip install -r binder/requirements.txt
    /tmp/binder/bin/python binder/check.py [--lock-only] [NOTEBOOK ...]

1. Every installed package is pinned in the lock at the installed version (a package the
   lock forgot would have been picked by pip at whatever version is newest today).
2. Every notebook (or the ones named) runs top to bottom in a kernel of this Python, each in
   its own temporary folder, offline, with no error output. ``--lock-only`` skips this.

Uses only what the lock installs (nbclient and nbformat come with Voila and JupyterLab).
``.ci/run`` runs it with ``--lock-only`` before the tests, then has the tests run the
notebooks in a kernel of this environment (``AGENTBOOK_NOTEBOOK_PYTHON``), which checks
more than step 2 does, so CI runs each notebook once. Exit status 0 when all is well, 1
otherwise.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "binder" / "requirements.txt"
#: Installed by venv/pip themselves, or this checkout: never in the lock.
OWN = {"pip", "setuptools", "wheel", "agentbook"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    """``{canonical name: version}`` of the lock's ``name==version`` lines."""
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    return pins


def environment_problems() -> list[str]:
    """How this environment differs from the lock (empty when it is the lock)."""
    pins = lock_pins()
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    problems = [f"{name} {version} is installed but not in the lock"
                for name, version in sorted(installed.items())
                if name not in OWN and name not in pins]
    problems += [f"{name}: the lock says {pins[name]}, {installed[name]} is installed"
                 for name in sorted(pins) if name in installed and installed[name] != pins[name]]
    problems += [f"{name}=={pins[name]} is in the lock but not installed"
                 for name in sorted(pins) if name not in installed]
    return problems


def run_notebook(path: Path, kernel_name: str) -> str | None:
    """Run *path* in a fresh temporary folder; ``None`` when it ran clean, else why not."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="agentbook-binder-") as folder:
        client = NotebookClient(nb, kernel_name=kernel_name, timeout=180,
                                resources={"metadata": {"path": folder}})
        try:
            client.execute()
        except CellExecutionError as exc:
            return re.sub(r"\x1b\[[0-9;]*m", "", str(exc).strip().splitlines()[-1])  # no colours
    errors = [out for cell in nb.cells for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    return f"{errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else None


def main(argv: list[str]) -> int:
    lock_only = "--lock-only" in argv
    argv = [a for a in argv if a != "--lock-only"]
    problems = environment_problems()
    for problem in problems:
        print(f"binder/check.py: {problem}", file=sys.stderr)
    if problems:
        print("binder/check.py: this is not the environment binder/requirements.txt makes "
              "(install it alone into a fresh venv; relock with python binder/lock.py)",
              file=sys.stderr)
        return 1
    print(f"binder/check.py: the environment is the lock ({len(lock_pins())} pinned packages)")
    if lock_only:
        return 0
    notebooks = [Path(a).resolve() for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    failed = 0
    with tempfile.TemporaryDirectory(prefix="agentbook-binder-kernels-") as jupyter:
        # a python3 kernel that is this interpreter, first on Jupyter's path (whatever other
        # python3 kernels the machine has)
        spec = Path(jupyter) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=ERROR"],  # (not its TCP-on-loopback warning)
            "display_name": "Python 3 (ipykernel)", "language": "python"}))
        os.environ["JUPYTER_PATH"] = jupyter
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        for path in notebooks:
            t0 = time.perf_counter()
            why = run_notebook(path, "python3")
            took = time.perf_counter() - t0
            print(f"{'ok  ' if why is None else 'FAIL'}  {path.name}  {took:.1f} s"
                  + (f"  {why}" if why else ""), flush=True)
            failed += why is not None
    if failed:
        print(f"binder/check.py: {failed} notebook{'s' if failed != 1 else ''} failed",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
