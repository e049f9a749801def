"""``ab.ChatAgent``: streaming chat with tools, approvals and replay built in.

A turn: the user's message is stored; the model is asked (through the effect journal, so
``replay`` can serve the answer or ask another model); tool calls run - server tools in
the runtime, client tools on the caller's side, tools with ``needs_approval`` become an
approval request - and their results go back to the model until it answers in words.
When a person approves a gated call it runs and the model follows up at once; when they
reject it (or it expires) the conversation records that as the call's result, so the
model knows in the next turn.
Everything the turn stored (messages, tool calls, the tool cache) commits with it, in the
agent's own store; a turn that fails leaves nothing. Messages that arrive while a turn
runs wait their turn in the mailbox (Cloudflare's ``messageConcurrency = "queue"``).

Old turns beyond ``max_messages`` are folded into a stored summary (:meth:`summarize`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .. import jsonvalue
from ..core.agent import Agent
from ..methods import callable
from ..models.base import Model, Response
from ..store import mcp as mcp_store
from ..store import messages as stored
from . import live, turns, ui
from .tools import Tool, as_tool, validate

if TYPE_CHECKING:
    from ..core.mailbox import Instance
    from ..core.ref import AgentRef
    from ..store import AgentStore

__all__ = ["Abort", "ChatAgent", "ChatChunk"]

_DONE = object()
#: What :meth:`_Turn.execute` returns for a client tool call left to a WebSocket client.
_DEFERRED = object()


@dataclass
class ChatChunk:
    """A piece of a streamed turn: ``kind`` is ``"text"``, ``"tool_call"``,
    ``"tool_result"`` or ``"approval"``; ``str(chunk)`` is its text."""

    text: str = ""
    kind: str = "text"
    data: Any = None

    def __str__(self) -> str:
        return self.text


class Abort(asyncio.Event):
    """What stops a turn's model call (a turn's ``abort`` extra; the serve path makes one
    per request, set by ``cf_agent_chat_request_cancel``): once set, the call ends where it
    waits, what was said is stored and the turn is recorded as aborted. (Any
    ``asyncio.Event`` works too, at the cost of a task racing the model call.)"""

    def __init__(self) -> None:
        super().__init__()
        #: Called once when it is set (the running turn's way to stop its model call).
        self.on_set: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        stop, self.on_set = self.on_set, None
        if stop is not None:
            stop()


class ChatAgent(Agent):
    """An agent that chats. Set ``model``, ``tools`` and ``system`` on the subclass.

    Attributes:
        model: A :mod:`agentbook.models` model (default: the builtin offline model).
        tools: ``@ab.tool`` functions (methods decorated with ``@ab.tool`` are found too).
        system: The system prompt.
        max_messages: Stored messages kept verbatim; older turns fold into a summary.
        max_steps: Model calls allowed in one turn (tool rounds).
    """

    model: Model | None = None
    tools: list[Any] = []
    system: str = "You are a helpful assistant."
    max_messages: int = 40
    max_steps: int = 6
    #: The tool index of each class, built on first use (see :meth:`_ab_tools`).
    _ab_tool_index: ClassVar[dict[str, Tool] | None] = None

    @callable
    async def chat(self, text: str) -> str:
        """Take the user's *text*, run the turn, return the assistant's answer."""
        if not isinstance(text, str) or not text.strip():
            from ..errors import UsageError

            raise UsageError("chat needs some text")
        return await _Turn(self).run(text)

    # -- hooks --------------------------------------------------------------------------
    def choose_model(self, step: int, messages: list[dict[str, Any]]) -> Model:
        """Which model answers at this *step* of the turn (override to route)."""
        if self.model is not None:
            return self.model
        from ..models import builtin

        return builtin()

    def summarize(self, messages: list[dict[str, Any]], previous: str | None) -> str:
        """Fold old messages into a short summary (override to ask a model)."""
        lines = [previous] if previous else []
        for msg in messages:
            if msg["role"] in ("user", "assistant") and msg["content"]:
                text = msg["content"].replace("\n", " ")
                lines.append(f"{msg['role']}: {text[:120]}")
        return "\n".join(lines[-20:])

    # -- reading ------------------------------------------------------------------------
    def get_messages(self) -> list[dict[str, Any]]:
        """The stored conversation (inside a handler)."""
        return [_message(m) for m in stored.messages(self._ab_store())]

    async def run_approved_tool(self, tool: str, arguments: dict, call_id: str) -> str:
        """Run a tool a person approved, then let the model follow up (approval target)."""
        turn = _Turn(self)
        turn.begin(continuation=True)
        await turn.join_mcp()
        call = {"id": f"{call_id}-approved", "name": tool, "arguments": dict(arguments)}
        turn.store_message({"role": "assistant", "content": "", "tool_calls": [call]})
        result = await turn.execute(call, approved=True)
        turn.store_message({"role": "tool", "content": json.dumps(result), "tool_call_id":
                            call["id"], "name": tool})
        return await turn.loop()

    # -- over the wire (agentbook.serve.chat) ----------------------------------------------
    async def _ab_tool_output(self, call_id: str, name: str, output: Any,
                              error: str | None = None) -> bool:
        """A client's result for a client tool call the turn left to it (stored once; a
        second result, or one for a call the conversation doesn't hold, is ignored)."""
        turn = _Turn(self)
        rows = stored.messages(turn.store)
        asked = any(call.get("id") == call_id for row in rows if row.tool_calls
                    for call in json.loads(row.tool_calls))
        if not asked or any(row.role == "tool" and row.tool_call_id == call_id for row in rows):
            return False
        result = {"error": error or "the client's tool failed"} if error is not None else output
        result = jsonvalue.freeze(result, f"result of {name}")
        turn.store_message({"role": "tool", "content": json.dumps(jsonvalue.thaw(result)),
                            "tool_call_id": call_id, "name": name})
        turn.ctx.capture(turn.store)
        stored.record_tool_call(turn.store, stored.ToolCall(
            call_id, name, "{}", jsonvalue.dumps(result), error, 0.0, 0, self.now()))
        turn.emit("tool:result", id=call_id, name=name, cached=False, error=error)
        turn.changed(call_id)
        return True

    async def _ab_continue(self) -> str:
        """Let the model go on from the stored conversation (after a client tool's result),
        on the last assistant message."""
        turn = _Turn(self)
        turn.begin(continuation=True)
        return await turn.loop()

    def _ab_recover_turns(self) -> int:
        """Store the turns an earlier life of the runtime left unfinished as interrupted
        (:mod:`agentbook.chat.turns`); how many. Sent by the serve path and the chat widget
        when they find such turns, so the conversation shows them before the next turn."""
        turn = _Turn(self)
        if turn.recovered:
            turn.emit("chat:interrupted", turns=[m.id for m in turn.recovered])
            turn.changed()
        return len(turn.recovered)

    def _ab_clear_messages(self) -> None:
        """Forget the conversation (a client's "clear history")."""
        turn = _Turn(self)
        turn.ctx.capture(turn.store)
        stored.clear(turn.store)
        turn.emit("chat:clear")

    def _ab_set_messages(self, messages: list) -> None:
        """Replace the conversation with a client's UIMessages (text, tool calls, results)."""
        turn = _Turn(self)
        turn.ctx.capture(turn.store)
        stored.clear(turn.store)
        for mid, role, content, calls, call_id, name in ui.rows_from_ui(list(messages)):
            stored.add_message(turn.store, mid, role, content, calls, call_id, name, self.now())
        turn.emit("chat:messages", count=len(messages))
        turn.changed()

    def _ab_reject_approval(self, approval_id: str, by: str, reason: str | None) -> None:
        pending = self._ab_pending_tool(approval_id)
        super()._ab_reject_approval(approval_id, by, reason)
        if pending is not None:
            _Turn(self).declined(pending, {"status": "rejected", "by": by, "reason": reason})

    def _ab_expire_approval(self, approval_id: str) -> None:
        pending = self._ab_pending_tool(approval_id)
        super()._ab_expire_approval(approval_id)
        if pending is not None:
            _Turn(self).declined(pending, {"status": "expired"})

    def _ab_pending_tool(self, approval_id: str) -> dict[str, Any] | None:
        """The tool call a still-pending approval stands for (``None`` for anything else)."""
        found = stored.pending_tool_approval(_open_store(self._ab_instance), approval_id)
        return json.loads(found) if found is not None else None

    # -- tool index ---------------------------------------------------------------------
    @classmethod
    def _ab_tools(cls) -> dict[str, Tool]:
        index = cls.__dict__.get("_ab_tool_index")
        if index is None:
            found = [as_tool(t) for t in cls.tools]
            for klass in reversed(cls.__mro__):
                found += [v for v in vars(klass).values() if isinstance(v, Tool)]
            index = {t.name: t for t in found}
            cls._ab_tool_index = index
        return index

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._ab_tool_index = None


