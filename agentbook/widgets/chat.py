"""The chat box: a conversation with a chat agent, streamed, with tools and approvals inline.

A view over the agent, never a second source of truth: the conversation is re-read from
``ref.messages()`` whenever the agent commits, whoever made it talk. **Send** (or Enter)
consumes ``ref.stream_chat(text)`` in a background task on the running event loop and draws
each chunk as it arrives; when the turn ends, the stored messages replace the draft. A turn
of the agent it did not start - typed in a browser page served by ``rt.serve()``, sent from
another cell, an approval's follow-up - streams in the same way, word by word (the widget
watches the agent's turns through :mod:`agentbook.chat.live`).
**Approve** / **Reject** call ``rt.approvals.approve(id, by=...)`` / ``.reject(...)`` as code
would. Nothing waits in a cell; a failure is one short line under the text field.
:meth:`~ChatWidget.send`, :meth:`~ChatWidget.approve` and :meth:`~ChatWidget.reject` do what
the controls do and return the background work, so code and tests can drive the box.

Messages are drawn as HTML into a few long-lived ``HTML`` widgets (runs of messages between
approval rows), so a streamed chunk is one value update, not new widget models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..approve.inbox import default_person
from ..chat import live, turns
from ..chat.agent import ChatChunk
from ..chat.ui import INTERRUPTED
from ..errors import ApprovalNotFoundError
from .common import close_all, escape, running_loop

if TYPE_CHECKING:
    from ..core.handler import HandlerContext
    from ..core.ref import AgentRef

__all__ = ["ChatWidget", "chat_widget"]

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_BUBBLE = ("padding:6px 10px;border-radius:10px;max-width:80%;width:fit-content;margin:3px 0;"
           "line-height:1.45;white-space:pre-wrap;overflow-wrap:anywhere;")
_ROLE = {"user": "margin-left:auto;background:var(--jp-brand-color3,#bbdefb)",
         "assistant": "margin-right:auto;background:var(--jp-layout-color2,#eee)"}
_LINE = f"font:12px var(--jp-code-font-family,monospace);{_MUTED};margin:1px 0 1px 10px"
_MARK = {"approved": "&#10003; approved", "rejected": "&#10007; rejected", "failed": "! failed",
         "expired": "&#8856; expired", "cancelled": "&#8856; cancelled"}


def chat_widget(ref: AgentRef, *, by: str | None = None) -> ChatWidget:
    """A chat box for the chat agent *ref* (what ``ref.chat_widget()`` returns).

    Args:
        ref: A reference to an ``ab.ChatAgent``.
        by: Who is recorded as deciding the approvals clicked here (default: the OS user).
    """
    return ChatWidget(ref, by=by)


class ChatWidget(w.VBox):
    """The conversation, a text field with **Send** (Enter sends too), and a status line.

    Attributes:
        ref: The chat agent shown.
        conversation: The messages, oldest first (shown scrolled to the newest).
        input: The text field.
        send_button: The **Send** button.
        status: "answering…" while a turn runs; afterwards the last error, if any.
        buttons: ``{approval id: (approve_button, reject_button)}`` of the approvals shown.
        by: The name recorded as the decider of approvals clicked here.
        task: The last turn :meth:`send` started (its result is the final answer).
        last_answer: The final answer of the last turn, as it streamed.
        last_error: Why the last send or decision failed (``""`` when it didn't).
    """

    def __init__(self, ref: AgentRef, *, by: str | None = None) -> None:
        self.ref, self.by = ref, by or default_person()
        self.buttons: dict[str, tuple[w.Button, w.Button]] = {}
        self.task: asyncio.Task | None = None
        self.last_answer = self.last_error = ""
        self._rows: dict[str, w.HBox] = {}      # approval rows, by approval id
        self._stored: list[w.HTML] = []         # runs of stored messages (reused)
        self._drafts: list[w.HTML] = []         # runs of the streaming turn (reused)
        self._shown: list[w.Widget] = []        # stored runs and rows, in order
        self._live: list[w.Widget] = []         # draft runs and rows, in order
        self._parts: list[str] = []             # finished HTML of the current draft run
        self._draft: list[str] | None = None    # the text streaming into its last bubble
        self._busy: dict[str, str] = {}         # approval id -> "approving…" while in flight
        self._streaming = self._dirty = self._closed = False
        self._unsubscribe: Callable[[], None] | None = None
        self.header, self.status = w.HTML(), w.HTML()
        self.conversation = w.VBox(layout=w.Layout(padding="0 6px", flex="0 0 auto"))
        # One child in a column-reverse box: starts, and stays, scrolled to the newest message.
        scroller = w.Box([self.conversation], layout=w.Layout(
            flex_flow="column-reverse", max_height="460px", overflow="auto"))
        self.input = w.Text(placeholder="Message (Enter sends)", layout=w.Layout(flex="1 1 auto"))
        self.send_button = w.Button(description="Send", icon="paper-plane", button_style="primary",
                                    layout=w.Layout(width="90px"))
        super().__init__([self.header, scroller, w.HBox([self.input, self.send_button]),
                          self.status], layout=w.Layout(max_width="760px"))
        self.add_class("agentbook-chat")
        self.send_button.on_click(lambda _b: self._send_input())
        self.input.on_msg(self._on_text_msg)
        self.header.value = (f"<b>{escape(ref.class_name)}({escape(repr(ref.name))})</b> "
                             f"<span style=\"{_MUTED}\">&middot; {escape(_model_name(ref))}</span>")
        if not ref.runtime.closed:
            unsubscribe = ref.runtime.events.subscribe(
                self._on_event, types=["rpc", "approval:*", "destroy"], agent=ref)
            watcher = _Elsewhere(  # (its own turns it draws from their stream)
                lambda key: key == ref._ab_key and not self._closed and not self._streaming,
                self._elsewhere, self._on_chunk, self._end_draft)
            live.watch(ref.runtime, watcher)

            def stop() -> None:
                unsubscribe()
                live.unwatch(ref.runtime, watcher)

            self._unsubscribe = stop
        self._live = [_run(self._drafts, 0)]  # there before the first chunk: one update to show it
        self.refresh()
        if not ref.runtime.closed and running_loop() is not None \
                and ref._ab_key in turns.unrecovered(ref.runtime):
            turns.store_interrupted(ref.runtime, ref._ab_key)  # (shown when it commits)

    # -- what the controls do (callable from code and tests) --------------------------
    def send(self, text: str) -> asyncio.Task | None:
        """Send *text* as **Send** does; the answer streams into the conversation.

        Returns:
            The background turn (its result is the final answer, ``None`` if it failed),
            or ``None`` when it could not start (see :attr:`last_error`). A send made
            while a turn runs starts when that turn ends.
        """
        text = str(text or "").strip()
        problem = ("Type a message first" if not text else
                   "The runtime was closed" if self.ref.runtime.closed else
                   "No event loop runs here: await ref.chat(...) in a cell instead"
                   if running_loop() is None else "")
        if problem:
            self._show_error(problem)
            return None
        self.task = asyncio.ensure_future(self._turn(text, self.task))
        return self.task

    def approve(self, approval_id: str) -> asyncio.Future | None:
        """Approve as the inline **Approve** does.

        Returns:
            The background run (its result is the follow-up answer), or ``None`` if it was
            refused at once, e.g. already decided (see :attr:`last_error`).
        """
        return self._decide(approval_id, "approve")

    def reject(self, approval_id: str, reason: str | None = None) -> asyncio.Future | None:
        """Reject as the inline **Reject** does (the tool never runs); like :meth:`approve`."""
        return self._decide(approval_id, "reject", reason)

    def refresh(self) -> None:
        """Re-read the stored conversation and redraw it (a streaming draft stays)."""
        if self._closed:
            return
        if self.ref.runtime.closed:
            self._stop()
            self.send_button.disabled = self.input.disabled = True
            self.status.value = f"<span style=\"{_MUTED}\">the runtime was closed</span>"
            return
        try:
            rows = list(self.ref.messages().itertuples(index=False))
        except Exception as exc:  # e.g. not a chat agent
            self._show_error(f"Could not read the conversation: {type(exc).__name__}: {exc}")
            return
        self._shown, parts = [], []
        for item in [*(item for row in rows for item in _entries(row)), None]:
            if item is not None and not isinstance(item, _Approval):
                parts.append(item)
                continue
            _draw(_run(self._stored, len(self._shown) // 2), parts)  # runs and rows alternate
            self._shown.append(self._stored[len(self._shown) // 2])
            if item is not None:  # an approval id
                self._shown.append(self._row(item))
            parts = []
        self._relayout()

    def close(self) -> None:
        """Stop listening to the agent; close the widget and all its parts."""
        self._stop()
        self._closed = True
        for part in [*self._rows.values(), *self._stored, *self._drafts, *self.children]:
            close_all(part)
        super().close()

    # -- a turn -----------------------------------------------------------------------------
    def _on_text_msg(self, _text: w.Text, content: dict, _buffers: list) -> None:
        if content.get("event") == "submit":  # Enter (Text.on_submit is deprecated)
            self._send_input()

    def _send_input(self) -> None:
        if self.send(self.input.value) is not None:
            self.input.value = ""

    async def _turn(self, text: str, previous: asyncio.Future | None) -> str | None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self._streaming, self.last_answer = True, ""
        self._show_error("")
        self.status.value = f"<span style=\"{_MUTED}\">{escape(self.ref.name)} is answering&hellip;</span>"
        self._parts, self._draft = [_bubble("user", text)], None
        self._flush(force=True)
        try:
            async for chunk in self.ref.stream_chat(text):
                self._on_chunk(chunk)
            self.last_answer = "".join(self._draft or ())
            return self.last_answer
        except Exception as exc:
            if not self.input.value:
                self.input.value = text  # the failed turn stored nothing: let them retry
            self._show_error(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self._streaming = False
            self._end_draft()

    def _end_draft(self) -> None:
        """A turn ended: the stored messages replace its draft; approval rows stay."""
        if not self.last_error:
            self.status.value = ""  # no longer "answering…" (done, or cancelled)
        self._live, self._parts, self._draft = self._live[:1], [], None
        self.refresh()
        for run in self._drafts:
            _draw(run, [])

    # -- a turn it did not start (a browser page's, another cell's) ---------------------------
    def _elsewhere(self, asked: str | None) -> None:
        """A turn of the agent started elsewhere: it streams in as one sent here does."""
        self.status.value = (f"<span style=\"{_MUTED}\">{escape(self.ref.name)} is answering "
                             "(a message from elsewhere)&hellip;</span>")
        self._parts = [_bubble("user", asked)] if asked else []
        self._draft = None
        self._flush(force=True)

    def _on_chunk(self, chunk: ChatChunk) -> None:
        data = chunk.data or {}
        if chunk.kind == "text":
            self._draft = [] if self._draft is None else self._draft
            self._draft.append(chunk.text)
            if not self._dirty:  # draw once per turn of the loop, however many chunks came
                self._dirty = True
                asyncio.get_running_loop().call_soon(self._flush)
            return
        if self._draft is not None:  # the text before a tool call is done
            self._parts.append(_bubble("assistant", "".join(self._draft)))
            self._draft = None
        if chunk.kind == "tool_call":
            self._parts.append(_call_line(data.get("name"), data.get("arguments")))
        elif chunk.kind == "tool_result":
            self._parts.append(_result_line(data.get("name"), data.get("result")))
        self._flush(force=True)
        if chunk.kind == "approval":  # a row with buttons, then a new draft run below it
            self._live += [self._row(data["approval"]), _run(self._drafts, len(self._live) // 2 + 1)]
            self._parts = []
            self._relayout()

    def _flush(self, force: bool = False) -> None:
        if self._dirty or force:
            tail = [] if self._draft is None else [_bubble("assistant", "".join(self._draft))]
            _draw(self._live[-1], self._parts + tail)
        self._dirty = False

    # -- approvals ----------------------------------------------------------------------
    def _decide(self, approval_id: str, what: str, reason: str | None = None) -> asyncio.Future | None:
        self._show_error("")
        inbox = self.ref.runtime.approvals
        try:
            if running_loop() is None:
                raise RuntimeError(f"no event loop runs here; await rt.approvals.{what}(...)")
            fut = asyncio.ensure_future(inbox.approve(approval_id, by=self.by) if what == "approve"
                                        else inbox.reject(approval_id, reason, by=self.by))
        except Exception as exc:
            self._show_error(f"Could not {what} {approval_id}: {exc}")
            return None
        self._busy[approval_id] = "approving&hellip;" if what == "approve" else "rejecting&hellip;"
        if approval_id in self._rows:
            self._row(approval_id)
        fut.add_done_callback(lambda f: self._decided(approval_id, what, f))
        return fut

    def _decided(self, approval_id: str, what: str, fut: asyncio.Future) -> None:
        self._busy.pop(approval_id, None)
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self._show_error(f"Could not {what} {approval_id}: {type(exc).__name__}: {exc}")
        if not self._streaming:
            self.refresh()

    def _row(self, approval_id: str) -> w.HBox:
        """The row of *approval_id* (made the first time), redrawn from the inbox."""
        if approval_id not in self._rows:
            size = w.Layout(width="90px")
            approve = w.Button(description="Approve", tooltip=f"Approve {approval_id}",
                               button_style="success", layout=size)
            reject = w.Button(description="Reject", tooltip=f"Reject {approval_id}",
                              button_style="danger", layout=size)
            approve.on_click(lambda _b: self.approve(approval_id))
            reject.on_click(lambda _b: self.reject(approval_id))
            self.buttons[approval_id] = (approve, reject)
            self._rows[approval_id] = w.HBox([w.HTML(), approve, reject], layout=w.Layout(
                border_left="3px solid #e0a800", padding="2px 0 2px 8px", margin="3px 0 3px 10px",
                align_items="center"))
            self._rows[approval_id].add_class("agentbook-chat-approval")
        row = self._rows[approval_id]
        try:
            a = self.ref.runtime.approvals.get(approval_id)
        except ApprovalNotFoundError:
            a = None
        mine = a is not None and (a.agent, a.name) == (self.ref.class_name, self.ref.name)
        can_decide = a is not None and mine and a.pending
        if a is None or not mine:  # e.g. a fork: its parent's approvals are not its own
            state = "no such approval" if a is None else f"belongs to {escape(a.agent)}/{escape(a.name)}"
        elif approval_id in self._busy or can_decide:
            state = self._busy.get(approval_id, "waiting for a person")
        else:
            status = "expired" if a.status == "pending" else a.status
            state = (_MARK.get(status, escape(status)) + (f" by {escape(a.decided_by)}" if a.decided_by
                     else "") + (f": {escape(a.reason)}" if a.reason else ""))
        what = escape(_cut(a.summary if a is not None else approval_id, 160))
        row.children[0].value = (f"<span style=\"line-height:1.45\"><b>{what}</b> "
                                 f"<span style=\"{_MUTED}\">&middot; {state}</span></span>")
        approve, reject = self.buttons[approval_id]
        approve.disabled = reject.disabled = (not can_decide or approval_id in self._busy
                                              or self._streaming)
        approve.layout.display = None if can_decide else "none"  # shared by both buttons
        return row

    # -- drawing ------------------------------------------------------------------------
    def _relayout(self) -> None:
        children = (*self._shown, *self._live)
        if children != self.conversation.children:
            self.conversation.children = children
        for gone in set(self._rows) - {i for i, row in self._rows.items() if row in children}:
            self.buttons.pop(gone, None)
            close_all(self._rows.pop(gone))

    def _on_event(self, _event: dict) -> None:
        if not self._streaming:  # a turn in flight redraws when it ends
            self.refresh()

    def _show_error(self, text: str) -> None:
        self.last_error = text = text.strip().splitlines()[0][:200] if text.strip() else ""
        self.status.value = f"<span style=\"color:#c62828\">&#9888; {escape(text)}</span>" if text else ""

    def _stop(self) -> None:
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()
            self._unsubscribe = None

    def __repr__(self) -> str:
        return f"<chat with {self.ref.class_name}({self.ref.name!r})>"


def _run(pool: list[w.HTML], index: int) -> w.HTML:
    """The *index*-th HTML widget of *pool*, made when first needed."""
    while len(pool) <= index:
        pool.append(w.HTML(layout=w.Layout(display="none")))
    return pool[index]


def _draw(run: w.HTML, parts: list[str]) -> None:
    run.value = "".join(parts)  # traitlets sends nothing when it is unchanged
    run.layout.display = None if parts else "none"


def _entries(row: Any) -> list[str]:
    """What one stored message shows: HTML snippets, and approval ids where rows go."""
    if row.role == "summary":
        return [f"<div style=\"{_MUTED};white-space:pre-wrap\" title=\"earlier turns, summarized\">"
                f"&hellip; {escape(row.content)}</div>"]
    if row.role == "user":
        return [_bubble("user", row.content)]
    if row.role == "tool":
        try:
            value = json.loads(row.content)
        except ValueError:
            value = row.content
        if isinstance(value, dict) and value.get("status") == "awaiting approval":
            return [_Approval(value.get("approval"))]
        return [_result_line(row.name, value)]
    if row.name == INTERRUPTED and not row.content:
        return [f"<div class=\"agentbook-chat-interrupted\" style=\"{_LINE}\">&#9888; interrupted: the "
                "agent's process stopped before it answered (nothing of the answer was kept)</div>"]
    calls = [_call_line(c.get("name"), c.get("arguments"), str(c.get("id", "")).endswith("-approved"))
             for c in row.tool_calls or []]
    return ([_bubble("assistant", row.content)] if row.content else []) + calls


class _Elsewhere:
    """A chat widget's watcher (:mod:`agentbook.chat.live`) and the sink of each turn of its
    agent that it did not start: a turn typed in a browser page, sent from another cell or
    continued after an approval streams into the widget word by word, drawn as its own.
    It is given what it needs of the widget: *wanted* (whether to draw a turn of agent
    *key* starting now), *begin* (the user's words, if known), *chunk* and *done*."""

    __slots__ = ("begin_draft", "chunk", "ctx", "done", "wanted")

    def __init__(self, wanted: Callable[[tuple[str, str]], bool],
                 begin: Callable[[str | None], None], chunk: Callable[[ChatChunk], None],
                 done: Callable[[], None]) -> None:
        self.wanted, self.begin_draft, self.chunk, self.done = wanted, begin, chunk, done
        self.ctx: HandlerContext | None = None

    def sink(self, key: tuple[str, str], ctx: HandlerContext, continuation: bool) -> Any:
        if not self.wanted(key):
            return None
        self.ctx = ctx
        return self

    def changed(self, key: tuple[str, str], ctx: HandlerContext, transcript: Any) -> None:
        """(a change without a turn: the widget redraws on the commit's event)"""

    def begin(self, message_id: str | None) -> None:
        asked = (self.ctx.extras.get("wire") or {}).get("asked") if self.ctx else None
        self.begin_draft(asked["parts"][0]["text"] if asked else None)

    def step(self) -> None:
        pass

    def piece(self, kind: str, text: str, data: Any) -> None:
        self.chunk(ChatChunk(text, kind, data))

    def end(self, reason: str, transcript: Any) -> None:
        if self.ctx is not None:  # the stored turn replaces the draft after the commit
            self.ctx.events.append((turns.AFTER_COMMIT, self.done))
        self.ctx = None

    def failed(self, error: BaseException) -> None:
        self.ctx = None
        asyncio.get_running_loop().call_soon(self.done)


class _Approval(str):
    """An approval id among the HTML snippets of :func:`_entries`."""


def _bubble(role: str, text: str) -> str:
    return f"<div class=\"agentbook-chat-{role}\" style=\"{_BUBBLE}{_ROLE[role]}\">{escape(text)}</div>"


def _call_line(name: Any, arguments: Any, approved: bool = False) -> str:
    args = ", ".join(f"{k}={_short(v, 40)}" for k, v in dict(arguments or {}).items())
    note = " &middot; the approved call" if approved else ""
    return f"<div style=\"{_LINE}\">&rarr; {escape(_cut(f'{name}({args})'))}{note}</div>"


def _result_line(name: Any, result: Any) -> str:
    text = _short(result, 2000)
    return (f"<div style=\"{_LINE}\" title=\"{escape(text)}\">&larr; {escape(name)}: "
            f"{escape(_cut(text))}</div>")


def _model_name(ref: AgentRef) -> str:

    model = getattr(ref.runtime.class_for(ref.class_name), "model", None)  # None: the builtin default
    names = [getattr(model, "provider", "builtin"), getattr(model, "name", "builtin")]
    return "model: " + " ".join(dict.fromkeys(names))


def _short(value: Any, limit: int) -> str:
    return _cut(json.dumps(value, ensure_ascii=False, default=str), limit)


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
