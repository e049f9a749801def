"""The diff widget: two versions side by side, of one agent or of a fork and its parent.

``ref.diff_widget(a, b)`` shows the agent at version *a* on the left and at *b* on the
right; ``ref.diff_widget(a, b, other=x)`` this agent at *a* against *x* at *b*; a fork
given no versions starts against its parent at the fork point. What it shows:

* the **state** on each side as a tree, the keys that differ marked (``+`` added on the
  right, ``-`` removed from the left, ``~`` changed) and the branches holding them open;
* the **rows** of the agent's own tables that differ, per table (added, removed, changed
  with each changed cell as ``old -> new``), its **key-value data** the same way;
* the pending **schedules** and the **workflow runs** (their steps) that differ;
* agentbook's own ``_ab_`` tables as stored, only when asked (the checkbox, or
  ``internals=True``).

Each side has **previous** / **next** buttons and a version box to jump to; the methods
:meth:`DiffSide.previous`, :meth:`DiffSide.next` and :meth:`DiffSide.jump` do the same from
code. A view over time travel, never a second source of truth: each side is ``ref.at(v)``,
compared by :func:`agentbook.widgets.compare.compare`. The widget reads when a side moves
and never follows the agents by itself: the refresh button re-reads their versions.
Without the widgets' JavaScript (a notebook viewer, a static export) the same diff shows as
HTML (``_repr_html_``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import AgentbookError, VersionNotFoundError
from .common import close_all
from .common import escape as _e
from .compare import KV_TABLE, Comparison, RunDiff, TableDiff, compare

if TYPE_CHECKING:
    from ..core.ref import AgentRef
    from ..store.workflows import RunRow, StepRow
    from ..travel.versions import VersionView

__all__ = ["DiffSide", "DiffWidget", "diff_html", "diff_widget"]

#: Versions kept open per widget (each may hold an in-memory copy of the agent's tables).
KEEP = 4
#: Rows shown per table, items per unchanged list or object, characters per value.
MAX_ROWS, MAX_ITEMS, MAX_TEXT = 50, 50, 80

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_BOX = "font-size:12px;line-height:1.5;margin:2px 0"
_TREE = (f"{_BOX};max-height:420px;overflow:auto;"
         "font-family:var(--jp-code-font-family,monospace)")
_TABLE = "border-collapse:collapse;font-size:12px;line-height:1.4;margin:2px 0 6px 0"
_CELL = "padding:1px 8px 1px 4px;text-align:left;vertical-align:top;white-space:nowrap"
#: How each kind of change looks: ``kind: (mark, background)``.
_KINDS = {"added": ("+", "#dafbe1"), "removed": ("&minus;", "#ffebe9"),
          "changed": ("~", "#fff8c5")}


def diff_widget(ref: AgentRef, a: int | None = None, b: int | None = None, *,
                other: AgentRef | None = None, internals: bool = False) -> DiffWidget:
    """Two versions side by side (what ``ref.diff_widget(...)`` returns).

    Args:
        ref: The agent on the left (and on the right, without *other*).
        a: The left version (default: the one before *b*; with *other*, the newest).
        b: The right version (default: the newest).
        other: The agent on the right (e.g. a fork against its parent).
        internals: Also list agentbook's own tables.

    A fork given neither *a*, *b* nor *other* starts against its parent: the parent at
    the fork point on the left, the fork at its newest version on the right.
    """
    if other is None and a is None and b is None:
        parent = parent_of(ref)
        if parent is not None:
            return DiffWidget(parent[0], parent[1], ref, -1, internals=internals)
    if other is not None:
        return DiffWidget(ref, -1 if a is None else a, other, -1 if b is None else b,
                          internals=internals)
    right = _absolute(ref, -1 if b is None else b)
    left = right - 1 if a is None else a
    return DiffWidget(ref, max(left, reach(ref)[0]), ref, right, internals=internals)


def parent_of(ref: AgentRef) -> tuple[AgentRef, int] | None:
    """The agent *ref* was forked from and the version it was forked at (``None``: not a
    fork). Read from the fork's first version (made by the fork) or, once that was pruned,
    from the runtime's list of agents."""
    first, _head = ref.history_range()
    rows = ref.history(limit=1, before=first + 1, failures=False)
    if len(rows) and rows["method"].iloc[0] == "fork" and str(rows["source"].iloc[0]).startswith(
            "fork:"):
        name, version = rows["args"].iloc[0][:2]  # (the parent's name and the version)
        return ref.runtime.get(ref.class_name, name), int(version)
    found = ref.runtime.agents(ref.class_name)
    mine = found[found["name"] == ref.name]["parent"]
    text = mine.iloc[0] if len(mine) else None
    if not isinstance(text, str) or "@" not in text:
        return None
    who, version = text.rsplit("@", 1)
    class_name, name = who.split("/", 1)
    return ref.runtime.get(class_name, name), int(version)


