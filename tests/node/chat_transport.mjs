// Cloudflare's chat client without React: AgentClient (agents/client) + WebSocketChatTransport
// (agents/chat/transport) + the AI SDK's own Chat class (@ai-sdk/react, ai 7; nothing renders),
// against an agentbook ChatAgent. Driven by tests/test_serve_chat_npm.py; settings from the
// environment: AB_HOST, AB_TOKEN, AB_AGENT (kebab class), AB_NAME, AB_TEXT (the message),
// AB_DROP_AFTER (drop the socket after that many text deltas, then resume; 0: don't).
//
// The only code here that is not Cloudflare's or the AI SDK's is wire(): the six frame types
// the transport leaves to its integration (useAgentChat does the same dispatch).
// It sends one message, then connects a fresh client and chat (a page reload) and reports the
// transcript sent on connect and the one from GET .../get-messages. Prints one JSON object.
import { Chat } from "@ai-sdk/react";
import { MessageType } from "agents/chat";
import { WebSocketChatTransport } from "agents/chat/transport";
import { AgentClient } from "agents/client";
import WS from "ws";

const { AB_HOST: host, AB_TOKEN: token, AB_AGENT: agent, AB_NAME: name } = process.env;
const text = process.env.AB_TEXT || "hello from node";
const dropAfter = Number(process.env.AB_DROP_AFTER || 0);
const out = {};

function open(label) {
  const client = new AgentClient({ agent, name, host, WebSocket: WS, maxRetries: 5, protocols: ["agents", `bearer.${token}`] });
  const transport = new WebSocketChatTransport({ agent: client });
  const events = [];
  const received = [];
  const chat = new Chat({
    id: `${agent}/${name}`,
    transport,
    onFinish: ({ isAbort, isDisconnect, isError, finishReason }) => events.push({ onFinish: { isAbort, isDisconnect, isError, finishReason } }),
    onError: (error) => events.push({ onError: error.message }),
  });
  client.addEventListener("message", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    received.push(data.type);
    switch (data.type) {
      case MessageType.CF_AGENT_CHAT_MESSAGES:
        chat.messages = data.messages;
        break;
      case MessageType.CF_AGENT_CHAT_CLEAR:
        chat.messages = [];
        break;
      case MessageType.CF_AGENT_MESSAGE_UPDATED:
        chat.messages = chat.messages.map((m) => (m.id === data.message.id ? data.message : m));
        break;
      case MessageType.CF_AGENT_STREAM_RESUMING:
        transport.handleStreamResuming(data);
        break;
      case MessageType.CF_AGENT_STREAM_RESUME_NONE:
        transport.handleStreamResumeNone(data);
        break;
      case MessageType.CF_AGENT_STREAM_PENDING:
        transport.handleStreamPending();
        break;
    }
  });
  out[label] = { events, received };
  return { client, chat };
}

const textOf = (m) => (m?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
const brief = (messages) => messages.map((m) => ({ id: m.id, role: m.role, text: textOf(m), parts: m.parts.map((p) => p.type), ...(m.metadata?.interrupted ? { interrupted: true } : {}) }));
function within(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms); })]).finally(() => clearTimeout(timer));
}

let first;
let second;
try {
  first = open("first");
  await within(first.client.ready, 5000, "identity");
  await within(first.chat.resumeStream(), 7000, "the resume probe on connect");
  const streamed = [];
  first.chat["~registerMessagesCallback"](() => {
    const last = first.chat.lastMessage;
    if (last?.role === "assistant" && textOf(last) !== streamed.at(-1)) streamed.push(textOf(last));
  });
  if (dropAfter > 0) {
    let deltas = 0;
    first.client.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === MessageType.CF_AGENT_USE_CHAT_RESPONSE && !frame.replay && frame.body?.includes('"text-delta"'))
        if (++deltas === dropAfter) first.client.reconnect();
    });
  }
  const killAfter = Number(process.env.AB_KILL_AFTER || 0);
  if (killAfter > 0) {
    // The test SIGKILLs the server process after that many deltas and starts it again.
    let deltas = 0;
    let identities = 0;
    first.client.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "cf_agent_identity") identities++;
      if (frame.type === MessageType.CF_AGENT_USE_CHAT_RESPONSE && frame.body?.includes('"text-delta"') && ++deltas === killAfter)
        console.error(JSON.stringify({ killMe: true }));
    });
    await within(first.chat.sendMessage({ text }), 20000, "the reply (cut by the kill)");
    out.first.statusAfterKill = first.chat.status;
    const seen = identities;
    await within(new Promise((resolve) => { const poll = () => (identities > seen ? resolve() : setTimeout(poll, 20)); poll(); }), 30000, "a reconnect to the restarted server");
    await within(first.chat.resumeStream(), 7000, "the resume probe after the restart");
    out.first.afterRestart = brief(first.chat.messages);
    out.first.errorAfterRestart = first.chat.error?.message ?? null;
    out.first.statusAfterRestart = first.chat.status;
    first.chat.clearError?.();
    await within(first.chat.sendMessage({ text: "hello again" }), 20000, "a reply after the restart");
  } else await within(first.chat.sendMessage({ text }), 20000, "the reply");
  out.first.status = first.chat.status;
  if (dropAfter > 0) {
    await within(first.client.ready, 5000, "identity after the drop");
    await within(first.chat.resumeStream(), 20000, "the resumed reply");
    out.first.statusAfterResume = first.chat.status;
  }
  out.first.streamed = streamed;
  out.first.messages = brief(first.chat.messages);
  first.client.close();

  second = open("second");
  await within(second.client.ready, 5000, "identity (reload)");
  await within(second.chat.resumeStream(), 7000, "the resume probe (reload)");
  out.second.onConnect = brief(second.chat.messages);
  const response = await fetch(`http://${host}/agents/${agent}/${name}/get-messages`, { headers: { Authorization: `Bearer ${token}` } });
  out.second.getMessages = brief(await response.json());
  out.second.noToken = (await fetch(`http://${host}/agents/${agent}/${name}/get-messages`)).status;
} catch (error) {
  out.error = String(error?.stack ?? error);
} finally {
  first?.client.close();
  second?.client.close();
  console.log(JSON.stringify(out));
}
