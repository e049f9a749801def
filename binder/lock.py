"""Pin Binder to the environment the tests passed in: writes ``binder/requirements.txt``.

    python binder/lock.py            # rewrite binder/requirements.txt from this environment
    python binder/lock.py --check    # exit 1 when the file is not what this environment gives

Binder (repo2docker) runs ``pip install -r binder/requirements.txt`` from the repository's
root. The file installs this checkout with the extras the notebooks use (``EXTRAS``) and
pins every package that brings - agentbook's dependencies, theirs, and so on - to the exact
version installed here, plus the front ends (``FRONT_ENDS``: JupyterLab, Voila, the offline
MCP server of notebook 09). So Monday's workshop gets the very versions Friday's tests ran
with, never a release nobody tried. Run it in the environment the tests just passed in (CI's
``.venv``, or yours after ``pip install -e ".[test]" && pytest``); ``.ci/run`` then builds a
fresh virtual environment from the file alone, checks it is the lock (``binder/check.py``)
and runs every notebook in it (the notebook tests, in a kernel of that environment).

The closure is read from the installed packages' metadata, markers evaluated for this
Python and platform - Binder's is Linux with ``binder/runtime.txt``'s Python, so lock on
Linux with that Python.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "binder" / "requirements.txt"

#: agentbook's extras that Binder installs: the notebooks use models (07), Ray (11), serve
#: (08) and MCP (09).
EXTRAS = ("models", "ray", "serve", "mcp")
#: What Binder adds beside agentbook: the front ends and notebook 09's offline MCP server.
FRONT_ENDS = ("jupyterlab", "voila", "mcp-server-time")
#: Installers are Binder's own business, never pinned.
UNPINNED = {"pip", "setuptools", "wheel", "agentbook"}

HEADER = f"""\
# Binder's environment, pinned to the versions the tests passed with. Do not edit by hand:
# regenerate it with `python binder/lock.py` in the environment the tests just passed in.
# Binder (repo2docker) runs `pip install -r binder/requirements.txt` from the repository's
# root, so "." below is this checkout; .ci/run installs this file alone into a fresh
# virtual environment and runs every notebook there (binder/check.py).
# ipykernel>=7.4 among the pins matters: Binder's base image has an older one, and top-level
# `await` in cells needs 7.4. The Voila approval demo:
# ?urlpath=voila/render/notebooks/04_human_in_the_loop.ipynb
-e .[{",".join(EXTRAS)}]
"""


def roots() -> list[Requirement]:
    """agentbook's dependencies and those of its Binder extras (from pyproject.toml, so a
    dependency just added counts even before a reinstall), and the front ends."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found + [Requirement(name) for name in FRONT_ENDS]


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """``{distribution name: installed version}`` for *requirements* and everything they
    need, as installed in this environment.

    Raises:
        SystemExit: a package is missing or its version does not satisfy a requirement
            (this environment is not one the tests could have passed in).
    """
    pinned: dict[str, str] = {}
    names: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, frozenset[str]()) for req in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (parent_extras or {""})):
            continue
        key = canonicalize_name(req.name)
        if key in UNPINNED:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"binder/lock.py: {req.name} ({req}) is not installed here; lock in "
                             "the environment the tests passed in (pip install -e '.[test]')"
                             ) from None
        version = dist.version
        if not req.specifier.contains(version, prereleases=True):
            raise SystemExit(f"binder/lock.py: {req.name} {version} is installed but {req} is "
                             "required; update this environment first")
        pinned[key], names[key] = version, dist.metadata["Name"]
        extras = frozenset(canonicalize_name(e) for e in req.extras)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        todo += [(Requirement(r), extras) for r in dist.requires or ()]
    return {names[k]: pinned[k] for k in sorted(pinned)}


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python binder/lock.py", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only say whether binder/requirements.txt matches this environment")
    args = parser.parse_args(argv)
    text = render(closure(roots()))
    if args.check:
        if LOCK.read_text(encoding="utf-8") == text:
            print("binder/requirements.txt matches this environment")
            return 0
        print("binder/requirements.txt differs from this environment; run python binder/lock.py",
              file=sys.stderr)
        return 1
    LOCK.write_text(text, encoding="utf-8")
    print(f"wrote {LOCK.relative_to(ROOT)}: {text.count('==')} pinned packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
