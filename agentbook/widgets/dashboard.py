"""The dashboard (``rt.dashboard()``): one cell to watch a whole runtime.

Five sections, each a view over reads that exist already, never a second source of truth:

- **agents**: class, name, version, awake or hibernated, and who runs it (this kernel,
  another process, named by the pid and host in its lease file, or a Ray host); from the
  catalog, the awake agents and each listed agent's store;
- **events**: the newest events since the dashboard opened, newest first;
- **approvals**: the approval inbox itself (:class:`~agentbook.widgets.approvals.ApprovalInbox`),
  so Approve and Reject decide the same durable, bound approvals as ``rt.approvals``;
- **next hour**: the schedules due within an hour on the runtime's clock (the catalog's
  timer index says which agents have one; only theirs are read);
- **workflows in flight**: runs that have not ended.

Each agent, event, schedule and workflow row opens that agent's inspector
(``ref.widget()``) or timeline (``ref.timeline()``) under the dashboard; one at a time.

What it costs: nothing before it is made (``rt.dashboard()`` imports this module and
subscribes then). While open, an event costs a ``deque.append``, a set update and, at most
once per ``every`` seconds, a timer on the event loop; the re-reading and rendering run in
that timer, so a storm of 10 000 firings is drawn a few times a second, not 10 000 times,
and a part whose text did not change sends nothing to the browser. ``close()``
unsubscribes: with nobody listening, events are free again. Plain ipywidgets, no custom
JavaScript: JupyterLab, Voila and VS Code show it alike.

What it reads of an agent's store (version, pending schedules, workflow runs) it reads in
one go, without DataFrames (:func:`read_store`), and keeps until that agent's next event;
**Refresh** reads everything again (for changes another process made). At most ``agents``
rows are listed in each section, awake agents first, so a redraw costs about the same at 20
agents and at 100 000. Should one still be slow, the next ones wait longer
(:class:`~agentbook.widgets.common.Coalescer`): redraws take at most a tenth of the loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw
import ipywidgets as w

from ..errors import AgentbookError, UsageError
from ..store import history, lease, open_reader
from ..store import schedules as schedule_rows
from ..store import workflows as workflow_rows
from ..workflow.engine import TERMINAL
from .approvals import ApprovalInbox
from .common import ClockHook, Coalescer, clock_time, close_all, duration, escape, readable, running_loop
from .inspector import inspector_widget
from .timeline import timeline_widget

if TYPE_CHECKING:
    from ..core.ref import AgentRef
    from ..core.runtime import Runtime

__all__ = ["AgentRow", "Dashboard", "RunRow", "ScheduleRow", "StoreRead", "dashboard_widget",
           "read_store"]

#: How far ahead the schedule section looks, in seconds of the runtime's clock.
HORIZON = 3600.0
#: Workflow runs are looked for in every agent when the dashboard opens if there are at most
#: this many; beyond, in this many of those awake, with a pending approval or a timer (and,
#: while it is open, in each agent that sends a ``workflow:*`` event).
SCAN_ALL = 200

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_CELL = "display:inline-block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;" \
        "vertical-align:middle;font-size:12px"
_AWAKE = "#2e7d32"
Key = tuple[str, str]


class AgentRow(NamedTuple):
    """One agent as the dashboard lists it."""

    class_name: str
    name: str
    version: int | None
    awake: bool
    owner: str


class ScheduleRow(NamedTuple):
    """One schedule due within the horizon."""

    due: float
    class_name: str
    name: str
    callback: str
    type: str
    id: str


class StoreRead(NamedTuple):
    """What one read of an agent's store gives the dashboard."""

    #: The newest version (``None``: no store yet, or it can't be read now).
    version: int | None
    #: Its pending schedules, soonest first.
    schedules: list[schedule_rows.ScheduleRow]
    #: Its workflow runs.
    runs: list[workflow_rows.RunRow]


_NOTHING = StoreRead(None, [], [])


class RunRow(NamedTuple):
    """One workflow run that has not ended."""

    class_name: str
    name: str
    run: str
    method: str
    status: str
    steps: int