def reach(ref: AgentRef) -> tuple[int, int]:
    """``(first, newest)``: the versions ``ref.at(v)`` can show (a fork's reach back into
    its parent's)."""
    first, head = ref.history_range()
    if first > 0:
        parent = parent_of(ref)
        if parent is not None and parent[0] != ref:
            first = min(first, reach(parent[0])[0])
    return first, head


def _absolute(ref: AgentRef, version: int) -> int:
    """*version* with a negative one counted from the newest (-1 is the newest)."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise VersionNotFoundError(f"{_who(ref)}: a version is an integer, not {version!r}")
    return ref.history_range()[1] + 1 + version if version < 0 else version


class DiffSide:
    """One side of a :class:`DiffWidget`: an agent, a version, and the buttons to move.

    Attributes:
        name: ``"left"`` or ``"right"``.
        ref: The agent shown on this side.
        version: The version shown.
        label: Who, which version, and the versions this side can reach.
        previous_button: Moves to the version before (disabled at the first).
        next_button: Moves to the version after (disabled at the newest).
        version_box: Type a version to jump to it.
    """

    def __init__(self, widget: DiffWidget, name: str, ref: AgentRef, version: int) -> None:
        self._widget = widget
        self.name, self.ref, self.version = name, ref, version
        self.label = w.HTML()
        self.previous_button = w.Button(description="previous", icon="chevron-left",
                                        tooltip=f"The {name} side: one version back",
                                        layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="next", icon="chevron-right",
                                    tooltip=f"The {name} side: one version on",
                                    layout=w.Layout(width="90px"))
        self.version_box = w.BoundedIntText(value=0, min=0, max=0, description="version",
                                            layout=w.Layout(width="170px"))
        self.box = w.VBox([self.label, w.HBox([self.previous_button, self.version_box,
                                               self.next_button])],
                          layout=w.Layout(width="50%"))
        self.box.add_class(f"agentbook-diff-{name}")
        self._quiet = False
        self.previous_button.on_click(lambda _b: self._clicked(self.previous))
        self.next_button.on_click(lambda _b: self._clicked(self.next))
        self.version_box.observe(self._typed, names="value")

    # -- what the controls do (callable from code and tests) ----------------------------
    def previous(self) -> int:
        """Show the version before this one, as **previous** does; returns it."""
        return self.jump(self.version - 1)

    def next(self) -> int:
        """Show the version after this one, as **next** does; returns it."""
        return self.jump(self.version + 1)

    def jump(self, version: int) -> int:
        """Show *version* on this side (``-1`` is the newest), as typing it in the box does.

        Raises:
            VersionNotFoundError: This agent has no such version (or it was pruned).
        """
        first, head = reach(self.ref)
        version = _absolute(self.ref, version)
        if not first <= version <= head:
            raise VersionNotFoundError(
                f"{_who(self.ref)} has no version {version}: pick one of {first}..{head}")
        self.version = version
        self._widget.render()
        return version

    def reach(self) -> tuple[int, int]:
        """``(first, newest)``: the versions this side can move to."""
        return reach(self.ref)

    # -- plumbing -------------------------------------------------------------------------
    def _clicked(self, move: Any) -> None:
        try:
            move()
        except AgentbookError as exc:
            self._widget.show_error(exc)

    def _typed(self, change: dict) -> None:
        if not self._quiet and change["new"] != self.version:
            self._clicked(lambda: self.jump(change["new"]))

    def show_reach(self, first: int, head: int) -> None:
        """Show this side's version and the versions it can reach (*first*..*head*) in its
        controls, without moving it."""
        self._quiet = True
        try:
            box = self.version_box
            with box.hold_trait_notifications():
                box.min, box.max = min(first, self.version), max(head, self.version)
                box.value = self.version
        finally:
            self._quiet = False
        self.previous_button.disabled = self.version <= first
        self.next_button.disabled = self.version >= head
        self.label.value = (f"<b>{_e(_who(self.ref))}</b> at version <b>{self.version}</b> "
                            f"<span style=\"{_MUTED}\">of {first}..{head}</span>")


class DiffWidget(w.VBox):
    """Two versions side by side: the state trees with their differences marked, then the
    rows, key-value data, schedules and workflow runs that differ.

    Attributes:
        left: The left side (:class:`DiffSide`): its agent, version and buttons.
        right: The right side.
        header: Who is compared with whom, and a summary of what differs.
        left_state: The left state as a tree (removed and changed keys marked).
        right_state: The right state as a tree (added and changed keys marked).
        changes_html: The rows, key-value data, schedules and workflow runs that differ.
        internals: The checkbox that also lists agentbook's own tables.
        comparison: What the widget shows now (``None`` after an error).
        error: Why the last move or render failed (``""`` when none).
    """

    def __init__(self, left: AgentRef, a: int, right: AgentRef, b: int, *,
                 internals: bool = False) -> None:
        self._views: OrderedDict[tuple[tuple[str, str], int], VersionView] = OrderedDict()
        self.left = DiffSide(self, "left", left, _absolute(left, a))
        self.right = DiffSide(self, "right", right, _absolute(right, b))
        self.header, self.left_state, self.right_state = w.HTML(), w.HTML(), w.HTML()
        self.changes_html, self.status = w.HTML(), w.HTML()
        self.left_state.layout = w.Layout(width="50%")
        self.right_state.layout = w.Layout(width="50%")
        self.internals = w.Checkbox(value=internals, description="agentbook's own tables",
                                    indent=False, layout=w.Layout(width="220px"))
        self.refresh_button = w.Button(icon="refresh", tooltip="Re-read both agents' versions",
                                       layout=w.Layout(width="40px"))
        super().__init__([
            w.HBox([self.header, self.refresh_button]),
            w.HBox([self.left.box, self.right.box]),
            w.HBox([self.left_state, self.right_state]),
            self.changes_html, self.internals, self.status])
        self.add_class("agentbook-diff")
        self.comparison: Comparison | None = None
        self.error = ""
        self.internals.observe(lambda _c: self.render(), names="value")
        self.refresh_button.on_click(lambda _b: self.render())
        for side in (self.left, self.right):
            first, head = side.reach()
            if not first <= side.version <= head:
                raise VersionNotFoundError(f"{_who(side.ref)} has no version {side.version}: "
                                           f"pick one of {first}..{head}")
        self.render()

    def render(self) -> Comparison | None:
        """Re-read both sides and show what differs (what a move does after it; the refresh
        button does it alone). Returns the comparison shown."""
        self.error = self.status.value = ""
        if self.left.ref.runtime.closed or self.right.ref.runtime.closed:
            self.comparison = None
            self.header.value = f"<span style=\"{_MUTED}\">the runtime was closed</span>"
            for side in (self.left, self.right):
                side.previous_button.disabled = side.next_button.disabled = True
            return None
        try:
            for side in (self.left, self.right):
                side.show_reach(*side.reach())
            found = compare(self._view(self.left), self._view(self.right),
                            internals=self.internals.value)
        except AgentbookError as exc:
            self.comparison = None
            self.show_error(exc)
            return None
        self.comparison = found
        self.header.value = _header_html(found, self.left, self.right)
        self.left_state.value, self.right_state.value = state_trees(found)
        self.changes_html.value = _changes_html(found)
        return found

    def show_error(self, exc: Exception) -> None:
        """Say why a move failed, under the diff (it stays as it was)."""
        self.error = f"{type(exc).__name__}: {exc}"
        self.status.value = f"<span style=\"color:#c62828\">&#9888; {_e(self.error)}</span>"

    def close(self) -> None:
        """Close the widget with all its parts and free the versions it read."""
        for view in self._views.values():
            view.close()
        self._views.clear()
        for child in self.children:
            close_all(child)
        super().close()

    def _view(self, side: DiffSide) -> VersionView:
        key = ((side.ref.class_name, side.ref.name), side.version)
        view = self._views.get(key)
        if view is None:
            view = side.ref.at(side.version)
            self._views[key] = view
            while len(self._views) > KEEP:
                self._views.popitem(last=False)[1].close()
        self._views.move_to_end(key)
        return view

    def _repr_html_(self) -> str:
        """The diff as plain HTML, for a notebook shown without the widgets' JavaScript."""
        if self.comparison is None:
            return f"<div>{self.header.value}{self.status.value}</div>"
        return diff_html(self.comparison, self.left, self.right)

    def __repr__(self) -> str:
        return (f"<diff of {_who(self.left.ref)} at {self.left.version} and "
                f"{_who(self.right.ref)} at {self.right.version}>")


