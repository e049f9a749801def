"""Headless Chromium against a real JupyterLab server and a real Voila server.

One JupyterLab server per session (its own process group, token, root folder, settings,
workspaces and runtime folders, all temporary); one Chromium per module, a fresh page
per test, and each test opens its notebook in a workspace of its own (see ``lab.py``).
Servers and kernels run this very interpreter. A failing test leaves a screenshot, the
page's HTML, the browser console and the Lab server's log in ``tests/artifacts/``.

Skipped with a message when Playwright or ``/usr/bin/chromium`` is missing
(``apt-get install -y chromium``; ``playwright install`` can't download browsers here).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..waiting import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "04_human_in_the_loop.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Readiness by TCP connect (a GET would make Voila run the notebook)."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, timeout=timeout,
               what=lambda: f"server listens on port {port}:\n{log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: its whole process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for servers: a ``python3`` kernelspec running this interpreter,
    private settings (no news pop-up) and runtime folder."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need playwright (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need {CHROMIUM} (apt-get install -y chromium)")
    base = tmp_path_factory.mktemp("jupyter-home")
    spec = base / "share" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    for sub in ("runtime", "config"):
        (base / sub).mkdir()
    return {**os.environ,
            "JUPYTER_PATH": str(base / "share"),
            "JUPYTER_CONFIG_DIR": str(base / "config"),
            "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


@dataclass
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    root: Path
    store: Path
    runtime_dir: Path
    log: Path

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, jupyter_env: dict[str, str]) -> Iterator[Lab]:
    """One JupyterLab server for the session, serving a copy of the notebook; the
    notebook's store is ``AGENTBOOK_DEMO_STORE`` in a temporary folder."""
    base = tmp_path_factory.mktemp("lab")
    root, store = base / "root", base / "store"
    root.mkdir()
    (base / "workspaces").mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    log = base / "lab.log"
    env = {**jupyter_env, "AGENTBOOK_DEMO_STORE": str(store),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
             "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.extension_manager=readonly"],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for_port(port, proc, log)
        yield Lab(f"http://127.0.0.1:{port}", token, root, store,
                  Path(jupyter_env["JUPYTER_RUNTIME_DIR"]), log)
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def browser(jupyter_env: dict[str, str]) -> Iterator[object]:
    """Chromium, for one module at a time: Playwright's sync API runs an event loop of its
    own, which must be gone before pytest-asyncio's tests run theirs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh page; when the test fails, its screenshot, HTML and console (and the Lab's
    log, if the test used the Lab) go to tests/artifacts/."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.set_default_timeout(30_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and not page.is_closed():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        (ARTIFACTS / f"{request.node.name}.html").write_text(page.content(), encoding="utf-8")
        (ARTIFACTS / f"{request.node.name}.console.txt").write_text("\n".join(console),
                                                                    encoding="utf-8")
        if "lab" in request.fixturenames:
            shutil.copy(request.getfixturevalue("lab").log,
                        ARTIFACTS / f"{request.node.name}.lab.log")
    context.close()
