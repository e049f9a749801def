"""agentbook's chat page in a real browser (notebook 08, section 7): the kernel serves it
(``server.add_page()``), the page speaks the agents chat frames to a notebook's
``ab.ChatAgent`` with a one-time ticket from its link, and both sides see each other's turns.

The runtime runs on an event loop of its own in a thread (as a kernel's does); Playwright's
sync API drives headless Chromium from the test's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import agentbook as ab

from ..waiting import wait_until
from .conftest import ARTIFACTS

pytestmark = pytest.mark.browser


class PageChat(ab.ChatAgent):
    """The builtin offline model, no tools."""


DELETED: list[str] = []


@ab.tool(needs_approval=True)
def delete_file(path: str) -> dict:
    """Delete a file from the disk.

    Args:
        path: The file's path.
    """
    DELETED.append(path)
    return {"deleted": path}


class PageGated(ab.ChatAgent):
    """The builtin offline model and a gated tool."""

    tools = [delete_file]


class Kernel:
    """A runtime serving on a loop in a thread of its own."""

    def __init__(self, store: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> tuple[Any, Any]:
            rt = ab.Runtime(store)
            return rt, rt.serve()

        self.rt, self.server = self.run(start())

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any) -> Any:
        async def inside() -> Any:
            return fn()

        return self.run(inside())

    def close(self) -> None:
        async def stop() -> None:
            await self.server.stop()
            await self.rt.aclose()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def kernel(tmp_path, jupyter_env) -> Iterator[Kernel]:
    kernel = Kernel(str(tmp_path / "store"))
    try:
        yield kernel
    finally:
        kernel.close()


def test_the_chat_page_and_the_notebook_see_each_other_s_turns(kernel, page):
    from playwright.sync_api import expect

    desk = kernel.call(lambda: kernel.rt.get(PageChat, "desk"))
    kernel.call(lambda: kernel.server.add_page())
    link = kernel.call(lambda: kernel.server.page_url("chat.html", agent="page-chat",
                                                      name="desk"))
    page.goto(link)
    expect(page.locator("#status")).to_have_text("connected")
    assert "ticket" not in page.url  # the page dropped it from the address bar

    # a turn typed in the page streams its answer there, and is stored
    page.locator("#text").fill("will the trains run on time")
    page.locator("#text").press("Enter")
    answer = ("I'm the builtin offline model, so I only follow simple rules. "
              "You said: \u201cwill the trains run on time\u201d")
    expect(page.locator(".msg.assistant").last).to_have_text(answer)
    expect(page.locator(".msg.user")).to_have_text(["will the trains run on time"])

    def stored() -> list[tuple[str, str]]:
        rows = kernel.call(desk.messages)
        return list(zip(rows["role"], rows["content"], strict=True))

    wait_until(lambda: len(stored()) == 2, what="the page's turn committed")
    assert stored() == [("user", "will the trains run on time"), ("assistant", answer)]

    # a turn from Python shows in the open page (streamed, then the committed transcript)
    said = kernel.run(desk.chat("hello"))
    assert said == "Hello! I'm the builtin offline model. How can I help?"
    expect(page.locator(".msg.user")).to_have_text(["will the trains run on time", "hello"])
    expect(page.locator(".msg.assistant").last).to_have_text(said)
    expect(page.locator(".msg")).to_have_count(4)
    ids = page.locator(".msg").evaluate_all("els => els.map(e => e.dataset.id)")
    assert ids == list(kernel.call(desk.messages)["id"])  # the stored rows, in order
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"))

    # a dropped socket: the page reconnects by itself with its session pass, and goes on
    def drop() -> int:
        conns = kernel.server.connections_of(desk._ab_key)
        for conn in conns:
            conn.close(1012, "going away")
        return len(conns)

    assert kernel.call(drop) == 1
    expect(page.locator("#status")).to_have_text("connected")
    wait_until(lambda: len(kernel.call(lambda: kernel.server.connections_of(desk._ab_key))) == 1,
               what="the page connected again")
    page.locator("#text").fill("hello after the drop")
    page.locator("#text").press("Enter")
    expect(page.locator(".msg.user").last).to_have_text("hello after the drop")
    wait_until(lambda: len(stored()) == 6, what="the turn after the reconnect committed")
    # a reload (the ticket long gone from the address bar) reconnects with the pass too
    page.reload()
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator(".msg")).to_have_count(6)

    # the ticket was single use: the same link again is refused (4001), shown on the page
    page.goto("about:blank")
    page.goto(link)
    expect(page.locator("#status")).to_contain_text("disconnected (4001")


def test_the_chat_page_decides_approvals_as_the_inbox_does(kernel, page):
    from playwright.sync_api import expect

    desk = kernel.call(lambda: kernel.rt.get(PageGated, "gated"))
    kernel.call(lambda: kernel.server.add_page())
    page.goto(kernel.call(lambda: kernel.server.page_url("chat.html", agent="page-gated",
                                                         name="gated")))
    expect(page.locator("#status")).to_have_text("connected")
    page.locator("#text").fill("please delete file '/tmp/a'")
    page.locator("#text").press("Enter")
    expect(page.locator("button.approve")).to_have_count(1)  # streamed: the call waits
    pending = kernel.call(lambda: kernel.rt.approvals.list("pending"))
    assert len(pending) == 1 and pending[0].agent == "PageGated"
    page.locator("button.approve").click()
    wait_until(lambda: DELETED == ["/tmp/a"], what="the approved call ran")
    expect(page.locator(".msg.assistant").last).to_contain_text("delete_file")
    expect(page.locator("button.approve")).to_have_count(0)
    # (the tool ran inside the approved call; its decision commits when the call ends)
    wait_until(lambda: kernel.call(lambda: kernel.rt.approvals.get(pending[0].id)).status
               == "approved", what="the approval's decision committed")
    approval = kernel.call(lambda: kernel.rt.approvals.get(pending[0].id))
    assert approval.status == "approved" and approval.decided_by.startswith("client:")

    # a second call, rejected in the page: the tool never runs, the transcript says so
    page.locator("#text").fill("please delete file '/tmp/b'")
    page.locator("#text").press("Enter")
    expect(page.locator("button.reject")).to_have_count(1)
    page.locator("button.reject").click()
    wait_until(lambda: kernel.call(lambda: [a.status for a in kernel.rt.approvals.list(None)])
               .count("rejected") == 1, what="the rejection")
    expect(page.locator(".tool").last).to_contain_text("output-denied")
    assert DELETED == ["/tmp/a"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page-approvals.png"))
    del desk