def dashboard_widget(rt: Runtime, *, every: float = 0.5, events: int = 12, agents: int = 20,
              by: str | None = None) -> Dashboard:
    """A live dashboard of *rt* (what ``rt.dashboard()`` returns).

    Args:
        rt: The runtime to watch.
        every: At most one redraw per this many seconds while events arrive.
        events: How many of the newest events to show.
        agents: How many agents to list (awake ones first).
        by: Who is recorded as deciding on an Approve or Reject click (default: the
            operating-system user).

    Raises:
        UsageError: an option is out of its range (the message says which, and the range).
    """
    _check(every=every, events=events, agents=agents)  # (before any model is made)
    return Dashboard(rt, every=every, events=events, agents=agents, by=by)


class Dashboard(w.VBox):
    """Agents, the event stream, pending approvals, the next hour of schedules and the
    workflows in flight of one runtime; live while open, ``close()`` stops it.

    Attributes:
        header: How many agents, how many awake, the clock, and whether it is live.
        inbox: The pending approvals with Approve / Reject (an ``ApprovalInbox``).
        event_list: The newest events (a ``Select``: choosing one opens its agent).
        detail: Where an opened inspector or timeline shows.
        opened: The inspector or timeline shown in :attr:`detail` (``None``: none).
        events: The kept event records, oldest first.
        renders: How many times the dashboard re-read the runtime.
        every: The shortest time between two redraws, in seconds.
    """

    def __init__(self, rt: Runtime, *, every: float = 0.5, events: int = 12, agents: int = 20,
                 by: str | None = None, tick: float = 20.0) -> None:
        self.rt, self.every, self.limit = rt, every, agents
        self.events: deque[dict] = deque(maxlen=events)
        self.renders = 0
        self.opened: w.Widget | None = None
        self.header = w.HTML()
        self.refresh_button = w.Button(icon="refresh", tooltip="Read the whole runtime again",
                                       layout=w.Layout(width="40px"))
        self.agents_html, self.schedules_html, self.runs_html = w.HTML(), w.HTML(), w.HTML()
        self._agent_rows, self._schedule_rows, self._run_rows = w.VBox(), w.VBox(), w.VBox()
        self.event_list = w.Select(options=[], rows=2,
                                   layout=w.Layout(width="98%"))
        self.events_html = w.HTML()
        self.inbox = ApprovalInbox(rt, by=by, recent=3, tick=tick, every=every)
        self.inbox.remove_class("agentbook-approvals")  # (that class is the inbox cell's)
        self.inbox.add_class("agentbook-dashboard-inbox")
        self.detail_header = w.HTML()
        self.detail_close = w.Button(description="Close", icon="times",
                                     layout=w.Layout(width="90px", display="none"))
        self.detail = w.VBox([w.HBox([self.detail_header, self.detail_close])])
        self._sections = [
            _section("agents", self.agents_html, self._agent_rows),
            _section("events", self.events_html, self.event_list),
            _section("approvals", self.inbox),
            _section("schedules", self.schedules_html, self._schedule_rows),
            _section("workflows", self.runs_html, self._run_rows)]
        super().__init__([w.HBox([self.header, self.refresh_button]), *self._sections,
                          self.detail])
        self.add_class("agentbook-dashboard")
        self._rows: dict[str, dict[Any, tuple[w.HBox, w.HTML]]] = {
            "agents": {}, "schedules": {}, "runs": {}}
        self._reads: dict[Key, StoreRead] = {}
        self._flows: set[Key] = set()
        self._event_keys: list[Key] = []
        self._redraws = Coalescer(self._due, every)
        self._hook = ClockHook(self._redraws.poke)
        self._ticker: asyncio.Task | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.refresh_button.on_click(lambda _b: self.refresh(reread=True))
        self.detail_close.on_click(lambda _b: self.close_detail())
        self.event_list.observe(self._picked, names="index")
        if not rt.closed:
            self._unsubscribe = rt.events.subscribe(self._on_event)
            if getattr(rt.clock, "virtual", False) and hasattr(rt.clock, "add_settler"):
                rt.clock.add_settler(self._hook)  # "in 10 min" follows clock.advance
            elif tick > 0 and running_loop():
                self._ticker = asyncio.ensure_future(self._tick(tick))
        self.refresh(reread=True)

    @property
    def live(self) -> bool:
        """Whether the dashboard still follows the runtime."""
        return self._unsubscribe is not None

    @property
    def pending(self) -> bool:
        """Whether a redraw is waiting for its timer."""
        return self._redraws.pending

    # -- what the controls do (callable from code and tests) ----------------------------
    def inspect(self, agent: AgentRef | Key) -> w.Widget | None:
        """Open *agent*'s inspector under the dashboard, as its row's **inspect** does
        (``None``, and the reason in its place, when the runtime was closed)."""
        return self._open(agent, "inspector")

    def timeline(self, agent: AgentRef | Key) -> w.Widget | None:
        """Open *agent*'s timeline under the dashboard, as its row's **timeline** does."""
        return self._open(agent, "timeline")

    def close_detail(self) -> None:
        """Close the opened inspector or timeline."""
        if self.opened is not None:
            self.opened.close()
            self.opened = None
        self.detail.children = self.detail.children[:1]
        self.detail_header.value = ""
        self.detail_close.layout.display = "none"

    def refresh(self, reread: bool = False) -> None:
        """Re-read the runtime and redraw now (*reread*: also the versions of hibernated
        agents and which of them have workflow runs, as the refresh button does)."""
        self._redraws.drawn()
        self.renders += 1
        rt = self.rt
        if rt.closed:
            self._stop()
            self.header.value = (f"<b>agentbook dashboard</b> <span style=\"{_MUTED}\">&middot; "
                                 "the runtime was closed</span>")
            self.inbox.refresh()
            return
        if reread:
            self._reads.clear()
        agents, total, awake = self._read_agents()
        self._show_agents(agents, total)
        self._show_events()
        self._show_schedules(self._read_schedules())
        self._show_runs(self._read_runs(reread))
        clock = clock_time(rt.clock.now()) + (" (virtual)" if getattr(rt.clock, "virtual", False)
                                              else "")
        live = "live" if self.live else "not following (closed)"
        _set(self.header, f"<b>agentbook dashboard</b> &middot; {_plural(total, 'agent')}, "
                          f"{awake} awake <span style=\"{_MUTED}\">&middot; clock {clock} "
                          f"&middot; {live}</span>")

    def close(self) -> None:
        """Stop following the runtime; close the dashboard with every part it made."""
        self._stop()
        self.close_detail()
        self.inbox.close()
        for rows in self._rows.values():
            for box, _ in rows.values():
                close_all(box)
            rows.clear()
        for child in self.children:
            close_all(child)
        self.layout.close()
        super().close()

    # -- reading ------------------------------------------------------------------------
    def _read_agents(self) -> tuple[list[AgentRow], int, int]:
        rt = self.rt
        keys = [(row[0], row[1]) for row in rt.catalog.rows()]
        known = set(keys)
        awake = [k for k, inst in rt.instances.items() if inst.store is not None]
        keys += [k for k in awake if k not in known]  # (its first commit is on its way)
        woken = set(awake)
        ordered = sorted(woken) + [k for k in keys if k not in woken]
        rows = [self._agent_row(key, key in woken) for key in ordered[: self.limit]]
        return rows, len(keys), len(woken)

    def _agent_row(self, key: Key, awake: bool) -> AgentRow:
        if awake:
            return AgentRow(key[0], key[1], self.rt.instances[key].committed[0], True,
                            f"this kernel (pid {os.getpid()})")
        return AgentRow(key[0], key[1], self._read(key).version, False, self._owner(key))

    def _owner(self, key: Key) -> str:
        rt = self.rt
        if rt.router is not None and not rt.owns(key):
            return f"Ray host {rt.router.host_of(key)}"
        path = rt.catalog.lock_path(*key)
        if lease.is_free(path):
            return ""
        found = lease.owner_of(path)
        pid, host = found.get("pid"), found.get("host")
        if pid == os.getpid():
            return f"another runtime of this kernel (pid {pid})"
        return "another process" if pid is None else f"pid {pid}" + (f" on {host}" if host else "")

    def _read_schedules(self) -> list[ScheduleRow]:
        rt = self.rt
        end = rt.clock.now() + HORIZON
        due = sorted((t, c, n) for c, n, t in rt.catalog.timers() if t <= end)
        rows = [ScheduleRow(s.due, class_name, name, s.callback, s.type, s.id)
                for _, class_name, name in due[: self.limit]
                for s in self._read((class_name, name)).schedules if s.due <= end]
        rows.sort()
        return rows[: self.limit]

    def _read_runs(self, scan: bool) -> list[RunRow]:
        """The unfinished runs of the agents known to have some. Which those are is found
        by a scan when the dashboard opens (and on **Refresh**): every agent when there are
        at most :data:`SCAN_ALL`, else that many of those awake, with a pending approval or
        a timer (soonest first); after that, an agent joins on its next ``workflow:*`` event
        and leaves once its runs end."""
        rt = self.rt
        if scan:
            every = [(row[0], row[1]) for row in rt.catalog.rows()]
            if len(every) > SCAN_ALL:  # the likeliest, at most SCAN_ALL of them
                every = [k for k, inst in rt.instances.items() if inst.store is not None]
                every += [(a.agent, a.name) for a in rt.approvals.list("pending")]
                every += [(c, n) for _, c, n in sorted((t, c, n) for c, n, t
                                                      in rt.catalog.timers())]
            self._flows.update(list(dict.fromkeys(every))[:SCAN_ALL])
        rows: list[RunRow] = []
        for key in sorted(self._flows):
            found = [RunRow(key[0], key[1], r.id, r.method, r.status, r.steps)
                     for r in self._read(key).runs if r.status not in TERMINAL]
            if not found:
                self._flows.discard(key)
            rows += found
        return rows[: self.limit]

    def _read(self, key: Key) -> StoreRead:
        """What the dashboard shows of one agent's store, read once (one reader, no
        DataFrame) and kept until the agent's next event or **Refresh**."""
        kept = self._reads.get(key)
        if kept is None:
            kept = read_store(self.rt, key)
            if kept is None:  # (busy or damaged: shown as unknown, read again next time)
                return _NOTHING
            self._reads[key] = kept
        return kept

    # -- rendering ----------------------------------------------------------------------
    def _show_agents(self, agents: list[AgentRow], total: int) -> None:
        more = total - len(agents)
        tail = f" &middot; {more} more in <code>rt.agents()</code>" if more > 0 else ""
        _set(self.agents_html, _head("agents", f"{_plural(total, 'agent')}{tail}" if total
                                         else "none yet"))
        cells = {(a.class_name, a.name): _agent_html(a) for a in agents}
        self._rows_into(self._agent_rows, "agents", cells, both=True)

    def _show_events(self) -> None:
        newest = list(reversed(self.events))
        self._event_keys = [(e["agent"], e["name"]) for e in newest]
        labels = [_event_label(e) for e in newest]
        if list(self.event_list.options) != labels:
            with self.event_list.hold_trait_notifications():
                self.event_list.options = labels  # (a plain option list: choosing opens one)
                self.event_list.rows = max(2, min(len(labels), 8))
            self.event_list.layout.display = "" if labels else "none"
        note = ("newest first; choose one to open its agent" if newest else
                "none yet since the dashboard opened" if self.live else "none")
        _set(self.events_html, _head("events", note))

    def _show_schedules(self, rows: list[ScheduleRow]) -> None:
        now = self.rt.clock.now()
        note = "due within the hour, soonest first" if rows else "nothing due within the hour"
        _set(self.schedules_html, _head("next hour", note))
        cells = {(r.class_name, r.name, r.id): _schedule_html(r, now) for r in rows}
        self._rows_into(self._schedule_rows, "schedules", cells)

    def _show_runs(self, rows: list[RunRow]) -> None:
        _set(self.runs_html, _head("workflows", "runs that have not ended" if rows
                                   else "none in flight"))
        cells = {(r.class_name, r.name, r.run): _run_html(r) for r in rows}
        self._rows_into(self._run_rows, "runs", cells, first="timeline")

    def _rows_into(self, box: w.VBox, kind: str, cells: dict[Any, str], *, both: bool = False,
                   first: str = "inspect") -> None:
        """Show one row per item of *cells* (``{key: html}``) in *box*, reusing the rows
        already made (an unchanged row sends nothing) and closing the ones gone."""
        rows = self._rows[kind]
        for key, text in cells.items():
            if key not in rows:
                rows[key] = self._make_row((key[0], key[1]), both, first)
            _set(rows[key][1], text)
        for gone in set(rows) - set(cells):
            close_all(rows.pop(gone)[0])
        order = tuple(rows[key][0] for key in cells)
        if box.children != order:
            box.children = order

    def _make_row(self, agent: Key, both: bool, first: str) -> tuple[w.HBox, w.HTML]:
        cell = w.HTML(layout=w.Layout(flex="1 1 auto"))
        buttons = []
        for what in (("inspect", "timeline") if both else (first,)):
            kind = "inspector" if what == "inspect" else "timeline"
            button = w.Button(description=what, tooltip=f"Open the {kind} of "
                              f"{agent[0]}({agent[1]!r})", layout=w.Layout(width="76px",
                                                                           height="24px"))
            button.on_click(lambda _b, a=agent, k=kind: self._open(a, k))
            buttons.append(button)
        row = w.HBox([*buttons, cell], layout=w.Layout(align_items="center"))
        row.add_class("agentbook-dashboard-row")
        return row, cell

    def _open(self, agent: AgentRef | Key, what: str) -> w.Widget | None:
        key = agent if isinstance(agent, tuple) else (agent.class_name, agent.name)
        self.close_detail()
        try:
            ref = self.rt.get(*key)
        except AgentbookError as exc:  # (the runtime was closed meanwhile)
            self.detail_header.value = f"<span style=\"{_MUTED}\">{escape(exc)}</span>"
            return None
        self.opened = inspector_widget(ref) if what == "inspector" else timeline_widget(ref)
        self.detail_header.value = (f"<b>{escape(what)}</b> of <code>{escape(key[0])}"
                                    f"({escape(repr(key[1]))})</code>")
        self.detail_close.layout.display = ""
        self.detail.children = (*self.detail.children[:1], self.opened)
        return self.opened

    def _picked(self, change: dict) -> None:
        index = change["new"]
        if index is None or not 0 <= index < len(self._event_keys):
            return
        agent = self._event_keys[index]
        self.event_list.index = None  # (the same line can be chosen again)
        if agent[0] is not None and agent[1] is not None:
            self._open(agent, "inspector")

    # -- staying live -------------------------------------------------------------------
    def _on_event(self, event: dict) -> None:
        self.events.append(event)
        key = (event["agent"], event["name"])
        self._reads.pop(key, None)
        if event["type"].startswith("workflow:"):
            self._flows.add(key)
        self._redraws.poke()

    def _due(self) -> None:
        if self.live:
            self.refresh()

    async def _tick(self, seconds: float) -> None:
        while not self.rt.closed:
            await asyncio.sleep(seconds)
            if not self._redraws.pending:
                self.refresh()

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._redraws.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def __repr__(self) -> str:
        state = "live" if self.live else "closed"
        return f"<agentbook dashboard of {self.rt!r}: {state}>"


