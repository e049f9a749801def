"""What a chat turn through agentbook costs over the model call itself.

``chat_turn``
    ``await ref.chat(text)`` on an ``ab.ChatAgent`` whose model is
    ``ab.models.openai_compatible(loopback, ...)`` (a file runtime, ``durability=
    "normal"``): the turn stores the user's message, asks the model through the effect
    journal, stores the answer and commits. Floor: the raw ``openai`` SDK's
    ``chat.completions.create`` against the same server with exactly the messages
    agentbook's turns sent (the server records them; the SDK's cost grows with the number
    of messages, so both sides must send the same ones). Turns per second; target: ratio
    at least 0.8 (a turn takes at most 1.25x the raw call).

The server is the loopback OpenAI server of the test suite (``tests/providers/server.py``,
loaded by path from a source checkout): a thread of this process on 127.0.0.1 answering
each request with a queued ``chat.completion``. Nothing leaves the machine.

``chat_wire_ttft`` / ``chat_wire_chars`` (and ``..._100conn``)
    The same turn on the builtin model streamed over the serve path (``ab.connect(...)
    .stream_chat``: Cloudflare's chat frames on a loopback WebSocket) against
    ``ref.stream_chat`` in the kernel: time to the first text chunk (ms; ratio <= 1.25,
    i.e. at least 0.8x the kernel's speed) and text throughput, characters of the answer
    delivered per second (ratio >= 0.8), one turn at a time and with 100 connections
    chatting at once. One turn: the characters after the first text chunk over the time
    from it to the last; 100 at once: all characters over the time from the start to the
    last one delivered.

    Characters, not chunks: the serve path merges text deltas that come faster than one
    per 16 ms into one frame (``agentbook.serve.chat.COALESCE``; the first leaves at once),
    so over the wire a chunk holds several of the model's, and chunks/s would count the
    wire's frames, not the answer. (It was chunks/s until the merging: 0.11x one turn at a
    time, 0.24x with 100 connections.)

    Where a wire turn's time goes (one turn, traced; client and server share this process's
    event loop): ~130 us from the client's send to the server's frame handler, ~50 us on
    to the turn's handler, then the kernel's own work (its whole TTFT is ~150 us), ~20 us
    per frame written and ~30 us per frame the client reads (``start``, ``start-step`` and
    ``text-start`` come before the first delta). The answer's last words reach the client
    only after the turn's commit, which holds the loop they share.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import agentbook as ab

from .report import Result, Target
from .timing import Sizes, check, interleave
from .wirefloor import WireFloor, record, timed

__all__ = ["WIRE_NAMES", "BenchChat", "BenchWireChat", "bench_chat", "bench_chat_wire",
           "load_loopback"]

_ANSWER = "Hello! How can I help you today?"
_BODY = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1767225600,
    "model": "bench-model", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": _ANSWER, "refusal": None}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
}


class BenchChat(ab.ChatAgent):
    """A chat agent without tools; its model is set by the benchmark."""

    system = "You are a helpful assistant."


def load_loopback() -> ModuleType | str:
    """The test suite's loopback server module, or why it can't be used."""
    path = Path(__file__).resolve().parents[2] / "tests" / "providers" / "server.py"
    if not path.is_file():
        return (f"the loopback OpenAI server ({path}) is not here: run the benchmark from a "
                "source checkout")
    from .peers import load_file

    module = load_file("_agentbook_bench_loopback", path)
    return f"the loopback OpenAI server {module}" if isinstance(module, str) else module


async def bench_chat(sz: Sizes, folder: str) -> list[Result]:
    """Chat turns through agentbook vs the raw SDK call, same loopback server."""
    target = Target("ratio", ">=", 0.8)
    try:
        import openai
    except ImportError:
        return [Result.skip("chat_turn", "turns/s", "the openai SDK is not installed; pip "
                            "install 'agentbook[openai]'", target)]
    loopback = load_loopback()
    if isinstance(loopback, str):
        return [Result.skip("chat_turn", "turns/s", loopback, target)]
    n = sz.chat_n
    server = loopback.LoopbackServer()
    base_url = server.url + "/v1"
    model = ab.models.openai_compatible(base_url, "bench-model")
    BenchChat.model = model
    client = openai.AsyncOpenAI(api_key="not-needed", base_url=base_url)
    rt = ab.Runtime(os.path.join(folder, "chat"), durability="normal")
    reply = loopback.Reply(json=_BODY)
    try:
        ref = rt.get(BenchChat, "one")
        sent: list[list[dict[str, Any]]] = []  # the messages of agentbook's latest turns

        async def mine() -> float:
            server.queue(*[reply] * n)
            t0 = time.perf_counter()
            for i in range(n):
                answer = await ref.chat(f"question {i}")
            rate = n / (time.perf_counter() - t0)
            check(answer == _ANSWER, "the turn answered with the model's words")
            sent[:] = [r.json()["messages"] for r in server.requests[-n:]]
            return rate

        async def raw() -> float:
            server.queue(*[reply] * n)
            t0 = time.perf_counter()
            for messages in sent:  # (the wire's plain dicts: what the SDK's typed params are)
                completion = await client.chat.completions.create(
                    model="bench-model", messages=messages)  # type: ignore[arg-type]
            rate = n / (time.perf_counter() - t0)
            check(completion.choices[0].message.content == _ANSWER, "the raw call answered")
            return rate

        if not sz.warmup:
            await mine()  # the raw side sends what agentbook's turns sent
        pairs = await interleave(mine, raw, sz.rounds, sz.warmup)
        check(len(server.requests) == n * (2 * sz.rounds + (2 if sz.warmup else 1)),
              "one request per turn and per raw call")
    finally:
        await rt.aclose()
        await model.aclose()
        await client.close()
        server.close()
    mine_ms = 1000 / statistics.median(a for a, _ in pairs)
    raw_ms = 1000 / statistics.median(b for _, b in pairs)
    return [Result.from_rounds(
        "chat_turn", "turns/s", pairs, target,
        f"{n} turns/round of await ref.chat(text) on an ab.ChatAgent, model "
        f"openai_compatible(loopback) ({mine_ms:.2f} vs {raw_ms:.2f} ms/turn); file runtime, durability "
        f"normal; floor: raw openai SDK chat.completions.create on the same server with "
        "the very messages agentbook's turns sent (recorded by the server)")]


# -- chat over the wire (issue 21) ----------------------------------------------------------
#: A user message whose builtin answer is long enough to time its chunks (it echoes it).
_WIRE_TEXT = ("tell me everything about the weather in the mountains this week, the rain, "
              "the wind, the snow on the high passes and whether the trains will run on time")
WIRE_NAMES = ("chat_wire_ttft", "chat_wire_chars", "chat_wire_ttft_100conn",
              "chat_wire_chars_100conn", "chat_wire_ttft_bare", "chat_wire_chars_bare",
              "chat_wire_ttft_xproc", "chat_wire_chars_xproc", "chat_wire_ttft_xproc_bare",
              "chat_wire_chars_xproc_bare")


#: The builtin model, no tools: the same turn in the kernel and over the wire. (Made with
#: a module name outside agentbook: the serve path serves only classes of the user's own.)
BenchWireChat = type("BenchWireChat", (ab.ChatAgent,), {"__module__": "agentbook_bench_wire"})


async def bench_chat_wire(sz: Sizes, folder: str) -> list[Result]:
    """The same chat turn on the builtin model streamed over the serve path
    (``ab.connect(...).stream_chat``: the agents chat frames on a loopback WebSocket) vs
    in the kernel (``ref.stream_chat``): time to first token and characters of the answer
    per second, one turn at a time and with 100 connections chatting at once."""
    ttft_target, rate_target = Target("ratio", "<=", 1.25), Target("ratio", ">=", 0.8)
    try:
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError:
        return [Result.skip(name, "ms" if "ttft" in name else "chars/s",
                            "serving needs pip install 'agentbook[serve]'",
                            ttft_target if "ttft" in name else rate_target)
                for name in WIRE_NAMES]
    from ..serve.chat import COALESCE as coalesce
    from ..serve.client import connect
    from ..serve.handle import serve

    n, crowd = sz.chat_n, 100
    rt = ab.Runtime(os.path.join(folder, "chat_wire"), durability="normal")
    server = serve(rt, classes=[BenchWireChat])
    clients: list[Any] = []
    floor: WireFloor | None = None
    worker: Any = None
    try:
        ref = rt.get(BenchWireChat, "kernel")
        url = server.url_for(BenchWireChat, "wire")
        floor = WireFloor(*await record(server.url_for(BenchWireChat, "recorded"), server.token,
                                        _WIRE_TEXT))
        floor_url = await floor.start()
        one = await connect(url, token=server.token)
        bare = await connect(floor_url, token="-")
        clients += [one, bare]
        crowd_clients = await asyncio.gather(*[connect(
            server.url_for(BenchWireChat, f"wire-{i}"), token=server.token)
            for i in range(crowd)])
        clients += crowd_clients
        refs = [rt.get(BenchWireChat, f"kernel-{i}") for i in range(crowd)]
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentbook.bench.wirefloor", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(ab.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])})

        def figures(runs: list[Any]) -> tuple[float, float]:
            check(all(r[1] > 200 and r[3] > r[2] for r in runs), "each turn streamed its words")
            return (statistics.median(r[0] for r in runs) * 1000,
                    sum(r[4] for r in runs) / sum(r[3] - r[2] for r in runs))

        async def turns(stream: Any) -> tuple[float, float]:
            return figures([await timed(stream(_WIRE_TEXT)) for _ in range(n)])

        async def elsewhere(where: str, token: str) -> tuple[float, float]:
            """*n* turns timed by a client in a process of its own."""
            worker.stdin.write((json.dumps({"url": where, "token": token, "n": n,
                                            "text": _WIRE_TEXT}) + "\n").encode())
            line = await asyncio.wait_for(worker.stdout.readline(), 120)
            check(bool(line), "the client process answered")
            return figures(json.loads(line)["runs"])

        async def together(streams: list[Any]) -> tuple[float, float]:
            t0 = time.perf_counter()
            runs = await asyncio.gather(*[timed(s(_WIRE_TEXT)) for s in streams])
            check(all(r[1] > 200 for r in runs), "each turn streamed its words")
            return (statistics.median(r[0] for r in runs) * 1000,
                    sum(r[1] for r in runs) / (max(r[3] for r in runs) - t0))

        sides: dict[str, Any] = {
            "wire": lambda: turns(one.stream_chat), "kernel": lambda: turns(ref.stream_chat),
            "bare": lambda: turns(bare.stream_chat),
            # (an agent of its own: a turn streams to every connection of its agent)
            "xwire": lambda: elsewhere(server.url_for(BenchWireChat, "wire-x"), server.token),
            "xbare": lambda: elsewhere(floor_url, "-"),
            "crowd": lambda: together([c.stream_chat for c in crowd_clients]),
            "crowd_kernel": lambda: together([r.stream_chat for r in refs])}
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
        # The crowd's rounds come after the single turns' (a hundred turns' commits and
        # transcripts still going out would land in the next single turn's figures).
        for order in (["wire", "kernel", "bare", "xwire", "xbare"], ["crowd", "crowd_kernel"]):
            for i in range(sz.rounds + (1 if sz.warmup else 0)):
                for name in order[i % len(order):] + order[:i % len(order)]:  # (rotated)
                    figure = await sides[name]()
                    if i or not sz.warmup:
                        got[name].append(figure)
    finally:
        for client in clients:
            await client.close()
        if worker is not None:
            worker.stdin.close()
            await worker.wait()
        if floor is not None:
            await floor.stop()
        await server.stop()
        await rt.aclose()
    out = []
    text = ("the builtin model's answer to one ~30-word message (~50 text chunks, ~230 "
            "characters); wire: ab.connect(...).stream_chat on rt.serve() over loopback (the "
            "agents chat frames)")
    bare_floor = ("floor: a bare WebSocket server on the same stack (uvicorn, websockets-sansio, "
                  "the serve path's socket) replaying the frames a real turn sent, one per loop "
                  "turn, to the same client (agentbook.bench.wirefloor)")
    for suffix, mine, base, target, what in (
            ("", "wire", "kernel", True, f"{n} turns/round one after another, client and server "
                                         "on one event loop; floor: ref.stream_chat in the kernel"),
            ("_100conn", "crowd", "crowd_kernel", True,
             f"{crowd} connections (one agent each) chatting at once, against as many "
             "ref.stream_chat at once"),
            ("_bare", "wire", "bare", False, f"{n} turns/round, client and server on one event "
                                             f"loop; {bare_floor}"),
            ("_xproc", "xwire", "kernel", True, f"{n} turns/round, the client in a process of "
                                               "its own; floor: ref.stream_chat in the kernel"),
            ("_xproc_bare", "xwire", "xbare", False,
             f"{n} turns/round, the client in a process of its own; {bare_floor}")):
        rounds = list(zip(got[mine], got[base], strict=True))
        note = f"{what}; {text}"
        out.append(Result.from_rounds(f"chat_wire_ttft{suffix}", "ms",
                                      [(a[0], b[0]) for a, b in rounds],
                                      ttft_target if target else None,
                                      note + "; time to first token, median (ratio <= 1.25 "
                                      "is >= 0.8x the floor's speed)"))
        out.append(Result.from_rounds(f"chat_wire_chars{suffix}", "chars/s",
                                      [(a[1], b[1]) for a, b in rounds],
                                      rate_target if target else None,
                                      note + "; characters of the answer per second (the "
                                      f"wire merges deltas closer than {coalesce * 1000:g} ms "
                                      "into one frame)"))
    return out
