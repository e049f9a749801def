"""The timeline: scrub through an agent's versions, then fork or rewind at one.

A view over the agent's time-travel API, never a second source of truth: it reads
``ref.history_range()``, ``ref.history(...)`` and ``ref.at(v)``, and its buttons call
``ref.fork(name, at=v)`` and ``ref.rewind(v)`` exactly as code would, in the background
on the running event loop. :meth:`TimelineWidget.fork_here` and
:meth:`TimelineWidget.rewind_here` do what the buttons do and return that background work.

An agent with workflow runs also shows them as they were at the selected version: each
run's steps with their kind and status (a waiting step says what it waits for and since
when), the steps that version wrote marked (see :mod:`agentbook.widgets.journals`).

While open, the widget listens to the agent's events and extends the slider as versions
commit; if the newest version was selected, the selection follows the new one. ``close()``
stops listening. Pruning sends no event: click the refresh button after ``ref.prune(...)``.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import AgentbookError, VersionNotFoundError
from .journals import Journals

if TYPE_CHECKING:
    from ..core.ref import AgentRef

__all__ = ["TimelineWidget", "timeline_widget"]

#: Events after which the agent may have a new version.
EVENT_TYPES = ["rpc", "state:update", "timetravel:*", "schedule:execute", "queue:execute",
               "workflow:*"]

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_PRE = "max-height:320px;overflow:auto;margin:2px 0;font-size:12px;line-height:1.35"
_LINES = "line-height:1.6"  # an HTML widget's own line height is a widget row's (28px)


def timeline_widget(ref: AgentRef) -> TimelineWidget:
    """A live timeline of *ref* (what ``ref.timeline()`` returns), at its newest version.

    Args:
        ref: The agent to scrub through.
    """
    return TimelineWidget(ref)


class TimelineWidget(w.VBox):
    """A slider over the agent's reachable versions, the selected version's state and the
    step that made it, its workflow runs at that version, and **Fork here** / **Rewind here**
    buttons.

    Attributes:
        ref: The agent shown.
        slider: The ``IntSlider`` over ``ref.history_range()``.
        step_html: The selected step: input (method, arguments, source), time, duration, outcome.
        workflows_html: The agent's workflow runs and their steps at the selected version,
            the steps it wrote marked (empty for an agent without workflow runs).
        state_html: The state after the selected version, as pretty JSON.
        fork_name: The name for **Fork here** (empty: the suggested name in its placeholder).
        status: What the last fork or rewind did, or why it failed.
        task: The last fork or rewind started (an ``asyncio`` future; await it in tests).
        last_result: What the last successful fork (an ``AgentRef``) or rewind (a dict) returned.
        last_error: The text of the last failure (``""`` when none).
    """

    def __init__(self, ref: AgentRef) -> None:
        self.ref = ref
        self.slider = w.IntSlider(description="version", min=0, max=0, value=0,
                                  layout=w.Layout(width="420px"))
        self.refresh_button = w.Button(icon="refresh", tooltip="Re-read the agent's versions",
                                       layout=w.Layout(width="40px"))
        self.header, self.step_html, self.state_html, self.status = (w.HTML() for _ in range(4))
        self.workflows_html = w.HTML()
        self.journals = Journals(ref)
        self.fork_name = w.Text(layout=w.Layout(width="220px"))
        self.fork_button = w.Button(description="Fork here", icon="code-fork",
                                    tooltip="A new agent holding this version")
        self.rewind_button = w.Button(description="Rewind here", icon="undo", button_style="warning",
                                      tooltip="Put the agent back to this version (undoable)")
        super().__init__([
            self.header, w.HBox([self.slider, self.refresh_button]), self.step_html,
            self.workflows_html, self.state_html,
            w.HBox([self.fork_name, self.fork_button, self.rewind_button]),
            self.status])
        self.add_class("agentbook-timeline")
        self.task: asyncio.Future | None = None
        self.last_result: Any = None
        self.last_error = ""
        self._unsubscribe: Callable[[], None] | None = None
        self.slider.observe(lambda _change: self._render(), names="value")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.fork_button.on_click(lambda _b: self.fork_here())
        self.rewind_button.on_click(lambda _b: self.rewind_here())
        if not ref.runtime.closed:
            self._unsubscribe = ref.runtime.events.subscribe(self._on_event, types=EVENT_TYPES,
                                                             agent=ref)
        self.refresh(follow=True)

    @property
    def live(self) -> bool:
        """Whether the widget still follows the agent's new versions."""
        return self._unsubscribe is not None

    # -- what the controls do (callable from code and tests) --------------------------
    def select(self, version: int) -> None:
        """Show *version*, as moving the slider does (``-1`` is the newest).

        Raises:
            VersionNotFoundError: The agent has no such version (or it was pruned).
        """
        first, head = self._read_range()
        if isinstance(version, int) and not isinstance(version, bool) and version < 0:
            version = head + 1 + version
        if isinstance(version, bool) or not isinstance(version, int) or not first <= version <= head:
            raise VersionNotFoundError(
                f"{_who(self.ref)} has no version {version!r}: pick one of {first}..{head}")
        self._show_version(version)

    def fork_here(self, name: str | None = None) -> asyncio.Future | None:
        """Fork at the selected version, as **Fork here** does.

        Args:
            name: The new agent's name (default: the text field, else the suggested name).

        Returns:
            The background task (its result is the new ``AgentRef``), or ``None`` when it
            could not start (see :attr:`last_error`).
        """
        version = self.slider.value
        name = (name or self.fork_name.value).strip() or self._suggested_name(version)
        return self._start(f"fork {name!r} at version {version}",
                           lambda: self.ref.fork(name, at=version), self._forked)

    def rewind_here(self) -> asyncio.Future | None:
        """Rewind the agent to the selected version, as **Rewind here** does.

        Returns:
            The background task (its result is the rewind's summary dict), or ``None``
            when it could not start (see :attr:`last_error`).
        """
        version = self.slider.value
        return self._start(f"rewind to version {version}", lambda: self.ref.rewind(version),
                           self._rewound)

    def refresh(self, follow: bool = False) -> tuple[int, int]:
        """Re-read the reachable versions and re-render, as the refresh button does.

        Args:
            follow: Select the newest version (done anyway when it was selected).

        Returns:
            ``(first, newest)``: the versions the slider now covers.
        """
        at_head = self.slider.value == self.slider.max
        first, head = self._read_range()
        if not self.ref.runtime.closed:
            self._show_version(head if follow or at_head else self.slider.value)
        return first, head

    def close(self) -> None:
        """Stop listening to the agent and close the widget with all its parts."""
        self._stop()
        for child in self.children:
            for part in getattr(child, "children", ()):
                part.close()
            child.close()
        super().close()

    # -- rendering ----------------------------------------------------------------------
    def _read_range(self) -> tuple[int, int]:
        slider = self.slider
        if self.ref.runtime.closed:
            self._stop()
            self.header.value = f"<b>{_e(_who(self.ref))}</b> &middot; the runtime was closed"
            self.fork_button.disabled = self.rewind_button.disabled = True
            return slider.min, slider.max
        first, head = self.ref.history_range()
        if first != slider.min or head < slider.max:  # pruned, or made again: read anew
            self.journals.clear()
        if (first, head) != (slider.min, slider.max):
            with slider.hold_trait_notifications():
                slider.min, slider.max = first, head
        return first, head

    def _show_version(self, version: int) -> None:
        if self.slider.value == version:
            self._render()
        else:
            self.slider.value = version  # renders

    def _on_event(self, _event: dict) -> None:
        # Several events per version (rpc, state:update): render once, when the range moved.
        if self.live and self.ref.history_range() != (self.slider.min, self.slider.max):
            self.refresh()

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _render(self) -> None:
        version, ref = self.slider.value, self.ref
        self.fork_name.placeholder = self._suggested_name(version)
        self.header.value = (f"<b>{_e(_who(ref))}</b> &middot; version <b>{version}</b> "
                             f"<span style=\"{_MUTED}\">of {self.slider.min}..{self.slider.max}</span>")
        try:
            row = _step(ref, version)
            state = row["state"] if row is not None else ref.at(version).state
        except AgentbookError as exc:
            self.step_html.value = f"<span style=\"{_MUTED}\">{_e(exc)}</span>"
            self.state_html.value = self.workflows_html.value = ""
            self.fork_button.disabled = self.rewind_button.disabled = True
            return
        busy = self.task is not None and not self.task.done()
        self.fork_button.disabled = self.rewind_button.disabled = busy
        self.step_html.value = _step_html(row, version)
        try:
            self.workflows_html.value = self.journals.html(version)
        except AgentbookError as exc:
            self.workflows_html.value = f"<span style=\"{_MUTED}\">workflows: {_e(exc)}</span>"
        text = json.dumps(state, indent=2, ensure_ascii=False, default=str)
        self.state_html.value = f"<b>state</b><pre style=\"{_PRE}\">{_e(text)}</pre>"

    def _suggested_name(self, version: int) -> str:
        return f"{self.ref.name}-at-{version}"

    # -- background work ----------------------------------------------------------------
    def _start(self, what: str, make: Callable[[], Awaitable[Any]],
               done: Callable[[Any], str]) -> asyncio.Future | None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._show(f"Could not {what}: no event loop runs here; await ref.fork(...) or "
                       "ref.rewind(...) in a cell instead", error=True)
            return None
        try:
            task = asyncio.ensure_future(make())
        except Exception as exc:  # refused at once (e.g. the runtime is closed)
            self._show(f"Could not {what}: {type(exc).__name__}: {exc}", error=True)
            return None
        self.task = task
        self.fork_button.disabled = self.rewind_button.disabled = True
        self._show(f"{_e(what)}&hellip;")
        task.add_done_callback(lambda t: self._finished(what, t, done))
        return task

    def _finished(self, what: str, task: asyncio.Future, done: Callable[[Any], str]) -> None:
        if task.cancelled():
            self._show(f"The {what} was cancelled", error=True)
        elif task.exception() is not None:
            exc = task.exception()
            self._show(f"Could not {what}: {type(exc).__name__}: {exc}", error=True)
        else:
            self.last_result = task.result()
            self._show(done(self.last_result))
        if not self.ref.runtime.closed:
            self._render()

    def _forked(self, fork: AgentRef) -> str:
        return (f"&#10003; Forked <b>{_e(_who(fork))}</b> at version {fork.version}, state "
                f"<code>{_e(_short(fork.state))}</code>")

    def _rewound(self, result: dict) -> str:
        new = self.refresh(follow=True)[1]
        cancelled = ", ".join(result.get("cancelled_approvals") or [])
        return _e(f"Rewound to version {result['rewound_to']}: that is now version {new}. To undo, "
                  f"select version {result['from']} and rewind there."
                  + (f" Cancelled approvals: {cancelled}." if cancelled else ""))

    def _show(self, text_html: str, *, error: bool = False) -> None:
        if error:
            self.last_error = text_html
            text_html = f"<span style=\"color:#c62828\">&#9888; {_e(text_html)}</span>"
        self.status.value = text_html

    def __repr__(self) -> str:
        s = self.slider
        return f"<timeline of {_who(self.ref)}: version {s.value} of {s.min}..{s.max}>"


