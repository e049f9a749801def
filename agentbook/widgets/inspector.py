"""The inspector (``ref.widget()``): one agent's state, recent events, schedules and approvals.

A view over layer-2 reads, never a second source of truth: ``ref.state``, ``ref.version``,
``ref.schedules()`` and ``rt.approvals.list("pending")``. While it is open it listens to
this agent's events only (``rt.events.subscribe(..., agent=ref)``); ``close()`` stops
listening, and before the widget is made nothing listens at all.

It never slows the agent down: an event costs a ``deque.append`` and, at most once per
``every`` seconds, a timer on the event loop; the re-reading and rendering happen in that
timer, after the handler's commit, and only the parts that changed are sent to the browser
(an unchanged HTML value sends no comm message).
"""

from __future__ import annotations

import html
import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from .common import Coalescer, clock_time, duration, readable

if TYPE_CHECKING:
    from ..core.ref import AgentRef

__all__ = ["InspectorWidget", "inspector_widget"]

#: Tree levels open when the state is first shown (deeper ones start collapsed).
OPEN_LEVELS = 2
#: Items of one list or object shown before "... N more".
MAX_ITEMS = 50
#: Characters of one string value shown before it is cut.
MAX_TEXT = 200

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_BOX = "font-size:12px;line-height:1.5"
_TREE = f"{_BOX};max-height:360px;overflow:auto;font-family:var(--jp-code-font-family,monospace)"
_TABLE = "border-collapse:collapse;font-size:12px;line-height:1.4"
_CELL = "padding:1px 8px 1px 0;text-align:left;vertical-align:top"
_WHEN = f"{_CELL};white-space:nowrap"
_COLOURS = {"string": "#a31515", "number": "#098658", "literal": "#0000ff"}


def inspector_widget(ref: AgentRef, events: int = 20, every: float = 0.2) -> InspectorWidget:
    """A live inspector of *ref* (what ``ref.widget()`` returns).

    Args:
        ref: The agent to show.
        events: How many recent events to keep and show.
        every: At most one refresh per this many seconds while events arrive.
    """
    return InspectorWidget(ref, events=events, every=every)


class InspectorWidget(w.VBox):
    """An agent at a glance: version, state as a collapsible tree, its last events, its
    pending schedules and approvals. Updates itself while open; ``close()`` stops it.

    Attributes:
        ref: The agent shown.
        header: Who, which version, and whether the view is live.
        state_html: The state as a tree of ``<details>`` (click a key to fold it).
        events_html: The newest events first (time on the runtime's clock, type, payload).
        schedules_html: The pending schedules and queued work, soonest first.
        approvals_html: The agent's pending approvals (decide them in ``rt.approvals``).
        events: The kept event records, oldest first.
        renders: How many times the widget re-read the agent (for tests and curiosity).
    """

    def __init__(self, ref: AgentRef, events: int = 20, every: float = 0.2) -> None:
        self.ref = ref
        self.every = every
        self.events: deque[dict] = deque(maxlen=max(int(events), 1))
        self.renders = 0
        self.header, self.state_html, self.events_html = w.HTML(), w.HTML(), w.HTML()
        self.schedules_html, self.approvals_html = w.HTML(), w.HTML()
        self.refresh_button = w.Button(icon="refresh", tooltip="Re-read the agent now",
                                       layout=w.Layout(width="40px"))
        side = w.VBox([self.events_html, self.schedules_html, self.approvals_html],
                      layout=w.Layout(width="50%", padding="0 0 0 12px"))
        body = w.HBox([self.state_html, side])
        self.state_html.layout = w.Layout(width="50%")
        super().__init__([w.HBox([self.header, self.refresh_button]), body])
        self.add_class("agentbook-inspector")
        self._parts = [self.header, self.refresh_button, self.state_html, self.events_html,
                       self.schedules_html, self.approvals_html, side, body, self.children[0]]
        self._state_seen: tuple[int, str] | None = None
        self._redraws = Coalescer(self._due, every)
        self._unsubscribe: Callable[[], None] | None = None
        self.refresh_button.on_click(lambda _b: self.refresh())
        if not ref.runtime.closed:
            self._unsubscribe = ref.runtime.events.subscribe(self._on_event, agent=ref)
        self.refresh()

    @property
    def live(self) -> bool:
        """Whether the widget still follows the agent."""
        return self._unsubscribe is not None

    @property
    def pending(self) -> bool:
        """Whether a refresh is waiting for its timer."""
        return self._redraws.pending

    # -- what it does ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the agent and re-render now, as the refresh button does."""
        self._redraws.drawn()
        self.renders += 1
        ref = self.ref
        if ref.runtime.closed:
            self._stop()
            self.header.value = f"<b>{_e(_who(ref))}</b> <span style=\"{_MUTED}\">&middot; the " \
                                "runtime was closed</span>"
            return
        version, state = ref.version, ref.state
        schedules = ref.schedules()
        approvals = [a for a in ref.runtime.approvals.list("pending")
                     if (a.agent, a.name) == (ref.class_name, ref.name)]
        live = "live" if self.live else "not following (closed)"
        self.header.value = (
            f"<b>{_e(_who(ref))}</b> &middot; version <b>{version}</b> &middot; "
            f"{_plural(len(schedules), 'schedule')} &middot; "
            f"{_plural(len(approvals), 'pending approval')} "
            f"<span style=\"{_MUTED}\">&middot; {live}</span>")
        text = json.dumps(state, sort_keys=True, default=str)
        if self._state_seen != (version, text):  # an unchanged tree keeps its folds
            self._state_seen = (version, text)
            self.state_html.value = f"<div style=\"{_TREE}\">{_tree(state, 'state', 0)}</div>"
        self.events_html.value = self._events_html()
        self.schedules_html.value = _schedules_html(schedules)
        self.approvals_html.value = _approvals_html(approvals)

    def close(self) -> None:
        """Stop following the agent and close the widget with all its parts."""
        self._stop()
        for part in self._parts:
            part.close()
        super().close()

    # -- events ---------------------------------------------------------------------------
    def _on_event(self, event: dict) -> None:
        self.events.append(event)
        self._redraws.poke()  # (emitted outside a loop, a blocking ab.run: at once)

    def _due(self) -> None:
        if self.live:
            self.refresh()

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._redraws.cancel()

    def _events_html(self) -> str:
        title = f"<b>events</b> <span style=\"{_MUTED}\">(newest first)</span>"
        if not self.events:
            note = "none yet since this inspector opened" if self.live else "none"
            return f"<div style=\"{_BOX}\">{title}<br><span style=\"{_MUTED}\">{note}</span></div>"
        rows = [(clock_time(e["timestamp"] / 1000), f"<code>{_e(e['type'])}</code>",
                 _e(_short(readable(e["payload"]), 90))) for e in reversed(self.events)]
        return f"<div style=\"{_BOX}\">{title}{_table(rows)}</div>"

    def __repr__(self) -> str:
        return f"<inspector of {_who(self.ref)}: {'live' if self.live else 'closed'}>"


