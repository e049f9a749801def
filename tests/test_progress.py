"""Progress bars (agentbook.progress, tqdm): one line redrawn in place on a terminal, nothing
when piped, loaded only when a bar is made; the catch-up over many agents draws one."""

from __future__ import annotations

import io
import subprocess
import sys

import agentbook as ab
from agentbook import progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_bar_redraws_one_line_on_a_terminal_and_clears_it():
    out = Terminal()
    bar = progress.bar(4, "catching up", unit="agents", file=out, ncols=80, mininterval=0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "catching up" in text and "4/4" in text
    assert "\n" not in text, "drawn in place: no line is ever ended"
    assert text.endswith("\r"), "a finished bar that is not kept is wiped"


def test_a_bar_writes_nothing_when_piped():
    out = io.StringIO()  # not a terminal
    bar = progress.bar(3, "simulating", file=out)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
    assert not progress.in_kernel()


def test_importing_agentbook_its_cli_views_and_bench_does_not_import_tqdm():
    code = ("import sys, agentbook, agentbook.cli.main, agentbook.cli.demo, agentbook.bench, "
            "agentbook.analytics.views, agentbook.progress; print('tqdm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr


class Few(ab.Agent):
    @ab.callable
    async def touch(self) -> None:
        self.set_state({"touched": True})


async def test_catching_up_on_many_agents_draws_one_bar(rt, monkeypatch):
    from agentbook.analytics import views

    made = []

    class Recorder:
        def __init__(self, total, desc, **options):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            made.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(views, "bar", Recorder)
    for i in range(201):
        await rt.get(Few, f"f{i}").touch()
    assert int(rt.sql("SELECT count(*) AS n FROM agents")["n"][0]) == 201
    (drawn,) = made
    assert (drawn.total, drawn.desc, drawn.n, drawn.closed) == (201, "catching up", 201, True)


def test_a_bar_starts_no_background_thread():
    import threading

    for out in (io.StringIO(), Terminal()):
        bar = progress.bar(2, "x", file=out)
        bar.update(2)
        bar.close()
    assert not [t for t in threading.enumerate() if type(t).__name__ == "TMonitor"]
