"""The diff widget: two versions side by side (of one agent, or a fork and its parent), what
it shows for known versions, and its buttons moving either side exactly as its methods do."""

from __future__ import annotations

import html
import re

import pytest

import agentbook as ab
from agentbook.widgets.compare import compare
from agentbook.widgets.diff import DiffWidget, diff_widget, parent_of


class Ledger(ab.Agent):
    """Version 1 is on_start; then one version per call."""

    initial_state = {"balance": 0, "owner": {"name": "ann", "city": "Oslo"}, "tags": []}

    async def on_start(self):
        self.sql("CREATE TABLE IF NOT EXISTS entries(id TEXT PRIMARY KEY, amount REAL, memo TEXT)")
        self.sql("CREATE TABLE IF NOT EXISTS notes(text TEXT)")  # no primary key: by rowid

    @ab.callable
    async def book(self, id: str, amount: float, memo: str = "") -> int:
        self.sql("INSERT INTO entries VALUES (?, ?, ?)", id, amount, memo)
        self.set_state({**self.state, "balance": self.state["balance"] + amount})
        return self.state["balance"]

    @ab.callable
    async def correct(self, id: str, amount: float) -> None:
        old = self.sql("SELECT amount FROM entries WHERE id = ?", id)[0]["amount"]
        self.sql("UPDATE entries SET amount = ? WHERE id = ?", amount, id)
        self.set_state({**self.state, "balance": self.state["balance"] - old + amount})

    @ab.callable
    async def drop(self, id: str) -> None:
        old = self.sql("SELECT amount FROM entries WHERE id = ?", id)[0]["amount"]
        self.sql("DELETE FROM entries WHERE id = ?", id)
        self.set_state({**self.state, "balance": self.state["balance"] - old})

    @ab.callable
    async def move(self, city: str) -> None:
        owner = {k: v for k, v in self.state["owner"].items() if k != "name"}
        self.set_state({**self.state, "owner": {**owner, "city": city}, "tags": ["moved"]})

    @ab.callable
    async def remember(self, key: str, value: str, note: str) -> None:
        self.kv[key] = value
        self.sql("INSERT INTO notes VALUES (?)", note)
        await self.schedule(3600, "remind", {"key": key})

    async def remind(self, payload) -> None: ...


async def ledger_with_seven_versions(rt) -> ab.AgentRef:
    """1 on_start; 2 book a; 3 book b; 4 correct a; 5 drop b; 6 move; 7 remember."""
    ref = rt.get(Ledger, "ledger")
    await ref.book("a", 10.0, "rent")     # 2
    await ref.book("b", 5.0, "tea")       # 3
    await ref.correct("a", 12.0)          # 4
    await ref.drop("b")                   # 5
    await ref.move("Bergen")              # 6
    await ref.remember("pin", "1234", "called the bank")  # 7
    assert ref.version == 7
    return ref


@pytest.fixture
async def ledger(rt):
    return await ledger_with_seven_versions(rt)


@pytest.fixture
async def widgets():
    made: list[DiffWidget] = []
    yield made
    for widget in made:
        widget.close()


def marks(tree_html: str) -> dict[str, str]:
    """``{key: change}`` of the marked nodes of a state tree."""
    found = re.findall(r'data-change="(\w+)"[^>]*>(?:<summary>)?<b>[^<]*</b> '
                       r'<span style="color:#7a3e9d">([^<]*)</span>', tree_html)
    return {html.unescape(key): kind for kind, key in found}


def rows(widget: DiffWidget, table: str) -> list[tuple[str, list[str]]]:
    """``(change, cells as text)`` of each row the widget lists for *table*."""
    part = re.search(rf'<div data-table="{re.escape(table)}">(.*?)</table>',
                     widget.changes_html.value, re.S)
    if part is None:
        return []
    found = []
    for kind, cells in re.findall(r'<tr data-change="(\w+)"[^>]*>(.*?)</tr>', part.group(1), re.S):
        texts = [html.unescape(re.sub(r"<[^>]+>", "", c))
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S)]
        found.append((kind, texts[1:]))
    return found


def side(widget: DiffWidget) -> tuple[int, int]:
    return widget.left.version, widget.right.version


async def test_by_default_it_shows_what_the_newest_version_changed(ledger, widgets):
    widget = ledger.diff_widget()
    widgets.append(widget)
    assert isinstance(widget, DiffWidget)
    assert side(widget) == (6, 7)
    assert widget.left.ref == widget.right.ref == ledger
    assert "Ledger(&#x27;ledger&#x27;)</b> @ 6 &harr;" in widget.header.value
    assert rows(widget, "notes") == [("added", ["called the bank"])]
    assert rows(widget, "_ab_kv") == [("added", ["pin", '"1234"'])]
    assert "key-value data: 1 added" in widget.changes_html.value
    (added,) = rows(widget, "schedules")
    assert added[0] == "added" and added[1][:2] == ["remind", "delayed"]
    assert widget.comparison.state == [], "remember changed no state"
    assert "entries" not in widget.changes_html.value


