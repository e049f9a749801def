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

    # the ticket was single use: the same link again is refused (4001), shown on the page
    page.goto("about:blank")
    page.goto(link)
    expect(page.locator("#status")).to_contain_text("disconnected (4001")
