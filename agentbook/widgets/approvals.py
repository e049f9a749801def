"""The approval inbox: pending approvals with Approve and Reject buttons.

A view over ``rt.approvals``, never a second source of truth: the buttons call
``rt.approvals.approve(id, by=...)`` and ``rt.approvals.reject(id, reason, by=...)``
exactly as code would, and the rows are re-read from the inbox after every
``approval:*`` event. Nothing here waits: a decision runs in the background on the
kernel's event loop, and one that fails (already decided, expired, the approved method
raised) shows as an error line in the widget.

Time left is on the runtime's clock. On an ``ab.VirtualClock`` the labels follow every
``clock.advance``; on the real clock a low-frequency task refreshes the inbox until the
widget is closed.

By default each ``approval:*`` event re-reads the inbox at once. With ``every=`` (the
dashboard's inbox) a burst of them is read once per interval: the first event sets a timer,
the ones after it only wait for it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..approve.inbox import default_person
from ..errors import ApprovalError

if TYPE_CHECKING:
    from ..approve.inbox import Approval
    from ..core.runtime import Runtime

from .common import ClockHook, Coalescer, close_all, duration, escape, running_loop

__all__ = ["ApprovalInbox", "approval_widget", "inbox_widget"]

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_BLOCK = "line-height:1.45;padding:2px 0"  # HTML widgets default to one 28 px line
_MARK = {"approved": ("&#10003;", "#2e7d32"), "rejected": ("&#10007;", "#c62828"),
         "expired": ("&#8856;", "#8d6e00"), "failed": ("!", "#c62828"),
         "cancelled": ("&#8856;", "#666")}


def inbox_widget(rt: Runtime, *, by: str | None = None, recent: int = 5,
                 tick: float = 20.0, every: float = 0.0) -> ApprovalInbox:
    """The live approval inbox of *rt* (what displaying ``rt.approvals`` shows).

    Args:
        rt: The runtime whose approvals to list, across all its agents.
        by: Who is recorded as deciding on a click (default: the operating-system user).
        recent: How many recent decisions to show under the pending ones.
        tick: Seconds between refreshes on a real clock (``0``: only on events).
        every: At most one re-read per this many seconds while events arrive (``0``: one
            per event).
    """
    return ApprovalInbox(rt, by=by, recent=recent, tick=tick, every=every)


def approval_widget(rt: Runtime, approval_id: str, *, by: str | None = None) -> ApprovalInbox:
    """One approval: its buttons while pending, its decision afterwards."""
    return ApprovalInbox(rt, only=approval_id, by=by, recent=1)


class ApprovalInbox(w.VBox):
    """Pending approvals, one row each, with Approve, Reject and a reason field.

    Attributes:
        buttons: ``{approval id: (approve_button, reject_button)}`` of the rows shown.
        reasons: ``{approval id: Text}``: the optional reason sent with Reject.
        by: The name recorded as the decider for decisions made in this widget (the
            header names it only when it was given: the login of a container is ``root``).
        last_error: Why the last decision failed (``""`` when it didn't).
        renders: How many times the inbox was re-read (for tests and curiosity).
    """

    def __init__(self, rt: Runtime, *, only: str | None = None, by: str | None = None,
                 recent: int = 5, tick: float = 20.0, every: float = 0.0) -> None:
        self._header, self._error, self._recent = w.HTML(), w.HTML(), w.HTML()
        self._rows_box = w.VBox()
        super().__init__([self._header, self._error, self._rows_box, self._recent])
        self.add_class("agentbook-approvals")
        self._rt, self._only, self._limit = rt, only, recent
        self.by = by or default_person()
        self._named = by is not None
        self.renders = 0
        self._redraws = Coalescer(self._due, every)
        self.buttons: dict[str, tuple[w.Button, w.Button]] = {}
        self.reasons: dict[str, w.Text] = {}
        self.last_error = ""
        self._rows: dict[str, tuple[w.VBox, w.HTML, float | None]] = {}
        self._busy: dict[str, str] = {}
        self._unsubscribe: Any = None
        self._ticker: asyncio.Task | None = None
        self._hook = ClockHook(self.refresh_times)
        if not rt.closed:
            self._unsubscribe = rt.events.subscribe(self._on_event, types=["approval:*"])
            if getattr(rt.clock, "virtual", False) and hasattr(rt.clock, "add_settler"):
                rt.clock.add_settler(self._hook)  # held weakly: goes with the widget
            elif tick > 0 and running_loop() is not None:
                self._ticker = asyncio.ensure_future(self._tick(tick))
        self.refresh()

    # -- what the buttons do (callable from code and tests) ---------------------------
    def approve(self, approval_id: str) -> asyncio.Future | None:
        """Approve as the row's button does: returns the background run, or ``None`` if
        the inbox refused at once (then :attr:`last_error` says why)."""
        return self._decide(approval_id, "approve", None)

    def reject(self, approval_id: str, reason: str | None = None) -> asyncio.Future | None:
        """Reject as the row's button does, with *reason* or the row's reason field."""
        if reason is None and approval_id in self.reasons:
            reason = self.reasons[approval_id].value.strip() or None
        return self._decide(approval_id, "reject", reason)

    def _decide(self, approval_id: str, what: str, reason: str | None) -> asyncio.Future | None:
        self._show_error("")
        if running_loop() is None:
            self._show_error(f"Cannot {what} {approval_id} without a running event loop; use "
                             f"await rt.approvals.{what}(...)")
            return None
        try:
            if what == "approve":
                pending = self._rt.approvals.approve(approval_id, by=self.by)
            else:
                pending = self._rt.approvals.reject(approval_id, reason, by=self.by)
            fut = asyncio.ensure_future(pending)
        except Exception as exc:
            self._show_error(f"Could not {what} {approval_id}: {exc}")
            self.refresh()
            return None
        self._busy[approval_id] = "approving&hellip;" if what == "approve" else "rejecting&hellip;"
        for button in self.buttons.get(approval_id, ()):
            button.disabled = True
        self._refresh_times()
        fut.add_done_callback(lambda f: self._decided(approval_id, what, f))
        return fut

    def _decided(self, approval_id: str, what: str, fut: asyncio.Future) -> None:
        self._busy.pop(approval_id, None)
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled():
            self._show_error(f"The decision on {approval_id} was cancelled")
        elif isinstance(exc, ApprovalError) or (exc is not None and what == "reject"):
            self._show_error(f"Could not {what} {approval_id}: {exc}")
        elif exc is not None:
            self._show_error(f"{approval_id} was approved, but its action failed: "
                             f"{type(exc).__name__}: {exc}")
        self.refresh()

    # -- rendering ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the inbox; re-render rows, time left, header and recent decisions."""
        self._redraws.drawn()
        self.renders += 1
        rt = self._rt
        if rt.closed:
            self._stop()
            self._header.value = "<b>Approvals</b> &middot; the runtime was closed"
            for buttons in self.buttons.values():
                for button in buttons:
                    button.disabled = True
            return
        pending = rt.approvals.list("pending")
        if self._only is not None:
            pending = [a for a in pending if a.id == self._only]
        ids = [a.id for a in pending]
        for approval in pending:
            if approval.id not in self._rows:
                self._rows[approval.id] = self._make_row(approval)
        self._rows_box.children = tuple(self._rows[i][0] for i in ids)
        for gone in set(self._rows) - set(ids):
            self._drop_row(gone)
        self._refresh_times()
        self._recent.value = self._recent_html()

    def _make_row(self, a: Approval) -> tuple[w.VBox, w.HTML, float | None]:
        size = w.Layout(width="110px")
        approve = w.Button(description="Approve", tooltip=f"Approve {a.id}",
                           button_style="success", layout=size)
        reject = w.Button(description="Reject", tooltip=f"Reject {a.id}",
                          button_style="danger", layout=size)
        reason = w.Text(placeholder="reason (optional, for Reject)",
                        layout=w.Layout(width="260px"))
        approve.on_click(lambda _b, i=a.id: self.approve(i))
        reject.on_click(lambda _b, i=a.id: self.reject(i))
        left = w.HTML(layout=w.Layout(margin="0 0 0 10px"))
        effects = "; ".join(a.side_effects) if a.side_effects else "none declared"
        info = w.HTML(
            f"<div style=\"{_BLOCK}\"><b>{escape(a.summary)}</b><br>"
            f"<span style=\"{_MUTED}\">{escape(a.agent)}/{escape(a.name)} &middot; "
            f"<code>{escape(a.id)}</code> &middot; expires {escape(_when(a.expires))}</span><br>"
            f"runs <code>{escape(_call(a.method, a.args, a.kwargs))}</code><br>"
            f"<span style=\"{_MUTED}\">side effects:</span> {escape(effects)}</div>")
        self.buttons[a.id] = (approve, reject)
        self.reasons[a.id] = reason
        row = w.VBox([info, w.HBox([approve, reject, reason, left])], layout=w.Layout(
            border_left="3px solid #e0a800", padding="0 0 4px 10px", margin="6px 0"))
        row.add_class("agentbook-approval")
        approve.disabled = reject.disabled = a.id in self._busy
        return row, left, a.expires

    def _drop_row(self, approval_id: str) -> None:
        row, _, _ = self._rows.pop(approval_id)
        self.buttons.pop(approval_id, None)
        self.reasons.pop(approval_id, None)
        close_all(row)

    def refresh_times(self) -> None:
        """Re-render time left and the header only (no re-read of the inbox); nothing once
        the widget stopped listening or the runtime closed. Called after each step of a
        virtual clock (with ``every``, at most once per interval, with the next re-read)."""
        if self._unsubscribe is None or self._rt.closed:
            return
        if self._redraws.every > 0:
            self._redraws.poke()
        else:
            self._refresh_times()

    def _refresh_times(self) -> None:
        now = self._rt.clock.now()
        for approval_id, (_, label, expires) in self._rows.items():
            text = self._busy.get(approval_id) or _time_left(expires, now)
            if label.value != text:
                label.value = text
        header = self._header_html(len(self._rows))
        if self._header.value != header:
            self._header.value = header

    def _header_html(self, count: int) -> str:
        clock = ""
        if getattr(self._rt.clock, "virtual", False):
            clock = f" &middot; clock {escape(_when(self._rt.clock.now()))}"
        if self._only is not None:
            state = "pending" if count else "decided"
            return f"<b>Approval</b> <code>{escape(self._only)}</code> &middot; {state}{clock}"
        noun = "approval" if count == 1 else "approvals"
        who = f" &middot; you decide as {escape(self.by)}" if self._named else ""
        return (f"<b>Approvals</b> &middot; {count} pending {noun} <span style=\"{_MUTED}\">"
                f"{who}{clock}</span>")

    def _recent_html(self) -> str:
        if self._limit <= 0:
            return ""
        now = self._rt.clock.now()
        if self._only is not None:
            try:
                items = [self._rt.approvals.get(self._only)]
            except ApprovalError:
                return f"<span style=\"{_MUTED}\">no approval has this id</span>"
        else:
            items = self._rt.approvals.list(None)
        decided = [(a, s) for a in items if (s := _status(a, now)) != "pending"]
        decided.sort(key=lambda x: x[0].decided_at or x[0].expires or 0.0, reverse=True)
        if not decided:
            return ""
        lines = "".join(_decision_line(a, s) for a, s in decided[: self._limit])
        title = "" if self._only is not None else f"<b style=\"{_MUTED}\">Recent decisions</b>"
        return (f"<div style=\"{_BLOCK}\">{title}<ul style=\"margin:2px 0;padding-left:4px;"
                f"list-style:none\">{lines}</ul></div>")

    def _show_error(self, text: str) -> None:
        self.last_error = text
        self._error.value = f"<span style=\"color:#c62828\">{escape(text)}</span>" if text else ""

    # -- staying live -----------------------------------------------------------------
    def _on_event(self, event: dict) -> None:
        if self._only is not None and (event.get("payload") or {}).get("id") != self._only:
            return
        if self._redraws.every > 0:
            self._redraws.poke()
        else:
            self.refresh()

    def _due(self) -> None:
        if self._unsubscribe is not None:
            self.refresh()

    async def _tick(self, seconds: float) -> None:
        while not self._rt.closed:
            await asyncio.sleep(seconds)
            self.refresh()

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._redraws.cancel()

    def close(self) -> None:
        """Stop listening to the runtime; close the widget and all its parts."""
        self._stop()
        for approval_id in list(self._rows):
            self._drop_row(approval_id)
        for part in (self._header, self._error, self._rows_box, self._recent):
            close_all(part)
        super().close()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> Any:
        # Approvals._repr_mimebundle_ passes include and exclude positionally;
        # ipywidgets takes keywords only.
        return super()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        if self._only is not None:
            return f"<approval {self._only}: {'pending' if self._rows else 'decided'}>"
        return f"<approval inbox: {len(self._rows)} pending>"


def _call(method: str, args: Any, kwargs: Any) -> str:
    parts = [_short(v) for v in args] + [f"{k}={_short(v)}" for k, v in dict(kwargs).items()]
    return f"{method}({', '.join(parts)})"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_left(expires: float | None, now: float) -> str:
    if expires is None:
        return f"<span style=\"{_MUTED}\">no expiry</span>"
    left = expires - now
    if left <= 0:
        return "<span style=\"color:#8d6e00\">expired</span>"
    return (f"<span style=\"color:{'#c62828' if left < 300 else 'inherit'}\">{duration(left)} "
            "left</span>")


def _status(a: Approval, now: float) -> str:
    if a.status == "pending" and a.expires is not None and a.expires <= now:
        return "expired"  # its expiry timer hasn't fired yet
    return a.status


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _decision_line(a: Approval, status: str) -> str:
    mark, color = _MARK.get(status, ("&middot;", "inherit"))
    who = f" by {escape(a.decided_by)}" if a.decided_by else ""
    at = _when(a.decided_at if a.decided_at is not None else a.expires)
    why = f" &middot; &ldquo;{escape(a.reason)}&rdquo;" if a.reason and status != "expired" else ""
    return (f"<li title=\"{escape(a.id)}\"><span style=\"color:{color}\">{mark} <b>{escape(status)}"
            f"</b></span> {escape(a.summary)}{why} <span style=\"{_MUTED}\">&middot; {escape(a.agent)}/"
            f"{escape(a.name)}{who} &middot; {escape(at)}</span></li>")