# -- rendering ------------------------------------------------------------------------------------
def _tree(value: Any, key: str, depth: int) -> str:
    """*value* as nested ``<details>``: objects and lists fold, leaves are ``key: value``."""
    label = f"<span style=\"color:#7a3e9d\">{_e(key)}</span>"
    if isinstance(value, dict) or (isinstance(value, list) and value):
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        kind = (f"{{{len(items)} key{'s' if len(items) != 1 else ''}}}" if isinstance(value, dict)
                else f"[{len(items)} item{'s' if len(items) != 1 else ''}]")
        if not items:
            return f"<div>{label}: <span style=\"{_MUTED}\">{{}}</span></div>"
        inner = "".join(_tree(v, str(k), depth + 1) for k, v in items[:MAX_ITEMS])
        if len(items) > MAX_ITEMS:
            inner += f"<div style=\"{_MUTED}\">&hellip; {len(items) - MAX_ITEMS} more</div>"
        opened = " open" if depth < OPEN_LEVELS else ""
        return (f"<details{opened}><summary>{label} <span style=\"{_MUTED}\">{kind}</span>"
                f"</summary><div style=\"margin-left:14px\">{inner}</div></details>")
    return f"<div>{label}: {_leaf(value)}</div>"


def _leaf(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
        return f"<span style=\"color:{_COLOURS['string']}\">{_e(json.dumps(text, ensure_ascii=False))}</span>"
    if isinstance(value, bool) or value is None:
        return f"<span style=\"color:{_COLOURS['literal']}\">{json.dumps(value)}</span>"
    if isinstance(value, (int, float)):
        return f"<span style=\"color:{_COLOURS['number']}\">{_e(json.dumps(value))}</span>"
    if isinstance(value, list):
        return f"<span style=\"{_MUTED}\">[]</span>"
    return _e(_short(value, MAX_TEXT))


def _schedules_html(frame: Any) -> str:
    title = "<b>schedules</b>"
    if frame.empty:
        return f"<div style=\"{_BOX}\">{title}<br><span style=\"{_MUTED}\">none pending</span></div>"
    rows = []
    for s in frame.itertuples(index=False):
        every = s.cron if isinstance(s.cron, str) else (
            f"every {s.interval:g} s" if s.interval == s.interval and s.interval else "")
        retry = f"attempt {s.attempt + 1}" if s.attempt else ""
        what = f"<code>{_e(s.callback)}</code>"
        if s.callback.startswith("_ab_"):  # agentbook's own, such as an approval's expiry
            what = f"<span style=\"{_MUTED}\">{_e(s.callback[4:].replace('_', ' '))}</span>"
        rows.append((clock_time(s.time.timestamp()), what, _e(s.type), _e(every), _e(retry)))
    return f"<div style=\"{_BOX}\">{title} <span style=\"{_MUTED}\">(next due first)</span>" \
           f"{_table(rows)}</div>"


def _approvals_html(approvals: list) -> str:
    title = "<b>pending approvals</b>"
    if not approvals:
        return f"<div style=\"{_BOX}\">{title}<br><span style=\"{_MUTED}\">none</span></div>"
    rows = [(f"<code>{_e(a.id)}</code>", _e(a.summary), f"<code>{_e(a.method)}</code>",
             _e("no expiry" if a.time_left is None else f"{duration(a.time_left)} left"))
            for a in approvals]
    return (f"<div style=\"{_BOX}\">{title} <span style=\"{_MUTED}\">(decide in rt.approvals)"
            f"</span>{_table(rows)}</div>")


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows of HTML cells; the first column (a time or an id) never wraps."""
    body = "".join("<tr>" + "".join(f"<td style=\"{_WHEN if i == 0 else _CELL}\">{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table style=\"{_TABLE}\">{body}</table>"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _who(ref: AgentRef) -> str:
    return f"{ref.class_name}({ref.name!r})"


def _short(value: Any, limit: int) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