def diff_html(found: Comparison, left: DiffSide, right: DiffSide) -> str:
    """The whole diff as one HTML block (the header, both trees side by side, the rest)."""
    old, new = state_trees(found)
    return (f"<div class=\"agentbook-diff\" style=\"{_BOX}\">"
            f"<div>{_header_html(found, left, right)}</div>"
            "<table style=\"width:100%;table-layout:fixed\"><tr>"
            f"<td style=\"vertical-align:top;text-align:left\">{left.label.value}{old}</td>"
            f"<td style=\"vertical-align:top;text-align:left\">{right.label.value}{new}</td>"
            f"</tr></table>{_changes_html(found)}</div>")


# -- the header -------------------------------------------------------------------------------
def _header_html(found: Comparison, left: DiffSide, right: DiffSide) -> str:
    who = (f"<b>{_e(_who(left.ref))}</b> @ {left.version} &harr; "
           f"<b>{_e(_who(right.ref))}</b> @ {right.version}")
    if found.empty and not found.internal:
        return f"{who} <span style=\"{_MUTED}\">&middot; the same</span>"
    parts = []
    if found.state:
        parts.append(_plural(len(found.state), "state change"))
    for table in found.tables:
        parts.append(f"{_e(table.table)} {_counts(table)}")
    if found.kv is not None:
        parts.append(f"key-value {_counts(found.kv)}")
    if found.schedules is not None:
        parts.append(f"schedules {_counts(found.schedules)}")
    if found.workflows:
        parts.append(_plural(len(found.workflows), "workflow run"))
    if found.internal:
        parts.append(_plural(len(found.internal), "internal table"))
    return f"{who} <span style=\"{_MUTED}\">&middot; {' &middot; '.join(parts)}</span>"


