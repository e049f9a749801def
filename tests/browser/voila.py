"""One notebook served by Voila, for a browser test: start the server, find the kernel it
started, and stop both, whatever the test did.

Voila runs every cell when the page is opened and shows the widgets once all have run. Its
kernel runs in a session of its own, so stopping the server's process group leaves it
running: it is found by its connection file and stopped too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import free_port, stop_group, wait_for_port


@dataclass
class Voila:
    """A running Voila server for one notebook."""

    url: str
    connections: Path
    kernels: list = field(default_factory=list)

    def connection_file(self) -> Path:
        """The connection file of the kernel the page started (and remember that kernel)."""
        import psutil

        (found,) = self.connections.glob("voila_*/kernel-*.json")
        self.kernels = [p for p in psutil.process_iter(["cmdline"])
                        if str(found) in (p.info["cmdline"] or [])]
        return found

    def check_kernel_stopped(self) -> None:
        """The kernel, asked to shut down, has exited within 30 s. (It is Voila's child, not
        ours: once it exits it stays a zombie until Voila reaps it, which a busy machine
        can put off, so a zombie counts as stopped.)"""
        import psutil

        def running(p: psutil.Process) -> bool:
            try:
                return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        assert self.kernels, "the page started no kernel"
        deadline = time.monotonic() + 30
        while any(running(p) for p in self.kernels) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(p) for p in self.kernels), \
            "Voila's kernel did not stop when asked to"


@contextmanager
def voila(notebook: Path, env: dict[str, str]) -> Iterator[Voila]:
    """Serve *notebook* (its folder is the working folder) until the block ends."""
    connections, log = notebook.parent / "connections", notebook.parent / "voila.log"
    connections.mkdir()
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
             "--Voila.ip=127.0.0.1", f"--Voila.connection_dir_root={connections}"],
            cwd=notebook.parent, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    server = Voila(f"http://127.0.0.1:{port}/", connections)
    try:
        wait_for_port(port, proc, log)
        yield server
    finally:
        stop_group(proc)
        for kernel in server.kernels:
            if kernel.is_running():
                kernel.kill()