def read_store(rt: Runtime, key: Key) -> StoreRead | None:
    """Read agent *key*'s version, pending schedules and workflow runs in one go: from the
    awake agent's reader, else from its file (an agent without a store yet reads as version
    ``None`` with nothing pending). Never waits for a writer of another process (its reads
    would block the event loop): a store that is busy or damaged gives ``None``, and the
    next redraw tries again."""
    inst = rt.instances.get(key)
    awake = inst is not None and inst.store is not None and not inst.fresh
    conn = None
    try:
        if awake:
            assert inst is not None and inst.store is not None
            conn = inst.store.reader()
        else:
            path = rt.path_of(key)
            if not os.path.exists(path):
                return _NOTHING
            conn = open_reader(path)
            conn.set_busy_timeout(0)
        return StoreRead(history.newest_version(conn), schedule_rows.select(conn),
                         workflow_rows.read_runs(conn))
    except (AgentbookError, apsw.Error):
        return None
    finally:
        if conn is not None and not awake:
            conn.close()


def _check(*, every: Any, events: Any, agents: Any) -> None:
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every <= 3600:
        raise UsageError(f"every is the shortest time between two redraws, in seconds from 0 "
                         f"to 3600 (default 0.5), not {every!r}")
    for name, value in (("events", events), ("agents", agents)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise UsageError(f"{name} is how many rows to show, a whole number from 1 to "
                             f"1000, not {value!r}")


# -- rendering helpers ------------------------------------------------------------------------
def _section(name: str, *parts: w.Widget) -> w.VBox:
    box = w.VBox(list(parts), layout=w.Layout(margin="4px 0 0 0"))
    box.add_class(f"agentbook-dashboard-{name}")
    return box


def _head(title: str, note: str) -> str:
    """A section's title and what it shows, on one line."""
    return f"<b>{escape(title)}</b> <span style=\"{_MUTED}\">&middot; {note}</span>"


def _set(widget: w.HTML, value: str) -> None:
    """Set an HTML value only when it changed (an unchanged one would still be sent)."""
    if widget.value != value:
        widget.value = value


def _cell(text: str, width: int, style: str = "") -> str:
    return f"<span style=\"{_CELL};width:{width}px;{style}\">{text}</span>"


def _agent_html(a: AgentRow) -> str:
    version = "&ndash;" if a.version is None else f"v{a.version}"
    state = (f"<span style=\"color:{_AWAKE}\">&#9679; awake</span>" if a.awake
             else f"<span style=\"{_MUTED}\">&#9675; hibernated</span>")
    owner = escape(a.owner) if a.owner else f"<span style=\"{_MUTED}\">nobody runs it now</span>"
    return (_cell(f"<code>{escape(a.class_name)}</code>", 120) + _cell(escape(a.name), 140)
            + _cell(version, 50) + _cell(state, 100) + _cell(owner, 230, _MUTED))


def _event_label(e: dict) -> str:
    who = f"{e['agent']}({e['name']!r})" if e["agent"] is not None else "runtime"
    payload = readable(e["payload"])
    if isinstance(payload, dict):
        text = ", ".join(f"{k}={_short(_own(v))}" for k, v in payload.items() if v is not None)
    else:
        text = _short(payload)
    return f"{clock_time(e['timestamp'] / 1000)}  {e['type']}  {who}  {text}"[:160]


def _own(value: Any) -> Any:
    """agentbook's own methods read as words: ``_ab_reject_approval`` -> ``(reject approval)``."""
    if isinstance(value, str) and value.startswith("_ab_"):
        return f"({value[4:].replace('_', ' ')})"
    return value


def _schedule_html(r: ScheduleRow, now: float) -> str:
    left = r.due - now
    when = "due now" if left <= 0 else f"in {duration(left)}"
    what = (f"<span style=\"{_MUTED}\">{escape(r.callback[4:].replace('_', ' '))}</span>"
            if r.callback.startswith("_ab_") else f"<code>{escape(r.callback)}</code>")
    return (_cell(clock_time(r.due), 120) + _cell(when, 80, _MUTED)
            + _cell(f"<code>{escape(r.class_name)}</code>({escape(repr(r.name))})", 200)
            + _cell(what, 170) + _cell(escape(r.type), 70, _MUTED))


def _run_html(r: RunRow) -> str:
    return (_cell(f"<code>{escape(r.class_name)}</code>({escape(repr(r.name))})", 200)
            + _cell(f"<code>{escape(r.method)}</code>", 140) + _cell(escape(r.status), 80)
            + _cell(f"{_plural(r.steps, 'step')} done", 90, _MUTED)
            + _cell(f"<code>{escape(r.run)}</code>", 150, _MUTED))


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