def _counts(table: TableDiff) -> str:
    return (f"+{len(table.added)} &minus;{len(table.removed)} ~{len(table.changed)}")


# -- the state trees ----------------------------------------------------------------------------
def state_trees(found: Comparison) -> tuple[str, str]:
    """The left and the right state as trees; the left marks what the right removed or
    changed, the right what it added or changed (read from the JSON patch)."""
    left: dict[str, str] = {}
    right: dict[str, str] = {}
    for op in found.state:
        if op["op"] == "remove":
            left[op["path"]] = "removed"
        elif op["op"] == "add":
            right[op["path"]] = "added"
        else:
            left[op["path"]] = right[op["path"]] = "changed"
    return (f"<div class=\"agentbook-diff-tree\" style=\"{_TREE}\">"
            f"{_tree(found.old_state, 'state', '', left)}</div>",
            f"<div class=\"agentbook-diff-tree\" style=\"{_TREE}\">"
            f"{_tree(found.new_state, 'state', '', right)}</div>")


def _tree(value: Any, key: str, path: str, marks: dict[str, str]) -> str:
    """*value* as nested ``<details>``; a marked node says how it changed, and a branch is
    open when a change is inside it."""
    kind = marks.get(path)
    label = f"<span style=\"color:#7a3e9d\">{_e(key)}</span>"
    if kind is not None:
        label = f"<b>{_KINDS[kind][0]}</b> {label}"
    style = f" style=\"background:{_KINDS[kind][1]}\"" if kind else ""
    tag = f" data-change=\"{kind}\"" if kind else ""
    if isinstance(value, (dict, list)) and value:
        items = (list(value.items()) if isinstance(value, dict)
                 else [(str(i), v) for i, v in enumerate(value)])
        inside = [p for p in marks if p.startswith(path + "/")]
        shown = []
        for i, (k, v) in enumerate(items):
            sub = f"{path}/{_pointer(str(k))}"
            if i < MAX_ITEMS or any(p == sub or p.startswith(sub + "/") for p in inside):
                shown.append(_tree(v, str(k), sub, marks))
        if len(shown) < len(items):
            shown.append(f"<div style=\"{_MUTED}\">&hellip; {len(items) - len(shown)} more</div>")
        size = (f"{{{_plural(len(items), 'key')}}}" if isinstance(value, dict)
                else f"[{_plural(len(items), 'item')}]")
        opened = " open" if inside or kind or not path else ""
        return (f"<details{opened}{tag}{style}><summary>{label} <span style=\"{_MUTED}\">"
                f"{size}</span></summary><div style=\"margin-left:14px\">{''.join(shown)}</div>"
                "</details>")
    return f"<div{tag}{style}>{label}: {_leaf(value)}</div>"