async def test_state_keys_added_removed_and_changed_are_marked_on_their_side(ledger, widgets):
    widget = ledger.diff_widget(5, 6)
    widgets.append(widget)
    assert marks(widget.left_state.value) == {"name": "removed", "city": "changed"}
    assert marks(widget.right_state.value) == {"city": "changed", "0": "added"}
    assert "&quot;Oslo&quot;" in widget.left_state.value
    assert "&quot;Bergen&quot;" in widget.right_state.value
    assert "&quot;Bergen&quot;" not in widget.left_state.value
    assert "3 state changes" in widget.header.value
    assert "no table rows" in widget.changes_html.value


async def test_rows_added_removed_and_changed_per_table(ledger, widgets):
    widget = ledger.diff_widget(3, 5)
    widgets.append(widget)
    assert rows(widget, "entries") == [("removed", ["b", "5.0", "tea"]),
                                       ("changed", ["a", "10.0 → 12.0", "rent"])]
    assert "entries +0 &minus;1 ~1" in widget.header.value
    widget.left.jump(1)
    assert rows(widget, "entries") == [("added", ["a", "12.0", "rent"])]
    assert marks(widget.right_state.value) == {"balance": "changed"}


async def test_the_buttons_move_either_side_and_the_diff_follows(ledger, widgets):
    widget = ledger.diff_widget(4, 5)
    widgets.append(widget)
    assert rows(widget, "entries") == [("removed", ["b", "5.0", "tea"])]
    widget.left.previous_button.click()
    assert side(widget) == (3, 5)
    assert widget.left.version_box.value == 3
    assert rows(widget, "entries") == [("removed", ["b", "5.0", "tea"]),
                                       ("changed", ["a", "10.0 → 12.0", "rent"])]
    widget.right.next_button.click()
    widget.right.next_button.click()
    assert side(widget) == (3, 7)
    assert widget.right.next_button.disabled, "the newest version has no next"
    assert rows(widget, "notes") == [("added", ["called the bank"])]
    widget.right.previous()
    widget.left.next()
    assert side(widget) == (4, 6)
    widget.right.version_box.value = 2  # typed in the box
    assert side(widget) == (4, 2)
    assert rows(widget, "entries") == [("removed", ["b", "5.0", "tea"]),
                                       ("changed", ["a", "12.0 → 10.0", "rent"])]
    widget.left.jump(0)
    assert widget.left.previous_button.disabled
    assert not widget.left.next_button.disabled
    assert widget.left.jump(-1) == 7


async def test_a_version_out_of_reach_is_refused_and_the_diff_stays(ledger, widgets):
    widget = ledger.diff_widget(4, 5)
    widgets.append(widget)
    before = widget.changes_html.value
    with pytest.raises(ab.VersionNotFoundError, match="0..7"):
        widget.right.jump(8)
    with pytest.raises(ab.VersionNotFoundError):
        ledger.diff_widget(2, 99)
    assert side(widget) == (4, 5) and widget.changes_html.value == before


async def test_the_same_version_on_both_sides_shows_no_difference(ledger, widgets):
    widget = ledger.diff_widget(4, 4)
    widgets.append(widget)
    assert widget.comparison.empty
    assert "the same" in widget.header.value
    assert not marks(widget.left_state.value) and not marks(widget.right_state.value)


async def test_a_fork_starts_against_its_parent_at_the_fork_point(rt, ledger, widgets):
    fork = await ledger.fork("what-if", at=3)
    await fork.correct("b", 50.0)
    assert parent_of(fork) == (ledger, 3)
    assert parent_of(ledger) is None
    widget = fork.diff_widget()
    widgets.append(widget)
    assert (widget.left.ref, widget.right.ref) == (ledger, fork)
    assert side(widget) == (3, 4)
    assert rows(widget, "entries") == [("changed", ["b", "5.0 → 50.0", "tea"])]
    assert marks(widget.right_state.value) == {"balance": "changed"}
    # against the parent's newest version instead
    widget.left.jump(-1)
    assert widget.left.version == 7
    assert ("changed", ["a", "12.0 → 10.0", "rent"]) in rows(widget, "entries")
    assert rows(widget, "notes") == [("removed", ["called the bank"])]
    # a fork's side reaches back into its parent's versions
    assert widget.right.reach() == (0, 4)
    widget.right.jump(1)
    assert widget.right.ref.at(1).state == ledger.at(1).state


