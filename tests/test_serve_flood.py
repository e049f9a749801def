"""Half-open connections (issue 18): sockets that connect and never finish a request are
closed after a header deadline, at most ``max_connections`` are held (the oldest idle or
half-open ones make room for new clients), so a flood can neither lock out an
authenticated client nor take the descriptors the runtime's stores need.

Everything is on loopback (127.0.0.1), bounded in count and time.
"""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

import agentbook as ab

from .waiting import eventually

TOKEN = "flood-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Flooded(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def bump(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


async def _half_open(port: int, count: int, partial: bool) -> list:
    """*count* connections that say nothing, or half a request head."""
    conns = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if partial:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            await writer.drain()
        conns.append((reader, writer))
    return conns


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except (ConnectionError, OSError):
        return True


async def test_a_request_head_that_never_ends_is_timed_out(mem_rt):
    server = mem_rt.serve(token=TOKEN, header_timeout=0.3)
    try:
        conns = await _half_open(server.port, 10, partial=False)
        conns += await _half_open(server.port, 10, partial=True)
        closed = await asyncio.gather(*(_closed_by_server(r) for r, _ in conns))
        assert all(closed)
        assert server.connection_guard.timed_out >= 20
        async with httpx.AsyncClient(headers=AUTH) as client:
            answer = await client.get(f"{server.url}/agents/flooded/a", timeout=5)
        assert answer.status_code == 200, answer.text
        for _, writer in conns:
            writer.close()
    finally:
        await server.stop()


async def test_over_the_cap_the_oldest_half_open_connections_make_room(mem_rt):
    await mem_rt.get(Flooded, "a").bump()
    server = mem_rt.serve(token=TOKEN, max_connections=8)
    try:
        conns = await _half_open(server.port, 40, partial=True)
        async with httpx.AsyncClient(headers=AUTH) as client:
            answer = await client.get(f"{server.url}/agents/flooded/a", timeout=5)
        assert answer.status_code == 200 and answer.json()["state"] == {"n": 1}, answer.text
        guard = server.connection_guard
        await eventually(lambda: guard.evicted >= 32, what="the flood made room")
        assert len(guard.open) <= 8
        oldest = await asyncio.gather(*(_closed_by_server(r) for r, _ in conns[:30]))
        assert all(oldest)
        for _, writer in conns:
            writer.close()
    finally:
        await server.stop()


_SERVER = textwrap.dedent("""
    import asyncio, sys
    import agentbook as ab

    class Flooded(ab.Agent):
        initial_state = {"n": 0}

        @ab.callable
        async def bump(self) -> int:
            self.set_state({"n": self.state["n"] + 1})
            return self.state["n"]

    async def main() -> None:
        async with ab.Runtime(sys.argv[1]) as rt:
            for i in range(5):
                await rt.get(Flooded, f"a{i}").bump()
            server = rt.serve(token=sys.argv[2])
            print(server.url, flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
""")


def _low(limit: int):
    def set_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return set_limit


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_NOFILE")
def test_a_flood_of_half_open_sockets_locks_out_no_one(tmp_path):
    """300 sockets that never finish a request, against a server whose process may open 256
    files: an authenticated client still gets in at once, and the agents' stores still
    open (the flood used to exhaust the descriptors and hold them forever)."""
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s"), TOKEN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_low(256), cwd=tmp_path)
    flood: list[socket.socket] = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the server did not start"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() else "")
        port = int(url.rsplit(":", 1)[1])
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            flood.append(sock)
        started = time.monotonic()
        with httpx.Client(headers=AUTH, timeout=10) as client:
            seen = client.get(f"{url}/agents/flooded/a1")       # an awake agent
            fresh = client.get(f"{url}/agents/flooded/a4")      # read from its file
            other = client.get(f"{url}/agents/flooded/nobody")  # no store yet
        assert seen.status_code == 200 and seen.json()["state"] == {"n": 1}, seen.text
        assert fresh.status_code == 200 and fresh.json()["state"] == {"n": 1}, fresh.text
        assert other.status_code == 200, other.text
        assert time.monotonic() - started < 10
        assert proc.poll() is None, proc.stderr.read()
    finally:
        for sock in flood:
            sock.close()
        proc.kill()
        proc.communicate(timeout=30)
