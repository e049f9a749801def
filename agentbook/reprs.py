"""HTML reprs for notebooks: small, escaped, and never slow."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.ref import AgentRef
    from .core.runtime import Runtime

__all__ = ["ref_html", "runtime_html"]

_STYLE = ("font-family:var(--jp-code-font-family,monospace);font-size:12px;"
          "border-left:3px solid #6b8afd;padding:4px 10px;margin:2px 0")


def _short_json(value: Any, limit: int = 400) -> str:
    text = json.dumps(value, ensure_ascii=False, indent=1, default=str)
    if len(text) > limit:
        text = text[:limit] + " ..."
    return html.escape(text)


def ref_html(ref: AgentRef) -> str:
    """An agent reference: class, name, version, awake or not, and its state."""
    rt = ref.runtime
    inst = rt.instances.get(ref._ab_key)
    awake = inst is not None and inst.store is not None
    version: object
    try:
        state, version = ref.state, ref.version
    except Exception as exc:  # a repr must never raise
        state, version = f"(unreadable: {exc})", "?"
    return (
        f'<div style="{_STYLE}"><b>{html.escape(ref.class_name)}</b>'
        f"(<code>{html.escape(repr(ref.name))}</code>) &middot; version {version} &middot; "
        f"{'awake' if awake else 'hibernating'}"
        f'<pre style="margin:4px 0 0 0">{_short_json(state)}</pre></div>'
    )


def runtime_html(rt: Runtime) -> str:
    """A runtime: where it stores, how many agents exist and are awake."""
    if rt.closed:
        return f'<div style="{_STYLE}"><b>agentbook.Runtime</b> (closed)</div>'
    total = rt.catalog.count()
    where = "in memory" if rt.memory else html.escape(rt.root)
    return (
        f'<div style="{_STYLE}"><b>agentbook.Runtime</b> &middot; {where} &middot; '
        f"{total} agent{'s' if total != 1 else ''}, {len(rt.open_stores)} awake &middot; "
        f"durability {rt.durability} &middot; clock {html.escape(repr(rt.clock))}</div>"
    )
