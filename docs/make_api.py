"""Write docs/api.md from the package's docstrings: `python docs/make_api.py`.

tests/test_docs.py fails when a public name is missing from docs/api.md.
"""

from __future__ import annotations

import inspect
import os

import agentbook as ab
from agentbook.analytics.plots import Plots
from agentbook.travel.bisect import BisectResult
from agentbook.travel.versions import Diff, VersionView

CLASSES = [ab.Agent, ab.AgentRef, ab.Runtime, ab.ChatAgent, ab.Approvals, ab.VirtualClock, Plots,
           ab.Step, ab.WorkflowRun, VersionView, Diff, BisectResult]


def first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def members(cls: type) -> dict[str, object]:
    """The class's own members and those of its mixins; what a documented base class has
    is documented there (``ChatAgent`` lists only what ``Agent`` has not)."""
    inherited = {k for base in cls.__mro__[1:] if base in CLASSES for k in base.__mro__}
    found: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("agentbook") and klass not in inherited:
            found.update(vars(klass))
    return found


def main() -> None:
    out = ["# agentbook API", "",
           "Generated from the docstrings by `python docs/make_api.py`; `help(ab.X)` has the rest.",
           "", "## Names in `agentbook`", "", "| name | what it is |", "|---|---|"]
    for name in ab.__all__:
        out.append(f"| `ab.{name}` | {first_line(getattr(ab, name))} |")
    for cls in CLASSES:
        out += ["", f"## `{cls.__name__}`", "", first_line(cls), "", "| member | what it does |",
                "|---|---|"]
        for name, member in sorted(members(cls).items()):
            if name.startswith("_") or name in getattr(cls, "_ab_internal", ()):
                continue
            if not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            kind = "property" if isinstance(member, property) else "method"
            out.append(f"| `{name}` ({kind}) | {first_line(member)} |")
    path = os.path.join(os.path.dirname(__file__), "api.md")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
