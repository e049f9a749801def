"""Which agent classes the serve path and the MCP server offer: the user's own.

``ab.Agent`` and ``ab.ChatAgent`` are bases to subclass, and the classes agentbook defines
for itself (the benchmarks', the demo's) are its own machinery: none of them is an agent
a client should be able to make by naming it in a URL (``/agents/chat-agent/x`` would
otherwise make a store of a bare ``ChatAgent``). A class counts as agentbook's own when
its module is ``agentbook`` or inside it; classes defined anywhere else - a notebook, an
app module, a test - are served.
"""

from __future__ import annotations

from ..core.agent import Agent

__all__ = ["is_own", "served_classes"]


def is_own(cls: type) -> bool:
    """Whether *cls* is defined inside the ``agentbook`` package itself."""
    module = getattr(cls, "__module__", "") or ""
    return module == "agentbook" or module.startswith("agentbook.")


def served_classes() -> dict[str, type[Agent]]:
    """The user's agent classes defined in this process, by class name (the newest
    definition of each), walked from ``ab.Agent``'s subclasses on demand.

    The walk goes through agentbook's own classes to their subclasses (a user's
    ``ChatAgent`` subclass is served) and never lets one of them shadow a user's class
    of the same name."""
    found: dict[str, type[Agent]] = {}
    stack = list(reversed(Agent.__subclasses__()))
    while stack:
        cls = stack.pop()
        if not is_own(cls):
            found[cls.__name__] = cls
        stack.extend(reversed(cls.__subclasses__()))
    return found
