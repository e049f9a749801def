"""Chat over the wire, from Python: ``ab.connect(...).stream_chat`` and raw frames against
``rt.serve()``. Every check that matters is made in the runtime too: the stored rows, the
approvals, the tools that ran. (Cloudflare's own client is in test_serve_chat_npm.py.)
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

import agentbook as ab
from agentbook.errors import ApprovalDecidedError

from . import serve_agents
from .serve_agents import auth, raw, recv
from .serve_chat_agents import RAN, WireChat, WireCounter
from .waiting import eventually

served = serve_agents.served  # the fixture (pytest finds it by this name)


async def connect(server, name: str):
    return await ab.connect(server.url_for(WireChat, name), token=server.token)


def request(rid: str, text: str, mid: str = "u1") -> str:
    body = {"messages": [{"id": mid, "role": "user", "parts": [{"type": "text", "text": text}]}],
            "trigger": "submit-message"}
    return json.dumps({"type": "cf_agent_use_chat_request", "id": rid,
                       "init": {"method": "POST", "body": json.dumps(body)}})


async def frames_until(ws, done) -> list[dict]:
    out = []
    while True:
        (frame,) = await recv(ws)
        out.append(frame)
        if done(frame):
            return out


def bodies(frames: list[dict], rid: str) -> list[dict]:
    return [json.loads(f["body"]) for f in frames
            if f.get("type") == "cf_agent_use_chat_response" and f["id"] == rid and f["body"]]


async def test_stream_chat_over_the_wire_yields_the_turn_and_stores_the_same_rows(rt, served):
    async with await connect(served, "p1") as client:
        assert client.messages == []
        chunks = [c async for c in client.stream_chat("what is the weather in Paris")]
        kinds = [c.kind for c in chunks]
        assert kinds[:2] == ["tool_call", "tool_result"] and set(kinds[2:]) == {"text"}
        answer = "".join(map(str, chunks))
        assert answer == "Here is what lookup_weather says: city: Paris, sky: sunny, celsius: 21."
        assert await client.chat("hello") == "Hello! I'm the builtin offline model. How can I help?"
        mine = [(m["role"], m["parts"][-1].get("text")) for m in client.messages]
    stored = rt.get(WireChat, "p1").messages()
    assert list(stored["role"]) == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert stored["content"].iloc[3] == answer
    async with httpx.AsyncClient(base_url=served.url, trust_env=False) as http:
        got = (await http.get("/agents/wire-chat/p1/get-messages", headers=auth(served))).json()
        refused = await http.get("/agents/wire-chat/p1/get-messages")
        not_chat = await http.get("/agents/wire-counter/c/get-messages", headers=auth(served))
    assert refused.status_code == 401 and not_chat.status_code == 404
    assert [m["id"] for m in got] == [stored["id"].iloc[i] for i in (0, 1, 4, 5)]
    assert [(m["role"], m["parts"][-1].get("text")) for m in got] == mine
    assert got[1]["parts"][1]["output"] == {"city": "Paris", "sky": "sunny", "celsius": 21}


async def test_a_notebook_turn_streams_live_to_the_agent_s_connections(rt, served):
    ref = rt.get(WireChat, "p2")
    async with await raw(served, "/agents/wire-chat/p2?_pk=watcher") as ws:
        first = await frames_until(ws, lambda f: f["type"] == "cf_agent_chat_messages")
        assert first[-1] == {"type": "cf_agent_chat_messages", "messages": [], "connect": True}
        said = "".join([str(c) async for c in ref.stream_chat("hello")])
        frames = await frames_until(ws, lambda f: f.get("done") is True)
    sid = frames[0]["id"]
    chunks = bodies(frames, sid)
    assert chunks[0] == {"type": "start", "messageId": ref.messages()["id"].iloc[1]}
    assert "".join(c.get("delta", "") for c in chunks) == said
    assert chunks[-1] == {"type": "finish", "messageMetadata": {"finishReason": "stop"}}
    transcript = next(f for f in frames if f["type"] == "cf_agent_chat_messages")
    assert [m["role"] for m in transcript["messages"]] == ["user", "assistant"]
    # the transcript comes after the last chunk and before done
    kinds = [f["type"] if not f.get("done") else "done" for f in frames]
    assert kinds[-2:] == ["cf_agent_chat_messages", "done"]


async def test_client_tools_run_in_the_python_client_and_the_model_goes_on(rt, served):
    ran = []

    def get_client_info() -> dict:
        """Get information about the client runtime."""
        ran.append(1)
        return {"runtime": "python"}

    async with await connect(served, "p3") as client:
        chunks = [c async for c in client.stream_chat("show my client info",
                                                      client_tools=[get_client_info])]
    assert ran == [1]
    assert [c.kind for c in chunks][:1] == ["tool_call"]
    assert "".join(map(str, chunks)) == "Here is what get_client_info says: runtime: python."
    stored = rt.get(WireChat, "p3").messages()
    assert list(stored["role"]) == ["user", "assistant", "tool", "assistant"]
    assert json.loads(stored["content"].iloc[2]) == {"runtime": "python"}
    assert stored["tool_call_id"].iloc[2] == stored["tool_calls"].iloc[1][0]["id"]


async def test_an_approval_over_the_wire_is_the_inbox_s_and_is_decided_once(rt, served):
    RAN.clear()
    async with await connect(served, "p4") as client:
        chunks = [c async for c in client.stream_chat("please delete file '/tmp/a'")]
        (asked,) = [c.data for c in chunks if c.kind == "approval"]
        pending = rt.approvals.get(asked["approval"])
        assert pending.status == "pending" and pending.name == "p4"
        await client.decide_tool(asked["id"], approved=True)
        await eventually(lambda: rt.approvals.get(asked["approval"]).status == "approved")
        with pytest.raises(ApprovalDecidedError):
            rt.approvals.approve(asked["approval"])  # the inbox is too late
        await eventually(lambda: "delete_file says" in (
            client.messages[-1]["parts"][-1].get("text") or ""), what="the continuation")
        # the other way round: the inbox first, then the wire
        chunks = [c async for c in client.stream_chat("please delete file '/tmp/b'")]
        (asked,) = [c.data for c in chunks if c.kind == "approval"]
        await rt.approvals.approve(asked["approval"], by="notebook")
        errors = []
        client.on_message(errors.append)
        await client.decide_tool(asked["id"], approved=True)
        await eventually(lambda: errors, what="the refusal")
    assert "no approval is pending" in errors[0]["error"]
    assert RAN == [("delete_file", {"path": "/tmp/a"}), ("delete_file", {"path": "/tmp/b"})]
    assert rt.approvals.get(asked["approval"]).decided_by == "notebook"


async def test_a_rejection_over_the_wire_never_runs_the_tool(rt, served):
    RAN.clear()
    async with await connect(served, "p5") as client:
        chunks = [c async for c in client.stream_chat("please delete file '/tmp/c'")]
        (asked,) = [c.data for c in chunks if c.kind == "approval"]
        await client.decide_tool(asked["id"], approved=False)
        await eventually(lambda: rt.approvals.get(asked["approval"]).status == "rejected")
    assert RAN == []
    (part,) = [p for m in served.chat.transcript(rt.get(WireChat, "p5"))
               for p in m["parts"] if p.get("toolCallId") == asked["id"]]
    assert part["state"] == "output-denied" and part["approval"]["approved"] is False


async def test_leaving_the_stream_early_cancels_the_turn_and_stores_what_was_said(rt, served):
    ref = rt.get(WireChat, "p6")
    async with await connect(served, "p6") as client:
        said = []
        async for chunk in client.stream_chat("a slow reply, stopped"):
            said.append(str(chunk))
            if len(said) == 2:
                break
        await eventually(lambda: len(ref.messages()) == 2, what="the aborted turn committed")
    stored = ref.messages()
    assert stored["content"].iloc[1].startswith("".join(said))
    assert len(stored["content"].iloc[1]) < len("I'm the builtin offline model, so I only")
    events = rt.sql("SELECT type FROM events WHERE name = 'p6' AND type LIKE 'chat:%'")
    assert "chat:aborted" in list(events["type"])


async def test_a_second_connection_is_offered_the_running_stream_and_gets_replay_then_live(
        rt, served):
    async with await raw(served, "/agents/wire-chat/p7?_pk=one") as one:
        await frames_until(one, lambda f: f["type"] == "cf_agent_chat_messages")
        await one.send(request("r1", "a slow reply for two"))
        mine = await frames_until(one, lambda f: '"text-delta"' in f.get("body", ""))
        async with await raw(served, "/agents/wire-chat/p7?_pk=two") as two:
            opened = await frames_until(two,
                                        lambda f: f["type"] == "cf_agent_stream_resuming")
            assert opened[-1] == {"type": "cf_agent_stream_resuming", "id": "r1"}
            connect_list = next(f for f in opened if f["type"] == "cf_agent_chat_messages")
            assert [m["id"] for m in connect_list["messages"]] == ["u1"]  # asked, not stored
            await two.send(json.dumps({"type": "cf_agent_stream_resume_request",
                                       "probeId": "p"}))
            await two.send(json.dumps({"type": "cf_agent_stream_resume_ack", "id": "r1"}))
            got = await frames_until(two, lambda f: f.get("done") is True)
        mine += await frames_until(one, lambda f: f.get("done") is True)
    replay = [f for f in got if f.get("replay")]
    assert replay[0]["seq"] == 0 and replay[-1].get("replayComplete") is True
    live = [f for f in got
            if f.get("type") == "cf_agent_use_chat_response" and not f.get("replay")]
    seqs = [f["seq"] for f in replay[:-1]] + [f["seq"] for f in live if not f["done"]]
    assert seqs == list(range(len(seqs)))  # every chunk once, in order
    assert bodies(got, "r1") == bodies(mine, "r1")
    assert got[-1]["messageIds"] == ["u1"]
    # the transcript went to the other connection, not to the requester
    assert any(f["type"] == "cf_agent_chat_messages" for f in got[len(replay):])
    assert not any(f["type"] == "cf_agent_chat_messages" for f in mine)


async def test_a_connection_that_acks_after_the_stream_ended_gets_its_transcript_too(
        rt, served):
    """Offered a running stream, a connection gets none of its frames until it acks; if it
    acks after the end, the replay is followed by the transcript the others got at the end
    (without it, Cloudflare's client kept a continuation that ended before its ack as a
    message of its own), then done."""
    async with await raw(served, "/agents/wire-chat/p10?_pk=one") as one:
        await frames_until(one, lambda f: f["type"] == "cf_agent_chat_messages")
        await one.send(request("r1", "a slow reply, acked late"))
        await frames_until(one, lambda f: '"text-delta"' in f.get("body", ""))
        async with await raw(served, "/agents/wire-chat/p10?_pk=two") as two:
            await frames_until(two, lambda f: f["type"] == "cf_agent_stream_resuming")
            await frames_until(one, lambda f: f.get("done") is True)  # it ended meanwhile
            await two.send(json.dumps({"type": "cf_agent_stream_resume_ack", "id": "r1"}))
            got = await frames_until(two, lambda f: f.get("done") is True)
    replay = [f for f in got if f.get("type") == "cf_agent_use_chat_response"]
    assert all(f.get("replay") for f in replay) and len(replay) > 2
    (listed,) = [f for f in got if f["type"] == "cf_agent_chat_messages"]
    assert got.index(listed) == len(got) - 2, "after the replayed chunks, before done"
    first = listed["messages"][0]
    assert (first["role"], first["id"]) == ("user", "u1")
    stored = rt.get(WireChat, "p10").messages()
    assert [m["id"] for m in listed["messages"]] == list(stored["id"])


async def test_a_connection_that_acks_between_the_last_chunk_and_the_end_gets_its_end_later(
        rt, served, monkeypatch):
    """A stream's end (the transcript, then done) leaves FINALIZE_GAP after its last chunk.
    A connection whose resume ack lands in that gap is replayed while the stream still runs;
    its end must come FINALIZE_GAP after its own replay (Cloudflare's client kept a client
    tool's continuation as a message of its own when it came 1 ms after), once, in order.
    The gap is held open here, and the end runs right after the replay."""
    from agentbook.serve import chat
    from agentbook.serve.protocol import Connection

    wire, held = served.chat, []
    monkeypatch.setattr(wire, "later", lambda key, stream: held.append(
        lambda: wire.finish(key, stream)))
    loop, sent, write = asyncio.get_running_loop(), [], Connection.frame

    def frame(conn, text: str) -> None:  # what the server writes to "two", and when
        if conn.id == "two":
            sent.append((loop.time(), json.loads(text)))
        write(conn, text)

    monkeypatch.setattr(Connection, "frame", frame)
    ack = json.dumps({"type": "cf_agent_stream_resume_ack", "id": "r1"})
    async with await raw(served, "/agents/wire-chat/p11?_pk=one") as one:
        await frames_until(one, lambda f: f["type"] == "cf_agent_chat_messages")
        await one.send(request("r1", "a slow reply, acked in the gap"))
        mine = await frames_until(one, lambda f: '"text-delta"' in f.get("body", ""))
        async with await raw(served, "/agents/wire-chat/p11?_pk=two") as two:
            await frames_until(two, lambda f: f["type"] == "cf_agent_stream_resuming")
            mine += await frames_until(one, lambda f: bool(f.get("body")) and json.loads(
                f["body"])["type"] == "finish")  # the last chunk
            await eventually(lambda: held, what="the turn committed, its end held")
            await two.send(ack)
            got = await frames_until(two, lambda f: f.get("replayComplete") is True)
            (end,) = held
            end()  # the end comes in the gap: right after the replay
            got += await frames_until(two, lambda f: f.get("done") is True)
            await two.send(json.dumps({"type": "cf_agent_stream_resume_request",
                                       "probeId": "after"}))
            got += await frames_until(two, lambda f: f.get("probeId") == "after")
        mine += await frames_until(one, lambda f: f.get("done") is True)
    kinds = [f["type"] if f["type"] != "cf_agent_use_chat_response" else
             "done" if f["done"] else "complete" if f.get("replayComplete") else "chunk"
             for f in got]
    n = kinds.count("chunk")
    assert n > 2 and kinds == ["chunk"] * n + [
        "complete", "cf_agent_chat_messages", "done", "cf_agent_stream_resume_none"]
    assert bodies(got, "r1") == bodies(mine, "r1")
    stored = rt.get(WireChat, "p11").messages()
    assert [m["id"] for m in got[n + 1]["messages"]] == list(stored["id"])
    # ... at least FINALIZE_GAP after the replay, as the server wrote them
    (replayed,) = [t for t, f in sent if f.get("replayComplete")]
    (listed,) = [t for t, f in sent if f["type"] == "cf_agent_chat_messages" and "connect" not in f]
    slack = time.get_clock_info("monotonic").resolution
    assert listed - replayed >= chat.FINALIZE_GAP - slack, f"{(listed - replayed) * 1000:.2f} ms"
    # the requester got its done at once (no transcript: it has the turn)
    assert not any(f["type"] == "cf_agent_chat_messages" for f in mine)


async def test_a_probe_after_a_tool_result_is_offered_its_continuation_which_starts_on_the_ack(
        rt, served, monkeypatch):
    """Cloudflare's client runs a client tool as its call arrives, sends the result, then
    probes to attach to the continuation; the turn that called the tool may still be
    ending then (its last chunk sent, its end not). The probe is offered the continuation
    at once (before, it was offered the ending turn, and the continuation reached the
    client as a stranger's stream: a message of its own), and the continuation starts on
    the ack, so every chunk of it arrives live (a replay of a continuation that ended
    before the ack could be caught up by its end in one client tick under load). The
    calling turn's end is held open here until the probe is answered."""
    wire, held, hold = served.chat, [], [True]
    later = wire.later
    monkeypatch.setattr(wire, "later", lambda key, stream: held.append(
        lambda: wire.finish(key, stream)) if hold[0] else later(key, stream))
    tools = [{"name": "get_client_info", "description": "Get information about the client.",
              "parameters": {"type": "object", "properties": {}}}]
    body = {"messages": [{"id": "u1", "role": "user", "parts": [
        {"type": "text", "text": "show my client info"}]}], "clientTools": tools}
    async with await raw(served, "/agents/wire-chat/p12?_pk=me") as ws:
        await frames_until(ws, lambda f: f["type"] == "cf_agent_chat_messages")
        await ws.send(json.dumps({"type": "cf_agent_use_chat_request", "id": "r1",
                                  "init": {"method": "POST", "body": json.dumps(body)}}))
        first = await frames_until(ws, lambda f: bool(f.get("body")) and json.loads(
            f["body"])["type"] == "finish")
        (call,) = [c for c in bodies(first, "r1") if c["type"] == "tool-input-available"]
        await eventually(lambda: held, what="the call's turn committed, its end held")
        await ws.send(json.dumps({"type": "cf_agent_tool_result", "toolCallId": call["toolCallId"],
                                  "toolName": "get_client_info", "output": {"runtime": "raw"},
                                  "autoContinue": True, "clientTools": tools}))
        await ws.send(json.dumps({"type": "cf_agent_stream_resume_request", "probeId": "p"}))
        pending, offer = await recv(ws, 2)
        assert pending["type"] == "cf_agent_stream_pending" and pending["probeId"] == "p"
        assert offer == {"type": "cf_agent_stream_resuming", "id": pending["id"]}
        assert pending["id"] != "r1"
        hold[0] = False
        (end,) = held
        end()
        (done,) = await recv(ws)
        assert (done["id"], done["done"]) == ("r1", True)
        await ws.send(json.dumps({"type": "cf_agent_stream_resume_ack", "id": pending["id"]}))
        got = await frames_until(ws, lambda f: f.get("done") is True)
    assert not any(f.get("replay") for f in got)  # it started on the ack: all of it live
    said = "".join(c.get("delta", "") for c in bodies(got, pending["id"]))
    assert said == "Here is what get_client_info says: runtime: raw."
    (listed,) = [f["messages"] for f in got if f["type"] == "cf_agent_chat_messages"]
    assert [m["role"] for m in listed] == ["user", "assistant"]  # the continuation: one
    assert listed[-1]["parts"][-1]["text"] == said                # message with the call


async def test_a_finished_stream_is_replayed_whole_and_probes_are_always_answered(rt, served):
    async with await raw(served, "/agents/wire-chat/p8?_pk=me") as ws:
        await frames_until(ws, lambda f: f["type"] == "cf_agent_chat_messages")
        await ws.send(request("r1", "hello"))
        streamed = await frames_until(ws, lambda f: f.get("done") is True)
        await ws.send(json.dumps({"type": "cf_agent_stream_resume_request", "probeId": "x"}))
        (none,) = await recv(ws)
        await ws.send(json.dumps({"type": "cf_agent_stream_resume_ack", "id": "r1"}))
        replayed = await frames_until(ws, lambda f: f.get("done") is True)
    assert none == {"type": "cf_agent_stream_resume_none", "reason": "idle", "probeId": "x"}
    assert bodies(replayed, "r1") == bodies(streamed, "r1")
    assert replayed[-1] == {"type": "cf_agent_use_chat_response", "id": "r1", "body": "",
                            "done": True, "replay": True, "messageIds": ["u1"]}


async def test_a_plain_agent_answers_probes_and_refuses_chat_frames(rt, served):
    async with await raw(served, "/agents/wire-counter/c?_pk=me") as ws:
        await recv(ws, 2)  # identity, state
        await ws.send(json.dumps({"type": "cf_agent_stream_resume_request", "probeId": "x"}))
        await ws.send(request("r1", "hello"))
        none, error = await recv(ws, 2)
    assert none == {"type": "cf_agent_stream_resume_none", "reason": "idle", "probeId": "x"}
    assert error["type"] == "error" and "not a chat agent" in error["error"]
    assert rt.get(WireCounter, "c").version == 0


async def test_clear_and_client_set_messages_reach_the_store_and_the_other_connections(
        rt, served):
    ref = rt.get(WireChat, "p9")
    await ref.chat("hello")
    async with await connect(served, "p9") as client, \
            await raw(served, "/agents/wire-chat/p9?_pk=other") as other:
        await frames_until(other, lambda f: f["type"] == "cf_agent_chat_messages")
        assert [m["role"] for m in client.messages] == ["user", "assistant"]
        mine = [{"id": "x1", "role": "user", "parts": [{"type": "text", "text": "set by me"}]},
                {"id": "x2", "role": "assistant", "parts": [{"type": "text", "text": "ok"}]}]
        await client.send({"type": "cf_agent_chat_messages", "messages": mine})
        seen = await frames_until(other, lambda f: f["type"] == "cf_agent_chat_messages")
        assert [m["id"] for m in seen[-1]["messages"]] == ["x1", "x2"]
        assert list(ref.messages()["content"]) == ["set by me", "ok"]
        await client.clear_chat()
        await frames_until(other, lambda f: f["type"] == "cf_agent_chat_clear")
        await eventually(lambda: len(ref.messages()) == 0, what="the cleared store")


async def test_the_chat_wire_benchmark_measures_both_sides_in_quick_mode(tmp_path):
    from agentbook.bench.chatbench import WIRE_NAMES, bench_chat_wire
    from agentbook.bench.report import Target
    from agentbook.bench.timing import Sizes

    results = await bench_chat_wire(Sizes.quick(), str(tmp_path))
    assert [r.name for r in results] == list(WIRE_NAMES)
    for r in results:
        assert r.value > 0 and r.floor > 0 and r.rounds == Sizes.quick().rounds
        assert r.target == (None if r.name.endswith("_bare") else  # (against the bare
                            Target("ratio", "<=", 1.25) if "ttft" in r.name  # transport:
                            else Target("ratio", ">=", 0.8))                   # reported)
        assert r.unit == ("ms" if "ttft" in r.name else "chars/s")
    assert "100 connections" in results[2].note
    assert "bare WebSocket server" in results[4].note and "process of its own" in results[6].note


async def test_a_page_is_served_without_the_token_and_nothing_else_is(rt, served, tmp_path):
    from urllib.parse import parse_qs, urlsplit

    url = served.add_page()  # agentbook's chat page
    assert url == served.url + "/_agentbook/pages/chat.html"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    (tmp_path / "mine.js").write_text("console.log(1)")
    served.add_page(tmp_path / "mine.js", name="app.js")
    for bad in ({"path": tmp_path}, {"path": tmp_path / "none.html"},
                {"path": secret, "name": "../secret.txt"}, {"path": secret, "name": ".hidden"},
                {"path": secret, "name": "a/b"}):
        with pytest.raises(ab.UsageError):
            served.add_page(**bad)
    with pytest.raises(ab.UsageError, match="no page 'secret.txt'"):
        served.page_url("secret.txt")
    async with httpx.AsyncClient(base_url=served.url, trust_env=False) as http:
        page = await http.get("/_agentbook/pages/chat.html")
        script = await http.get("/_agentbook/pages/app.js")
        head = await http.head("/_agentbook/pages/chat.html")
        refused = [(await http.request(method, path)).status_code for method, path in [
            ("GET", "/_agentbook/pages/secret.txt"), ("GET", "/_agentbook/pages/"),
            ("GET", "/_agentbook/pages/..%2Fsecret.txt"), ("GET", "/_agentbook/pages/../"),
            ("POST", "/_agentbook/pages/chat.html"), ("GET", "/agents/wire-chat/x")]]
        cross = await http.get("/_agentbook/pages/chat.html",
                               headers={"origin": "http://evil.example"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cf_agent_use_chat_request" in page.text and served.token not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert script.text == "console.log(1)" and "javascript" in script.headers["content-type"]
    assert head.status_code == 200
    assert set(refused) <= {401, 404} and cross.status_code == 403
    link = served.page_url("chat.html", agent="wire-chat", name="pg")
    assert link.startswith(url + "#")
    fragment = parse_qs(urlsplit(link).fragment)
    assert fragment["agent"] == ["wire-chat"] and fragment["name"] == ["pg"]
    assert served.auth.redeem(fragment["ticket"][0])  # a one-time ticket
    assert not served.auth.redeem(fragment["ticket"][0])


async def test_text_deltas_closer_than_the_window_go_as_one_frame(rt, served, monkeypatch):
    from agentbook.serve import chat

    ref = rt.get(WireChat, "co")
    text = "tell me about the trains and the rain and the snow in the mountains this week"
    turns = []
    async with await raw(served, "/agents/wire-chat/co?_pk=watcher") as ws:
        await frames_until(ws, lambda f: f["type"] == "cf_agent_chat_messages")
        for window in (chat.COALESCE, 0.0):
            monkeypatch.setattr(chat, "COALESCE", window)
            said = "".join([str(c) async for c in ref.stream_chat(text)])
            frames = await frames_until(ws, lambda f: f.get("done") is True)
            sent = [f for f in frames if f.get("body")]
            assert [f["seq"] for f in sent] == list(range(len(sent)))
            turns.append((said, [c for c in bodies(frames, frames[0]["id"])
                                 if c["type"] == "text-delta"]))
    (said, merged), (said_too, alone) = turns
    assert said == said_too and len(said.split()) > 20
    assert "".join(d["delta"] for d in merged) == said == "".join(d["delta"] for d in alone)
    assert merged[0]["delta"] == alone[0]["delta"]  # the first word leaves at once
    assert len(merged) <= len(alone) // 4  # (the builtin model: a word per loop turn)
    assert len(alone) == len(said.split())  # no window: a frame per word