def _who(ref: AgentRef) -> str:
    return f"{ref.class_name}({ref.name!r})"


def _step(ref: AgentRef, version: int) -> dict | None:
    """The history row of *version* (``None`` for version 0: no step made it)."""
    frame = ref.history(limit=1, before=version + 1, failures=False)
    if frame.empty or int(frame["version"].iloc[0]) != version:
        return None
    return frame.iloc[0].to_dict()


def _step_html(row: dict | None, version: int) -> str:
    if row is None:
        return f"<span style=\"{_MUTED}\">version {version}: the initial state, before any step</span>"
    args = [_short(a) for a in row["args"] or []]
    args += [f"{k}={_short(v)}" for k, v in (row["kwargs"] or {}).items()]
    ok = row["outcome"] == "ok"
    lines = [
        f"<b>input</b> <code>{_e(row['method'])}({_e(', '.join(args))})</code> "
        f"<span style=\"{_MUTED}\">from {_e(row['source'])}</span>",
        f"<b>at</b> {_when(row['ts'])} &middot; <b>duration</b> {_ms(row['duration_ms'])} &middot; "
        f"<b>outcome</b> <span style=\"color:{'#2e7d32' if ok else '#c62828'}\">{_e(row['outcome'])}</span>",
    ]
    if _present(row["error"]):
        lines.append(f"<b>error</b> {_e(row['error'])}")
    if _present(row["due"]):
        lines.append(f"<span style=\"{_MUTED}\">scheduled for {_when(row['due'])}, occurrence "
                     f"{_e(row['occurrence'])}</span>")
    if _present(row["result"]):
        lines.append(f"<b>result</b> <code>{_e(_short(row['result']))}</code>")
    return f"<div style=\"{_LINES}\">{'<br>'.join(lines)}</div>"


def _present(value: Any) -> bool:
    return value is not None and value == value  # NaN and NaT are not equal to themselves


def _when(ts: Any) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC") if _present(ts) else "?"


def _ms(value: Any) -> str:
    return "?" if not _present(value) else f"{value:.3g} ms" if value < 1000 else f"{value / 1000:.3g} s"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