class _Turn:
    """One turn's work inside the running handler."""

    def __init__(self, agent: ChatAgent) -> None:
        self.agent = agent
        self.inst = agent._ab_instance
        self.ctx = self.inst.require_ctx("chat")
        self.store = _open_store(self.inst)
        extras = self.ctx.extras
        self.stream: asyncio.Queue | None = extras.get("stream")
        self.client_tools: dict[str, Callable] = extras.get("client_tools") or {}
        self.tools = dict(type(agent)._ab_tools())
        for spec in extras.get("declared_tools") or ():  # client tools a WebSocket client offers
            if isinstance(spec, dict) and isinstance(spec.get("name"), str) \
                    and spec["name"] not in self.tools:
                params = spec.get("parameters")
                self.tools[spec["name"]] = Tool(
                    None, spec["name"], str(spec.get("description") or spec["name"]),
                    params if isinstance(params, dict) else {"type": "object", "properties": {}},
                    client=True)
        #: Client tool calls end the turn and wait for the client's result (a WebSocket
        #: client answers with cf_agent_tool_result; the serve path then continues).
        self.defer = bool(extras.get("defer_client_tools"))
        self.abort: asyncio.Event | None = extras.get("abort")
        self.aborted = False
        self.reply_id: str | None = None  # the first assistant row's id (the UI message's)
        self.sink: live.Sink | None = None
        self.mcp_joined = False
        #: This turn's mark (:mod:`agentbook.chat.turns`), once it began.
        self.mark: turns.TurnMark | None = None
        self.log = turns.log_of(self.inst.runtime)
        #: Turns an earlier life left unfinished, stored as interrupted in this handler.
        self.recovered: list[turns.TurnMark] = []
        if self.log.left or self.log.table is None:
            seen, self.recovered = turns.recover(self.log, self.inst.key, self.ctx, self.store,
                                                 agent.now())
            if seen:
                found = self.recovered
                self.ctx.events.append((turns.AFTER_COMMIT, lambda: turns.settle(
                    self.log, self.inst.key, seen, found, self.mark is not None)))

    def begin(self, continuation: bool, asked_id: str | None = None,
              asked: str | None = None) -> None:
        """The turn starts: its mark on record (committed at once), then its watchers."""
        wire = self.ctx.extras.get("wire")
        turn_id = wire["id"] if wire is not None else "turn-" + secrets.token_hex(6)
        self.mark = turns.begin(self.log, self.inst.key, self.store, turn_id, asked_id, asked,
                                self.reply_id or "m-" + secrets.token_hex(6))
        self.open_sink(continuation)

    def open_sink(self, continuation: bool) -> None:
        """Show this turn to the runtime's watchers, if any (before its first piece)."""
        self.sink = live.sink(self.inst.runtime, self.inst.key, self.ctx, continuation)
        if self.sink is not None:
            self.sink.begin(self.reply_id)

    def transcript(self) -> list[dict[str, Any]]:
        """The conversation as it will commit, as UIMessages."""
        return ui.ui_messages(stored.messages(self.store))

    def changed(self, call_id: str | None = None) -> None:
        """The conversation changed without a turn: watchers hear after the commit."""
        live.changed(self.inst.runtime, self.inst.key, self.ctx, self.transcript)

    def emit(self, kind: str, **data: Any) -> None:
        if self.inst.runtime.events.active:
            self.ctx.events.append((kind, jsonvalue.freeze(data, "event")))

    def push(self, chunk: ChatChunk) -> None:
        if self.stream is not None:
            self.stream.put_nowait(chunk)
        if self.sink is not None:
            self.sink.piece(chunk.kind, chunk.text, chunk.data)

    def store_message(self, msg: dict[str, Any], message_id: str | None = None) -> None:
        if message_id is None and msg["role"] == "assistant" and self.reply_id is not None:
            message_id, self.reply_id = self.reply_id, None  # the turn's first answer row
        self.ctx.capture(self.store)
        stored.add_message(
            self.store, message_id or "m-" + secrets.token_hex(6), msg["role"],
            msg.get("content") or "",
            jsonvalue.dumps(msg["tool_calls"]) if msg.get("tool_calls") else None,
            msg.get("tool_call_id"), msg.get("name"), self.agent.now())

    def declined(self, pending: dict[str, Any], result: dict[str, Any]) -> None:
        """A gated tool call was rejected or expired: the conversation says so, the way an
        approved one adds its result, so the model knows in the next turn."""
        call = {"id": f"{pending['call_id']}-{result['status']}", "name": pending["tool"],
                "arguments": dict(pending["arguments"])}
        self.store_message({"role": "assistant", "content": "", "tool_calls": [call]})
        self.store_message({"role": "tool", "content": json.dumps(result),
                            "tool_call_id": call["id"], "name": call["name"]})
        self.emit("chat:tool_declined", id=call["id"], name=call["name"], **result)
        self.changed()

    async def run(self, text: str) -> str:
        self.reply_id = self.ctx.extras.get("reply_id") or "m-" + secrets.token_hex(6)
        asked_id = self.ctx.extras.get("message_id") or "m-" + secrets.token_hex(6)
        self.begin(False, asked_id, text)
        self.store_message({"role": "user", "content": text}, asked_id)
        self.emit("chat:message", role="user", content=text)
        return await self.loop()

    async def join_mcp(self) -> None:
        """The agent's MCP tools join this turn's tools (once), prefixed on name clashes."""
        if self.mcp_joined or not mcp_store.has_servers(self.store):
            return
        self.mcp_joined = True
        for mcp_tool in await self.agent.mcp.chat_tools():
            name = mcp_tool.name if mcp_tool.name not in self.tools else \
                f"{mcp_tool.server}_{mcp_tool.name}"
            mcp_tool.name = name
            self.tools[name] = mcp_tool

    async def loop(self) -> str:
        try:
            final, reason = await self._loop()
        except BaseException as exc:
            if self.mark is not None and isinstance(exc, Exception):  # (a failure stores
                turns.end(self.log, self.inst.key, self.ctx, self.mark, failed=True)  # nothing)
            if self.sink is not None:
                self.sink.failed(exc)
            raise
        if self.mark is not None:
            turns.end(self.log, self.inst.key, self.ctx, self.mark, failed=False)
        if self.sink is not None:
            self.sink.end(reason, self.transcript)
        return final

    async def _loop(self) -> tuple[str, str]:
        agent = self.agent
        await self.join_mcp()
        specs = [t.spec() for t in self.tools.values()]
        final, reason = "", "stop"
        for step in range(agent.max_steps):
            messages = self.context()
            model = agent.choose_model(step, messages)
            if self.sink is not None:
                self.sink.step()
            data = await agent.effect("model", self._ask(model), messages, specs)
            response = Response.from_json(data)
            self.store_message(response.message())
            if response.finish_reason == "aborted":
                final, reason = response.content, "aborted"
                self.emit("chat:aborted", content=final)
                break
            if not response.tool_calls:
                final = response.content
                break
            deferred = False
            for call in response.tool_calls:
                payload = call.to_json()
                self.push(ChatChunk("", "tool_call", payload))
                self.emit("chat:tool_call", **payload)
                tool = self.tools.get(call.name)
                if self.defer and tool is not None and tool.client:
                    deferred = True  # the client answers with its result; the turn ends here
                    continue
                result = await self.execute(payload)
                self.store_message({"role": "tool", "content": json.dumps(result),
                                    "tool_call_id": call.id, "name": call.name})
            if deferred:
                final, reason = response.content, "tool-calls"
                break
        else:
            final = f"I stopped after {agent.max_steps} steps without a final answer."
            self.store_message({"role": "assistant", "content": final})
        self.emit("chat:message", role="assistant", content=final)
        self.fold()
        return final, reason

    def _ask(self, model: Model) -> Callable[..., Any]:
        async def ask(messages: list, specs: list) -> dict:
            if self.stream is None and self.sink is None:
                return (await model.complete(messages, specs or None)).to_json()
            response = None
            said: list[str] = []

            async def consume() -> None:
                nonlocal response
                async for chunk in model.stream(messages, specs or None):
                    if chunk.text:
                        said.append(chunk.text)
                        self.push(ChatChunk(chunk.text))
                    if chunk.response is not None:
                        response = chunk.response

            if self.abort is None:
                await consume()
            elif not await (_stoppable(consume(), self.abort) if isinstance(self.abort, Abort)
                            else _unless(consume(), self.abort)):  # the client stopped it
                self.aborted = True
                return Response("".join(said), model=model.name,
                                finish_reason="aborted").to_json()
            if response is None:
                from ..errors import ModelResponseError

                raise ModelResponseError("the model's stream ended without a final answer",
                                         provider=model.provider)
            return response.to_json()

        return ask

    async def execute(self, call: dict[str, Any], approved: bool = False) -> Any:
        """Run one tool call; problems become ``{"error": ...}`` for the model."""
        name, args = call["name"], dict(call.get("arguments") or {})
        tool = self.tools.get(name)
        if tool is None:
            return {"error": f"there is no tool named {name!r}; tools: {', '.join(self.tools)}"}
        problems = validate(args, tool.parameters)
        if problems:
            return {"error": "; ".join(problems)}
        if tool.needs_approval and not approved:
            summary = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
            approval = await self.agent.request_approval(
                "run_approved_tool", {"tool": name, "arguments": args, "call_id": call["id"]},
                summary=summary, side_effects=[tool.description])
            result = {"status": "awaiting approval", "approval": approval.id, "summary": summary}
            self.push(ChatChunk("", "approval", {**result, "id": call["id"], "name": name}))
            return result
        key = f"{name}:{jsonvalue.canonical(args)}"
        started = time.perf_counter()
        cached = self._cached(tool, key)
        if cached is not None:
            result, hit = cached, True
        else:
            result, hit = await self.agent.effect(f"tool:{name}", self._runner(tool), args), False
            if tool.ttl:
                self.ctx.capture(self.store)
                stored.cache_result(self.store, key, jsonvalue.dumps(result),
                                    self.agent.now() + tool.ttl)
        error = result.get("error") if isinstance(result, dict) and len(result) == 1 else None
        self.ctx.capture(self.store)
        stored.record_tool_call(self.store, stored.ToolCall(
            call["id"], name, jsonvalue.dumps(args), jsonvalue.dumps(result), error,
            (time.perf_counter() - started) * 1000, int(hit), self.agent.now()))
        self.push(ChatChunk("", "tool_result", {"id": call["id"], "name": name,
                                                "result": jsonvalue.thaw(result)}))
        self.emit("tool:result", id=call["id"], name=name, cached=hit, error=error)
        return jsonvalue.thaw(result)

    def _cached(self, tool: Tool, key: str) -> Any:
        if not tool.ttl:
            return None
        found = stored.cached_result(self.store, key, self.agent.now())
        return jsonvalue.loads(found) if found is not None else None

    def _runner(self, tool: Tool) -> Callable[..., Any]:
        agent, client = self.agent, self.client_tools

        async def run(args: dict) -> Any:
            fn = client.get(tool.name) if tool.client else tool.fn
            if fn is None:
                return {"error": f"{tool.name} runs on the client, and no client offered it"}
            try:
                params = list(_params(fn))
                value = fn(agent, **args) if params[:1] == ["self"] else fn(**args)
                if asyncio.iscoroutine(value):
                    value = await value
                return jsonvalue.freeze(value, f"result of {tool.name}")
            except Exception as exc:  # the model hears about it; the turn goes on
                return {"error": f"{type(exc).__name__}: {exc}"}

        return run

    def context(self) -> list[dict[str, Any]]:
        system = self.agent.system
        out = []
        for row in stored.messages(self.store):
            if row.role == "summary":
                system = f"{system}\n\nEarlier in this conversation:\n{row.content}"
            elif row.role == "assistant" and row.name == turns.INTERRUPTED:
                continue  # (a turn cut short by a restart: it said nothing that was kept)
            else:
                msg = _message(row)
                msg.pop("id")
                msg.pop("ts")
                out.append(msg)
        return [{"role": "system", "content": system}, *out]

    def fold(self) -> None:
        """Fold the oldest turns into the summary when there are too many messages.

        A turn is a user message and everything after it up to the next one (the answer,
        tool calls, their results, a gated call approved or declined later). Only whole
        turns fold, so a tool call never loses its result, and never the newest turn: it
        is what the model answers next, and the user reads it back in ``messages()``.
        Enough older turns fold to leave about ``max_messages // 2`` messages; a newest
        turn longer than that stays whole on its own."""
        limit = self.agent.max_messages
        rows = stored.messages(self.store, with_summary=False)
        if len(rows) <= limit:
            return
        starts = [i for i, row in enumerate(rows) if row.role == "user" and i > 0]
        if not starts:  # one turn (or none): nothing older to fold
            return
        cut = next((i for i in starts if len(rows) - i <= limit // 2), starts[-1])
        old = rows[:cut]
        summary = self.agent.summarize([_message(r) for r in old], stored.summary(self.store))
        self.ctx.capture(self.store)
        stored.fold(self.store, old[-1].seq, summary, self.agent.now())


async def _stoppable(work: Any, abort: Abort) -> bool:
    """Run *work* in this task unless *abort* is set first (then the task is cancelled
    where *work* waits, and that cancellation ends here); whether it ran to its end.
    No task of its own: nothing is scheduled before the model's first word."""
    if abort.is_set():
        work.close()
        return False
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    abort.on_set = stop
    try:
        await work
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        abort.on_set = None
        uncancel = getattr(task, "uncancel", None)  # (Python 3.11+ counts cancellations)
        if stopped and uncancel is not None and task.cancelling():
            uncancel()
    return not stopped


async def _unless(work: Any, stop: asyncio.Event) -> bool:
    """Run *work* unless *stop* is set first (then *work* is cancelled); whether it ran
    to its end."""
    task = asyncio.ensure_future(work)
    if stop.is_set():
        task.cancel()
    else:
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


def _open_store(inst: Instance) -> AgentStore:
    """The store of an agent whose handler runs (it is open while a handler runs)."""
    store = inst.store
    assert store is not None
    return store


def _params(fn: Callable) -> list[str]:
    import inspect

    return list(inspect.signature(fn).parameters)


def _message(row: stored.Message) -> dict[str, Any]:
    msg: dict[str, Any] = {"id": row.id, "role": row.role, "content": row.content, "ts": row.ts}
    if row.tool_calls:
        msg["tool_calls"] = json.loads(row.tool_calls)
    if row.tool_call_id:
        msg["tool_call_id"] = row.tool_call_id
    if row.name:
        msg["name"] = row.name
    return msg


# -- the caller's side (AgentRef.chat / stream_chat) -------------------------------------
def _envelope(ref: AgentRef, text: str, extras: dict[str, Any]) -> Any:
    rt = ref.runtime
    env = rt.prepare_call(ref._ab_key, "chat", (text,), {}, external=True, future=True)
    env.extras = extras
    return env


async def chat(ref: AgentRef, text: str, client_tools: list | dict | None = None) -> str:
    """Send *text* and await the answer (client tools run here, in the caller's process)."""
    env = _envelope(ref, text, {"client_tools": _client_map(client_tools)})
    return await ref.runtime.submit(ref._ab_key, env)


async def stream_chat(ref: AgentRef, text: str,
                      client_tools: list | dict | None = None) -> AsyncIterator[ChatChunk]:
    """Send *text* and yield the answer as it streams."""
    queue: asyncio.Queue = asyncio.Queue()
    env = _envelope(ref, text, {"stream": queue, "client_tools": _client_map(client_tools)})
    future = ref.runtime.submit(ref._ab_key, env)
    future.add_done_callback(lambda _: queue.put_nowait(_DONE))
    while True:
        item = await queue.get()
        if item is _DONE:
            break
        yield item
    future.result()  # raises the turn's error, if it failed


def _client_map(client_tools: list | dict | None) -> dict[str, Callable]:
    if not client_tools:
        return {}
    if isinstance(client_tools, dict):
        return dict(client_tools)
    return {getattr(t, "name", None) or t.__name__: getattr(t, "fn", None) or t
            for t in client_tools}
