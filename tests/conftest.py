"""Shared fixtures: runtimes on real SQLite files, the virtual clock, and no network."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

import agentbook as ab


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the network: only loopback connections are allowed."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1", "::1", "localhost"
        ):
            raise RuntimeError(f"tests may not reach the network (tried {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def clock() -> ab.VirtualClock:
    """A virtual clock starting at 2026-01-01T00:00Z."""
    return ab.VirtualClock()


@pytest.fixture
async def rt(tmp_path, clock):
    """A runtime on real SQLite files in a temporary folder, on the virtual clock."""
    runtime = ab.Runtime(tmp_path / "store", clock=clock)
    yield runtime
    await runtime.aclose()


@pytest.fixture
async def mem_rt(clock):
    """An ephemeral runtime (``":memory:"``) on the virtual clock."""
    runtime = ab.Runtime(":memory:", clock=clock)
    yield runtime
    await runtime.aclose()


RAY_INSTALL = "the Ray backend is tested when ray is installed (pip install 'agentbook[ray]')"


@pytest.fixture(scope="session")
def _ray_shared():
    """The session's shared Ray cluster (tests/ray_start.py), shut down at the end."""
    from .ray_start import SHARED

    ray = pytest.importorskip("ray", reason=RAY_INSTALL)
    yield SHARED
    SHARED.shutdown(ray)


#: Run right after the conformance suite, on its Ray cluster, test_ray_nodes last: it
#: needs a cluster of its own and stops the shared one first, so no idle Ray cluster
#: competes for the machine's two cores with the rest of the session (notebooks included).
RAY_MODULES = ("test_ray_backend.py", "test_ray_reads.py", "test_ray_nodes.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    moved = [item for name in RAY_MODULES for item in items
             if item.path.name == name and item.path.parent.name == "tests"]
    conformance = [k for k, item in enumerate(items) if "conformance" in item.path.parts]
    if not moved or not conformance:
        return
    ids = {id(item) for item in moved}
    before = [item for item in items[:conformance[-1] + 1] if id(item) not in ids]
    after = [item for item in items[conformance[-1] + 1:] if id(item) not in ids]
    items[:] = before + moved + after


@pytest.fixture(scope="module")
def ray_cluster(_ray_shared):
    """``ray``, its driver connected to the session's shared cluster of two nodes."""
    import ray

    return _ray_shared.connect(ray)


def _kernelspec(root, python: str) -> None:
    """Write a kernelspec named ``python3`` under *root* that runs *python*."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }))


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec named ``python3`` that runs this interpreter, first on Jupyter's path.

    Whatever ``python3`` kernels the machine has elsewhere, notebooks and kernel tests run
    with the environment the tests run in.
    """
    root = tmp_path_factory.mktemp("jupyter")
    _kernelspec(root, sys.executable)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet the debugger's warning
        yield "python3"


#: CI points this at the Python of Binder's environment (a venv built from
#: binder/requirements.txt alone): the notebooks then run once, there, under every check of
#: tests/test_notebooks.py (see .ci/run).
NOTEBOOK_PYTHON = "AGENTBOOK_NOTEBOOK_PYTHON"


@pytest.fixture(scope="module")
def notebook_kernel(tmp_path_factory):
    """The kernel the notebooks run in: ``python3`` running ``$AGENTBOOK_NOTEBOOK_PYTHON``
    when it is set (CI: Binder's environment), else this interpreter."""
    python = os.environ.get(NOTEBOOK_PYTHON) or sys.executable
    if not os.access(python, os.X_OK):
        pytest.fail(f"{NOTEBOOK_PYTHON}={python} is not an executable Python: point it at a "
                    "venv's bin/python, or unset it to run the notebooks in this one",
                    pytrace=False)
    root = tmp_path_factory.mktemp("jupyter")
    _kernelspec(root, python)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        yield "python3"


def pytest_report_header(config: pytest.Config) -> str:
    return f"notebooks run in: {os.environ.get(NOTEBOOK_PYTHON) or sys.executable}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close the widgets tests left open while the interpreter still stands: ipywidgets'
    ``Widget.__del__`` run during interpreter shutdown (its registry already gone) printed
    an ``Exception ignored ... AttributeError`` traceback for each one after a green run."""
    widgets = sys.modules.get("ipywidgets")
    if widgets is not None:
        widgets.Widget.close_all()
