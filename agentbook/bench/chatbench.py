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
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import agentbook as ab

from .report import Result, Target
from .timing import Sizes, check, interleave

__all__ = ["BenchChat", "bench_chat", "load_loopback"]

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
