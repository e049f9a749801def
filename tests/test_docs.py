"""The documentation keeps up with the code."""

from __future__ import annotations

import inspect
import os

import agentbook as ab

ROOT = os.path.dirname(os.path.dirname(__file__))


def _api() -> str:
    with open(os.path.join(ROOT, "docs", "api.md")) as fh:
        return fh.read()


def test_every_public_name_is_documented_in_docs_api():
    api = _api()
    missing = [n for n in ab.__all__ if f"`ab.{n}`" not in api]
    assert not missing, f"run `python docs/make_api.py`: {missing} are not in docs/api.md"


def test_every_public_method_of_the_main_classes_is_documented():
    api = _api()
    missing = []
    for cls in (ab.Agent, ab.AgentRef, ab.Runtime, ab.ChatAgent, ab.Approvals, ab.VirtualClock):
        # what the class has from every agentbook class it derives from, not only its own body
        members: dict[str, object] = {}
        for klass in reversed(cls.__mro__):
            if klass.__module__.startswith("agentbook"):
                members.update(vars(klass))
        for name, member in members.items():
            if name.startswith("_") or name in getattr(cls, "_ab_internal", ()):
                continue
            if inspect.isfunction(member) or isinstance(member, property):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
                if f"`{name}`" not in api:
                    missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"run `python docs/make_api.py`: {missing} are not in docs/api.md"


def test_the_readme_names_every_notebook():
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    notebooks = sorted(n for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb"))
    assert notebooks
    missing = [n for n in notebooks if n not in readme]
    assert not missing, f"README.md doesn't link {missing}"