def _pointer(key: str) -> str:
    """A key as a JSON pointer segment (as the patch writes it)."""
    return key.replace("~", "~0").replace("/", "~1")


def _leaf(value: Any) -> str:
    if isinstance(value, str):
        return f"<span style=\"color:#a31515\">{_e(_cut(json.dumps(value, ensure_ascii=False)))}</span>"
    if isinstance(value, bool) or value is None:
        return f"<span style=\"color:#0000ff\">{json.dumps(value)}</span>"
    if isinstance(value, (int, float)):
        return f"<span style=\"color:#098658\">{_e(json.dumps(value))}</span>"
    return f"<span style=\"{_MUTED}\">{_e(json.dumps(value))}</span>"  # [] and {}


# -- rows, key-value data, schedules, workflows ----------------------------------------------------
def _changes_html(found: Comparison) -> str:
    parts = [_table_html(t, "table") for t in found.tables]
    if found.kv is not None:
        parts.append(_table_html(found.kv, "key-value data"))
    if found.schedules is not None:
        parts.append(_table_html(found.schedules, "pending schedules"))
    if found.workflows:
        parts.append(_workflows_html(found.workflows))
    if found.internal:
        parts.append(f"<div style=\"{_MUTED};margin-top:6px\">agentbook's own tables, as stored"
                     "</div>")
        parts += [_table_html(t, "internal table") for t in found.internal]
    if not parts:
        parts.append(f"<span style=\"{_MUTED}\">no table rows, key-value data, schedules or "
                     "workflow runs differ</span>")
    return f"<div class=\"agentbook-diff-changes\" style=\"{_BOX}\">{''.join(parts)}</div>"


