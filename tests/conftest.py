"""Shared fixtures: runtimes on real SQLite files, the virtual clock, and no network."""

from __future__ import annotations

import socket

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
