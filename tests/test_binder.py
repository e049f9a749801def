"""Binder's ``binder/requirements.txt`` is a lock that agrees with ``pyproject.toml``: exact
pins only, every dependency of agentbook and of the extras it installs pinned, each pin
inside pyproject's range, and the front ends the README's Binder links need.

(That the lock is complete - pip adds nothing to it - and runs every notebook is checked by
``.ci/run``, which installs it alone into a fresh venv and runs ``binder/check.py``.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "binder" / "requirements.txt"


def _lines() -> list[str]:
    return [line.strip() for line in LOCK.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in _lines():
        if line.startswith("-e "):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"binder/requirements.txt: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = Version(match[2])
    return pins


def _installed_extras() -> list[str]:
    (line,) = [line for line in _lines() if line.startswith("-e ")]
    match = re.fullmatch(r"-e \.\[([a-z,]+)\]", line)
    assert match, f"the checkout's line should be '-e .[extras]', not {line!r}"
    return match[1].split(",")


def test_the_lock_pins_every_dependency_within_pyproject_s_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = _pins()
    extras = _installed_extras()
    assert {"models", "ray", "serve", "mcp"} <= set(extras), "the notebooks use these extras"
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    problems = []
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not pinned (run python binder/lock.py)")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside pyproject's {req}")
    assert not problems, problems


def test_the_lock_has_the_front_ends_and_a_kernel_binder_s_image_lacks():
    pins = _pins()
    for name in ("jupyterlab", "voila", "mcp-server-time", "ipywidgets", "nbclient", "tqdm"):
        assert name in pins, name
    assert pins["ipykernel"] >= Version("7.4"), "top-level await in cells needs ipykernel 7.4"


def test_binder_runs_the_python_ci_tests_with():
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == "python-3.11", runtime  # .ci/run: Python 3.11 on Debian


def test_the_lock_script_reads_this_environment_s_closure():
    """binder/lock.py pins what is installed, and refuses an environment that does not
    satisfy a requirement (it never writes a lock the tests could not have passed with)."""
    sys.path.insert(0, str(ROOT / "binder"))
    try:
        import lock
    finally:
        sys.path.remove(str(ROOT / "binder"))
    from importlib import metadata

    pins = lock.closure([Requirement("packaging")])
    assert pins == {"packaging": metadata.version("packaging")}
    with pytest.raises(SystemExit, match="is required"):
        lock.closure([Requirement("packaging<1")])
    with pytest.raises(SystemExit, match="is not installed"):
        lock.closure([Requirement("surely-not-installed-here")])
    text = lock.render({"a-b": "1.0"})
    assert text.endswith("-e .[models,ray,serve,mcp]\na-b==1.0\n")