def _table_html(table: TableDiff, what: str) -> str:
    name = "" if table.table in ("schedules", KV_TABLE) else f"<b>{_e(table.table)}</b> "
    head = (f"<div data-table=\"{_e(table.table)}\">{name}<span style=\"{_MUTED}\">{what}: "
            f"{len(table.added)} added, {len(table.removed)} removed, "
            f"{len(table.changed)} changed</span>")
    rows = ([("added", r, None) for r in table.added]
            + [("removed", r, None) for r in table.removed]
            + [("changed", old, new) for old, new in table.changed])
    body = []
    for kind, row, new in rows[:MAX_ROWS]:
        mark, colour = _KINDS[kind]
        cells = [_cell(v) if new is None or v == n else
                 f"{_cell(v)} &rarr; <b>{_cell(n)}</b>"
                 for v, n in zip(row, new if new is not None else row, strict=False)]
        body.append(f"<tr data-change=\"{kind}\" style=\"background:{colour}\">"
                    f"<td style=\"{_CELL}\"><b>{mark}</b></td>"
                    + "".join(f"<td style=\"{_CELL}\">{c}</td>" for c in cells) + "</tr>")
    more = (f"<div style=\"{_MUTED}\">and {len(rows) - MAX_ROWS} more rows</div>"
            if len(rows) > MAX_ROWS else "")
    columns = "".join(f"<th style=\"{_CELL}\">{_e(c)}</th>" for c in table.columns)
    return (f"{head}<table style=\"{_TABLE}\"><tr><th style=\"{_CELL}\"></th>{columns}</tr>"
            f"{''.join(body)}</table>{more}</div>")


def _cell(value: Any) -> str:
    if value is None:
        return f"<span style=\"{_MUTED}\">NULL</span>"
    if isinstance(value, bytes):
        return f"<span style=\"{_MUTED}\">&lt;{len(value)} bytes&gt;</span>"
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return _e(_cut(value))


def _workflows_html(runs: list[RunDiff]) -> str:
    items = []
    for run in runs:
        row = run.new or run.old
        assert row is not None  # (a run is on one side at least)
        kind = "added" if run.old is None else "removed" if run.new is None else "changed"
        mark, colour = _KINDS[kind]
        status = (_status(run.old, run.new) if kind == "changed"
                  else _e(row.status) + (" (only on the right)" if kind == "added"
                                         else " (only on the left)"))
        steps = "".join(_step_html(old, new) for old, new in run.steps)
        call = f"{row.method}({_cut(row.args[1:-1])})"
        items.append(f"<li data-change=\"{kind}\" style=\"background:{colour}\"><b>{mark}</b> "
                     f"<code>{_e(call)}</code> <span style=\"{_MUTED}\">{_e(run.run)}"
                     f"</span> &middot; {status}"
                     + (f"<ul style=\"margin:0;padding-left:18px\">{steps}</ul>" if steps else "")
                     + "</li>")
    return (f"<div data-table=\"workflows\"><span style=\"{_MUTED}\">workflow runs that "
            f"differ: {len(runs)}</span>"
            f"<ul style=\"margin:0 0 6px 0;padding-left:18px\">{''.join(items)}</ul></div>")


def _status(old: RunRow | None, new: RunRow | None) -> str:
    assert old is not None and new is not None
    text = _e(old.status) if old.status == new.status else \
        f"{_e(old.status)} &rarr; <b>{_e(new.status)}</b>"
    if old.steps != new.steps:
        text += f" &middot; steps completed {old.steps} &rarr; <b>{new.steps}</b>"
    return text


def _step_html(old: StepRow | None, new: StepRow | None) -> str:
    step = new or old
    assert step is not None
    kind = "added" if old is None else "removed" if new is None else "changed"
    mark = _KINDS[kind][0]
    what = (f"{_e(old.status)} &rarr; <b>{_e(new.status)}</b>"
            if old is not None and new is not None and old.status != new.status
            else _e(step.status))
    return (f"<li data-change=\"{kind}\"><b>{mark}</b> {step.seq}. <b>{_e(step.name)}</b> "
            f"<span style=\"{_MUTED}\">{_e(step.kind)}</span> &middot; {what}</li>")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _who(ref: AgentRef) -> str:
    return f"{ref.class_name}({ref.name!r})"
