"""The timeline's workflow section: an agent's workflow runs and their steps as they were at
one version, the steps that version wrote marked.

A view over time travel, never a second source of truth: the journal at version *v* is read
from ``ref.at(v)`` (the agent's tracked tables, the workflow journal among them, as they were)
with the store's read helpers; a step record names the version that last wrote it, so the
steps version *v* wrote are those naming *v*. Each journal is read once per widget (a version
never changes) and kept for the last :data:`KEEP` versions looked at; an agent with no
workflow run at its newest version costs one query and shows nothing.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import AgentbookError
from ..store.workflows import read_runs, read_steps
from ..workflow.engine import TERMINAL
from .common import escape as _e

if TYPE_CHECKING:
    from ..core.ref import AgentRef
    from ..store.workflows import RunRow, StepRow

__all__ = ["KEEP", "Journal", "Journals", "journal_html"]

#: Journals kept per widget (the versions looked at last).
KEEP = 16
#: Runs listed at one version: those the version wrote first, then unfinished, then newest.
MAX_RUNS = 8

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_BOX = "font-size:12px;line-height:1.5;margin:2px 0"
_LIST = "margin:0 0 4px 0;padding-left:22px"
_HERE = "background:var(--jp-warn-color3,#fff3cd)"
#: How each step status is shown: ``status: (symbol, colour)``.
_MARKS = {"completed": ("&#10003;", "#2e7d32"), "waiting": ("&#8987;", "#e65100"),
          "retrying": ("&#8635;", "#e65100"), "failed": ("&#10007;", "#c62828")}
_RUN_COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "cancelled": "#666"}


class Journal(NamedTuple):
    """The workflow runs and steps of an agent at one version."""

    runs: list[RunRow]
    steps: list[StepRow]


class Journals:
    """The journals of one agent, read through time travel and kept by version.

    Args:
        ref: The agent.
    """

    def __init__(self, ref: AgentRef) -> None:
        self.ref = ref
        self._kept: dict[int, Journal | None] = {}

    def clear(self) -> None:
        """Forget every journal read (after a prune, the versions may be gone)."""
        self._kept.clear()

    def any_runs(self) -> bool:
        """Whether the agent has a workflow run at its newest version (one query)."""
        return not self.ref.workflows().empty

    def at(self, version: int) -> Journal | None:
        """The journal at *version* (``None``: the version can't be read any more)."""
        if version in self._kept:
            return self._kept[version]
        try:
            view = self.ref.at(version)
        except AgentbookError:
            found = None
        else:
            try:
                conn = view.connection()
                found = Journal(read_runs(conn), read_steps(conn))
            finally:
                view.close()
        if len(self._kept) >= KEEP:
            self._kept.pop(next(iter(self._kept)))
        self._kept[version] = found
        return found

    def html(self, version: int) -> str:
        """The section at *version* (``""`` when the agent has no runs)."""
        if not self.any_runs():
            return ""
        journal = self.at(version)
        return "" if journal is None else journal_html(journal, version)


def journal_html(now: Journal, version: int) -> str:
    """The runs and steps of *now* (the journal at *version*), the steps *version* wrote
    marked; their runs come first, then the unfinished ones, then the newest."""
    if not now.runs:
        return f"<div style=\"{_BOX}\"><b>workflows</b> <span style=\"{_MUTED}\">none at " \
               f"version {version}</span></div>"
    # (records written before steps carried their version have none: nothing is marked)
    wrote = {(s.run, s.seq) for s in now.steps if s.version == version}
    moved = {run for run, _ in wrote}
    steps: dict[str, list[StepRow]] = {}
    for s in now.steps:
        steps.setdefault(s.run, []).append(s)
    ranked = sorted(now.runs, key=lambda r: (r.id not in moved, r.status in TERMINAL,
                                             -r.created, r.id))
    shown = sorted(ranked[:MAX_RUNS], key=lambda r: (r.created, r.id))
    waiting = sum(1 for s in now.steps if s.kind == "approval" and s.status == "waiting")
    head = f"{len(now.runs)} run{'' if len(now.runs) == 1 else 's'} at version {version}"
    if waiting:
        head += f", {waiting} waiting for a person"
    parts = [f"<b>workflows</b> <span style=\"{_MUTED}\">{_e(head)}</span>"]
    for run in shown:
        parts.append(_run_html(run, steps.get(run.id, []), wrote, version, run.id in moved))
    if len(now.runs) > len(shown):
        parts.append(f"<span style=\"{_MUTED}\">and {len(now.runs) - len(shown)} more "
                     "(ref.workflows())</span>")
    return f"<div class=\"agentbook-workflows\" style=\"{_BOX}\">{''.join(parts)}</div>"


def _run_html(run: RunRow, steps: list[StepRow], wrote: set, version: int, moved: bool) -> str:
    args = [_short(a) for a in _loads(run.args) or []]
    args += [f"{k}={_short(v)}" for k, v in (_loads(run.kwargs) or {}).items()]
    colour = _RUN_COLOURS.get(run.status, "#e65100")
    line = (f"<div{_here(moved)}><code>{_e(run.method)}({_e(', '.join(args))})</code> "
            f"<span style=\"{_MUTED}\">{_e(run.id)}</span> &middot; "
            f"<span style=\"color:{colour}\">{_e(run.status)}</span>")
    if run.status == "failed" and run.error:
        line += f" <span style=\"{_MUTED}\">{_e(_cut(run.error))}</span>"
    items = "".join(_step_html(s, (s.run, s.seq) in wrote, version) for s in steps)
    return line + "</div>" + (f"<ol start=\"0\" style=\"{_LIST}\">{items}</ol>" if items else "")


def _step_html(step: StepRow, here: bool, version: int) -> str:
    mark, colour = _MARKS.get(step.status, ("&middot;", "#666"))
    words = _step_words(step)
    tag = (f" <span style=\"{_MUTED}\">&#9664; written at version {version}</span>"
           if here else "")
    return (f"<li{_here(here)} data-status=\"{_e(step.status)}\">"
            f"<span style=\"color:{colour}\">{mark}</span> <b>{_e(step.name)}</b> "
            f"<span style=\"{_MUTED}\">{_e(step.kind)}</span> "
            f"&middot; {words}{tag}</li>")


def _step_words(step: StepRow) -> str:
    """What the step did, or what it waits for, in a few words (HTML)."""
    status, kind = step.status, step.kind
    if status == "waiting":
        what = {"sleep": "sleeping", "event": "waiting for the event",
                "approval": "waiting for a person"}.get(kind, "waiting")
        text = f"{what} since {_when(step.started)}"
        if step.until is not None:
            text += (f", until {_when(step.until)}" if kind == "sleep"
                     else f", times out at {_when(step.until)}")
        return f"<span style=\"color:#e65100\">{_e(text)}</span>"
    if status == "retrying":
        return (f"<span style=\"color:#e65100\">{_e(_tries(step.attempts))} failed, next try at "
                f"{_e(_when(step.until))}</span>"
                + (f" <span style=\"{_MUTED}\">{_e(_cut(step.error))}</span>" if step.error else ""))
    if status == "failed":
        return (f"<span style=\"color:#c62828\">failed at {_e(_when(step.ended))}</span> "
                f"<span style=\"{_MUTED}\">{_e(_cut(step.error or ''))}</span>")
    text = f"{status} at {_when(step.ended)}"
    if kind == "do" and step.attempts > 1:
        text += f" after {step.attempts} attempts"
    elif kind == "approval":
        decision = _loads(step.result) or {}
        if isinstance(decision, dict) and decision.get("status"):
            text = f"{decision['status']}" + (f" by {decision['by']}" if decision.get("by")
                                              else "") + f" at {_when(step.ended)}"
    elif kind == "event" and step.result in (None, "null") and step.until is not None \
            and step.ended is not None and step.ended >= step.until:
        text = f"timed out at {_when(step.ended)}"
    return _e(text)


def _here(on: bool) -> str:
    return f" style=\"{_HERE}\"" if on else ""


def _tries(n: int) -> str:
    return f"{n} attempt{'' if n == 1 else 's'}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _loads(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return text


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