async def test_other_compares_this_agent_with_another_at_chosen_versions(rt, ledger, widgets):
    fork = await ledger.fork("other", at=5)
    widget = ledger.diff_widget(3, other=fork)
    widgets.append(widget)
    assert (widget.left.ref, widget.right.ref, *side(widget)) == (ledger, fork, 3, 5)
    assert rows(widget, "entries") == rows(ledger.diff_widget(3, 5), "entries")


async def test_internal_tables_are_shown_only_when_asked(ledger, widgets):
    widget = ledger.diff_widget(6, 7)
    widgets.append(widget)
    assert "_ab_schedules" not in widget.changes_html.value
    assert widget.comparison.internal == []
    widget.internals.value = True  # the checkbox
    assert {t.table for t in widget.comparison.internal} >= {"_ab_kv", "_ab_schedules"}
    assert "own tables, as stored" in widget.changes_html.value
    assert '<div data-table="_ab_schedules">' in widget.changes_html.value
    also = ledger.diff_widget(6, 7, internals=True)
    widgets.append(also)
    assert also.changes_html.value == widget.changes_html.value


class Payout(ab.Agent):
    @ab.workflow
    async def pay(self, step: ab.Step, order: str) -> str:
        await step.do("check", lambda: order)
        await step.wait_for_event("go", timeout=3600)
        return "paid"


def runs_shown(widget: DiffWidget) -> list[tuple[str, str]]:
    """``(change, text)`` of each workflow run and step the widget lists."""
    part = re.search(r'<div data-table="workflows">(.*)', widget.changes_html.value, re.S)
    if part is None:
        return []
    return [(kind, html.unescape(re.sub(r"<[^>]+>", "", body.split("<ul")[0])).strip())
            for kind, body in re.findall(r'<li data-change="(\w+)"[^>]*>(.*?)(?=<li|</ul>)',
                                         part.group(1), re.S)]


async def test_workflow_runs_and_their_steps_that_differ(rt, widgets):
    ref = rt.get(Payout, "payout")
    run = await ref.pay("o-<1>")  # version 1 starts the run; version 2 runs until it waits
    await rt.settle()
    widget = ref.diff_widget(1, 2)
    widgets.append(widget)
    assert runs_shown(widget) == [
        ("changed", f'~ pay("o-<1>") {run.id} · running → waiting · steps completed 0 → 1'),
        ("added", "+ 0. check do · completed"),
        ("added", "+ 1. go event · waiting")]
    assert "1 workflow run" in widget.header.value
    widget.left.previous()
    assert runs_shown(widget)[0] == (
        "added", f'+ pay("o-<1>") {run.id} · waiting (only on the right)')
    await run.send_event("go", {})
    await rt.settle()
    widget.left.jump(2)
    widget.right.jump(-1)
    shown = runs_shown(widget)
    assert shown[0][0] == "changed" and "waiting → completed" in shown[0][1]
    assert ("changed", "~ 1. go event · waiting → completed") in shown
    widget.left.jump(-1)
    assert runs_shown(widget) == [] and widget.comparison.empty


async def test_html_is_escaped(rt, widgets):
    ref = rt.get(Ledger, "xss")
    await ref.book("<script>x</script>", 1.0, "<img src=x onerror=alert(1)>")
    widget = diff_widget(ref)
    widgets.append(widget)
    page = widget.changes_html.value + widget._repr_html_()
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


async def test_without_javascript_the_same_diff_shows_as_html(ledger, widgets):
    widget = ledger.diff_widget(3, 5)
    widgets.append(widget)
    page = widget._repr_html_()
    assert widget.left_state.value in page and widget.right_state.value in page
    assert widget.changes_html.value in page
    assert "Ledger(&#x27;ledger&#x27;)</b> @ 3" in page
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


async def test_the_widget_agrees_with_compare_and_ref_diff(ledger, widgets):
    widget = ledger.diff_widget(2, 6)
    widgets.append(widget)
    direct = compare(ledger.at(2), ledger.at(6))
    assert widget.comparison.state == direct.state == ledger.diff(2, 6).state
    assert [t.table for t in direct.tables] == ["entries"]


async def test_after_the_runtime_closed_it_says_so(tmp_path, clock):
    rt = ab.Runtime(tmp_path / "store", clock=clock)
    ref = await ledger_with_seven_versions(rt)
    widget = ref.diff_widget()
    await rt.aclose()
    widget.render()
    assert "closed" in widget.header.value
    assert widget.left.previous_button.disabled and widget.right.next_button.disabled
    widget.close()
